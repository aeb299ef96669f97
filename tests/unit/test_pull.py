"""Pulling a catalog model over HTTP from a loopback server: resume, size limit, digest check.

The server serves the project's generated GGUF with Range support, a corrupted copy, and a
copy whose first response drops the connection halfway.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestratord.catalog.pull import download_url
from orchestratord.models.tiny_gguf import ensure_tiny_model
from tests.unit.conftest import AUTH

SIGNED = {"signatures": [{"signer": "me", "algo": "ed25519"}], "sbom": {"uri": "file:///sbom"}}


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.01)


@asynccontextmanager
async def model_server(data: bytes) -> AsyncIterator[tuple[str, list[str]]]:
    ranges: list[str] = []
    dropped = {"flaky": False}

    async def serve(
        request: web.Request, body: bytes, drop_half: bool = False
    ) -> web.StreamResponse:
        header = request.headers.get("Range")
        ranges.append(header or "")
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        response = web.StreamResponse(status=206 if header else 200)
        response.content_length = len(body) - start
        await response.prepare(request)
        if drop_half and not dropped["flaky"]:
            dropped["flaky"] = True
            await response.write(body[start : len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body[start:])
        await response.write_eof()
        return response

    corrupt = bytearray(data)
    corrupt[len(corrupt) // 3] ^= 0xFF

    async def good(request: web.Request) -> web.StreamResponse:
        return await serve(request, data)

    async def corrupted(request: web.Request) -> web.StreamResponse:
        return await serve(request, bytes(corrupt))

    async def flaky(request: web.Request) -> web.StreamResponse:
        return await serve(request, data, drop_half=True)

    app = web.Application()
    app.router.add_get("/good.gguf", good)
    app.router.add_get("/corrupt.gguf", corrupted)
    app.router.add_get("/flaky.gguf", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", ranges
    finally:
        await runner.cleanup()


def files_in(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


@pytest.fixture
def gguf(tmp_path: Path) -> tuple[bytes, str]:
    data = ensure_tiny_model(tmp_path / "gen").read_bytes()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


async def pull(conductor: Any, orch: Any, model_id: str) -> dict[str, Any]:
    started = await conductor.simulate_post(f"/v1/catalog/models/{model_id}/pull", headers=AUTH)
    assert started.status_code == 202, started.json
    await eventually(lambda: orch.catalog.records[model_id].pull["state"] in ("done", "failed"))
    got = await conductor.simulate_get(f"/v1/catalog/models/{model_id}", headers=AUTH)
    return dict(got.json)


@pytest.mark.req("HOME-501", "FR-CP-001")
async def test_a_pull_fetches_checks_and_places_the_file(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    async with model_server(data) as (url, _), conductor_for() as (orch, conductor):
        body = {"id": "tiny", "digest": digest, "source_url": f"{url}/good.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(conductor, orch, "tiny")
    assert entry["pull"]["state"] == "done" and entry["pull"]["bytes"] == len(data)
    assert entry["pull"]["total_bytes"] == len(data)
    path = Path(entry["local_path"])
    assert path == tmp_path / "c" / "models" / "catalog" / "tiny.gguf"
    assert files_in(path.parent) == {"tiny.gguf": data}  # no .part left


@pytest.mark.req("HOME-501", "ORCH-3063")
async def test_a_corrupted_download_leaves_no_usable_file(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    async with model_server(data) as (url, _), conductor_for() as (orch, conductor):
        body = {"id": "bad", "digest": digest, "source_url": f"{url}/corrupt.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(conductor, orch, "bad")
    assert entry["pull"]["state"] == "failed" and "digest mismatch" in entry["pull"]["error"]
    assert entry["local_path"] is None
    assert files_in(tmp_path / "c" / "models" / "catalog") == {}


@pytest.mark.req("HOME-501")
async def test_a_dropped_download_resumes_where_it_stopped(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    data, digest = gguf
    async with model_server(data) as (url, ranges), conductor_for() as (orch, conductor):
        body = {"id": "flaky", "digest": digest, "source_url": f"{url}/flaky.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        first = await pull(conductor, orch, "flaky")
        second = await pull(conductor, orch, "flaky")
    assert first["pull"]["state"] == "failed" and "resumes" in first["pull"]["error"]
    assert first["local_path"] is None
    assert second["pull"]["state"] == "done"
    assert second["pull"]["resumed_from"] == len(data) // 2
    assert ranges == ["", f"bytes={len(data) // 2}-"]
    assert files_in(Path(second["local_path"]).parent) == {"flaky.gguf": data}


@pytest.mark.req("HOME-501")
async def test_the_size_limit_and_sources_outside_the_model_directories(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    catalog = {"max_model_bytes": 1024}
    async with model_server(data) as (url, _), conductor_for(catalog=catalog) as (orch, conductor):
        body = {"id": "big", "digest": digest, "source_url": f"{url}/good.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(conductor, orch, "big")
    assert entry["pull"]["state"] == "failed" and "max_model_bytes" in entry["pull"]["error"]
    assert entry["local_path"] is None


def test_hf_sources_map_to_their_download_url() -> None:
    assert download_url("hf://org/repo/sub/model-q4.gguf") == (
        "https://huggingface.co/org/repo/resolve/main/sub/model-q4.gguf"
    )
    assert download_url("https://example.org/m.gguf") == "https://example.org/m.gguf"
