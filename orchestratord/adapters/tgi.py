"""Adapter for Hugging Face Text Generation Inference (ORCH-3057).

``/health``; ``/info`` (model id and sha, ``max_concurrent_requests``, ``max_total_tokens``,
version); ``/tokenize``; streamed ``/generate_stream`` (one ``token`` object per event, the
last one with ``generated_text`` and ``details``); ``/metrics``. TGI cannot run on the
machines this project is tested on; the adapter follows TGI's documented protocol and is
tested against a fake built from it, which says so.

TGI refuses ``temperature: 0`` (greedy is ``do_sample: false``), a ``top_p`` of 1 and a
``top_k`` of 0, so those settings are sent the way TGI takes them. Special tokens (EOS)
carry no text for the client.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from orchestratord.adapters.base import (
    EngineConnectionLost,
    EngineInfo,
    EngineReset,
    GenerationRequest,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.http_engine import HttpEngine, parse_payload


class TgiAdapter(HttpEngine):
    engine = "tgi"

    def __init__(
        self, base_url: str, *, slots: int, model_path: Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(base_url, max_connections=slots, model_path=model_path, **kwargs)
        self._slots = slots

    async def info(self) -> EngineInfo:
        info = await self.request_json("GET", "/info")
        version = info.get("version")
        return EngineInfo(
            engine=self.engine,
            engine_version=f"tgi {version}" if version else None,
            model_digest=await self.model_digest(),
            slots_total=min(self._slots, int(info.get("max_concurrent_requests") or self._slots)),
            ctx_per_slot=int(info.get("max_total_tokens") or 0),
        )

    async def slots(self) -> list[SlotState]:
        return []  # TGI batches requests itself; it has no slots to report

    async def count_tokens(self, text: str) -> int:
        return len(await self.request_json("POST", "/tokenize", {"inputs": text}))

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        parameters: dict[str, Any] = {
            "max_new_tokens": request.max_tokens,
            "seed": request.seed,
            "details": True,
            "do_sample": s.temperature > 0,
        }
        if s.temperature > 0:
            parameters["temperature"] = s.temperature
            if s.top_k > 0:
                parameters["top_k"] = s.top_k
            if 0 < s.top_p < 1:
                parameters["top_p"] = s.top_p
        if s.repeat_penalty != 1.0:
            parameters["repetition_penalty"] = s.repeat_penalty
        return {"inputs": request.prompt, "parameters": parameters}

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        produced = 0
        events = self.stream(
            "/generate_stream", self._body(request), request.correlation_id, request.max_tokens
        )
        try:
            async for batch in events:
                for payload in batch:
                    event = parse_payload(self.engine, payload)
                    if "error" in event:  # this request failed; the engine itself is fine
                        kind = str(event.get("error_type") or "generation")[:40]
                        raise EngineReset(
                            f"tgi: {event['error']}",
                            public_message=f"the engine failed this request ({kind} error)",
                        )
                    token = event.get("token") or {}
                    if token.get("text") and not token.get("special"):
                        produced += 1
                        yield TokenChunk(token["text"])
                    details = event.get("details")
                    if details is not None:
                        yield _end(details, produced)
                        return
        finally:
            await events.aclose()
        raise EngineConnectionLost("tgi closed the stream without details")


def _end(details: dict[str, Any], produced: int) -> StreamEnd:
    return StreamEnd(
        finish_reason="length" if details.get("finish_reason") == "length" else "stop",
        tokens_in=len(details.get("prefill") or []),
        tokens_cached=0,
        tokens_out=int(details.get("generated_tokens", produced)),
        decode_ms=0.0,
    )
