"""Adapter for llama.cpp's native ``llama-server`` API (OC-ADAPT-5010).

Uses the native endpoints, not the OpenAI-compatible ones: ``/health``, ``/props`` (slots,
build), ``/slots`` (per-slot busy state), ``/tokenize``, streaming ``/completion`` and
``/metrics``. Cancelling is closing the HTTP stream: llama-server stops decoding when the
socket closes; the adapter then watches ``/slots`` until that slot is idle, so the
orchestrator only hands out a slot the engine has really freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import httpx

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineInfo,
    EngineReset,
    EngineUnavailable,
    GenerationRequest,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.models.digest import sha256_file

_SLOT_RELEASE_TIMEOUT_S = 5.0
_SLOT_POLL_S = 0.005


class LlamaCppAdapter(EngineAdapter):
    engine = "llamacpp"

    def __init__(
        self,
        base_url: str,
        model_path: Path | None,
        *,
        max_connections: int,
        version_hint: str | None = None,
    ) -> None:
        self.base_url = base_url
        self._version_hint = version_hint
        self._model_path = model_path
        self._digest: str | None = None
        # Reads may legitimately pause for a long prompt; the orchestrator's deadline watchdog,
        # not a socket timeout, bounds a generation.
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(10.0, read=None),
            limits=httpx.Limits(max_connections=max_connections + 4),
        )

    async def _get_json(self, path: str) -> Any:
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"llama-server {path}: {exc!r}") from exc
        if response.status_code == 503:
            raise EngineUnavailable(f"llama-server {path}: loading (503)")
        if response.status_code != 200:
            raise EngineReset(f"llama-server {path}: HTTP {response.status_code}")
        return response.json()

    async def healthy(self) -> bool:
        try:
            response = await self._client.get("/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def info(self) -> EngineInfo:
        props = await self._get_json("/props")
        if self._digest is None and self._model_path is not None:
            self._digest = "sha256:" + await asyncio.to_thread(sha256_file, self._model_path)
        settings = props.get("default_generation_settings", {})
        return EngineInfo(
            engine=self.engine,
            engine_version=self._engine_version(props.get("build_info")),
            model_digest=self._digest,
            slots_total=int(props.get("total_slots", 1)),
            ctx_per_slot=int(settings.get("n_ctx", 0)),
        )

    def _engine_version(self, build_info: str | None) -> str | None:
        # Source builds without git metadata report "b0-unknown"; the packaging version of
        # the binary is then the only identity we have.
        if build_info and not build_info.startswith("b0-"):
            return build_info
        return self._version_hint or build_info

    async def slots(self) -> list[SlotState]:
        raw = await self._get_json("/slots")
        return [SlotState(int(s["id"]), bool(s.get("is_processing"))) for s in raw]

    async def count_tokens(self, text: str) -> int:
        try:
            response = await self._client.post(
                "/tokenize", json={"content": text, "add_special": True}
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"llama-server /tokenize: {exc!r}") from exc
        if response.status_code != 200:
            raise EngineReset(f"llama-server /tokenize: HTTP {response.status_code}")
        return len(response.json()["tokens"])

    async def metrics_text(self) -> str:
        try:
            response = await self._client.get("/metrics")
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"llama-server /metrics: {exc!r}") from exc
        return response.text if response.status_code == 200 else ""

    def _completion_body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        return {
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
            "return_tokens": True,
            "stream": True,
            **({"id_slot": request.slot} if request.slot is not None else {}),
        }

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        # The orchestrator pins the slot, so a cancel knows which one must go idle; llama-server
        # itself only names the slot in its final event.
        slot_id = request.slot
        finished = False
        try:
            async with self._client.stream(
                "POST", "/completion", json=self._completion_body(request)
            ) as response:
                if response.status_code != 200:
                    body = (await response.aread())[:300].decode("utf-8", "replace")
                    raise EngineReset(
                        f"llama-server /completion: HTTP {response.status_code} {body}"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("stop"):
                        finished = True
                        yield _stream_end(chunk)
                        return
                    text = chunk.get("content", "")
                    if text:
                        yield TokenChunk(text, len(chunk.get("tokens") or ()) or 1)
            raise EngineReset("llama-server closed the stream without a final event")
        except httpx.HTTPError as exc:
            raise EngineReset(f"llama-server /completion: {exc!r}") from exc
        finally:
            if not finished and slot_id is not None:
                await self._wait_slot_idle(slot_id)

    async def _wait_slot_idle(self, slot_id: int) -> None:
        with contextlib.suppress(TimeoutError, EngineUnavailable, EngineReset):
            async with asyncio.timeout(_SLOT_RELEASE_TIMEOUT_S):
                while True:
                    states = await self.slots()
                    if not any(s.id == slot_id and s.busy for s in states):
                        return
                    await asyncio.sleep(_SLOT_POLL_S)

    async def aclose(self) -> None:
        await self._client.aclose()


def _stream_end(chunk: dict[str, Any]) -> StreamEnd:
    timings = chunk.get("timings") or {}
    return StreamEnd(
        finish_reason="length" if chunk.get("stop_type") == "limit" else "stop",
        tokens_in=int(chunk.get("tokens_evaluated", 0)),
        tokens_cached=int(timings.get("cache_n", 0)),
        tokens_out=int(timings.get("predicted_n", chunk.get("tokens_predicted", 0))),
        decode_ms=float(timings.get("predicted_ms", 0.0)),
    )
