"""A lean client for one streamed (SSE) HTTP POST: the relay's hot path.

A general HTTP client wakes a coroutine per received segment and runs its stream machinery
per token; at thousands of tokens per second that is most of the orchestrator's CPU. Here an
``asyncio.Protocol`` feeds bytes to httptools' C parser (which handles chunked transfer
coding), splits the body into SSE ``data:`` payloads in the same callback, and wakes the
consumer once per batch.

Coalescing (``coalesce_s``): while tokens flow (one came within the last window), reading
pauses for ``coalesce_s`` after each read, so the kernel gathers what the engine sends
meanwhile and it is read, parsed and handed over in one go when the window closes: one trip
through the event loop per window, not per token. The first token after a quiet spell is
read and handed over at once, a read that carries the engine's final event
(``"stop":true``) or a prompt-progress event opens no window, and with ``expected_tokens``
(the request's ``max_tokens``) a window lasts no longer than the rest of the tokens take at
the rate seen so far: the final event of a task that runs to its length is read as it comes.

One connection per stream, closed at the end: llama-server closes a connection after a
streamed response anyway (measured: the next request on it finds it closed), and closing it
is also how a cancel reaches the engine. Failures are classified for the caller:
:class:`ConnectFailed` (nothing reached the engine), :class:`ConnectionLost` (it broke off
after answering), :class:`HTTPStatusError` (it answered with an error status).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast

import httptools

_STOP_MARK = b'"stop":true'
# llama.cpp's prompt progress (sent before the first token): it must not delay that token.
_PROGRESS_MARK = b'"prompt_progress"'
_SHORTEST_WINDOW_S = 0.0002  # below this a pause saves nothing
_ERROR_BODY_LIMIT = 512


class StreamError(Exception):
    """The stream failed; subclasses say how."""


class ConnectFailed(StreamError):
    """No connection, or it closed before the engine sent a status line."""


class ConnectionLost(StreamError):
    """The connection broke after the engine started answering."""


class HTTPStatusError(StreamError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status


class _SSEProtocol(asyncio.Protocol):
    def __init__(self, coalesce_s: float, expected_tokens: int | None = None) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.coalesce_s = coalesce_s
        self.expected_tokens = expected_tokens
        self.tokens_seen = 0
        self._last_token_read = -1e9
        self._first_token_at = 0.0
        self._resumed = False
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.status: int | None = None
        self.payloads: deque[bytes] = deque()
        self.body_if_error = bytearray()
        self.done = False
        self.error: BaseException | None = None
        self._pending = b""
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # reading paused until it fires

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        queued = len(self.payloads)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = ConnectionLost(f"malformed HTTP response: {exc}")
            self.done = True
        self._wake()  # what arrived is handed over now
        gained = len(self.payloads) - queued
        if self.done or not gained or self.coalesce_s <= 0 or self.transport is None:
            return
        last = self.payloads[-1]
        if last.find(_STOP_MARK) >= 0 or last.find(_PROGRESS_MARK) >= 0:
            return
        now = self.loop.time()
        # Flowing: tokens came within the last window, or this read ends one (what the
        # kernel gathered while reading was paused).
        flowing = self._resumed or now - self._last_token_read < self.coalesce_s
        self._resumed = False
        self._last_token_read = now
        if not self.tokens_seen:
            self._first_token_at = now
        self.tokens_seen += gained
        if not flowing or self._timer is not None:
            return
        window = self.coalesce_s
        if self.expected_tokens is not None:
            # Do not let a window swallow the end: pause no longer than the expected rest
            # takes at the rate seen so far, so the final event is read as it comes.
            rest = self.expected_tokens - self.tokens_seen
            rate = (self.tokens_seen - 1) / max(now - self._first_token_at, 1e-6)
            window = min(window, rest / rate) if rest > 0 else 0.0
            if window < _SHORTEST_WINDOW_S:
                return
        # Tokens are flowing: let the kernel gather the next ones for a window, so a fast
        # engine costs one read, one parse and one wake-up per window instead of per token
        # (every read is a trip through the event loop). A first token after a quiet spell is
        # read and handed over at once; what arrives in a window waits at most the window.
        self.transport.pause_reading()
        self._timer = self.loop.call_later(window, self._window_closed)

    def _window_closed(self) -> None:
        self._timer = None
        self._resumed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done and self.error is None:
            kind = ConnectFailed if self.status is None else ConnectionLost
            self.error = kind(f"connection lost: {exc!r}")
        self.done = True
        self._wake()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.body_if_error += body[: _ERROR_BODY_LIMIT - len(self.body_if_error)]
            return
        *lines, self._pending = (self._pending + body).split(b"\n")
        for line in lines:
            # SSE allows "data:" with or without one space (TGI's server omits it).
            if line.startswith(b"data:"):
                payload = line[6:] if line[5:6] == b" " else line[5:]
                self.payloads.append(payload.rstrip(b"\r"))

    def on_message_complete(self) -> None:
        self.done = True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self) -> None:
        self._waiter = self.loop.create_future()
        await self._waiter

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


class SSEPostStream:
    """``async for batch in stream.batches()`` yields lists of raw ``data:`` payloads."""

    def __init__(self, protocol: _SSEProtocol) -> None:
        self._proto = protocol

    @property
    def answered(self) -> bool:
        """The engine sent a status line: the request reached it."""
        return self._proto.status is not None

    async def _headers(self) -> None:
        proto = self._proto
        while proto.status is None and not proto.done:
            await proto.wait()
        if proto.status is None:
            raise proto.error or ConnectFailed("no response")
        if proto.status != 200:
            while not proto.done:
                await proto.wait()
            body = bytes(proto.body_if_error).decode("utf-8", "replace")
            raise HTTPStatusError(proto.status, body)

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
        self._proto.close()


async def post_sse(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    coalesce_s: float = 0.0,
    expected_tokens: int | None = None,
    unix_socket: str | None = None,
    headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> SSEPostStream:
    """POST ``body`` to ``path`` on ``host:port`` (over TLS with ``tls``), or on the Unix
    socket ``unix_socket``; ``headers`` are added to the request (an engine's bearer token)."""
    loop = asyncio.get_running_loop()
    try:
        if unix_socket is not None:
            transport, protocol = await loop.create_unix_connection(
                lambda: _SSEProtocol(coalesce_s, expected_tokens), unix_socket
            )
        else:
            transport, protocol = await loop.create_connection(
                lambda: _SSEProtocol(coalesce_s, expected_tokens),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
            )
    except OSError as exc:
        where = unix_socket or f"{host}:{port}"
        raise ConnectFailed(f"cannot connect to {where}: {exc}") from exc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        + "\r\n"
    ).encode()
    transport.write(head + body)
    return SSEPostStream(protocol)
