"""The app factory: config in, Falcon ASGI app out, with every collaborator injectable.

Tests hand :class:`Orchestrator` ready-made adapters (the mock engine) per pool id; the CLI
lets it build the real ones (a supervised ``llama-server`` per llama.cpp pool). Pools are
started by the ASGI lifespan, so uvicorn reports the app as started only once preload ran.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

from orchestratord.adapters.base import EngineAdapter
from orchestratord.api import error_handlers
from orchestratord.api.artifacts import ArtifactResource, ArtifactsResource
from orchestratord.api.capabilities import CapabilitiesResource
from orchestratord.api.catalog import (
    CatalogModelResource,
    CatalogModelsResource,
    CatalogPullResource,
    CatalogStateResource,
    CatalogVerifyResource,
)
from orchestratord.api.metrics_endpoint import MetricsResource
from orchestratord.api.middleware import (
    METRICS_PATH,
    AuthMiddleware,
    CorrelationIdMiddleware,
    metrics_open,
)
from orchestratord.api.planned import add_planned_routes
from orchestratord.api.pools import (
    PoolDrainResource,
    PoolHealthResource,
    PoolReloadResource,
    PoolResumeResource,
    PoolUnloadResource,
)
from orchestratord.api.replicasets import ReplicaSetsResource
from orchestratord.api.sessions import SessionResource
from orchestratord.api.stream import TaskStreamResource
from orchestratord.api.tasks import TaskCancelResource, TasksResource
from orchestratord.api.tools import ToolFetchResource
from orchestratord.catalog.catalog import Catalog
from orchestratord.catalog.pull import Puller
from orchestratord.config import Config, PoolConfig
from orchestratord.core.admission import Admission
from orchestratord.core.cancel import Canceller
from orchestratord.core.registry import TaskRegistry
from orchestratord.core.sessions import Sessions
from orchestratord.core.task import Task
from orchestratord.core.waiting import WaitingRoom
from orchestratord.devices.accounting import DeviceAccounting
from orchestratord.devices.inventory import MIB, DeviceInventory
from orchestratord.devices.open import open_inventory
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics
from orchestratord.models.tiny_gguf import (
    TINY_MODEL_FILENAME,
    TINY_MODEL_REF,
    default_cache_dir,
    ensure_tiny_model,
)
from orchestratord.outbound.audit import AuditLog
from orchestratord.outbound.client import OutboundClient
from orchestratord.outbound.policy import Policy
from orchestratord.outbound.redact import Redactor
from orchestratord.outbound.resolver import Resolver, SystemResolver
from orchestratord.placement.sizing import PoolSizer
from orchestratord.pools.pool import Pool
from orchestratord.replicas.factory import ReplicaFactory
from orchestratord.replicas.replica import Replica, ReplicaSpec
from orchestratord.replicas.runner import log_task_end
from orchestratord.residency.manager import ResidencyManager
from orchestratord.store.artifacts import Artifacts
from orchestratord.store.db import Store
from orchestratord.tools.fetch import FetchTool
from orchestratord.tracing import Tracing

log = logging.getLogger("orchestratord")

AsgiApp = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]

# Longer than the adapter's own wait for the engine to release a slot.
_CANCEL_WAIT_S = 10.0
# sockaddr_un.sun_path holds 108 bytes on Linux, 104 on macOS.
_UNIX_PATH_MAX = 100


class _Lifespan:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def process_startup(self, scope: object, event: object) -> None:
        await self.orch.start()

    async def process_shutdown(self, scope: object, event: object) -> None:
        await self.orch.stop()


class Orchestrator:
    def __init__(
        self,
        config: Config,
        *,
        token: str,
        adapters: Mapping[str, EngineAdapter | Sequence[EngineAdapter]] | None = None,
        adapter_factory: Callable[[PoolConfig, ReplicaSpec], EngineAdapter] | None = None,
        inventory: DeviceInventory | None = None,
        store: Store | None = None,
        span_exporter: Any = None,
        resolver: Resolver | None = None,
        on_started: Callable[[Orchestrator], None] | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.tracing = Tracing(config.tracing, span_exporter)
        outbound = config.outbound
        self.redactor = Redactor(
            [token], list(outbound.redact_patterns), list(outbound.redact_query_params)
        )
        self._system_resolver: SystemResolver | None = None
        if resolver is None:
            resolver = self._system_resolver = SystemResolver(outbound.dns_timeout_ms / 1000)
        self.outbound = OutboundClient(
            Policy(outbound, resolver),
            self.redactor,
            AuditLog(
                config.resolved_state_dir() / "tool-audit.jsonl",
                outbound.audit_max_bytes,
                outbound.audit_keep,
            ),
        )
        self.fetch_tool = FetchTool(self.outbound, config.tools)
        self.sessions = Sessions(
            config.sessions.ttl_ms / 1000,
            config.sessions.max_turns,
            config.sessions.budgets,
            max_live=config.sessions.max_live,
        )
        self.store = store or Store(config.resolved_state_dir() / "llorch.db")
        self.artifacts = Artifacts(
            self.store, config.server.max_artifacts, config.server.max_artifact_store_bytes
        )
        self.cache_dir = config.cache_dir or default_cache_dir()
        self.catalog = Catalog(
            self.store,
            self.metrics,
            trust_policy=config.catalog.trust_policy,
            max_entries=config.catalog.max_entries,
            model_dirs=list(config.catalog.model_dirs) or [self.cache_dir / "models"],
        )
        self.catalog.load()
        self.puller = Puller(self.catalog, self.cache_dir, config.catalog, self.outbound)
        self.registry = TaskRegistry(
            config.server.task_retention_s,
            config.server.max_retained_tasks,
            config.server.max_retained_bytes,
        )
        self.inventory = inventory if inventory is not None else open_inventory(config)
        self.devices = DeviceAccounting(self.inventory, config.gpus.reserve_mb * MIB)
        self.factory = ReplicaFactory(
            config,
            self.metrics,
            self.catalog,
            self.cache_dir,
            injected=adapters,
            adapter_factory=adapter_factory,
        )
        self.factory.placement_check = self.devices.cpu_fallback
        self.factory.session_live = self._session_live
        self.sizer = PoolSizer(config, self._model_path_for, self.cache_dir)
        specs, needs = self.sizer.plan(self.inventory)
        self.pools = {pc.id: self._build_pool(pc, specs[pc.id]) for pc in config.pools}
        self.devices.refresh(self.replicas(), self.metrics)
        self.canceller = Canceller(self.pools, self.metrics)
        self.cancel, self.cancel_now = self.canceller.cancel, self.canceller.cancel_now
        self.residency = ResidencyManager(
            self.pools,
            self.factory.build,
            devices=self.devices,
            config=config.residency,
            metrics=self.metrics,
            needs=needs,
            size=self.sizer.need_now,
            model_path=self._model_path_for,
        )
        self.waiting = WaitingRoom(self.pools)
        self.residency.load_began = self.waiting.load_began
        self.admission = Admission(
            config,
            self.pools,
            self.registry,
            self.metrics,
            self.task_finished,
            sessions=self.sessions,
            model_refusal=self.catalog.refuses,
            unplaceable=self.residency.unplaceable,
        )
        self.on_started = on_started
        self._shutdown: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app = self._build_app(token)

    def replicas(self) -> list[Replica]:
        return [r for pool in self.pools.values() for r in pool.replicas]

    def _model_path_for(self, pc: PoolConfig) -> Path:
        return self.factory.model_path_for(pc.model_ref, pc.model_path)

    def _build_pool(self, pc: PoolConfig, specs: list[ReplicaSpec]) -> Pool:
        replicas = self.factory.initial(pc, specs)
        pool = Pool(pc, replicas, self.metrics, free_vram=self.devices.free_vram)
        if pc.model_ref == TINY_MODEL_REF and pc.model_path is None:
            pool.model_file = self.cache_dir / "models" / TINY_MODEL_FILENAME
        return pool

    def _session_live(self, session_id: str) -> bool:
        if not self.config.sessions.affinity:
            return False  # no slot is kept for anyone
        return self.sessions.get(session_id) is not None

    def _build_app(self, token: str) -> AsgiApp:
        server = self.config.server
        open_paths = (
            frozenset({METRICS_PATH})
            if metrics_open(server.metrics_auth, server.host)
            else frozenset()
        )
        middleware: list[Any] = [
            _Lifespan(self),
            CorrelationIdMiddleware(),
            AuthMiddleware(token, open_paths),
        ]
        app: AsgiApp = falcon.asgi.App(middleware=middleware, cors_enable=False)
        app.req_options.strip_url_path_trailing_slash = True
        error_handlers.install(app)
        stream = TaskStreamResource(self)
        app.add_route("/v1/tasks", TasksResource(self, stream))
        app.add_route("/v1/tasks/{task_id}/stream", stream)
        app.add_route("/v1/tasks/{task_id}/cancel", TaskCancelResource(self))
        app.add_route("/v1/capabilities", CapabilitiesResource(self))
        app.add_route("/v1/pools/{pool_id}/health", PoolHealthResource(self))
        app.add_route("/v1/pools/{pool_id}/drain", PoolDrainResource(self))
        app.add_route("/v1/pools/{pool_id}/resume", PoolResumeResource(self))
        app.add_route("/v1/pools/{pool_id}/reload", PoolReloadResource(self))
        app.add_route("/v1/pools/{pool_id}/unload", PoolUnloadResource(self))
        app.add_route("/v1/replicasets", ReplicaSetsResource(self))
        app.add_route("/v1/sessions/{session_id}", SessionResource(self))
        app.add_route("/v1/tools/fetch", ToolFetchResource(self))
        app.add_route("/v1/catalog/models", CatalogModelsResource(self))
        app.add_route("/v1/catalog/models/{model_id}", CatalogModelResource(self))
        app.add_route("/v1/catalog/models/{model_id}/verify", CatalogVerifyResource(self))
        app.add_route("/v1/catalog/models/{model_id}/pull", CatalogPullResource(self))
        app.add_route("/v1/catalog/models/{model_id}/state", CatalogStateResource(self))
        app.add_route("/v1/artifacts", ArtifactsResource(self))
        app.add_route("/v1/artifacts/{artifact_id}", ArtifactResource(self))
        app.add_route(METRICS_PATH, MetricsResource(self.metrics))
        add_planned_routes(app)
        return app

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        generated = [p for p in self.config.pools if p.model_ref == TINY_MODEL_REF]
        if any(p.model_path is None and not p.endpoints for p in generated):
            await asyncio.to_thread(ensure_tiny_model, self.cache_dir)
        await asyncio.gather(*(pool.start() for pool in self.pools.values()))
        self.residency.start()
        self.waiting.start()
        self._monitor = asyncio.create_task(self._monitor_devices(), name="device-monitor")
        if self.on_started is not None:
            self.on_started(self)

    async def _monitor_devices(self) -> None:
        """Free VRAM for placement, the GPU and session gauges, every monitor interval."""
        interval = self.config.server.device_monitor_interval_ms / 1000
        while True:
            try:
                await self.devices.refresh_off_loop(self.replicas(), self.metrics)
            except Exception:  # a driver error must not end the monitor
                log.exception("device monitor: reading the GPUs failed")
            self.metrics.sessions_active.set(self.sessions.live_count())
            await asyncio.sleep(interval)

    def task_finished(self, task: Task) -> None:
        """Every task passes here exactly once, at its terminal frame."""
        self.registry.finished(task)
        self.sessions.task_finished(task)
        pool = self.pools[task.pool_id]
        pool.residency.set_keep_alive(task.keep_alive_ms)
        self.tracing.task_finished(task, pool.id)
        log_task_end(task, engine=pool.engine, pool_id=pool.id, model_id=pool.config.model_ref)

    def begin_shutdown(self, grace_s: float) -> asyncio.Task[None]:
        """SIGTERM: refuse new tasks (503) and end queued ones now; running tasks may
        finish for ``grace_s``, then every one still open ends with a terminal frame."""
        if self._shutdown is None:
            for pool in self.pools.values():
                pool.accepting = False
                pool.end_queued(ErrorCode.POOL_UNAVAILABLE, "orchestratord is shutting down")
            self._shutdown = asyncio.get_running_loop().create_task(self._finish_running(grace_s))
        return self._shutdown

    async def _finish_running(self, grace_s: float) -> None:
        idle = asyncio.gather(*(pool.wait_idle() for pool in self.pools.values()))
        try:
            await asyncio.wait_for(asyncio.shield(idle), grace_s)
        except TimeoutError:
            for pool in self.pools.values():
                pool.end_running(
                    ErrorCode.POOL_UNAVAILABLE, "orchestratord shut down before the task finished"
                )
            await idle

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
        await self.waiting.stop()
        await self.residency.stop()
        await self.begin_shutdown(0.0)
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
        await self.puller.stop()
        await self.catalog.stop()
        self.store.close()
        self.tracing.shutdown()
        if self._system_resolver is not None:
            self._system_resolver.close()


def create_app(
    config: Config,
    *,
    token: str,
    adapters: Mapping[str, EngineAdapter | Sequence[EngineAdapter]] | None = None,
    inventory: DeviceInventory | None = None,
    store: Store | None = None,
) -> AsgiApp:
    """Build the ASGI app for ``config``; ``adapters`` replaces engines by pool id (one, or
    one per replica), ``inventory`` the GPUs and ``store`` the database (tests)."""
    orch = Orchestrator(config, token=token, adapters=adapters, inventory=inventory, store=store)
    return orch.app
