"""Start-up placement (HOME-1001, HOME-1004, ORCH-3011, ORCH-3012): which devices each replica gets.

A replica's VRAM need is read from its model file (``models/gguf_shape.py``): the weights
plus the KV cache for ``ctx_max x slots`` tokens of the cache type in the pool's
``llamacpp.extra_args`` (f16 unless ``--cache-type-k/-v`` say otherwise). A device offers its
total VRAM minus what others use minus ``gpus.reserve_mb`` (CUDA context, compute buffers).

Pools are placed biggest need first, so a model that fits only the big card gets it before
smaller models fill it; pools may share devices (that is how two models share a box without
pinning), and VRAM is what cannot be shared. A replica is never placed outside its pool's
mask and never split across devices unless the pool gives ``tensor_split`` ratios. Anything
that cannot be placed is a :class:`PlacementError` naming the numbers, at start-up.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import Device, gib
from orchestratord.models.gguf_shape import CACHE_TYPE_BYTES, ModelShape
from orchestratord.replicas.replica import ReplicaSpec

_CACHE_FLAGS = {"--cache-type-k": "k", "-ctk": "k", "--cache-type-v": "v", "-ctv": "v"}


class PlacementError(ValueError):
    """The configured pools cannot be placed on the devices; the message says why, in numbers."""


def cache_types(extra_args: list[str]) -> tuple[str, str]:
    types = {"k": "f16", "v": "f16"}
    for flag, value in itertools.pairwise(extra_args):
        which = _CACHE_FLAGS.get(flag)
        if which is not None:
            if value not in CACHE_TYPE_BYTES:
                raise PlacementError(f"unknown KV cache type {value!r} in {flag}")
            types[which] = value
    return types["k"], types["v"]


def replica_need(pool: PoolConfig, shape: ModelShape) -> tuple[int, str]:
    """VRAM one replica of ``pool`` needs, and how that number was made."""
    k_type, v_type = cache_types(pool.llamacpp.extra_args)
    tokens = pool.ctx_max * pool.slots
    kv = shape.kv_bytes(tokens, k_type, v_type)
    how = (
        f"weights {gib(shape.weights_bytes)} + KV cache {gib(kv)} for ctx {pool.ctx_max} x "
        f"{pool.slots} slots ({k_type}/{v_type})"
    )
    return shape.weights_bytes + kv, how


class _Devices:
    def __init__(self, devices: list[Device], reserve_bytes: int, source: str) -> None:
        self.by_index = {d.index: d for d in devices}
        self.free = {
            d.index: d.vram_total_bytes - d.vram_used_bytes - reserve_bytes for d in devices
        }
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
    inventory = _Devices(devices, reserve_bytes, source)
    plans: dict[str, list[ReplicaSpec]] = {}
    gpu_pools: list[tuple[int, str, PoolConfig]] = []
    for pool in pools:
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
            need, how = replica_need(pool, shape_of(pool))
            gpu_pools.append((need, how, pool))
    # Biggest first; ties keep config order (sorted is stable).
    for need, how, pool in sorted(gpu_pools, key=lambda item: -item[0]):
        if pool.tensor_split is not None:
            plans[pool.id] = _place_split(pool, need, how, inventory)
        else:
            plans[pool.id] = _place_whole(pool, need, how, inventory)
    return {pool.id: plans[pool.id] for pool in pools}


def _place_whole(pool: PoolConfig, need: int, how: str, inventory: _Devices) -> list[ReplicaSpec]:
    specs: list[ReplicaSpec] = []
    free = inventory.free
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
            f"pool {pool.id!r}: model {pool.model_ref} needs {gib(need)} per replica ({how}); "
            f"placed {len(specs)} of {wanted} replicas, the rest fit no device of mask "
            f"{pool.devices} ({inventory.describe(pool.devices)}). Lower ctx_max or slots, "
            f"use a smaller quantization, or split it with tensor_split"
        )
    return specs


def _place_split(pool: PoolConfig, need: int, how: str, inventory: _Devices) -> list[ReplicaSpec]:
    assert pool.tensor_split is not None
    total = sum(pool.tensor_split)
    shares = {
        index: math.ceil(need * ratio / total)
        for index, ratio in zip(pool.devices, pool.tensor_split, strict=True)
    }
    count = 1 if pool.replicas == "auto" else pool.replicas
    specs: list[ReplicaSpec] = []
    free = inventory.free
    for _ in range(count):
        short = [i for i, share in shares.items() if share > free[i]]
        if short:
            i = short[0]
            raise PlacementError(
                f"pool {pool.id!r}: model {pool.model_ref} needs {gib(need)} per replica "
                f"({how}); split {pool.tensor_split} puts {gib(shares[i])} on GPU{i}, which "
                f"has {gib(max(free[i], 0))} free ({inventory.describe(pool.devices)})"
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
