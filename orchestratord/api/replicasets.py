"""``GET /v1/replicasets`` (ORCH-2104, OC-CTRL-2004, FR-CP-003, RES-202): each pool's replicas,
load and residency.

One replica set per pool. Each replica says where it runs (devices, or the remote endpoint),
what it runs (engine, version, model digest), and how busy it is: slots, readiness, load,
its measured decode speed and the VRAM placement gave it. Pool health and capabilities
reuse :func:`replica_entry`, so the three views never disagree.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import falcon.asgi

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator
    from orchestratord.pools.pool import Pool
    from orchestratord.replicas.replica import Replica


def replica_entry(replica: Replica, orch: Orchestrator) -> dict[str, Any]:
    info = replica.info
    known = orch.devices.devices
    return {
        "id": replica.id,
        "pool_id": replica.pool_id,
        "engine": replica.engine,
        "engine_version": info.engine_version if info else None,
        "model_digest": info.model_digest if info else None,
        "devices": [
            {
                "index": index,
                "name": known[index].name if index in known else None,
                "vram_bytes": replica.spec.vram_bytes.get(index, 0),
            }
            for index in replica.devices
        ],
        "tensor_split": list(replica.spec.tensor_split) if replica.spec.tensor_split else None,
        "endpoint": replica.spec.remote,
        "slots_total": replica.slots,
        "slots_free": replica.slots_free if replica.ready else 0,
        "ready": replica.ready,
        "load": round(replica.load, 3),
        "decode_tokens_per_s": round(replica.decode_tokens_per_s, 1),
        "last_error": replica.last_error,
    }


def _slo(pool: Pool) -> dict[str, Any]:
    window = sorted(pool.first_token_ms_window)
    if not window:
        return {"first_token_ms_p50": None, "first_token_ms_p95": None, "samples": 0}
    quantiles = statistics.quantiles(window, n=20) if len(window) > 1 else [window[0]] * 19
    return {
        "first_token_ms_p50": round(statistics.median(window), 2),
        "first_token_ms_p95": round(quantiles[18], 2),
        "samples": len(window),
    }


def replica_set(pool: Pool, orch: Orchestrator) -> dict[str, Any]:
    queued = len(pool.queue)
    running = len(pool.running)
    return {
        "id": pool.id,
        "pool_id": pool.id,
        "engine": pool.engine,
        "model_ref": pool.config.model_ref,
        "ready": pool.ready,
        # Running plus queued work per slot: 1.0 is every slot busy and nothing waiting.
        "load": round((running + queued) / max(pool.slots_total, 1), 3),
        "slots_total": pool.slots_total,
        "slots_free": pool.slots_free,
        "queue_depth": queued,
        "slo": _slo(pool),
        "residency": pool.residency.view(time.monotonic()),
        "replicas": [replica_entry(r, orch) for r in pool.replicas],
    }


class ReplicaSetsResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.media = [replica_set(pool, self.orch) for pool in self.orch.pools.values()]
