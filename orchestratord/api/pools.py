"""``GET /v1/pools/{id}/health`` (HOME-506, ORCH-2103): liveness, readiness and why not,
for the pool and for each of its replicas."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon.asgi

from orchestratord.api.replicasets import replica_entry
from orchestratord.errors import not_found

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator
    from orchestratord.replicas.replica import Replica


class PoolHealthResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        pool = self.orch.pools.get(pool_id)
        if pool is None:
            raise not_found(f"no pool {pool_id}")
        info = pool.info
        resp.media = {
            "live": any(_live(r) for r in pool.replicas),
            "ready": pool.ready,
            # Admission stopped while running work finishes: today that is the shutdown
            # grace; POST /v1/pools/{id}/drain will set it too.
            "draining": not pool.accepting,
            "metrics": {
                "slots_total": pool.slots_total,
                "slots_free": pool.slots_free if pool.ready else 0,
                "queue_depth": len(pool.queue),
                "engine_version": info.engine_version if info else None,
                "model_digest": info.model_digest if info else None,
            },
            "last_error": pool.last_error,
            "replicas": [{**replica_entry(r, self.orch), "live": _live(r)} for r in pool.replicas],
        }


def _live(replica: Replica) -> bool:
    if replica.process is not None:
        return replica.process.running()
    return replica.info is not None
