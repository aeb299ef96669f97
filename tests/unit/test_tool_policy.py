"""The mediated fetch tool and its policy, against loopback HTTP servers only
(HOME-104, FR-TL-001, FR-TL-002, OC-POLICY-4030..4032)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.unit.conftest import AUTH, TOKEN

SECRET = "sk-live-0123456789"


@asynccontextmanager
async def site() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def page(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text=f"hello; token {TOKEN}; key {SECRET}", content_type="text/plain")

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=b"\x89PNG", content_type="image/png")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="x" * 5000, content_type="text/plain")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def to_localhost(request: web.Request) -> web.Response:
        port = request.url.port
        raise web.HTTPFound(f"http://localhost:{port}/page")

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/page")

    app = web.Application()
    for path, handler in [("/page", page), ("/image", image), ("/big", big), ("/slow", slow),
                          ("/to-localhost", to_localhost), ("/to-page", to_page),
                          ("/admin", page)]:  # fmt: skip
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "state" / "tool-audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


TOOLS = {"allow_domains": ["127.0.0.1"], "max_response_bytes": 1000, "timeout_ms": 300,
         "redact_patterns": [r"sk-live-\w+"]}  # fmt: skip


async def fetch(conductor: Any, **body: Any) -> Any:
    return await conductor.simulate_post("/v1/tools/fetch", json=body, headers=AUTH)


@pytest.mark.req("HOME-104", "FR-TL-001", "OC-POLICY-4031", "OC-POLICY-4032")
async def test_an_allowed_fetch_is_redacted_both_ways_and_audited(
    conductor_for: Any, tmp_path: Path
) -> None:
    async with site() as (url, seen), conductor_for(tools=TOOLS) as (_, conductor):
        got = await fetch(conductor, url=f"{url}/to-page", headers={"X-Key": f"Bearer {TOKEN}"})
    assert got.status_code == 200, got.json
    assert got.json["status"] == 200 and got.json["final_url"] == f"{url}/page"
    assert got.json["redirects"] == [f"{url}/page"]
    assert got.json["body"] == "hello; token [REDACTED]; key [REDACTED]"
    assert seen[0]["X-Key"] == "Bearer [REDACTED]"  # the API token never left
    (record,) = audit(tmp_path)
    assert record["decision"] == "allow" and record["status"] == 200
    assert TOKEN not in json.dumps(record)


@pytest.mark.parametrize(
    ("tools", "path_or_url", "reason"),
    [
        ({**TOOLS, "deny_domains": ["127.0.0.1"]}, "/page", "is on the deny list"),
        ({"allow_domains": ["example.org"]}, "/page", "not on the allow list"),
        ({}, "/page", "IP literal 127.0.0.1 is not on the allow list"),
        ({}, "http://localhost:{port}/page", "resolves to a private or loopback address"),
        (TOOLS, "/to-localhost", "localhost is not on the allow list"),  # a redirect escaping
        (TOOLS, "/big", "more than 1000"),
        (TOOLS, "/image", "content type image/png is not allowed"),
        (TOOLS, "file:///etc/passwd", "scheme 'file' is not http or https"),
        ({**TOOLS, "hook": "tests.unit.tool_hooks:deny_admin"}, "/admin", "no admin pages"),
        ({**TOOLS, "hook": "tests.unit.tool_hooks.crash"}, "/page", "hook failed"),
    ],
)
@pytest.mark.req("HOME-104", "FR-TL-002", "OC-POLICY-4030", "OC-POLICY-4032")
async def test_denials_are_typed_refusals_with_an_audit_record_and_no_fetch(
    conductor_for: Any, tmp_path: Path, tools: dict[str, Any], path_or_url: str, reason: str
) -> None:
    async with site() as (url, seen), conductor_for(tools=tools) as (_, conductor):
        port = url.rsplit(":", 1)[1]
        target = path_or_url.format(port=port) if "://" in path_or_url else url + path_or_url
        denied = await fetch(conductor, url=target)
    assert denied.status_code == 403 and denied.json["code"] == "FORBIDDEN"
    assert reason in denied.json["message"]
    assert audit(tmp_path)[-1]["decision"] == "deny"
    if "more than" not in reason and "content type" not in reason and "localhost" not in reason:
        assert seen == []  # refused before any request reached the site


@pytest.mark.req("HOME-104")
async def test_methods_and_timeouts_are_bounded(conductor_for: Any, tmp_path: Path) -> None:
    async with site() as (url, _), conductor_for(tools=TOOLS) as (_, conductor):
        post = await fetch(conductor, url=f"{url}/page", method="POST", body="x")
        slow = await fetch(conductor, url=f"{url}/slow")
    assert post.status_code == 403 and "method POST is not allowed" in post.json["message"]
    assert slow.status_code == 200 and slow.json["error"].startswith("fetch failed: TimeoutError")
    assert [r["decision"] for r in audit(tmp_path)] == ["deny", "allow"]
