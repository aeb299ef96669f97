"""The llama.cpp adapter turns transport failures into the envelope's codes (OC-ADAPT-5011).

What a client may see (``public_message``) never carries the engine's address or body; the
detail, for the log, does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineError,
    EngineReset,
    EngineUnavailable,
    GenerationRequest,
    PromptProgress,
    Sampling,
    TokenChunk,
)
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.errors import ErrorCode
from orchestratord.replicas.engine_process import free_loopback_port
from tests.unit.scripted_http import scripted_engine, sse_route

REQUEST = GenerationRequest("hi", 4, 1, Sampling(0.8, 40, 0.95, 0.05, 1.0, False))
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def adapter_for(port: int) -> LlamaCppAdapter:
    return LlamaCppAdapter(f"http://127.0.0.1:{port}", None, max_connections=1)


@asynccontextmanager
async def fake_engine(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def generate_error(adapter: LlamaCppAdapter) -> EngineError:
    with pytest.raises(EngineError) as raised:
        async for _ in adapter.generate(REQUEST):
            pass
    await adapter.aclose()
    return raised.value


def assert_public(error: EngineError, port: int) -> None:
    assert str(port) not in error.public_message
    assert "127.0.0.1" not in error.public_message


@pytest.mark.req("OC-ADAPT-5011")
async def test_unreachable_engine_is_pool_unavailable() -> None:
    port = free_loopback_port()  # nothing listens: connection refused, like a crashed engine
    adapter = adapter_for(port)
    try:
        assert await adapter.healthy() is False
        with pytest.raises(EngineUnavailable) as raised:
            await adapter.count_tokens("hello")
        assert raised.value.code is ErrorCode.POOL_UNAVAILABLE
        assert raised.value.__cause__ is not None
        assert_public(raised.value, port)
    finally:
        await adapter.aclose()


@pytest.mark.req("OC-ADAPT-5011")
async def test_a_generation_that_cannot_reach_the_engine_never_ran() -> None:
    port = free_loopback_port()
    error = await generate_error(adapter_for(port))
    assert isinstance(error, EngineUnavailable)
    assert error.engine_down  # the pool must stop dispatching
    assert "cannot connect" in error.detail and str(port) in error.detail
    assert_public(error, port)


@pytest.mark.req("OC-ADAPT-5011")
async def test_a_connection_dropped_mid_stream_is_worker_reset_and_engine_down() -> None:
    async def answer_then_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b'14\r\ndata: {"content":"a"}\n\n\r\n'
        )
        await writer.drain()
        writer.transport.abort()

    async with fake_engine(answer_then_die) as port:
        error = await generate_error(adapter_for(port))
    assert isinstance(error, EngineConnectionLost)
    assert error.code is ErrorCode.WORKER_RESET and error.engine_down
    assert_public(error, port)


@pytest.mark.req("OC-ADAPT-5011", "HOME-901")
async def test_an_engine_error_status_keeps_its_body_out_of_the_public_message() -> None:
    body = b'{"error":"secret internal detail at 10.1.2.3"}'

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    async with fake_engine(refuse) as port:
        error = await generate_error(adapter_for(port))
    assert type(error) is EngineReset
    assert not error.engine_down  # the engine answered: it is alive
    assert error.public_message == "the engine refused the request (HTTP 500)"
    assert "secret internal detail" in error.detail
    assert_public(error, port)


@pytest.mark.req("HARD-202", "HARD-201")
async def test_prompt_progress_is_relayed_and_a_malformed_event_is_an_engine_fault() -> None:
    progress = [{"content": "", "stop": False,
                 "prompt_progress": {"total": 128, "cache": 0, "processed": n, "time_ms": n}}
                for n in (0, 64, 128)]  # fmt: skip
    final = {"content": "", "stop": True, "tokens_evaluated": 3, "timings": {"predicted_n": 1}}
    routes = {("POST", "/completion"): sse_route([*progress, {"content": " hi"}, final])}
    bad = {("POST", "/completion"): sse_route([{"prompt_progress": "half way"}])}
    async with scripted_engine(routes) as engine:
        adapter = LlamaCppAdapter(engine.url, None, max_connections=1)
        events = [e async for e in adapter.generate(REQUEST)]
        await adapter.aclose()
        sent = engine.bodies("/completion")[0]
    assert [e for e in events if isinstance(e, PromptProgress)] == [
        PromptProgress(0, 128),
        PromptProgress(64, 128),
        PromptProgress(128, 128),
    ]
    assert [e.text for e in events if isinstance(e, TokenChunk)] == [" hi"]
    assert sent["return_progress"] is True
    async with scripted_engine(bad) as engine:
        error = await generate_error(LlamaCppAdapter(engine.url, None, max_connections=1))
    assert isinstance(error, EngineReset) and "shape" in error.public_message
