"""Pulling a catalog model over HTTP from a loopback server: resume, size limit, digest check.

The server serves the project's generated GGUF with Range support, a corrupted copy, and a
copy whose first response drops the connection halfway.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import orchestratord.catalog.pull as pull_module
from orchestratord.catalog.pull import download_url
from orchestratord.models.tiny_gguf import ensure_tiny_model
from tests.unit.conftest import AUTH
from tests.unit.standin_resolver import StandInResolver

SIGNED = {"signatures": [{"signer": "me", "algo": "ed25519"}], "sbom": {"uri": "file:///sbom"}}
# The model servers listen on loopback; pulls may reach them only because the test lists it.
LOOPBACK = {"allow_networks": ["127.0.0.1/32"]}


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.01)


@asynccontextmanager
async def model_server(data: bytes) -> AsyncIterator[tuple[str, list[str]]]:  # noqa: PLR0915 - one route a case
    ranges: list[str] = []
    dropped = {"flaky": False}
    closing = asyncio.Event()

    async def serve(
        request: web.Request, body: bytes, drop_half: bool = False
    ) -> web.StreamResponse:
        header = request.headers.get("Range")
        ranges.append(header or "")
        start = int(header.split("=")[1].rstrip("-")) if header else 0
        if start >= len(body):
            return web.Response(status=416)
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

    async def missing(request: web.Request) -> web.Response:
        ranges.append(request.headers.get("Range", ""))
        return web.Response(status=404, text="internal admin page, not found")

    async def trickle(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range", ""))
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        for byte in data[:200]:  # a byte every 20 ms: alive, but never getting anywhere
            await response.write(bytes([byte]))
            await asyncio.sleep(0.02)
        return response

    async def held(request: web.Request) -> web.StreamResponse:
        """The first request gets half the file and then nothing until the site closes;
        a request with a Range is served normally."""
        if request.headers.get("Range"):
            return await serve(request, data)
        ranges.append("")
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        await closing.wait()
        return response

    async def unsized(request: web.Request) -> web.StreamResponse:
        ranges.append(request.headers.get("Range", ""))
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length: the limit is found by counting
        await response.prepare(request)
        await response.write(data)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/unsized.gguf", unsized)
    app.router.add_get("/missing.gguf", missing)
    app.router.add_get("/trickle.gguf", trickle)
    app.router.add_get("/good.gguf", good)
    app.router.add_get("/corrupt.gguf", corrupted)
    app.router.add_get("/flaky.gguf", flaky)
    app.router.add_get("/held.gguf", held)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", ranges
    finally:
        closing.set()
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
    async with (
        model_server(data) as (url, _),
        conductor_for(outbound=LOOPBACK) as (orch, conductor),
    ):
        body = {"id": "tiny", "digest": digest, "source_url": f"{url}/good.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(conductor, orch, "tiny")
    assert entry["pull"]["state"] == "done" and entry["pull"]["bytes"] == len(data)
    assert entry["pull"]["total_bytes"] == len(data)
    path = Path(entry["local_path"])
    assert path == tmp_path / "c" / "models" / "catalog" / "tiny.gguf"
    assert files_in(path.parent) == {"tiny.gguf": data}  # no .part left


@pytest.mark.req("HOME-501")
async def test_a_retry_while_the_failed_pull_still_stores_its_outcome_starts_a_new_pull(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    """Found by the parallel dev loop: the failed pull is visible as failed before its
    task has stored the outcome; a retry in that moment was joined to the finished pull
    and lost (202, nothing pulled)."""
    data, digest = gguf
    async with (
        model_server(data) as (url, ranges),
        conductor_for(outbound=LOOPBACK) as (orch, conductor),
    ):
        stored = asyncio.Event()
        save_outcome = orch.puller._save_outcome

        async def slow_save(record: Any) -> None:
            await stored.wait()  # the outcome is being stored ... for as long as we say
            await save_outcome(record)

        orch.puller._save_outcome = slow_save
        body = {"id": "flaky", "digest": digest, "source_url": f"{url}/flaky.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        first = await pull(conductor, orch, "flaky")  # failed, its task still storing
        retry = asyncio.create_task(
            conductor.simulate_post("/v1/catalog/models/flaky/pull", headers=AUTH)
        )
        await asyncio.sleep(0.05)
        stored.set()
        assert (await retry).status_code == 202
        await eventually(lambda: orch.catalog.records["flaky"].pull["state"] in ("done", "failed"))
    assert first["pull"]["state"] == "failed"
    assert orch.catalog.records["flaky"].pull["state"] == "done"
    assert ranges == ["", f"bytes={len(data) // 2}-"]


@pytest.mark.req("HOME-501", "ORCH-3063")
async def test_a_corrupted_download_leaves_no_usable_file(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    async with (
        model_server(data) as (url, _),
        conductor_for(outbound=LOOPBACK) as (orch, conductor),
    ):
        body = {"id": "bad", "digest": digest, "source_url": f"{url}/corrupt.gguf", **SIGNED}
        await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(conductor, orch, "bad")
    assert entry["pull"]["state"] == "failed"
    assert entry["pull"]["error"] == "the file's sha256 does not match the entry's digest"
    assert "sha256:" not in entry["pull"]["error"]  # what was served is not echoed back
    assert entry["local_path"] is None
    assert files_in(tmp_path / "c" / "models" / "catalog") == {}


@pytest.mark.req("HOME-501")
async def test_a_dropped_download_resumes_where_it_stopped(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    data, digest = gguf
    async with (
        model_server(data) as (url, ranges),
        conductor_for(outbound=LOOPBACK) as (orch, conductor),
    ):
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


@pytest.mark.req("HOME-501", "HARD-212")
async def test_the_size_limit_and_sources_outside_the_model_directories(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    catalog = {"max_model_bytes": 1024}
    async with (
        model_server(data) as (url, _),
        conductor_for(catalog=catalog, outbound=LOOPBACK) as (orch, conductor),
    ):
        entries = {}
        for model_id, path in [("big", "good.gguf"), ("big-unsized", "unsized.gguf")]:
            body = {"id": model_id, "digest": digest, "source_url": f"{url}/{path}", **SIGNED}
            await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
            entries[model_id] = await pull(conductor, orch, model_id)
    for entry in entries.values():
        assert entry["pull"]["state"] == "failed", entry
        assert "max_model_bytes" in entry["pull"]["error"]
        assert entry["local_path"] is None
    # HARD-212: nothing is kept of a file past the limit, declared or counted
    assert files_in(tmp_path / "c" / "models" / "catalog") == {}


@pytest.mark.req("HARD-101", "HOME-501")
async def test_a_pull_obeys_the_outbound_policy(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    """A catalog entry cannot make the server fetch from this machine or the LAN: the pull
    goes through the same policy as the fetch tool, and the service never sees a request."""
    data, digest = gguf
    resolver = StandInResolver({"models.lan": ["127.0.0.1"]})
    async with (
        model_server(data) as (url, ranges),
        conductor_for(resolver=resolver) as (orch, conductor),
    ):
        port = url.rsplit(":", 1)[1]
        outcomes = {}
        for model_id, source in [("literal", f"{url}/good.gguf"),
                                 ("named", f"http://models.lan:{port}/good.gguf")]:  # fmt: skip
            body = {"id": model_id, "digest": digest, "source_url": source, **SIGNED}
            created = await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
            assert created.status_code == 201
            outcomes[model_id] = (await pull(conductor, orch, model_id))["pull"]
    assert ranges == []  # nothing reached the service
    assert outcomes["literal"]["state"] == "failed"
    assert outcomes["literal"]["error"].startswith("refused by the outbound policy: IP literal")
    assert "not a public address" in outcomes["named"]["error"]
    audit = (orch.config.resolved_state_dir() / "tool-audit.jsonl").read_text()
    assert '"purpose":"pull"' in audit and '"decision":"deny"' in audit


@pytest.mark.req("HARD-106")
async def test_pull_errors_say_what_failed_not_what_was_there(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    data, digest = gguf
    async with model_server(data) as (url, _), conductor_for(outbound=LOOPBACK) as (orch, c):
        body = {"id": "gone", "digest": digest, "source_url": f"{url}/missing.gguf", **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(c, orch, "gone")
    assert entry["pull"]["error"] == "the source did not serve the file (an HTTP error status)"


@pytest.mark.parametrize(
    ("source_url", "what"),
    [
        ("https://bob:hunter2@models.example.org/m.gguf", "user information"),
        ("https://models.example.org/m.gguf?X-Amz-Signature=abc", "x-amz-signature"),
        ("https://models.example.org/m.gguf?token=abc", "'token'"),
    ],
)
@pytest.mark.req("HARD-105", "OC-POLICY-4031")
async def test_a_source_url_with_credentials_is_refused(
    conductor_for: Any, source_url: str, what: str
) -> None:
    async with conductor_for() as (orch, conductor):
        body = {"id": "m", "digest": "sha256:" + "0" * 64, "source_url": source_url, **SIGNED}
        refused = await conductor.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
    assert refused.status_code == 400 and refused.json["code"] == "INVALID_PARAMS"
    assert what in refused.json["message"] and "hunter2" not in refused.json["message"]
    assert orch.catalog.get("m") is None


@pytest.mark.req("HARD-203", "HOME-501")
async def test_a_complete_part_file_is_verified_not_requested_again(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    target = tmp_path / "c" / "models" / "catalog"
    target.mkdir(parents=True)
    (target / "whole.gguf.part").write_bytes(data)  # killed between the last byte and rename
    broken = bytearray(data)
    broken[100] ^= 0xFF
    (target / "broken.gguf.part").write_bytes(bytes(broken))  # full length, wrong bytes
    async with model_server(data) as (url, ranges), conductor_for(outbound=LOOPBACK) as (o, c):
        for model_id in ("whole", "broken"):
            body = {"id": model_id, "digest": digest, "source_url": f"{url}/good.gguf", **SIGNED}
            await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        whole = await pull(c, o, "whole")
        assert ranges == []  # verified from disk
        broken_entry = await pull(c, o, "broken")
    assert whole["pull"]["state"] == "done" and broken_entry["pull"]["state"] == "done"
    assert ranges == [f"bytes={len(data)}-", ""]  # 416, then the whole file again
    assert files_in(target) == {"whole.gguf": data, "broken.gguf": data}


@pytest.mark.req("HARD-203")
async def test_two_pulls_of_one_model_are_one_download(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    async with model_server(data) as (url, ranges), conductor_for(outbound=LOOPBACK) as (o, c):
        body = {"id": "twice", "digest": digest, "source_url": f"{url}/good.gguf", **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        path = "/v1/catalog/models/twice/pull"
        answers = await asyncio.gather(*(c.simulate_post(path, headers=AUTH) for _ in range(4)))
        assert [a.status_code for a in answers] == [202] * 4
        await eventually(lambda: o.catalog.records["twice"].pull["state"] in ("done", "failed"))
    assert o.catalog.records["twice"].pull["state"] == "done"
    assert ranges == [""]
    assert files_in(tmp_path / "c" / "models" / "catalog") == {"twice.gguf": data}


@pytest.mark.req("HARD-203")
async def test_every_pull_ends_with_a_reason(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stalled source, disk full, a database that fails, a directory, a stop: each pull
    reaches ``failed`` with what went wrong, and nothing is left polling forever."""
    data, digest = gguf
    catalog = {"pull_stall_timeout_ms": 300, "pull_stall_bytes": 1000}
    (tmp_path / "c" / "models" / "a-directory.gguf").mkdir(parents=True)
    async with (
        model_server(data) as (url, _),
        conductor_for(catalog=catalog, outbound=LOOPBACK) as (orch, c),
    ):
        sources = {
            "stalled": f"{url}/trickle.gguf",
            "full-disk": f"{url}/good.gguf",
            "db-error": f"{url}/good.gguf",
            "directory": f"file://{tmp_path / 'c' / 'models' / 'a-directory.gguf'}",
        }
        for model_id, source in sources.items():
            body = {"id": model_id, "digest": digest, "source_url": source, **SIGNED}
            created = await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
            assert created.status_code == 201, created.json
        errors = {"stalled": (await pull(c, orch, "stalled"))["pull"]["error"]}
        real_write = pull_module._write

        def disk_full(*args: Any) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(pull_module, "_write", disk_full)
        errors["full-disk"] = (await pull(c, orch, "full-disk"))["pull"]["error"]
        monkeypatch.setattr(pull_module, "_write", real_write)

        async def broken_save(record: Any) -> None:
            raise sqlite3.OperationalError("database is locked")

        real_save = orch.catalog.save
        monkeypatch.setattr(orch.catalog, "save", broken_save)
        errors["db-error"] = (await pull(c, orch, "db-error"))["pull"]["error"]
        monkeypatch.setattr(orch.catalog, "save", real_save)
        errors["directory"] = (await pull(c, orch, "directory"))["pull"]["error"]
        verified = await c.simulate_post("/v1/catalog/models/directory/verify", headers=AUTH)
        assert verified.status_code == 202
        await eventually(lambda: orch.catalog.records["directory"].verification["result"]
                         != "pending")  # fmt: skip
        verification = orch.catalog.records["directory"].verification
    assert errors["stalled"].startswith("the source stalled: less than 1000 bytes in 0.3 s")
    assert "No space left on device" in errors["full-disk"]
    assert errors["db-error"] == "internal error (OperationalError); see the server log"
    assert errors["directory"].endswith("a-directory.gguf is not a regular file")
    assert verification["result"] == "failed" and verification["reason"] == "unreadable"


