"""Adapters for engines orchestratord does not run (a pool's ``endpoints``).

The engine is already running, on this machine or another: orchestratord only
health-checks it and queues, places and streams exactly as for a spawned engine. Its bearer
token (if it wants one) is read from ``token_file`` and sent only to that engine.
"""

from __future__ import annotations

from typing import Any

from orchestratord.adapters.base import EngineAdapter
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.adapters.openai_compat import OpenAICompatAdapter
from orchestratord.adapters.tgi import TgiAdapter
from orchestratord.adapters.triton import TritonAdapter
from orchestratord.auth import read_secret_file
from orchestratord.config import Config, Engine, PoolConfig


def build_remote_adapter(pool: PoolConfig, url: str, config: Config) -> EngineAdapter:
    endpoint = next(e for e in pool.endpoints if e.url == url)
    token = read_secret_file(endpoint.token_file) if endpoint.token_file is not None else None
    coalesce_s = config.server.stream_coalesce_ms / 1000
    if pool.engine is Engine.LLAMACPP:
        return LlamaCppAdapter(
            url.rstrip("/"),
            pool.model_path,
            max_connections=pool.slots,
            coalesce_s=coalesce_s,
            auth_token=token,
        )
    common: dict[str, Any] = {
        "auth_token": token,
        "coalesce_s": coalesce_s,
        "metrics_url": endpoint.metrics_url,
    }
    if pool.engine is Engine.VLLM:
        return OpenAICompatAdapter(url, slots=pool.slots, model_path=pool.model_path, **common)
    if pool.engine is Engine.TRITON:
        assert endpoint.model is not None  # the config requires it
        return TritonAdapter(
            url, model=endpoint.model, slots=pool.slots, model_path=pool.model_path, **common
        )
    if pool.engine is Engine.TGI:
        return TgiAdapter(url, slots=pool.slots, model_path=pool.model_path, **common)
    raise ValueError(f"pool {pool.id!r}: no adapter for engine {pool.engine.value!r} yet")
