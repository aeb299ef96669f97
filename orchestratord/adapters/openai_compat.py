"""Adapter for vLLM through its OpenAI-compatible API (ORCH-3056, OC-ADAPT-5002).

``/health``; ``/v1/models`` (model id, ``max_model_len``); ``/version`` (engine version);
``/tokenize``; streamed ``/v1/completions`` with ``stream_options.include_usage``; and
``/metrics``. The OpenAI-compatible API stays internal: clients only ever see OrchQueue v1.

vLLM has no slots: the pool's ``slots`` is how many requests orchestratord sends it at once.
A cancel closes the stream; vLLM aborts a request whose client went away. vLLM's own
sampling extensions carry what OpenAI's schema lacks (``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineError,
    EngineInfo,
    GenerationRequest,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.http_engine import HttpEngine, parse_payload

_DONE = b"[DONE]"


class OpenAICompatAdapter(HttpEngine):
    engine = "vllm"

    def __init__(
        self,
        base_url: str,
        *,
        slots: int,
        model_path: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, max_connections=slots, model_path=model_path, **kwargs)
        self._slots = slots
        self._model: str | None = None

    async def _served_model(self) -> dict[str, Any]:
        listing = await self.request_json("GET", "/v1/models")
        models = listing.get("data") or []
        if not models:
            raise EngineConnectionLost(
                "vllm /v1/models lists no model", public_message="the engine serves no model"
            )
        model: dict[str, Any] = models[0]
        self._model = str(model["id"])
        return model

    async def info(self) -> EngineInfo:
        model = await self._served_model()
        try:
            version = (await self.request_json("GET", "/version")).get("version")
        except EngineError:
            version = None  # OpenAI-compatible servers other than vLLM may not have /version
        ctx = model.get("max_model_len") or (model.get("meta") or {}).get("n_ctx") or 0
        return EngineInfo(
            engine=self.engine,
            engine_version=f"vllm {version}" if version else None,
            model_digest=await self.model_digest(),
            slots_total=self._slots,
            ctx_per_slot=int(ctx),
        )

    async def slots(self) -> list[SlotState]:
        return []  # vLLM schedules sequences itself; it has no slots to report

    def request_headers(self, correlation_id: str | None) -> dict[str, str]:
        # vLLM names a request after X-Request-Id in its logs.
        if not correlation_id:
            return {}
        return {"X-Correlation-Id": correlation_id, "X-Request-Id": correlation_id}

    async def count_tokens(self, text: str) -> int:
        if self._model is None:
            await self._served_model()
        # vLLM reads `prompt` (and answers `count`); llama-server's OpenAI mode reads `content`.
        body = {"model": self._model, "prompt": text, "content": text}
        reply = await self.request_json("POST", "/tokenize", body)
        if "count" in reply:
            return int(reply["count"])
        return len(reply["tokens"])

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self._model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "top_k": s.top_k if s.top_k > 0 else -1,
            "min_p": s.min_p,
            "ignore_eos": s.ignore_eos,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if s.repeat_penalty != 1.0:
            body["repetition_penalty"] = s.repeat_penalty
        return body

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        if self._model is None:
            await self._served_model()
        finish: str | None = None
        usage: dict[str, Any] = {}
        produced = 0
        events = self.stream(
            "/v1/completions", self._body(request), request.correlation_id, request.max_tokens
        )
        try:
            async for batch in events:
                for payload in batch:
                    if payload.strip() == _DONE:
                        yield _end(finish, usage, produced)
                        return
                    chunk = parse_payload(self.engine, payload)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):
                            produced += 1
                            yield TokenChunk(choice["text"])
                        finish = choice.get("finish_reason") or finish
        finally:
            await events.aclose()
        raise EngineConnectionLost("vllm closed the stream without [DONE]")


def _end(finish: str | None, usage: dict[str, Any], produced: int) -> StreamEnd:
    details = usage.get("prompt_tokens_details") or {}
    return StreamEnd(
        finish_reason="length" if finish == "length" else "stop",
        tokens_in=int(usage.get("prompt_tokens", 0)),
        tokens_cached=int(details.get("cached_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens", produced)),
        decode_ms=0.0,
    )
