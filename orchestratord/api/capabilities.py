"""``GET /v1/capabilities`` (HOME-601, HOME-602, HOME-1002): what a client may send and how much.

Grouped by engine, each with its pools' live slot counts, so a client can pick a model and
derive safe concurrency (slots plus queue capacity) without trial and error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import falcon.asgi

from orchestratord.version import API_VERSION

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator
    from orchestratord.pools.pool import Pool

FEATURES = ["sse", "cancel", "seed", "sampler_profiles", "admission_metadata", "kv_hint"]


def pool_entry(pool: Pool) -> dict[str, Any]:
    return {
        "pool_id": pool.id,
        "model_ref": pool.config.model_ref,
        "ctx_max": pool.ctx_max,
        "slots_total": pool.slots_total,
        "slots_free": pool.slots_free if pool.ready else 0,
        "ready": pool.ready,
        "queue_capacity": pool.queue.capacity,
        "queue_depth": len(pool.queue),
        "full_policy": pool.config.queue.full_policy.value,
        "devices": list(pool.config.devices),
        "replicas": [
            {
                "id": r.id,
                "devices": list(r.devices),
                "slots_total": r.slots,
                "slots_free": r.slots_free if r.ready else 0,
                "ready": r.ready,
            }
            for r in pool.replicas
        ],
    }


def engine_entry(engine: str, pools: list[Pool]) -> dict[str, Any]:
    versions = sorted({p.info.engine_version for p in pools if p.info and p.info.engine_version})
    workloads = sorted({w.value for p in pools for w in p.config.supported_workloads})
    entries = [pool_entry(p) for p in pools]
    return {
        "engine": engine,
        "engine_version": versions[0] if len(versions) == 1 else (", ".join(versions) or None),
        "ctx_max": max(p.ctx_max for p in pools),
        "supported_workloads": workloads,
        "rate_limits": {
            "queue_capacity": sum(p.queue.capacity for p in pools),
            "full_policy": pools[0].config.queue.full_policy.value,
            "rate_limit_rps": {
                priority: pools[0].config.queue.rate_limit_rps.get(priority)
                for priority in ("interactive", "batch")
            },
        },
        "features": FEATURES,
        "slots_total": sum(e["slots_total"] for e in entries),
        "slots_free": sum(e["slots_free"] for e in entries),
        "pools": entries,
    }


class CapabilitiesResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        by_engine: dict[str, list[Pool]] = {}
        for pool in self.orch.pools.values():
            by_engine.setdefault(pool.engine, []).append(pool)
        config = self.orch.config
        resp.media = {
            "api_version": API_VERSION,
            "engines": [engine_entry(e, pools) for e, pools in sorted(by_engine.items())],
            "sampler_profiles": {
                name: profile.model_dump() for name, profile in config.sampler_profiles.items()
            },
            "determinism": {
                "default_sampler_profile": config.default_sampler_profile,
                "seeded": True,
                "guarantee": "same prompt, parameters, seed, sampler_profile_version, "
                "engine_version and model_digest on one pool give the same token stream",
            },
        }
