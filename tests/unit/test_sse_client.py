"""The lean SSE client against a scripted loopback server: framing, errors, disconnects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from orchestratord.adapters.sse_client import StreamError, _SSEProtocol, post_sse

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await script(reader, writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def collect(port: int, coalesce_s: float = 0.0) -> list[bytes]:
    stream = await post_sse("127.0.0.1", port, "/completion", b"{}", coalesce_s=coalesce_s)
    payloads: list[bytes] = []
    try:
        async for batch in stream.batches():
            payloads.extend(batch)
    finally:
        stream.close()
    return payloads


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("coalesce_s", [0.0, 0.002])
async def test_chunked_events_split_across_writes_arrive_whole_and_in_order(
    coalesce_s: float,
) -> None:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        body = b'data: {"n":1}\n\ndata: {"n":2}\n\n: comment\n\ndata: {"n":3}\n\n'
        for piece in (body[:5], body[5:23], body[23:]):  # boundaries inside events
            writer.write(chunk(piece))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")

    server, port = await serve(script)
    async with server:
        assert await collect(port, coalesce_s) == [b'{"n":1}', b'{"n":2}', b'{"n":3}']


async def test_non_200_raises_with_the_body() -> None:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"error":"slot busy"}'
        writer.write(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    server, port = await serve(script)
    async with server:
        with pytest.raises(StreamError, match=r"HTTP 503.*slot busy"):
            await collect(port)


async def test_connection_lost_mid_stream_raises() -> None:
    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'data: {"n":1}\n\n'))
        await writer.drain()

    server, port = await serve(script)
    async with server:
        with pytest.raises(StreamError, match="connection lost"):
            await collect(port)


async def test_refused_connection_raises() -> None:
    server, port = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    with pytest.raises(StreamError, match="cannot connect"):
        await collect(port)


async def test_close_drops_the_connection_so_the_server_sees_eof() -> None:
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'data: {"n":1}\n\n'))
        await writer.drain()
        await reader.read()  # returns b"" once the client closes
        closed.set()

    server, port = await serve(script)
    async with server:
        stream = await post_sse("127.0.0.1", port, "/completion", b"{}")
        batches: AsyncIterator[list[bytes]] = stream.batches()
        assert await anext(batches) == [b'{"n":1}']
        stream.close()
        await asyncio.wait_for(closed.wait(), 5)


async def batches_of(
    port: int, coalesce_s: float, first_within_s: float, expected_tokens: int | None = None
) -> list[list[bytes]]:
    """The batches handed over; the first token must come within ``first_within_s``."""
    stream = await post_sse("127.0.0.1", port, "/completion", b"{}", coalesce_s=coalesce_s,
                            expected_tokens=expected_tokens)  # fmt: skip
    batches: list[list[bytes]] = []
    try:
        async with asyncio.timeout(first_within_s):
            async for batch in stream.batches():
                batches.append(list(batch))
                if any(b'"content":"t' in payload for payload in batch):
                    break
        async for batch in stream.batches():
            batches.append(list(batch))
    finally:
        stream.close()
    return batches


def event(payload: bytes) -> bytes:
    return chunk(b"data: " + payload + b"\n\n")


async def test_tokens_in_a_window_are_read_and_handed_over_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first token is handed over alone, at once, and so is the second (it shows the
    tokens flow); the four sent 2 ms apart inside the window that opens then come as one
    batch from one read (a read is a trip through the event loop: the relay's CPU per
    token)."""
    reads: list[int] = []
    original = _SSEProtocol.data_received

    def counted(self: _SSEProtocol, data: bytes) -> None:
        reads.append(len(data))
        original(self, data)

    monkeypatch.setattr(_SSEProtocol, "data_received", counted)

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for n in range(6):
            writer.write(event(b'{"content":"t%d"}' % n))
            await writer.drain()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.4)  # past the window: the end comes on its own
        writer.write(event(b'{"content":"","stop":true}') + b"0\r\n\r\n")

    server, port = await serve(script)
    async with server:
        batches = await batches_of(port, coalesce_s=0.2, first_within_s=5)
    assert batches[0] == [b'{"content":"t0"}'] and batches[1] == [b'{"content":"t1"}']
    assert batches[2] == [b'{"content":"t%d"}' % n for n in range(2, 6)]
    assert batches[-1] == [b'{"content":"","stop":true}']
    assert len(reads) <= 5, reads  # head, t0, t1, t2..t5, the end: not one read per token


async def test_prompt_progress_does_not_hold_back_the_first_token() -> None:
    """llama.cpp sends prompt progress before the first token: with a window of 30 s, a
    window opened by a progress event would keep the token for 30 s."""
    token_sent = asyncio.Event()

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for processed in (0, 21):
            writer.write(event(b'{"content":"","prompt_progress":{"processed":%d}}' % processed))
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.write(event(b'{"content":"t0"}'))
        await writer.drain()
        token_sent.set()
        await asyncio.sleep(1)  # the rest of the stream, long after the first token

    server, port = await serve(script)
    async with server:
        stream = await post_sse("127.0.0.1", port, "/completion", b"{}", coalesce_s=30.0)
        payloads: list[bytes] = []
        try:
            async with asyncio.timeout(5):
                async for batch in stream.batches():
                    payloads.extend(batch)
                    if b'{"content":"t0"}' in payloads:
                        break
        finally:
            stream.close()
    assert token_sent.is_set() and payloads[-1] == b'{"content":"t0"}'


async def test_once_the_expected_tokens_are_in_the_final_event_does_not_wait() -> None:
    """max_tokens 3 with a window of 30 s: the final event, sent 50 ms after the third
    token, is read as it comes instead of after the window (short tasks end at once)."""

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for n in range(3):
            writer.write(event(b'{"content":"t%d"}' % n))
            await writer.drain()
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.05)
        writer.write(event(b'{"content":"","stop":true}') + b"0\r\n\r\n")

    server, port = await serve(script)
    async with server:
        async with asyncio.timeout(5):  # a window would hold the end for 30 s
            batches = await batches_of(port, coalesce_s=30.0, first_within_s=5, expected_tokens=3)
    payloads = [p for batch in batches for p in batch]
    assert payloads == [b'{"content":"t%d"}' % n for n in range(3)] + [
        b'{"content":"","stop":true}'
    ]


async def test_a_long_stream_costs_one_read_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """150 tokens 2 ms apart with 50 ms windows: about one read per window (six), not one
    per token, nor two per window (a read that ends a window must open the next one)."""
    reads: list[int] = []
    original = _SSEProtocol.data_received

    def counted(self: _SSEProtocol, data: bytes) -> None:
        reads.append(len(data))
        original(self, data)

    monkeypatch.setattr(_SSEProtocol, "data_received", counted)

    async def script(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for n in range(150):
            writer.write(event(b'{"content":"t%d"}' % n))
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(event(b'{"content":"","stop":true}') + b"0\r\n\r\n")

    server, port = await serve(script)
    async with server:
        started = time.monotonic()
        payloads = await collect(port, coalesce_s=0.05)
        windows = (time.monotonic() - started) / 0.05  # a slow machine makes more of them
    assert len(payloads) == 151
    assert len(reads) <= 1.5 * windows + 3, (reads, windows)  # two per window: 2 x windows
