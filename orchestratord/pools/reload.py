"""Reloading a pool onto another model (HOME-505, ORCH-2102, ORCH-3031, OC-CTRL-2003, HARD-206).

The fit is decided first (``fit_reload``): the new model's need on each replica's devices,
beside the old engines that still hold theirs. When both fit, the new replicas (same devices,
next generation, their VRAM from the new model) start beside the old ones and must come up,
Ready and through the self-test. Only then does the pool switch: placement sees only the new
replicas, queued tasks carry over to them, and tasks already decoding finish on the old
ones, which are stopped once idle. If any new replica fails, the bring-ups still under way
are cancelled, all new replicas are stopped and the pool keeps serving the old model, with
the reason in ``last_error`` and in the reload's status.

When both cannot fit, the reload is refused with the numbers, unless the pool says
``reload_mode: stop-first``: then the old engines take no new task, finish what they
decode and stop, and the new ones start in their place (the pool serves nothing meanwhile;
if the new model fails, the old one is started again). The status, with its mode, is on
the pool's health (``reload``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from orchestratord.config import PoolConfig
from orchestratord.devices.accounting import DeviceAccounting
from orchestratord.devices.inventory import gib
from orchestratord.models.gguf_shape import ModelShape
from orchestratord.placement.fit import replica_need
from orchestratord.placement.plan import vram_shares
from orchestratord.replicas.replica import Replica, ReplicaSpec

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.pool")

BuildReplica = Callable[[PoolConfig, ReplicaSpec], Replica]
Mode = Literal["beside", "stop-first"]


class ReloadRefused(Exception):
    """The new model cannot be placed; the message gives the numbers."""


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Reload:
    from_model_ref: str
    to_model_ref: str
    started_ms: int = field(default_factory=_now_ms)
    state: Literal["starting", "switched", "rolled_back"] = "starting"
    finished_ms: int | None = None
    error: str | None = None
    mode: Mode = "beside"
    runner: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "starting"

    def view(self) -> dict[str, object]:
        return {
            "state": self.state,
            "from_model_ref": self.from_model_ref,
            "to_model_ref": self.to_model_ref,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "error": self.error,
            "mode": self.mode,
        }


def fit_reload(
    pool: Pool,
    new_config: PoolConfig,
    shape: ModelShape | None,
    devices: DeviceAccounting,
    reserve_bytes: int,
) -> tuple[list[ReplicaSpec], Mode]:
    """The new generation's specs (their VRAM from the new model) and how to start them;
    ReloadRefused when the new model fits neither beside the old one nor in its place."""
    generation = max((r.spec.generation for r in pool.replicas), default=0) + 1
    specs: list[ReplicaSpec] = []
    wanted: dict[int, int] = {}
    held: dict[int, int] = {}
    need = replica_need(new_config, shape, reserve_bytes) if shape is not None else None
    for replica in pool.replicas:
        old = replica.spec
        vram = vram_shares(new_config, need, old.devices) if need and old.devices else {}
        specs.append(dataclasses.replace(old, generation=generation, vram_bytes=vram))
        for index, size in vram.items():
            wanted[index] = wanted.get(index, 0) + size
        for index, size in old.vram_bytes.items():
            held[index] = held.get(index, 0) + size
    short = {i: size for i, size in wanted.items() if size > devices.room(i)}
    if not short:
        return specs, "beside"
    assert need is not None
    index = min(short)
    numbers = (
        f"the new model needs {gib(wanted[index])} on GPU{index} ({need.describe()}) and "
        f"GPU{index} has {gib(max(devices.room(index), 0))} free beside the old engines"
    )
    if new_config.reload_mode != "stop-first":
        raise ReloadRefused(
            f"pool {pool.id}: {numbers}; set reload_mode: stop-first to stop the old engines "
            "first, or free the memory"
        )
    if any(size > devices.room(i) + held.get(i, 0) for i, size in wanted.items()):
        raise ReloadRefused(
            f"pool {pool.id}: {numbers}, {gib(devices.room(index) + held.get(index, 0))} "
            "even without them"
        )
    return specs, "stop-first"


Switch = Callable[[list[Replica], PoolConfig], list[Replica]]


def start_reload(
    pool: Pool, new_config: PoolConfig, build: BuildReplica, specs: list[ReplicaSpec], mode: Mode,
    *, switch: Switch | None = None,
) -> Reload:  # fmt: skip
    """Start the reload; ``switch`` puts the new replicas in (the residency manager's, for
    an on-demand pool; else the pool's own)."""
    reload = Reload(pool.config.model_ref, new_config.model_ref, mode=mode)
    pool.reload = reload
    reload.runner = asyncio.get_running_loop().create_task(
        _run(pool, reload, new_config, build, specs, switch=switch or pool.switch),
        name=f"reload-{pool.id}",
    )
    log.warning("pool %s: reloading %s -> %s (%s)", pool.id, reload.from_model_ref,
                reload.to_model_ref, mode)  # fmt: skip
    return reload


async def bring_up_all(replicas: list[Replica]) -> list[bool]:
    """Start every replica; the first that fails cancels the bring-ups still under way, so
    no engine comes up after the rollback that follows."""
    tasks = [asyncio.create_task(r.bring_up(), name=f"bring-up-{r.id}") for r in replicas]
    try:
        for finished in asyncio.as_completed(tasks):
            if not await finished:
                break
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    return [outcome is True for outcome in outcomes]


async def _stop_idle(replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.held = True  # no new task; what it decodes finishes
    for replica in replicas:
        await replica.wait_idle()
        await replica.stop()


async def _run(
    pool: Pool, reload: Reload, new_config: PoolConfig, build: BuildReplica,
    specs: list[ReplicaSpec], *, switch: Switch,
) -> None:  # fmt: skip
    new: list[Replica] = []
    stopped: list[Replica] = []
    try:
        if reload.mode == "stop-first":
            stopped = list(pool.replicas)
            await _stop_idle(stopped)
        new = [build(new_config, spec) for spec in specs]
        pool.starting = new
        started = await bring_up_all(new)
    except Exception as exc:  # a replica that cannot even be built is a failed reload
        log.exception("pool %s: reload failed", pool.id)
        started = [False] * len(new)
        reload.error = f"the new engines could not be started: {exc}"
    except BaseException:
        await asyncio.gather(*(r.stop() for r in new), return_exceptions=True)
        pool.starting = []
        raise
    pool.starting = []
    if not new or not all(started) or not pool.accepting:
        reasons = [f"{r.id}: {r.last_error}" for r, ok in zip(new, started, strict=True) if not ok]
        reload.error = reload.error or "; ".join(reasons) or "orchestratord is shutting down"
        await asyncio.gather(*(r.stop() for r in new), return_exceptions=True)
        if stopped:
            await _restart_old(pool, stopped, build)
        reload.state = "rolled_back"
        reload.finished_ms = _now_ms()
        log.error("pool %s: reload rolled back, still serving %s: %s", pool.id,
                  reload.from_model_ref, reload.error)  # fmt: skip
        return
    old = switch(new, new_config)
    for replica in new:
        replica.supervise()
    reload.state = "switched"
    reload.finished_ms = _now_ms()
    log.warning("pool %s: now serving %s", pool.id, reload.to_model_ref)
    # Tasks already decoding finish on the old engines; then they go.
    for replica in old:
        if replica not in stopped:
            await replica.wait_idle()
            await replica.stop()
        pool.retiring.remove(replica)


async def _restart_old(pool: Pool, stopped: list[Replica], build: BuildReplica) -> None:
    """Stop-first rollback: the old model's engines again, as a generation of their own."""
    generation = max(r.spec.generation for r in stopped) + 2
    again = [
        build(pool.config, dataclasses.replace(r.spec, generation=generation)) for r in stopped
    ]
    await bring_up_all(again)
    for replica in pool.switch(again, pool.config):
        pool.retiring.remove(replica)
    for replica in again:
        replica.supervise()
