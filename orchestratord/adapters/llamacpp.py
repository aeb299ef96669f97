"""Adapter for llama.cpp's native ``llama-server`` API (OC-ADAPT-5010).

Uses the native endpoints, not the OpenAI-compatible ones: ``/health``, ``/props`` (slots,
build), ``/slots`` (per-slot busy state), ``/tokenize``, streaming ``/completion`` and
``/metrics``. Cancelling is closing the HTTP stream: llama-server stops decoding when the
socket closes; the adapter then watches ``/slots`` until that slot is idle, so the
orchestrator only hands out a slot the engine has really freed.

Control calls use aiohttp; the token stream uses ``sse_client`` (httptools' C parser under
a plain asyncio protocol), because per-token cost there is the relay's whole budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.parse
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineConnectionLost,
    EngineInfo,
    EngineReset,
    EngineUnavailable,
    GenerationRequest,
    PromptProgress,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
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
from orchestratord.models.vocab import max_token_bytes

_SLOT_RELEASE_TIMEOUT_S = 5.0
_SLOT_POLL_S = 0.005
# Control calls are quick. Generations go through sse_client with no read timeout: the
# orchestrator's deadline watchdog, not a socket timeout, bounds them.
_CONTROL_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
# A health probe that takes longer than this counts as unanswered (a hung engine).
_HEALTH_TIMEOUT = aiohttp.ClientTimeout(total=1.0)
# Replies larger than this are parsed off the event loop.
_BIG_REPLY_BYTES = 64 * 1024


class LlamaCppAdapter(EngineAdapter):
    engine = "llamacpp"

    def __init__(
        self,
        base_url: str,
        model_path: Path | None,
        *,
        max_connections: int,
        version_hint: str | None = None,
        coalesce_s: float = 0.0,
        unix_socket: Path | None = None,
        auth_token: str | None = None,
    ) -> None:
        self.base_url = base_url
        self._unix_socket = str(unix_socket) if unix_socket is not None else None
        self._coalesce_s = coalesce_s
        parsed = urllib.parse.urlsplit(base_url)
        self._host = parsed.hostname or "127.0.0.1"
        https = parsed.scheme == "https"
        self._port = parsed.port or (443 if https else 80)
        self._tls = ssl.create_default_context() if https else None
        self._headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self._version_hint = version_hint
        self._model_path = model_path
        self._digest: str | None = None
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None:
            limit = self._max_connections + 4
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=self._unix_socket, limit=limit)
                if self._unix_socket
                else aiohttp.TCPConnector(limit=limit)
            )
            self._session = aiohttp.ClientSession(
                self.base_url, connector=connector, headers=self._headers
            )
        return self._session

    async def _request_json(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self._http().request(
                method, path, json=body, timeout=_CONTROL_TIMEOUT
            ) as response:
                if response.status == 503:
                    raise EngineUnavailable(f"llama-server {path}: loading (503)")
                if response.status != 200:
                    text = (await response.text())[:512]
                    raise EngineReset(
                        f"llama-server {path}: HTTP {response.status}: {text}",
                        public_message=f"the engine answered HTTP {response.status}",
                    )
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(f"llama-server {path}: {exc!r}") from exc
        with _reply_shape(path):
            if len(raw) > _BIG_REPLY_BYTES:
                return await asyncio.to_thread(json.loads, raw)
            return json.loads(raw)

    async def healthy(self) -> bool:
        try:
            async with self._http().get("/health", timeout=_HEALTH_TIMEOUT) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def info(self) -> EngineInfo:
        props = await self._request_json("GET", "/props")
        if self._digest is None and self._model_path is not None:
            self._digest = "sha256:" + await asyncio.to_thread(
                remembered, sha256_file, self._model_path
            )
            self.max_token_bytes = await asyncio.to_thread(
                remembered, max_token_bytes, self._model_path
            )
        with _reply_shape("/props"):
            settings = props.get("default_generation_settings", {})
            return EngineInfo(
                engine=self.engine,
                engine_version=self._engine_version(props.get("build_info")),
                model_digest=self._digest,
                slots_total=int(props.get("total_slots", 1)),
                ctx_per_slot=int(settings.get("n_ctx", 0)),
                model_path=props.get("model_path"),
            )

    def _engine_version(self, build_info: str | None) -> str | None:
        # Source builds without git metadata report "b0-unknown"; the packaging version of
        # the binary is then the only identity we have.
        if build_info and not build_info.startswith("b0-"):
            return build_info
        return self._version_hint or build_info

    async def slots(self) -> list[SlotState]:
        raw = await self._request_json("GET", "/slots")
        with _reply_shape("/slots"):
            return [SlotState(int(s["id"]), bool(s.get("is_processing"))) for s in raw]

    async def count_tokens(self, text: str) -> int:
        body = {"content": text, "add_special": True}
        reply = await self._request_json("POST", "/tokenize", body)
        with _reply_shape("/tokenize"):
            return len(reply["tokens"])

    async def metrics_text(self) -> str:
        try:
            async with self._http().get("/metrics", timeout=_CONTROL_TIMEOUT) as response:
                return await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineUnavailable(f"llama-server /metrics: {exc!r}") from exc

    def _completion_body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "n_predict": request.max_tokens,
            "seed": request.seed,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "min_p": s.min_p,
            "repeat_penalty": s.repeat_penalty,
            "ignore_eos": s.ignore_eos,
            "cache_prompt": request.reuse_kv,
            "stream": True,
            # One progress event per prompt batch: the watchdog sees a long prompt advance.
            "return_progress": True,
        }
        if request.slot is not None:
            body["id_slot"] = request.slot
        return body

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        # The orchestrator pins the slot, so a cancel knows which one must go idle; llama-server
        # itself only names the slot in its final event.
        slot_id = request.slot
        finished = False
        stream: SSEPostStream | None = None
        try:
            body = json.dumps(self._completion_body(request)).encode()
            stream = await post_sse(
                self._host,
                self._port,
                "/completion",
                body,
                coalesce_s=self._coalesce_s,
                expected_tokens=request.max_tokens,
                unix_socket=self._unix_socket,
                headers=_with_correlation(self._headers, request.correlation_id),
                tls=self._tls,
            )
            async for batch in stream.batches():
                for payload in batch:
                    event = _completion_event(payload)
                    if event is None:
                        continue
                    if isinstance(event, StreamEnd):
                        finished = True
                        yield event
                        return
                    yield event
            raise EngineConnectionLost("llama-server closed the stream without a final event")
        except ConnectFailed as exc:
            raise EngineUnavailable(f"llama-server /completion: {exc}") from exc
        except HTTPStatusError as exc:
            raise EngineReset(
                f"llama-server /completion: {exc}",
                public_message=f"the engine refused the request (HTTP {exc.status})",
            ) from exc
        except StreamError as exc:
            raise EngineConnectionLost(f"llama-server /completion: {exc}") from exc
        finally:
            if stream is not None:
                stream.close()
            if not finished and slot_id is not None:
                await self._wait_slot_idle(slot_id)

    async def kv_usage_ratio(self) -> float | None:
        """The engine's own gauge when its build exports one; else from its ``/slots``: the
        tokens each slot holds (its prompt plus what it decoded) over the slots' context."""
        text = await self.metrics_text()
        for line in text.splitlines():
            if line.startswith("llamacpp:kv_cache_usage_ratio "):
                return float(line.split()[1])
        slots = await self._request_json("GET", "/slots")
        with _reply_shape("/slots"):
            total = sum(int(s.get("n_ctx", 0)) for s in slots)
            held = 0
            for s in slots:
                decoded = sum(int(t.get("n_decoded", 0)) for t in s.get("next_token") or [])
                held += int(s.get("n_prompt_tokens", 0)) + decoded
            return min(1.0, held / total) if total else None

    async def evict(self, slot: int) -> bool:
        """``POST /slots/{id}?action=erase`` (the engine runs with ``--slot-save-path``)."""
        try:
            reply = await self._request_json("POST", f"/slots/{slot}?action=erase")
            with _reply_shape("/slots erase"):
                return int(reply.get("id_slot", -1)) == slot
        except (EngineUnavailable, EngineReset):
            return False

    async def _wait_slot_idle(self, slot_id: int) -> None:
        with contextlib.suppress(TimeoutError, EngineUnavailable, EngineReset):
            async with asyncio.timeout(_SLOT_RELEASE_TIMEOUT_S):
                while True:
                    states = await self.slots()
                    if not any(s.id == slot_id and s.busy for s in states):
                        return
                    await asyncio.sleep(_SLOT_POLL_S)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


