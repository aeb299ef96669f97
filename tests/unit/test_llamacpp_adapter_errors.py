"""The llama.cpp adapter turns transport failures into the envelope's codes (OC-ADAPT-5011)."""

from __future__ import annotations

import pytest

from orchestratord.adapters.base import (
    EngineReset,
    EngineUnavailable,
    GenerationRequest,
    Sampling,
)
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.errors import ErrorCode
from orchestratord.pools.engine_process import free_loopback_port

pytestmark = pytest.mark.req("OC-ADAPT-5011")


def dead_engine() -> LlamaCppAdapter:
    # A port nothing listens on: connection refused, like an engine that crashed.
    return LlamaCppAdapter(f"http://127.0.0.1:{free_loopback_port()}", None, max_connections=1)


async def test_unreachable_engine_is_pool_unavailable() -> None:
    adapter = dead_engine()
    try:
        assert await adapter.healthy() is False
        with pytest.raises(EngineUnavailable) as raised:
            await adapter.count_tokens("hello")
        assert raised.value.code is ErrorCode.POOL_UNAVAILABLE
        assert raised.value.__cause__ is not None
    finally:
        await adapter.aclose()


async def test_a_generation_that_cannot_reach_the_engine_is_worker_reset() -> None:
    adapter = dead_engine()
    request = GenerationRequest("hi", 4, 1, Sampling(0.8, 40, 0.95, 0.05, 1.0, False))
    try:
        with pytest.raises(EngineReset) as raised:
            async for _ in adapter.generate(request):
                pass
        assert raised.value.code is ErrorCode.WORKER_RESET
        assert "cannot connect" in str(raised.value)
    finally:
        await adapter.aclose()
