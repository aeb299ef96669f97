"""Start-up placement (HOME-1001, HOME-1004, ORCH-3011, ORCH-3012): which devices each replica gets.

A replica's VRAM need is read from its model file (``placement/fit.py``): the offloaded
weights, the KV cache for ``ctx_max x slots`` tokens, the compute buffer, and
``gpus.reserve_mb`` for the engine process on each device it uses. A device offers its
total VRAM minus what others use.

Pools are placed biggest need first, so a model that fits only the big card gets it before
smaller models fill it; pools may share devices (that is how two models share a box without
pinning), and VRAM is what cannot be shared. A replica is never placed outside its pool's
mask and never split across devices unless the pool gives ``tensor_split`` ratios. Anything
that cannot be placed is a :class:`PlacementError` naming the numbers, at start-up.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import Device, gib
from orchestratord.models.gguf_shape import ModelShape
from orchestratord.placement.fit import FitError, Need, replica_need
from orchestratord.replicas.replica import ReplicaSpec


class PlacementError(ValueError):
    """The configured pools cannot be placed on the devices; the message says why, in numbers."""


class _Devices:
    def __init__(self, devices: list[Device], source: str) -> None:
        self.by_index = {d.index: d for d in devices}
        self.free = {d.index: d.vram_total_bytes - d.vram_used_bytes for d in devices}
        self.source = source

    def describe(self, mask: list[int]) -> str:
        return ", ".join(
            f"GPU{i} {self.by_index[i].name} {gib(max(self.free[i], 0))} free" for i in mask
        )

    def check_mask(self, pool: PoolConfig) -> None:
        missing = [i for i in pool.devices if i not in self.by_index]
        if missing:
            known = ", ".join(f"{d.index} ({d.name})" for d in self.by_index.values()) or "none"
            raise PlacementError(
                f"pool {pool.id!r}: device {missing[0]} is not in the {self.source} inventory "
                f"(devices: {known})"
            )


def plan_replicas(
    pools: list[PoolConfig],
    devices: list[Device],
    *,
    reserve_bytes: int,
    source: str,
    shape_of: Callable[[PoolConfig], ModelShape],
) -> dict[str, list[ReplicaSpec]]:
    inventory = _Devices(devices, source)
    plans: dict[str, list[ReplicaSpec]] = {}
    gpu_pools: list[tuple[int, Need, PoolConfig]] = []
    on_demand: list[tuple[Need, PoolConfig]] = []
    for pool in pools:
        if pool.residency == "on-demand":
            plans[pool.id] = []  # placed when it loads (place_on_demand)
            if pool.devices:
                inventory.check_mask(pool)
                try:
                    need = replica_need(pool, shape_of(pool), reserve_bytes)
                except (PlacementError, FitError):
                    continue  # read again at each load; a load of an unreadable file fails
                on_demand.append((need, pool))
            continue
        if pool.endpoints:
            plans[pool.id] = [
                ReplicaSpec(pool.id, i, pool.slots, remote=e.url)
                for i, e in enumerate(pool.endpoints)
            ]
        elif not pool.devices:
            count = 1 if pool.replicas == "auto" else pool.replicas
            plans[pool.id] = [ReplicaSpec(pool.id, i, pool.slots) for i in range(count)]
        else:
            inventory.check_mask(pool)
            try:
                need = replica_need(pool, shape_of(pool), reserve_bytes)
            except FitError as exc:
                raise PlacementError(f"pool {pool.id!r}: {exc}") from exc
            gpu_pools.append((need.total(), need, pool))
    # Biggest first; ties keep config order (sorted is stable).
    for _, need, pool in sorted(gpu_pools, key=lambda item: -item[0]):
        if pool.tensor_split is not None:
            plans[pool.id] = _place_split(pool, need, inventory)
        else:
            plans[pool.id] = _place_whole(pool, need, inventory)
    for need, pool in on_demand:  # against what the pinned pools leave (RES-102)
        _check_could_fit(pool, need, inventory)
    return {pool.id: plans[pool.id] for pool in pools}


def _place_whole(pool: PoolConfig, fit: Need, inventory: _Devices) -> list[ReplicaSpec]:
    specs: list[ReplicaSpec] = []
    free = inventory.free
    need = fit.total()
    if pool.replicas == "auto":
        for index in sorted(pool.devices, key=lambda i: -free[i]):
            if need <= free[index]:
                free[index] -= need
                specs.append(_spec(pool, len(specs), (index,), None, {index: need}))
    else:
        for _ in range(pool.replicas):
            fitting = [i for i in pool.devices if need <= free[i]]
            if not fitting:
                break
            index = max(fitting, key=lambda i: free[i])
            free[index] -= need
            specs.append(_spec(pool, len(specs), (index,), None, {index: need}))
    wanted = 1 if pool.replicas == "auto" else pool.replicas
    if len(specs) < wanted:
        raise PlacementError(
            f"pool {pool.id!r}: model {pool.model_ref} needs {gib(need)} per replica "
            f"({fit.describe()}); placed {len(specs)} of {wanted} replicas, the rest fit no "
            f"device of mask {pool.devices} ({inventory.describe(pool.devices)}). Lower "
            f"ctx_max or slots, use a smaller quantization, offload fewer layers (gpu_layers) "
            f"or split it with tensor_split"
        )
    return specs


def _check_could_fit(pool: PoolConfig, fit: Need, inventory: _Devices) -> None:
    """An on-demand pool must fit its mask beside the pinned pools, with no other on-demand
    pool loaded (``inventory.free`` is what the pinned pools leave)."""
    if place_on_demand(pool, fit, inventory.free) is None:
        raise PlacementError(
            f"pool {pool.id!r}: model {pool.model_ref} needs {gib(fit.total())} per replica "
            f"({fit.describe()}) and fits no device of mask {pool.devices} beside the pinned "
            f"pools, even with no other on-demand pool loaded ({inventory.describe(pool.devices)}"
            " after the pinned pools)"
        )


def vram_shares(pool: PoolConfig, fit: Need, devices: tuple[int, ...]) -> dict[int, int]:
    """What one replica on ``devices`` takes from each: all of it on one device, or its
    split by ``tensor_split`` ratios, each device also holding the process's reserve."""
    if pool.tensor_split is None or len(devices) == 1:
        return {devices[0]: fit.total()}
    total = sum(pool.tensor_split)
    shared = fit.total(devices=0)  # the reserve is per device, not split
    return {
        index: math.ceil(shared * ratio / total) + fit.reserve_per_device
        for index, ratio in zip(devices, pool.tensor_split, strict=True)
    }


