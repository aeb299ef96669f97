"""Sizing pools from their model files: the start-up plan, and a need read again at a load.

The start-up plan (``plan_replicas``) places pinned pools; an on-demand GPU pool only gets
its need here, for the residency planner's later loads (RES-102). An on-demand pool whose
file cannot be read is not a start-up error: ``need_now`` reads it again at each load, and
the load fails until the file is fixed. Each llama.cpp GPU pool's need is logged beside
``llama-fit-params``' own figure when that tool is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from orchestratord.config import Config, Engine, PoolConfig
from orchestratord.devices.inventory import MIB, DeviceInventory
from orchestratord.models.gguf_shape import ModelShape, ModelShapeError, read_model_shape
from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.placement.fit import FitError, Need, replica_need
from orchestratord.placement.fit_check import log_cross_check
from orchestratord.placement.plan import PlacementError, plan_replicas
from orchestratord.replicas.engine_process import llama_server_binary
from orchestratord.replicas.replica import ReplicaSpec


class PoolSizer:
    def __init__(
        self, config: Config, model_path_for: Callable[[PoolConfig], Path], cache_dir: Path
    ) -> None:
        self.config = config
        self.model_path_for = model_path_for
        self.cache_dir = cache_dir
        self.reserve = config.gpus.reserve_mb * MIB

    def shape(self, pc: PoolConfig) -> ModelShape:
        path = self.model_path_for(pc)
        if pc.model_path is None:
            ensure_tiny_model(self.cache_dir)
        try:
            return read_model_shape(path)
        except (ModelShapeError, OSError) as exc:
            raise PlacementError(f"pool {pc.id!r}: cannot size the model: {exc}") from exc

    def need_now(self, pc: PoolConfig) -> Need:
        """One replica's VRAM need, read from the model file now (an on-demand load)."""
        try:
            return replica_need(pc, self.shape(pc), self.reserve)
        except FitError as exc:
            raise PlacementError(f"pool {pc.id!r}: {exc}") from exc

    def plan(
        self, inventory: DeviceInventory | None
    ) -> tuple[dict[str, list[ReplicaSpec]], dict[str, Need]]:
        """Start-up placement, and each GPU pool's need (an on-demand pool's for its loads)."""
        specs = plan_replicas(
            list(self.config.pools),
            inventory.devices() if inventory is not None else [],
            reserve_bytes=self.reserve,
            source=inventory.source if inventory is not None else "empty",
            shape_of=self.shape,
        )
        needs: dict[str, Need] = {}
        for pc in self.config.pools:
            if not pc.devices or pc.endpoints:
                continue
            try:
                need = needs[pc.id] = self.need_now(pc)
            except PlacementError:
                continue  # an on-demand pool's unreadable file: each load reads it again
            if pc.engine is Engine.LLAMACPP:  # llama.cpp's own arithmetic beside ours, logged
                binary = pc.llamacpp.binary or llama_server_binary()
                log_cross_check(binary, self.model_path_for(pc), pc, need)
        return specs, needs
