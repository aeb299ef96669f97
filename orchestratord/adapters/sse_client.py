"""A lean client for one streamed (SSE) HTTP POST: the relay's hot path.

A general HTTP client wakes a coroutine per received segment and runs its stream machinery
per token; at thousands of tokens per second that is most of the orchestrator's CPU. Here an
``asyncio.Protocol`` feeds bytes to httptools' C parser (which handles chunked transfer
coding), splits the body into SSE ``data:`` payloads in the same callback, and wakes the
consumer once per batch of whatever has arrived. One connection per stream, closed at the
end: closing it is also how a cancel reaches the engine.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools


class StreamError(Exception):
    """The connection failed or the response was not a 200 event stream."""


class _SSEProtocol(asyncio.Protocol):
    def __init__(self, coalesce_s: float) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.coalesce_s = coalesce_s
        self._paused = False
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.payloads: deque[bytes] = deque()
        self.body_if_error = bytearray()
        self.done = False
        self.error: BaseException | None = None
        self._pending = b""
        self._waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        queued = len(self.payloads)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = StreamError(f"malformed HTTP response: {exc}")
            self.done = True
        self._wake()
        gained = len(self.payloads) > queued
        if gained and self.coalesce_s > 0 and not self._paused and not self.done and self.transport:
            # Let the kernel gather the next tokens for a moment: one read and one wake-up
            # per window instead of per token. What arrived now was passed on at once.
            self._paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(self.coalesce_s, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done and self.error is None:
            self.error = StreamError(f"connection lost mid-stream: {exc!r}")
        self.done = True
        self._wake()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.body_if_error += body[: 512 - len(self.body_if_error)]
            return
        *lines, self._pending = (self._pending + body).split(b"\n")
        for line in lines:
            if line.startswith(b"data: "):
                self.payloads.append(line[6:])

    def on_message_complete(self) -> None:
        self.done = True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


class SSEPostStream:
    """``async for batch in stream`` yields lists of raw ``data:`` payloads (bytes)."""

    def __init__(self, protocol: _SSEProtocol) -> None:
        self._proto = protocol

    async def _headers(self) -> None:
        proto = self._proto
        while proto.status is None and not proto.done:
            await proto.wait()
        if proto.status is None:
            raise proto.error or StreamError("no response")
        if proto.status != 200:
            while not proto.done:
                await proto.wait()
            body = bytes(proto.body_if_error).decode("utf-8", "replace")
            raise StreamError(f"HTTP {proto.status}: {body}")

    async def batches(self) -> AsyncIterator[list[bytes]]:
        proto = self._proto
        await self._headers()
        while True:
            if proto.payloads:
                batch = list(proto.payloads)
                proto.payloads.clear()
                yield batch
                continue
            if proto.done:
                if proto.error is not None:
                    raise proto.error
                return
            await proto.wait()

    def close(self) -> None:
        if self._proto.transport is not None:
            self._proto.transport.close()


async def post_sse(
    host: str, port: int, path: str, body: bytes, *, coalesce_s: float = 0.0
) -> SSEPostStream:
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(
            lambda: _SSEProtocol(coalesce_s), host, port
        )
    except OSError as exc:
        raise StreamError(f"cannot connect to {host}:{port}: {exc}") from exc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    transport.write(head + body)
    return SSEPostStream(protocol)
