"""Pool endpoints: health (HOME-506, ORCH-2103) for the pool and each replica; drain and
resume (HOME-504, ORCH-2101)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon
import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.bodies import parse_body
from orchestratord.api.replicasets import replica_entry
from orchestratord.errors import conflict, not_found
from orchestratord.pools.drain import resume, start_drain

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
            # Admission stopped while running work finishes (a drain, or the shutdown grace);
            # a drained pool stays so until resumed.
            "draining": not pool.admitting,
            "drain": pool.drain.view() if pool.drain is not None else None,
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


class DrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    deadline_ms: int = Field(ge=0, le=86_400_000)


class PoolDrainResource:
    """``POST /v1/pools/{id}/drain`` (HOME-504, ORCH-2101, OC-CTRL-2002)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        pool = self.orch.pools.get(pool_id)
        if pool is None:
            raise not_found(f"no pool {pool_id}")
        request = await parse_body(req, DrainRequest, self.orch.config.server.max_body_bytes)
        if not pool.accepting:
            raise conflict(f"pool {pool_id}: orchestratord is shutting down")
        if pool.drain is not None:
            raise conflict(f"pool {pool_id} is already {pool.drain.state}; resume it first")
        drain = start_drain(pool, request.deadline_ms, "drain requested")
        resp.status = falcon.HTTP_202
        resp.media = {"pool_id": pool_id, "drain": drain.view()}


class PoolResumeResource:
    """``POST /v1/pools/{id}/resume``: a drained (or draining) pool admits tasks again."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        pool = self.orch.pools.get(pool_id)
        if pool is None:
            raise not_found(f"no pool {pool_id}")
        if pool.drain is None:
            raise conflict(f"pool {pool_id} is not drained")
        resume(pool)
        resp.status = falcon.HTTP_200
        resp.media = {"pool_id": pool_id, "draining": False}