@contextlib.contextmanager
def _reply_shape(path: str) -> Iterator[None]:
    """A reply that is not the JSON shape this adapter reads is an engine fault, translated
    here like any other (HARD-201): never a stray KeyError in a supervisor or a runner."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise EngineReset(
            f"llama-server {path}: unexpected reply ({exc!r})",
            public_message="the engine answered in a shape this adapter does not read",
        ) from exc


def _completion_event(payload: bytes) -> StreamEvent | None:
    """One ``/completion`` SSE event: text, the prompt's progress, or the final event.
    (A plain try rather than ``_reply_shape``: this runs once per token.)"""
    try:
        chunk = json.loads(payload)
        if chunk.get("stop"):
            return _stream_end(chunk)
        text = chunk.get("content")
        if text:
            return TokenChunk(text)
        progress = chunk.get("prompt_progress")
        if progress is not None:
            return PromptProgress(int(progress.get("processed", 0)), int(progress.get("total", 0)))
        return None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EngineReset(
            f"llama-server /completion: unexpected event ({exc!r})",
            public_message="the engine answered in a shape this adapter does not read",
        ) from exc


def _stream_end(chunk: dict[str, Any]) -> StreamEnd:
    timings = chunk.get("timings") or {}
    return StreamEnd(
        finish_reason="length" if chunk.get("stop_type") == "limit" else "stop",
        tokens_in=int(chunk.get("tokens_evaluated", 0)),
        tokens_cached=int(timings.get("cache_n", 0)),
        tokens_out=int(timings.get("predicted_n", 0)),
        decode_ms=float(timings.get("predicted_ms", 0.0)),
    )


def _with_correlation(headers: dict[str, str], correlation_id: str | None) -> dict[str, str]:
    return {**headers, "X-Correlation-Id": correlation_id} if correlation_id else headers
