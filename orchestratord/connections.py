"""What one TCP connection may hold of the server (HARD-113): uvicorn's HTTP protocol with
the bounds uvicorn does not have.

- ``server.max_connections``: a connection past it is answered at once with a typed 429
  ``ADMISSION_REJECT`` (``policy_label: connections``, with the backoff headers) and closed,
  before any request is read, so a flood of sockets cannot take the file descriptors or
  the memory that tasks and streams need.
- ``server.header_timeout_ms``: a request's line and headers must arrive within it, from
  the connection's first byte or the end of the previous response, so a client trickling
  its headers a byte at a time (slowloris) cannot hold a connection.
- ``server.body_timeout_ms``: a request's body must arrive within it once its headers have.
- ``server.send_stall_timeout_ms``: a client that stops reading (the socket's send buffer
  full) and does not resume within it is disconnected; its stream then ends as a
  disconnect does (a running task is cancelled and its slot freed, a finished one's frames
  are let go), instead of holding them for as long as the socket stays open.

A connection closed for being slow gets no response: it has not sent a whole request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from orchestratord.config import ServerConfig
from orchestratord.errors import ApiError, ErrorCode

log = logging.getLogger("orchestratord.connections")

_BACKOFF_MS = 1000


def _refusal(limit: int) -> bytes:
    correlation_id = str(uuid.uuid4())
    error = ApiError(
        429,
        ErrorCode.ADMISSION_REJECT,
        f"{limit} connections are open (server.max_connections); retry when one closes",
        retriable=True,
        retry_after_ms=_BACKOFF_MS,
        policy_label="connections",
    )
    body = json.dumps(error.envelope(correlation_id)).encode()
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Correlation-Id": correlation_id,
        "Connection": "close",
        **error.headers(),
    }
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 429 Too Many Requests\r\n{head}\r\n".encode() + body


def bounded_protocol(config: ServerConfig) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``config``'s connection bounds."""
    header_s = config.header_timeout_ms / 1000
    body_s = config.body_timeout_ms / 1000
    stall_s = config.send_stall_timeout_ms / 1000
    max_connections = config.max_connections

    class BoundedHttp(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None
        _stall: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("refused a connection: %d open (server.max_connections)",
                            len(self.connections) - 1)  # fmt: skip
                transport.write(_refusal(max_connections))
                transport.close()
                return
            self._arm(header_s, "its request line and headers")

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._too_slow, seconds, what)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self, seconds: float, what: str) -> None:
            self._timer = None
            if not self.transport.is_closing():
                log.info("closed a connection from %s: it did not send %s within %g s",
                         _peer(self.client), what, seconds)  # fmt: skip
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._timer is None:
                self._arm(header_s, "its request line and headers")

        def on_headers_complete(self) -> None:
            self._arm(body_s, "its request body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                # The next request's headers are due within the keep-alive idle time plus
                # the header window (uvicorn's own keep-alive timer closes an idle one).
                self._arm(self.timeout_keep_alive + header_s, "its next request")

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall is None:
                self._stall = self.loop.call_later(stall_s, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None

        def _stalled(self) -> None:
            self._stall = None
            if not self.transport.is_closing():
                log.info("closed a connection from %s: it read nothing for %g s",
                         _peer(self.client), stall_s)  # fmt: skip
                self.transport.abort()  # close() would wait to flush what it never reads

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._stall is not None:
                self._stall.cancel()
                self._stall = None
            super().connection_lost(exc)

    return BoundedHttp


def _peer(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"