def _place_split(pool: PoolConfig, fit: Need, inventory: _Devices) -> list[ReplicaSpec]:
    assert pool.tensor_split is not None
    need = fit.total(devices=len(pool.devices))
    shares = vram_shares(pool, fit, tuple(pool.devices))
    count = 1 if pool.replicas == "auto" else pool.replicas
    specs: list[ReplicaSpec] = []
    free = inventory.free
    for _ in range(count):
        short = [i for i, share in shares.items() if share > free[i]]
        if short:
            i = short[0]
            raise PlacementError(
                f"pool {pool.id!r}: model {pool.model_ref} needs {gib(need)} per replica "
                f"({fit.describe()}); split {pool.tensor_split} puts {gib(shares[i])} on "
                f"GPU{i}, which has {gib(max(free[i], 0))} free "
                f"({inventory.describe(pool.devices)})"
            )
        for i, share in shares.items():
            free[i] -= share
        specs.append(
            _spec(pool, len(specs), tuple(pool.devices), tuple(pool.tensor_split), dict(shares))
        )
    return specs


def _spec(
    pool: PoolConfig,
    index: int,
    devices: tuple[int, ...],
    split: tuple[float, ...] | None,
    vram: dict[int, int],
) -> ReplicaSpec:
    return ReplicaSpec(pool.id, index, pool.slots, devices, split, vram)


def place_on_demand(
    pool: PoolConfig, fit: Need | None, room: dict[int, int]
) -> list[ReplicaSpec] | None:
    """Where an on-demand pool's load goes now (RES-102): the same fit as at start-up,
    against ``room`` (each device's free VRAM at this moment); None if it does not fit."""
    count = 1 if pool.replicas == "auto" else pool.replicas
    if not pool.devices or fit is None:
        return [ReplicaSpec(pool.id, i, pool.slots) for i in range(count)]
    free = dict(room)
    specs: list[ReplicaSpec] = []
    if pool.tensor_split is not None:
        shares = vram_shares(pool, fit, tuple(pool.devices))
        for _ in range(count):
            if any(share > free.get(i, 0) for i, share in shares.items()):
                return None
            for i, share in shares.items():
                free[i] -= share
            specs.append(_spec(pool, len(specs), tuple(pool.devices),
                               tuple(pool.tensor_split), dict(shares)))  # fmt: skip
        return specs
    need = fit.total()
    for _ in range(count):
        fitting = [i for i in pool.devices if need <= free.get(i, 0)]
        if not fitting:
            return None
        index = max(fitting, key=lambda i: free[i])
        free[index] -= need
        specs.append(_spec(pool, len(specs), (index,), None, {index: need}))
    return specs
