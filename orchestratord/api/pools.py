"""Pool endpoints: health (HOME-506, ORCH-2103, RES-202) for the pool and each replica; drain
and resume (HOME-504, ORCH-2101); reload (HOME-505, ORCH-2102); unload (RES-203)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import falcon
import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.bodies import parse_body
from orchestratord.api.replicasets import replica_entry
from orchestratord.devices.inventory import MIB
from orchestratord.errors import ApiError, ErrorCode, conflict, invalid_params, not_found
from orchestratord.models.gguf_shape import ModelShape, ModelShapeError, read_model_shape
from orchestratord.placement.fit import FitError, replica_need
from orchestratord.placement.plan import PlacementError
from orchestratord.pools.drain import resume, start_drain
from orchestratord.pools.reload import Reload, ReloadRefused, fit_reload, start_reload
from orchestratord.residency.state import State

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator
    from orchestratord.config import PoolConfig
    from orchestratord.pools.pool import Pool
    from orchestratord.replicas.replica import Replica


def find_pool(orch: Orchestrator, pool_id: str) -> Pool:
    pool = orch.pools.get(pool_id)
    if pool is None:
        raise not_found(f"no pool {pool_id}")
    return pool


class PoolHealthResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        pool = find_pool(self.orch, pool_id)
        info = pool.info
        resp.media = {
            "live": any(_live(r) for r in pool.replicas),
            "ready": pool.ready,
            # Admission stopped while running work finishes (a drain, or the shutdown grace);
            # a drained pool stays so until resumed.
            "draining": not pool.admitting,
            "drain": pool.drain.view() if pool.drain is not None else None,
            "reload": pool.reload.view() if pool.reload is not None else None,
            "model_ref": pool.config.model_ref,
            "metrics": {
                "slots_total": pool.slots_total,
                "slots_free": pool.slots_free if pool.ready else 0,
                "queue_depth": len(pool.queue),
                "engine_version": info.engine_version if info else None,
                "model_digest": info.model_digest if info else None,
            },
            "last_error": pool.last_error or pool.residency.failure,
            "residency": pool.residency.view(time.monotonic()),
            "replicas": [{**replica_entry(r, self.orch), "live": _live(r)} for r in pool.replicas],
        }


class PoolUnloadResource:
    """``POST /v1/pools/{id}/unload`` (RES-203): unload an idle on-demand pool now."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        pool = find_pool(self.orch, pool_id)
        refused = self.orch.residency.unload_now(pool)
        if refused is not None:
            raise conflict(refused)
        resp.status = falcon.HTTP_202
        resp.media = {"pool_id": pool_id, "residency": pool.residency.view(time.monotonic())}


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
        pool = find_pool(self.orch, pool_id)
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
        pool = find_pool(self.orch, pool_id)
        if pool.drain is None:
            raise conflict(f"pool {pool_id} is not drained")
        resume(pool)
        resp.status = falcon.HTTP_200
        resp.media = {"pool_id": pool_id, "draining": False}


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    new_model_ref: str = Field(min_length=1, max_length=256)


class PoolReloadResource:
    """``POST /v1/pools/{id}/reload`` (HOME-505, ORCH-2102, ORCH-3031, OC-CTRL-2003)."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, pool_id: str
    ) -> None:
        orch = self.orch
        pool = find_pool(orch, pool_id)
        request = await parse_body(req, ReloadRequest, orch.config.server.max_body_bytes)
        new_ref = request.new_model_ref
        if not orch.factory.can_rebuild(pool_id):
            raise invalid_params(f"pool {pool_id} runs injected engines; it cannot be reloaded")
        if pool.config.endpoints:
            raise invalid_params(f"pool {pool_id} uses remote engines; reload them where they run")
        if not pool.accepting:
            raise conflict(f"pool {pool_id}: orchestratord is shutting down")
        if pool.reload is not None and pool.reload.running:
            raise conflict(f"pool {pool_id} is already reloading to {pool.reload.to_model_ref}")
        if pool.drain is not None:
            raise conflict(f"pool {pool_id} is {pool.drain.state}; resume it first")
        refused = orch.catalog.refuses(new_ref)
        if refused is not None:
            raise ApiError(409, ErrorCode.MODEL_DEPRECATED, f"model {new_ref} is {refused.value}")
        try:
            path = orch.factory.model_path_for(new_ref)
        except PlacementError as exc:
            raise invalid_params(str(exc)) from exc
        new_config = pool.config.model_copy(update={"model_ref": new_ref, "model_path": path})
        if pool.residency.on_demand:
            reload = await self._reload_on_demand(pool, new_config)
        else:
            shape = await self._shape(pool, new_config) if pool.config.devices else None
            reserve = orch.config.gpus.reserve_mb * MIB
            try:
                specs, mode = fit_reload(pool, new_config, shape, orch.devices, reserve)
            except (ReloadRefused, FitError) as exc:
                raise conflict(str(exc)) from exc
            reload = start_reload(pool, new_config, orch.factory.build, specs, mode)
        resp.status = falcon.HTTP_202
        resp.media = {"pool_id": pool_id, "reload": reload.view()}

    async def _reload_on_demand(self, pool: Pool, new_config: PoolConfig) -> Reload:
        """The residency manager carries it out (RES-109): a loaded pool reloads as a pinned
        one does; one that is not loaded serves the new model from its next load."""
        orch = self.orch
        refused = orch.residency.reload_refused(pool)
        if refused is not None:
            raise conflict(refused)
        shape = await self._shape(pool, new_config) if new_config.devices else None
        reserve = orch.config.gpus.reserve_mb * MIB
        try:
            need = replica_need(new_config, shape, reserve) if shape is not None else None
        except FitError as exc:
            raise conflict(f"pool {pool.id}: {exc}") from exc
        loaded = pool.residency.state is State.LOADED
        size = 0
        if not loaded:
            never = orch.residency.never_fits(new_config, need)
            if never is not None:
                raise conflict(f"pool {pool.id}: {never}")
            model_path = new_config.model_path
            assert model_path is not None
            try:
                size = await asyncio.to_thread(lambda: model_path.stat().st_size)
            except OSError as exc:
                raise invalid_params(f"cannot read model {new_config.model_ref}") from exc
        # The reads above awaited: the pool may have begun a load or an unload meanwhile.
        refused = orch.residency.reload_refused(pool)
        if refused is None and (pool.residency.state is State.LOADED) != loaded:
            refused = f"pool {pool.id} loaded or unloaded while the reload was checked; try again"
        if refused is not None:
            raise conflict(refused)
        if not loaded:
            return orch.residency.retarget(pool, new_config, need, size)
        try:
            specs, mode = fit_reload(pool, new_config, shape, orch.devices, reserve)
        except (ReloadRefused, FitError) as exc:
            raise conflict(str(exc)) from exc
        return orch.residency.reload_loaded(pool, new_config, specs, mode, need)

    @staticmethod
    async def _shape(pool: Pool, new_config: PoolConfig) -> ModelShape:
        """The new model's shape, read in a worker thread (its VRAM fit is re-run, HARD-206)."""
        path = new_config.model_path
        assert path is not None
        try:
            return await asyncio.to_thread(read_model_shape, path)
        except (ModelShapeError, OSError) as exc:
            raise invalid_params(f"cannot size model {new_config.model_ref}: {exc}") from exc
