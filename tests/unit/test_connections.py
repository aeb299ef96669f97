"""What one connection may hold (HARD-113), against a real uvicorn on loopback serving the
app with the mock engine: the connection bound, slow headers and bodies, and a client that
never reads its stream. Every wait is for an event, with a generous bound."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from orchestratord.adapters.base import GenerationRequest, StreamEnd, StreamEvent, TokenChunk
from orchestratord.adapters.mock import MockAdapter
from orchestratord.app import Orchestrator
from orchestratord.connections import bounded_protocol
from tests.contract_schemas import assert_matches
from tests.unit.conftest import TOKEN, make_config, task_body

LIMITS = {"max_connections": 3, "header_timeout_ms": 300, "body_timeout_ms": 300,
          "send_stall_timeout_ms": 300}  # fmt: skip


@asynccontextmanager
async def serving(tmp_path: Path, adapter: MockAdapter) -> AsyncIterator[tuple[Orchestrator, int]]:
    orch = Orchestrator(
        make_config(tmp_path, server=dict(LIMITS), slots=1, ctx_max=100_000),
        token=TOKEN, adapters={"p1": adapter},
    )  # fmt: skip
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        orch.app, lifespan="on", log_level="warning", http=bounded_protocol(orch.config.server)
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    running = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
                await asyncio.sleep(0.01)
        yield orch, sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait({running}, timeout=30)


async def connect(port: int, rcvbuf: int | None = None) -> tuple[Any, Any]:
    raw = socket.socket()
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=raw)


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sent until it closed the connection (bounded wait)."""
    got = b""
    async with asyncio.timeout(20):
        with suppress(ConnectionError):
            while chunk := await reader.read(65536):
                got += chunk
    return got


async def trickle(writer: asyncio.StreamWriter, data: bytes) -> int:
    """Send ``data`` a byte every 50 ms; returns how many bytes went before the server
    closed the connection (all of them: it never did)."""
    for sent, byte in enumerate(data):
        if writer.transport.is_closing():
            return sent
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            return sent
        await asyncio.sleep(0.05)
    return len(data)


@pytest.mark.req("HARD-113")
async def test_a_connection_past_the_bound_gets_a_typed_429(tmp_path: Path) -> None:
    async with serving(tmp_path, MockAdapter()) as (_, port):
        held = [await connect(port) for _ in range(LIMITS["max_connections"])]
        reader, _ = await connect(port)
        answer = await closed_by_server(reader)
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0)
        reader2, writer2 = await connect(port)  # room again once they are gone
        writer2.write(b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())  # fmt: skip
        served = await closed_by_server(reader2)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 "), answer
    envelope = json.loads(body)
    assert_matches("data", "ErrorEnvelope", envelope)
    assert envelope["code"] == "ADMISSION_REJECT" and envelope["policy_label"] == "connections"
    assert b"X-Correlation-Id: " + envelope["correlation_id"].encode() in head
    assert b"Retry-After: 1" in head and b"X-Backoff-Ms: 1000" in head
    assert served.startswith(b"HTTP/1.1 200 "), served[:200]


@pytest.mark.req("HARD-113")
async def test_headers_or_a_body_that_trickle_in_close_the_connection(tmp_path: Path) -> None:
    head = b"GET /v1/capabilities HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 300 + b"\r\n\r\n"
    body_head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    ).encode()
    async with serving(tmp_path, MockAdapter()) as (_, port):
        reader, writer = await connect(port)
        sent_of_head = await trickle(writer, head)  # 300 bytes: 15 s if never cut off
        after_head = await closed_by_server(reader)
        reader, writer = await connect(port)
        writer.write(body_head)
        await writer.drain()
        sent_of_body = await trickle(writer, b"{" + b" " * 398 + b"}")
        after_body = await closed_by_server(reader)
    assert sent_of_head < len(head) and after_head == b""
    assert sent_of_body < 400 and after_body == b""


def big_tokens(release: asyncio.Event) -> Any:
    """Tokens of 64 KiB each (a client that does not read fills its socket in a few), then
    the end once ``release`` is set."""

    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        for _ in range(300):
            yield TokenChunk("x" * 65536)
        await release.wait()
        yield StreamEnd("length", 2, 0, 300, 1.0)

    return handler


def one_request(task_id: str) -> bytes:
    body = json.dumps(
        task_body(task_id=task_id, session_id=str(uuid.uuid4()), max_tokens=400, ctx=1024)
    )
    return (f"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Accept: text/event-stream\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()  # fmt: skip


async def until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(30):
            while not check():  # noqa: ASYNC110 - observing the server from outside
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"waited 30 s for {what}") from None


@pytest.mark.req("HARD-113")
async def test_a_client_that_never_reads_is_disconnected_and_its_task_ends(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()
    running_id, finished_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with serving(tmp_path, MockAdapter(big_tokens(release))) as (orch, port):
        pool = orch.pools["p1"]
        _, writer = await connect(port, rcvbuf=4096)
        writer.write(one_request(running_id))  # ... and never reads a byte of the answer
        await until(lambda: (t := orch.registry.get(running_id)) is not None and t.finished,
                    "the unread task to end")  # fmt: skip
        running = orch.registry.get(running_id)
        await until(lambda: pool.slots_free == 1, "its engine slot to be freed")
        writer.close()
        release.set()  # the next task ends by itself, while its client still reads nothing
        _, writer = await connect(port, rcvbuf=4096)
        writer.write(one_request(finished_id))
        await until(lambda: (t := orch.registry.get(finished_id)) is not None and t.finished,
                    "the second task to end")  # fmt: skip
        finished = orch.registry.get(finished_id)
        await until(lambda: not finished.subscribed, "the stuck stream to let go of the task")
        writer.close()
    assert running is not None and running.outcome == "canceled", running.terminal
    assert finished.outcome == "length"
