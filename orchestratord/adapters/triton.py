"""Adapter for NVIDIA Triton / TensorRT-LLM through KServe v2 generate-stream (ORCH-3058).

``/v2`` (server version), ``/v2/models/{m}`` (the model's declared inputs),
``/v2/models/{m}/ready`` (health: the server being up is not enough, the model must be
loaded), streamed ``/v2/models/{m}/generate_stream`` (one ``text_output`` per event; the
response simply ends, there is no final event), and ``/metrics`` on Triton's metrics port.

Models name their inputs differently (TensorRT-LLM's ensemble takes ``random_seed`` and
``stream``, a Python model may take ``seed``), so the request carries only the settings the
model declares. Triton has no tokenizer endpoint: admission's byte bound (UTF-8 bytes + 2
covers any byte-level or byte-fallback vocabulary) stands in for an exact count.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from orchestratord.adapters.base import (
    EngineInfo,
    EngineReset,
    GenerationRequest,
    SlotState,
    StreamEnd,
    StreamEvent,
    TokenChunk,
)
from orchestratord.adapters.http_engine import HttpEngine, parse_payload

_SPECIAL_TOKENS = 2


class TritonAdapter(HttpEngine):
    engine = "triton"

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        slots: int,
        model_path: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(base_url, max_connections=slots, model_path=model_path, **kwargs)
        self.model = model
        self.health_path = f"/v2/models/{model}/ready"
        self._slots = slots
        self._inputs: set[str] = set()

    async def info(self) -> EngineInfo:
        server = await self.request_json("GET", "/v2")
        metadata = await self.request_json("GET", f"/v2/models/{self.model}")
        self._inputs = {str(i.get("name")) for i in metadata.get("inputs") or []}
        if "text_input" not in self._inputs:
            raise EngineReset(
                f"triton model {self.model} has no text_input (inputs {sorted(self._inputs)})",
                public_message="the Triton model does not take text_input",
            )
        version = server.get("version")
        return EngineInfo(
            engine=self.engine,
            engine_version=f"triton {version}" if version else None,
            model_digest=await self.model_digest(),
            slots_total=self._slots,
            ctx_per_slot=0,
        )

    async def slots(self) -> list[SlotState]:
        return []  # Triton schedules requests itself; it has no slots to report

    async def count_tokens(self, text: str) -> int:
        return len(text.encode()) + _SPECIAL_TOKENS  # an upper bound; see the module doc

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        offered: dict[str, Any] = {
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "random_seed": request.seed,
            "temperature": s.temperature,
            "top_k": s.top_k,
            "top_p": s.top_p,
            "repetition_penalty": s.repeat_penalty,
            "stream": True,
        }
        body = {k: v for k, v in offered.items() if k in self._inputs}
        body["text_input"] = request.prompt
        return body

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        if not self._inputs:
            await self.info()
        produced = 0
        events = self.stream(
            f"/v2/models/{self.model}/generate_stream",
            self._body(request),
            request.correlation_id,
            request.max_tokens,
        )
        try:
            async for batch in events:
                for payload in batch:
                    event = parse_payload(self.engine, payload)
                    if "error" in event:  # this request failed; the engine itself is fine
                        raise EngineReset(
                            f"triton: {event['error']}",
                            public_message="the engine failed this request",
                        )
                    text = event.get("text_output")
                    if text:
                        produced += 1
                        yield TokenChunk(str(text))
        finally:
            await events.aclose()
        # Triton ends a decoupled stream by ending the response.
        yield StreamEnd("length" if produced >= request.max_tokens else "stop", 0, 0, produced, 0.0)