@pytest.mark.req("HARD-203")
async def test_a_stopped_pull_says_so_and_resumes_after_a_restart(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    data, digest = gguf
    catalog = {"pull_stall_timeout_ms": 60_000}
    async with (
        model_server(data) as (url, _),
        conductor_for(catalog=catalog, outbound=LOOPBACK) as (orch, c),
    ):
        body = {"id": "cut", "digest": digest, "source_url": f"{url}/trickle.gguf", **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        await c.simulate_post("/v1/catalog/models/cut/pull", headers=AUTH)
        await eventually(lambda: orch.catalog.records["cut"].pull["bytes"] > 10)
        await orch.puller.stop()
        record = orch.catalog.records["cut"]
    assert record.pull["state"] == "failed"
    assert record.pull["error"] == "cancelled: orchestratord stopped (the next pull resumes)"


@pytest.mark.req("HARD-203")
async def test_a_pull_cut_by_a_restart_resumes_from_its_part_file_in_the_next_process(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    """The first orchestratord is shut down with half the file on disk; a new one over the
    same state and model directories reads the pull's end from SQLite and resumes it with a
    Range request for the missing half, and the file verifies."""
    data, digest = gguf
    half = len(data) // 2
    catalog = {"pull_stall_timeout_ms": 60_000}
    async with model_server(data) as (url, ranges):
        async with conductor_for(catalog=catalog, outbound=LOOPBACK) as (orch, c):
            body = {"id": "cut", "digest": digest, "source_url": f"{url}/held.gguf", **SIGNED}
            await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
            await c.simulate_post("/v1/catalog/models/cut/pull", headers=AUTH)
            await eventually(lambda: orch.catalog.records["cut"].pull["bytes"] >= half)
        async with conductor_for(catalog=catalog, outbound=LOOPBACK) as (again, c):
            before = dict((await c.simulate_get("/v1/catalog/models/cut", headers=AUTH)).json)
            after = await pull(c, again, "cut")
            local = again.catalog.records["cut"].local_path
            placed = await asyncio.to_thread(Path(local).read_bytes) if local else None
    assert (
        before["pull"]["state"] == "failed" and "the next pull resumes" in before["pull"]["error"]
    )
    assert ranges == ["", f"bytes={half}-"]
    assert after["pull"]["state"] == "done", after
    assert after["pull"]["resumed_from"] == half
    assert placed == data


def test_hf_sources_map_to_their_download_url() -> None:
    assert download_url("hf://org/repo/sub/model-q4.gguf") == (
        "https://huggingface.co/org/repo/resolve/main/sub/model-q4.gguf"
    )
    assert download_url("https://example.org/m.gguf") == "https://example.org/m.gguf"


@asynccontextmanager
async def header_trickler() -> AsyncIterator[str]:
    """A source that answers its status line and headers a byte at a time, 50 ms apart."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n" + b"X-Pad: " + (
        b"a" * 200
    ) + b"\r\nContent-Length: 10\r\n\r\n"  # fmt: skip

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            for byte in head:  # about 14 s in all: bounded, and far past the stall window
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.req("HARD-203")
async def test_a_source_that_trickles_its_headers_stalls_the_pull(
    conductor_for: Any, gguf: tuple[bytes, str]
) -> None:
    _, digest = gguf
    catalog = {"pull_stall_timeout_ms": 300, "pull_stall_bytes": 1000}
    async with (
        header_trickler() as url,
        conductor_for(catalog=catalog, outbound=LOOPBACK) as (
            orch,
            c,
        ),
    ):
        body = {"id": "slow-head", "digest": digest, "source_url": f"{url}/m.gguf", **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        entry = await pull(c, orch, "slow-head")
    assert entry["pull"]["state"] == "failed"
    assert entry["pull"]["error"].startswith("the source stalled: less than 1000 bytes in 0.3 s")


@pytest.mark.req("HARD-212", "HOME-501")
async def test_a_pull_can_be_cancelled_and_a_model_deleted_with_its_files(
    conductor_for: Any, gguf: tuple[bytes, str], tmp_path: Path
) -> None:
    data, digest = gguf
    target = tmp_path / "c" / "models" / "catalog"
    catalog = {"pull_stall_timeout_ms": 60_000}
    async with (
        model_server(data) as (url, ranges),
        conductor_for(catalog=catalog, outbound=LOOPBACK, model_ref="served") as (orch, c),
    ):
        body = {"id": "cut", "digest": digest, "source_url": f"{url}/trickle.gguf", **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=body, headers=AUTH)
        nothing_yet = await c.simulate_delete("/v1/catalog/models/cut/pull", headers=AUTH)
        await c.simulate_post("/v1/catalog/models/cut/pull", headers=AUTH)
        await eventually(lambda: orch.catalog.records["cut"].pull["bytes"] > 10)
        cancelled = await c.simulate_delete("/v1/catalog/models/cut/pull", headers=AUTH)
        again = await c.simulate_delete("/v1/catalog/models/cut/pull", headers=AUTH)
        kept = files_in(target)
        served = {"id": "served", "digest": digest, **SIGNED}
        await c.simulate_post("/v1/catalog/models", json=served, headers=AUTH)
        in_use = await c.simulate_delete("/v1/catalog/models/served", headers=AUTH)
        deleted = await c.simulate_delete("/v1/catalog/models/cut", headers=AUTH)
        gone = await c.simulate_get("/v1/catalog/models/cut", headers=AUTH)
        missing = await c.simulate_delete("/v1/catalog/models/cut", headers=AUTH)
    assert nothing_yet.status_code == 409 and "never pulled" in nothing_yet.json["message"]
    assert cancelled.status_code == 200, cancelled.json
    assert cancelled.json["pull"]["state"] == "failed"
    assert cancelled.json["pull"]["error"] == "cancelled by request (the next pull resumes)"
    assert again.status_code == 409 and again.json["code"] == "CONFLICT"
    assert list(kept) == ["cut.gguf.part"] and len(kept["cut.gguf.part"]) > 10  # for a resume
    assert in_use.status_code == 409 and "p1" in in_use.json["message"]
    assert orch.catalog.get("served") is not None
    assert deleted.status_code == 200 and deleted.json["deleted_files"] == ["cut.gguf.part"]
    assert gone.status_code == 404 and missing.status_code == 404
    assert files_in(target) == {}
    assert ranges == [""]
