"""What the HTTP engine adapters share: a session, JSON control calls, a token stream.

Control calls (health, info, tokenize, metrics) use aiohttp with short timeouts; a generation
streams through ``sse_client`` (no read timeout: the orchestrator's watchdog bounds it).
Every transport failure is translated here into the worker contract's errors
(:class:`EngineUnavailable`, :class:`EngineReset`, :class:`EngineConnectionLost`), so an
adapter only maps its engine's JSON.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.parse
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import aiohttp

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineConnectionLost,
    EngineReset,
    EngineUnavailable,
)
from orchestratord.adapters.sse_client import (
    ConnectFailed,
    HTTPStatusError,
    SSEPostStream,
    StreamError,
    post_sse,
)
from orchestratord.models.digest import sha256_file
from orchestratord.models.file_facts import remembered

_CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=1.0)


class HttpEngine(EngineAdapter):
    """Base for adapters of engines reached over HTTP(S) at ``base_url``."""

    health_path = "/health"
    metrics_path = "/metrics"

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        auth_token: str | None = None,
        coalesce_s: float = 0.0,
        metrics_url: str | None = None,
        model_path: Path | None = None,
    ) -> None:
        self._model_path = model_path
        self._digest: str | None = None
        parsed = urllib.parse.urlsplit(base_url.rstrip("/"))
        self.base_url = base_url.rstrip("/")
        self._prefix = parsed.path
        self._host = parsed.hostname or "127.0.0.1"
        https = parsed.scheme == "https"
        self._port = parsed.port or (443 if https else 80)
        self._tls = ssl.create_default_context() if https else None
        self._headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._coalesce_s = coalesce_s
        self._metrics_url = metrics_url or self.base_url + self.metrics_path
        self._limit = max_connections + 4
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit), headers=self._headers
            )
        return self._session

    async def model_digest(self) -> str | None:
        """``sha256:`` of the model file the pool names, if it names one (computed once)."""
        if self._digest is None and self._model_path is not None:
            self._digest = "sha256:" + await asyncio.to_thread(
                remembered, sha256_file, self._model_path
            )
        return self._digest

    async def request_json(self, method: str, path: str, body: Any = None) -> Any:
        url = self.base_url + path
        try:
            async with self._http().request(
                method, url, json=body, timeout=_CONTROL_TIMEOUT
            ) as response:
                if response.status == 503:
                    raise EngineUnavailable(f"{self.engine} {path}: not ready (503)")
                if response.status != 200:
                    text = (await response.text())[:512]
                    raise EngineReset(
                        f"{self.engine} {path}: HTTP {response.status}: {text}",
                        public_message=f"the engine answered HTTP {response.status}",
                    )
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(f"{self.engine} {path}: {exc!r}") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EngineReset(
                f"{self.engine} {path}: not JSON: {raw[:200]!r}",
                public_message="the engine answered something that is not JSON",
            ) from exc

    async def healthy(self) -> bool:
        try:
            async with self._http().get(
                self.base_url + self.health_path, timeout=_HEALTH_TIMEOUT
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def metrics_text(self) -> str:
        try:
            async with self._http().get(self._metrics_url, timeout=_CONTROL_TIMEOUT) as response:
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(f"{self.engine} metrics: {exc!r}") from exc

    async def stream(
        self,
        path: str,
        body: dict[str, Any],
        correlation_id: str | None = None,
        expected_tokens: int | None = None,
    ) -> AsyncGenerator[list[bytes], None]:
        """POST ``body`` and yield batches of raw SSE ``data:`` payloads until the engine
        ends the response; closing the iterator closes the connection (the engine's cancel).
        ``expected_tokens`` (the request's ``max_tokens``): after that many, nothing waits."""
        stream: SSEPostStream | None = None
        try:
            stream = await post_sse(
                self._host,
                self._port,
                self._prefix + path,
                json.dumps(body).encode(),
                coalesce_s=self._coalesce_s,
                expected_tokens=expected_tokens,
                headers={**self._headers, **self.request_headers(correlation_id)},
                tls=self._tls,
            )
            async for batch in stream.batches():
                yield batch
        except ConnectFailed as exc:
            raise EngineUnavailable(f"{self.engine} {path}: {exc}") from exc
        except HTTPStatusError as exc:
            raise EngineReset(
                f"{self.engine} {path}: {exc}",
                public_message=f"the engine refused the request (HTTP {exc.status})",
            ) from exc
        except StreamError as exc:
            raise EngineConnectionLost(f"{self.engine} {path}: {exc}") from exc
        finally:
            if stream is not None:
                stream.close()

    def request_headers(self, correlation_id: str | None) -> dict[str, str]:
        """Headers naming the request for the engine's own logs."""
        return {"X-Correlation-Id": correlation_id} if correlation_id else {}

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def parse_payload(engine: str, payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise EngineReset(
            f"{engine}: stream event is not JSON: {payload[:200]!r}",
            public_message="the engine sent a malformed stream event",
        ) from exc
