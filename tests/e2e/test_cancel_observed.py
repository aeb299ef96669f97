"""Cancel, checked against what the engine itself produced (HOME-304, ORCH-3017).

Counting the stream's token frames against its own ``end.tokens_out`` cannot catch a server
that emits a token after a cancel and counts it too. Here a recording proxy sits between
orchestratord and a real llama-server it does not manage (a remote pool), and stamps every
token event the engine sends as it forwards it. The client's stream may hold only tokens the
engine had sent before the cancel was answered: a token frame made after the cancel would
have to come from an engine event forwarded after the 204, and the count would exceed what
the engine had produced by then.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import aiohttp
import httpx
import psutil
import pytest
from aiohttp import web

from orchestratord.models.tiny_gguf import default_cache_dir, ensure_tiny_model
from orchestratord.replicas.engine_process import free_loopback_port, llama_server_binary
from tests.sse import SSEParser, read_to_terminal_frame
from xtask.fakes.held import cancel_while_stopped
from xtask.fakes.live_server import LiveServer, default_live_config, live_server, task_body

pytestmark = pytest.mark.e2e


class RecordingProxy:
    """Forwards every request to the engine; stamps each token event it passes on."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.token_times: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.upstream + request.path_qs, data=body, headers=headers
            ) as upstream,
        ):
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            pending = b""
            async for chunk in upstream.content.iter_any():
                if request.path == "/completion":
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.startswith(b"data: ") and json.loads(line[6:]).get("content"):
                            self.token_times.append(time.monotonic())
                await response.write(chunk)
            await response.write_eof()
            return response

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[str, psutil.Process]]:
    model = ensure_tiny_model(default_cache_dir())
    port = free_loopback_port()
    args = [str(llama_server_binary()), "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--parallel", "2", "--ctx-size", "8192"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def observed(
    engine: tuple[str, psutil.Process], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, RecordingProxy, psutil.Process]]:
    proxy = RecordingProxy(engine[0])
    proxy.start()
    config: dict[str, Any] = default_live_config(tmp_path_factory.mktemp("observed"))
    pool = {"id": "default", "engine": "llamacpp", "model_ref": "llorch/tiny-llama",
            "slots": 2, "ctx_max": 4096, "endpoints": [{"url": proxy.url}]}  # fmt: skip
    config["pools"] = [pool]
    try:
        with live_server(config) as server:
            yield server, proxy, engine[1]
    finally:
        proxy.stop()


@pytest.mark.req("HOME-304", "ORCH-3017")
def test_no_token_the_engine_made_after_the_cancel_reaches_the_client(
    observed: tuple[LiveServer, RecordingProxy, psutil.Process],
) -> None:
    server, proxy, engine = observed
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        for attempt in range(3):
            proxy.token_times.clear()
            body = task_body(max_tokens=1900, sampler_profile_version="fixed-length")
            assert client.post("/v1/tasks", json=body).status_code == 202
            parser = SSEParser()
            with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
                chunks = response.iter_raw()
                for chunk in chunks:
                    parser.feed(chunk)
                    if sum(1 for e, _ in parser.frames if e == "token") >= 20:
                        break
                # The engine stopped mid-decode: the task cannot end before the cancel.
                to_the_end = partial(read_to_terminal_frame, chunks, parser)
                cancel = cancel_while_stopped(server, body["task_id"], engine, to_the_end)
                assert cancel.status_code == 204
                answered = time.monotonic()
            made_before = sum(1 for t in proxy.token_times if t <= answered)
            received = sum(1 for e, _ in parser.frames if e == "token")
            event, end = parser.frames[-1]
            assert event == "end" and end["finish_reason"] == "canceled", attempt
            assert received <= made_before, (attempt, received, made_before)
            assert received == end["tokens_out"] < 1900
