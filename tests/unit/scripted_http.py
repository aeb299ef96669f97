"""A scripted HTTP engine on loopback: each test states the routes an engine answers.

Built on aiohttp's own web server, so the adapters meet real HTTP (chunked SSE, status
codes, dropped connections) while the test decides every byte. Requests are recorded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_route(payload: Any, status: int = 200) -> Route:
    async def route(request: web.Request) -> web.StreamResponse:
        return web.json_response(payload, status=status)

    return route


def sse_route(events: list[Any], *, drop_after: int | None = None) -> Route:
    """Stream ``events`` as ``data:`` lines (dicts as JSON, bytes as they are); with
    ``drop_after`` the connection is cut after that many events, as a crashing engine would."""

    async def route(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, event in enumerate(events):
            if drop_after is not None and index == drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            data = event if isinstance(event, bytes) else json.dumps(event).encode()
            await response.write(b"data: " + data + b"\n\n")
        await response.write_eof()
        return response

    return route


class ScriptedEngine:
    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        self.url = ""

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body, dict(request.headers)))
        route = self.routes.get((request.method, request.path))
        if route is None:
            return web.json_response({"error": "not found"}, status=404)
        return await route(request)

    def bodies(self, path: str) -> list[Any]:
        return [body for _, p, body, _ in self.requests if p == path]


@asynccontextmanager
async def scripted_engine(routes: dict[tuple[str, str], Route]) -> AsyncIterator[ScriptedEngine]:
    engine = ScriptedEngine(routes)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine._dispatch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    engine.url = f"http://127.0.0.1:{port}"
    try:
        yield engine
    finally:
        await runner.cleanup()
