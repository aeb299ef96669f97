"""The residency planner (RES-101..106): the one place that loads and unloads on-demand pools.

It wakes whenever a pool's queue or running set changes (``Pool.on_change``) or a timer is
due (a keep-alive, a failure's backoff, a swap's wait), and takes one look at all on-demand
pools:

1. a failed pool whose backoff is over may load again;
2. a loaded pool that has had nothing to do for its keep-alive is unloaded; one closed for a
   swap is unloaded once its running tasks are done;
3. pools with queued tasks and no engines, oldest waiting task first, are loaded where the
   VRAM fit (``placement/plan.py``) finds room and ``max_loaded`` allows. If there is no
   room, idle loaded pools are unloaded to make it, the cheapest to lose first (last load
   time x recent demand); under concurrent traffic an idle pool keeps a moment for its next
   task first (``_want``). If no idle pool can make room, the task waits; once it has waited
   ``swap_wait_ms`` and a busy pool standing in its way has itself been loaded that long, that
   pool is closed: it takes no new task, finishes what runs, and is swapped out.

Loads and unloads run as tasks of their own, so admission, streams and every other pool go
on meanwhile. A failed load ends the tasks waiting for it with ``MODEL_LOAD_FAILED``, puts
the pool in its backoff, and touches nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from orchestratord.config import Engine, PoolConfig, ResidencyConfig
from orchestratord.devices.accounting import DeviceAccounting
from orchestratord.devices.inventory import gib
from orchestratord.errors import ErrorCode
from orchestratord.metrics import Metrics
from orchestratord.models.digest import sha256_file
from orchestratord.models.file_facts import remembered
from orchestratord.models.vocab import max_token_bytes
from orchestratord.placement.fit import Need
from orchestratord.placement.plan import PlacementError, place_on_demand
from orchestratord.pools.pool import Pool
from orchestratord.pools.reload import Mode, Reload, start_reload
from orchestratord.replicas.engine_process import EngineStartError
from orchestratord.replicas.replica import Replica, ReplicaSpec
from orchestratord.residency.state import State, estimate_load_s

log = logging.getLogger("orchestratord.residency")

BuildReplica = Callable[[PoolConfig, ReplicaSpec], Replica]
_IDLE_WAKE_S = 60.0
_IN_DEMAND_WAITS = 4  # asked for under concurrent traffic this many swap waits back: kept a moment


class ResidencyManager:
    def __init__(
        self,
        pools: dict[str, Pool],
        build: BuildReplica,
        *,
        devices: DeviceAccounting,
        config: ResidencyConfig,
        metrics: Metrics,
        needs: dict[str, Need],
        size: Callable[[PoolConfig], Need] | None = None,
        model_path: Callable[[PoolConfig], Path] | None = None,
    ) -> None:
        self.pools = pools
        self.build = build
        self.devices = devices
        self.config = config
        self.metrics = metrics
        self.needs = needs  # on-demand GPU pools: one replica's VRAM need
        self.size = size  # reads a need the start-up could not (the file was unreadable)
        self.model_path = model_path
        self.load_began: Callable[[Pool], None] = lambda pool: None  # tells waiting streams
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping: list[Replica] = []  # unloaded, their engines not yet exited
        self._made_way: dict[str, str] = {}  # pool closed for a swap -> the pool it is for
        self._sizing: set[str] = set()  # pools whose model is being read for its need
        self.steps = 0  # looks taken: a bounded number per event (RES-108)
        for pool in self.on_demand():
            pool.on_change = self._changed

    def on_demand(self) -> list[Pool]:
        return [p for p in self.pools.values() if p.residency.on_demand]

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.on_demand():
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name="residency-planner"
            )
            self._job(self._warm_file_facts(), "warm-model-facts")
        self._publish()

    async def _warm_file_facts(self) -> None:
        """Hash and read each on-demand model file now, so that no load waits for it."""
        if self.model_path is None:
            return
        for pool in self.on_demand():
            if pool.config.engine is not Engine.LLAMACPP or pool.config.endpoints:
                continue
            try:
                path = self.model_path(pool.config)
                await asyncio.to_thread(remembered, sha256_file, path)
                await asyncio.to_thread(remembered, max_token_bytes, path)
            except Exception as exc:  # a bad file fails its load, with the reason, later
                log.info("pool %s: model file not read ahead: %s", pool.id, exc)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)

    def _changed(self, pool: Pool) -> None:
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = self.step(time.monotonic())
            except Exception:  # the planner must outlive a bug in one step
                log.exception("residency planner step failed")
                delay = 1.0
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    # --- one look at everything ---------------------------------------------------------------

    def step(self, now: float) -> float:
        """Decide; returns how long until something is due by the clock."""
        self.steps += 1
        wake_at = now + _IDLE_WAKE_S
        pools = [p for p in self.on_demand() if p.accepting]
        for pool in pools:
            wake_at = min(wake_at, self._expire(pool, now))
        wanting = [p for p in pools if p.residency.state is State.UNLOADED and len(p.queue) > 0]
        for pool in sorted(wanting, key=_oldest_admission):
            wake_at = min(wake_at, self._want(pool, now))
        self._publish()
        return max(0.0, wake_at - now)

    def _expire(self, pool: Pool, now: float) -> float:
        residency = pool.residency
        if residency.state is State.FAILED:
            assert residency.failed_until is not None
            if now < residency.failed_until:
                return residency.failed_until
            residency.state, residency.failure, residency.failed_until = State.UNLOADED, None, None
            return math.inf
        if residency.state is not State.LOADED or _reloading(pool):
            return math.inf  # a reload's end wakes the planner
        if residency.closing:
            if not self._still_wanted(pool):
                self._reopen(pool)  # the pool it closed for wants nothing now: serve on
            else:
                if not pool.running:
                    self._unload(pool, "swap")
                return math.inf
        if len(pool.queue) or pool.running or pool.counting or residency.idle_since is None:
            return math.inf
        expiry = residency.idle_since + residency.keep_alive_s
        if now >= expiry:
            self._unload(pool, "idle")
            return math.inf
        return expiry

    def _want(self, pool: Pool, now: float) -> float:
        """Load ``pool`` if it fits; else make room or wait. Returns when to look again."""
        residency = pool.residency
        if self._owes_turn(pool):
            return math.inf  # the load it made way for pokes the planner
        if pool.config.devices and pool.id not in self.needs:
            self._size_later(pool)
            return math.inf  # the sizing's end wakes the planner
        specs = self._place(pool, self._room(), self._loaded_count())
        if specs is not None:
            residency.blocked = False
            self._load(pool, specs)
            return math.inf
        residency.blocked = True
        if any(p.residency.state is State.UNLOADING for p in self.on_demand()):
            return math.inf  # room is on its way; the unload's end wakes us
        swap_wait = self.config.swap_wait_ms / 1000
        waited = now - _oldest_admission(pool)
        idle = self._idle_candidates(pool)
        # An idle pool gives way at once, unless the traffic is concurrent (it was asked
        # for, within the last four swap waits, while another pool had work): then it is
        # held for its next task, as if still busy, until it has been idle for what
        # reloading it would cost (its last load time), or the newcomer has waited the swap
        # wait. A hold that ended without a task (its clients were the ones now waiting for
        # the other model) is not tried again for the next few evictions of that pool; one
        # that got its task keeps being tried. One user taking turns between models waits
        # for nothing but the load.
        # The cheapest pools to lose go, when they may; a costlier one is not taken instead
        # just because it may go sooner.
        victims = self._choose(pool, idle, now)
        later = [self._held_until(p, now, now + swap_wait - waited) for p in victims]
        for victim, until in zip(victims, later, strict=True):
            if until > now and victim.residency.holding_since is None:
                victim.residency.holding_since = now
        if victims and all(at <= now for at in later):
            for victim in victims:
                victim.residency.hold_ended_unpaid()
                self._unload(victim, "evicted")
            return math.inf
        due = now + swap_wait - waited
        if now >= due:
            turn_over = [p for p in self._busy_candidates(pool) if self._turn_over(p, now)]
            blockers = self._choose(pool, turn_over, now)
            if blockers:
                for blocker in blockers:
                    self._close(blocker, pool)
                return math.inf
        # Only what is still ahead is a reason to wake: a time already past was acted on in
        # this look, and what remains (a load, an unload, a closed pool's last task, the
        # task's deadline) ends in an event that wakes the planner (RES-108).
        closable_at = [max(due, self._turn_ends(p)) for p in self._busy_candidates(pool)]
        return _earliest([*later, *closable_at], now)

    def _held_until(self, pool: Pool, now: float, newcomer_due: float) -> float:
        """Until when an idle ``pool`` keeps the card for its own next task."""
        residency = pool.residency
        swap_wait = self.config.swap_wait_ms / 1000
        if not _contended_since(pool, now - _IN_DEMAND_WAITS * swap_wait):
            return now
        if not residency.worth_holding():
            return now
        idle_since = residency.idle_since if residency.idle_since is not None else now
        return max(now, min(idle_since + min(swap_wait, residency.load_s), newcomer_due))

    def _size_later(self, pool: Pool) -> None:
        """Read the need the start-up could not, in a worker thread (a GGUF parse must not
        stall the loop, HARD-204); a need that still cannot be read fails the load."""
        if pool.id in self._sizing:
            return
        size = self.size
        if size is None:
            self._failed(pool, "its model was never sized")
            return
        self._sizing.add(pool.id)
        config = pool.config

        async def sizing() -> None:
            try:
                self.needs[pool.id] = await asyncio.to_thread(size, config)
            except PlacementError as exc:
                self._failed(pool, str(exc))
            finally:
                self._sizing.discard(pool.id)
                self.poke()

        self._job(sizing(), f"size-{pool.id}")

    def _idle_for(self, pool: Pool, now: float) -> float:
        since = pool.residency.idle_since
        return now - since if since is not None else 0.0

    # --- room -------------------------------------------------------------------------------

    def _all_replicas(self) -> list[Replica]:
        pooled = [r for p in self.pools.values() for r in (*p.replicas, *p.retiring, *p.starting)]
        return pooled + self._stopping

    def unplaceable(self, pool: Pool) -> str | None:
        """Why a task for ``pool`` has nothing to wait for: its load would not fit even with
        every on-demand pool unloaded (the pinned pools and other processes hold the rest);
        None when it may load now or once something unloads (RES-102)."""
        if not pool.residency.on_demand or pool.residency.state is not State.UNLOADED:
            return None
        return self.never_fits(pool.config, self.needs.get(pool.id))

    def never_fits(self, config: PoolConfig, need: Need | None) -> str | None:
        """Why ``config``'s model fits none of its devices even with every on-demand pool
        unloaded, or None."""
        if not config.devices or need is None:
            return None
        room = self._room()
        for other in self.on_demand():
            for replica in (*other.replicas, *other.retiring, *other.starting):
                for index, size in replica.spec.vram_bytes.items():
                    room[index] = room.get(index, 0) + size
        for replica in self._stopping:
            for index, size in replica.spec.vram_bytes.items():
                room[index] = room.get(index, 0) + size
        if place_on_demand(config, need, room) is not None:
            return None
        free = ", ".join(f"GPU{i} {gib(max(room.get(i, 0), 0))}" for i in config.devices)
        return (
            f"model {config.model_ref} needs {gib(need.total())} per replica and its "
            f"devices have {free} free with every on-demand model unloaded (the pinned pools "
            "and other processes hold the rest)"
        )

    def _room(self) -> dict[int, int]:
        return self.devices.room_for_load(self._all_replicas())

    def _loaded_count(self) -> int:
        busy = (State.LOADED, State.LOADING, State.UNLOADING)
        return sum(1 for p in self.on_demand() if p.residency.state in busy)

    def _place(self, pool: Pool, room: dict[int, int], loaded: int) -> list[ReplicaSpec] | None:
        if self.config.max_loaded is not None and loaded >= self.config.max_loaded:
            return None
        return place_on_demand(pool.config, self.needs.get(pool.id), room)

    def _idle_candidates(self, wanting: Pool) -> list[Pool]:
        return [
            p for p in self.on_demand()
            if p is not wanting and p.residency.state is State.LOADED and not _reloading(p)
            and not p.residency.closing and not len(p.queue) and not p.running
            and not p.counting
        ]  # fmt: skip

    def _busy_candidates(self, wanting: Pool) -> list[Pool]:
        return [
            p for p in self.on_demand()
            if p is not wanting and p.residency.state is State.LOADED and not _reloading(p)
            and not p.residency.closing and (len(p.queue) or p.running or p.counting)
        ]  # fmt: skip

    def _turn_ends(self, pool: Pool) -> float:
        loaded_at = pool.residency.loaded_at or 0.0
        return loaded_at + self.config.swap_wait_ms / 1000

    def _turn_over(self, pool: Pool, now: float) -> bool:
        return now >= self._turn_ends(pool)

    def _choose(self, wanting: Pool, candidates: Iterable[Pool], now: float) -> list[Pool]:
        """The cheapest set of ``candidates`` whose unloading lets ``wanting`` load, or []."""

        def cost(pool: Pool) -> float:
            residency = pool.residency
            return residency.load_s * (1 + residency.recent_demand(now))

        room, loaded = self._room(), self._loaded_count()
        chosen: list[Pool] = []
        for candidate in sorted(candidates, key=cost):
            chosen.append(candidate)
            loaded -= 1
            for replica in candidate.replicas:
                for index, size in replica.spec.vram_bytes.items():
                    room[index] = room.get(index, 0) + size
            if self._place(wanting, room, loaded) is not None:
                return chosen
        return []

    # --- loads and unloads --------------------------------------------------------------------

    def _job(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        job = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def _load(self, pool: Pool, specs: list[ReplicaSpec]) -> None:
        residency = pool.residency
        residency.state = State.LOADING
        residency.loading_since = time.monotonic()
        residency.devices = tuple(sorted({d for spec in specs for d in spec.devices}))
        log.info("pool %s: loading %s (%s)", pool.id, pool.config.model_ref,
                 ", ".join(_where(s) for s in specs))  # fmt: skip
        try:
            replicas = [self.build(pool.config, spec) for spec in specs]
        except Exception as exc:
            log.exception("pool %s: load failed", pool.id)
            self._failed(pool, _public(exc))
            self.poke()  # the next look sets the wake-up for the failure's backoff
            return
        # Attached now, not in the job: their VRAM counts from this moment, so a second pool
        # wanting in this same step sees the room taken (RES-102).
        pool.attach(replicas)
        self._job(self._load_job(pool, replicas), f"load-{pool.id}")
        self.load_began(pool)

    async def _load_job(self, pool: Pool, replicas: list[Replica]) -> None:
        residency = pool.residency
        started = time.monotonic()
        reason: str | None = None
        try:
            # Every replica is given its whole start: one that is up may already serve a
            # task, so a sibling's failure must not stop it (the pool serves on the ones
            # that came up, RES-106).
            outcomes = await asyncio.gather(*(r.bring_up() for r in replicas),
                                            return_exceptions=True)  # fmt: skip
            for replica, outcome in zip(replicas, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.error("pool %s: replica %s failed to start", pool.id, replica.id,
                              exc_info=outcome)  # fmt: skip
                    replica.last_error = _public(outcome) if isinstance(
                        outcome, Exception) else "cancelled"  # fmt: skip
            up = [r for r, ok in zip(replicas, outcomes, strict=True) if ok is True]
            down = [r for r in replicas if r not in up]
            if down:
                reason = "; ".join(r.last_error or "did not start" for r in down)
        except asyncio.CancelledError:
            await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
            raise
        except Exception as exc:
            log.exception("pool %s: load failed", pool.id)
            reason, up, down = _public(exc), [], replicas
        took = time.monotonic() - started
        if reason is not None and up:
            await asyncio.gather(*(r.stop() for r in down), return_exceptions=True)
            pool.drop(down)
            log.error("pool %s: %d of %d replicas did not start (%s); it serves on the rest",
                      pool.id, len(down), len(replicas), reason)  # fmt: skip
            residency.failure = f"{len(down)} of {len(replicas)} replicas did not start: {reason}"
            reason = None
        else:
            residency.failure = None
        if reason is None:
            for replica in up:
                replica.supervise()
            residency.state = State.LOADED
            residency.loaded_at = time.monotonic()
            residency.loaded_at_ms = int(time.time() * 1000)
            residency.last_load_s = took
            residency.loading_since = None
            self.metrics.model_loads.labels(pool_id=pool.id, result="ok").inc()
            self.metrics.model_load_seconds.labels(pool_id=pool.id).observe(took)
            log.info("pool %s: loaded %s in %.2f s", pool.id, pool.config.model_ref, took)
            pool.pump()
        else:
            await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
            pool.detach()
            self._failed(pool, reason)
        self.poke()

    def _failed(self, pool: Pool, reason: str) -> None:
        residency = pool.residency
        backoff_s = self.config.load_failure_backoff_ms / 1000
        residency.state = State.FAILED
        residency.failure = reason
        residency.failed_until = time.monotonic() + backoff_s
        residency.loading_since = None
        self.metrics.model_loads.labels(pool_id=pool.id, result="failed").inc()
        log.error("pool %s: loading %s failed: %s", pool.id, pool.config.model_ref, reason)
        pool.end_queued(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{pool.config.model_ref} failed to load: {reason}; it is tried again in "
            f"{backoff_s:g} s",
        )

    def _owes_turn(self, pool: Pool) -> bool:
        """Swapped out for another pool that still waits for its load (RES-105): the room
        is that pool's first, even if this pool's own queued tasks are older."""
        other = self.pools.get(self._made_way.get(pool.id, ""))
        if other is None:
            return False
        if other.residency.state is State.UNLOADED and len(other.queue) > 0:
            return True
        del self._made_way[pool.id]  # it loaded, or no longer wants to
        return False

    def _still_wanted(self, pool: Pool) -> bool:
        """Whether the pool ``pool`` closed for still waits to load."""
        other = self.pools.get(self._made_way.get(pool.id, ""))
        return (
            other is not None and other.residency.state is State.UNLOADED and (len(other.queue) > 0)
        )

    def _reopen(self, pool: Pool) -> None:
        pool.residency.closing = False
        self._made_way.pop(pool.id, None)
        for replica in pool.replicas:
            replica.held = False
        log.info("pool %s: open again (the pool it closed for has no task left)", pool.id)
        pool.pump()

    def _close(self, pool: Pool, wanting: Pool) -> None:
        self._made_way[pool.id] = wanting.id
        pool.residency.closing = True
        for replica in pool.replicas:
            replica.held = True
        log.info("pool %s: closed for a swap to %s; unloads once its running tasks end",
                 pool.id, wanting.id)  # fmt: skip

    def _unload(self, pool: Pool, reason: str) -> None:
        pool.residency.state = State.UNLOADING
        for replica in pool.replicas:
            replica.held = True
        self._job(self._unload_job(pool, reason), f"unload-{pool.id}")

    async def _unload_job(self, pool: Pool, reason: str) -> None:
        residency = pool.residency
        await pool.wait_idle()
        gone = pool.detach()
        self._stopping.extend(gone)  # their VRAM is theirs until their processes have exited
        try:
            await asyncio.gather(*(r.stop() for r in gone), return_exceptions=True)
        finally:
            for replica in gone:
                self._stopping.remove(replica)
        residency.state = State.UNLOADED
        residency.closing = False
        residency.failure = None
        residency.loaded_at = residency.loaded_at_ms = None
        self.metrics.model_unloads.labels(pool_id=pool.id, reason=reason).inc()
        if reason in ("swap", "evicted"):  # it made way for another model
            self.metrics.model_swaps.labels(pool_id=pool.id).inc()
        log.info("pool %s: unloaded %s (%s)", pool.id, pool.config.model_ref, reason)
        pool.queue_changed()
        self.poke()

    def unload_now(self, pool: Pool) -> str | None:
        """``POST /v1/pools/{id}/unload`` (RES-203): None when the unload began, else why not."""
        residency = pool.residency
        if not residency.on_demand:
            return f"pool {pool.id} is pinned: its engines stay loaded"
        if _reloading(pool):
            return f"pool {pool.id} is reloading; it unloads once the reload is done"
        if residency.state is not State.LOADED:
            return f"pool {pool.id} is {residency.state.value}, not loaded"
        if pool.running or len(pool.queue) or pool.counting:
            return (
                f"pool {pool.id} has {len(pool.running)} running and {len(pool.queue)} queued "
                "tasks; it unloads once they are done and its keep-alive passes"
            )
        self._unload(pool, "stopped")
        return None

    # --- reloads of on-demand pools (HOME-505, RES-109) ---------------------------------------

    def reload_refused(self, pool: Pool) -> str | None:
        """Why an on-demand pool cannot be reloaded now, or None."""
        residency = pool.residency
        if residency.state in (State.LOADING, State.UNLOADING):
            return f"pool {pool.id} is {residency.state.value}; reload it once that is done"
        if residency.closing:
            return f"pool {pool.id} is closed for a swap; reload it once it has unloaded"
        return None

    def retarget(
        self, pool: Pool, config: PoolConfig, need: Need | None, model_bytes: int
    ) -> Reload:
        """An on-demand pool that is not loaded: its next load serves the new model, placed
        with the new model's need; nothing runs, so the switch is at once."""
        old_ref = pool.config.model_ref
        pool.retarget(config)
        self._set_need(pool, need)
        residency = pool.residency
        residency.state, residency.failure, residency.failed_until = State.UNLOADED, None, None
        residency.last_load_s = None  # the new model's load is not measured yet
        residency.estimated_load_s = estimate_load_s(model_bytes)
        reload = Reload(old_ref, config.model_ref, state="switched")
        reload.finished_ms = reload.started_ms
        pool.reload = reload
        log.warning("pool %s: serves %s from its next load", pool.id, config.model_ref)
        self.poke()
        return reload

    def reload_loaded(
        self, pool: Pool, config: PoolConfig, specs: list[ReplicaSpec], mode: Mode,
        need: Need | None,
    ) -> Reload:  # fmt: skip
        """A loaded on-demand pool: the reload runs as a pinned pool's does, and the planner
        leaves the pool alone until it is done (no keep-alive unload, no eviction, no swap);
        the switch, with the new model's need, is made here."""

        def switch(replicas: list[Replica], new_config: PoolConfig) -> list[Replica]:
            old = pool.switch(replicas, new_config)
            self._set_need(pool, need)
            pool.residency.loaded_at = time.monotonic()
            pool.residency.loaded_at_ms = int(time.time() * 1000)
            return old

        reload = start_reload(pool, config, self.build, specs, mode, switch=switch)
        assert reload.runner is not None
        reload.runner.add_done_callback(lambda _: self.poke())
        return reload

    def _set_need(self, pool: Pool, need: Need | None) -> None:
        if need is None:
            self.needs.pop(pool.id, None)
        else:
            self.needs[pool.id] = need

    def _publish(self) -> None:
        loaded = sum(1 for p in self.pools.values() if p.residency.state is State.LOADED)
        self.metrics.models_loaded.set(loaded)


def _reloading(pool: Pool) -> bool:
    return pool.reload is not None and pool.reload.running


def _earliest(times: Iterable[float], now: float) -> float:
    """The first of ``times`` still ahead of ``now``; infinity when none is."""
    return min((t for t in times if t > now), default=math.inf)


def _contended_since(pool: Pool, since: float) -> bool:
    contended_at = pool.residency.contended_at
    return contended_at is not None and contended_at >= since


def _oldest_admission(pool: Pool) -> float:
    heads = pool.queue.heads()
    return min((t.admitted_at for t in heads), default=time.monotonic())


def _where(spec: ReplicaSpec) -> str:
    return "+".join(f"GPU{d}" for d in spec.devices) or "CPU"


def _public(exc: Exception) -> str:
    """What a client may read of a failed load: the engine's own safe message, or the kind
    of error; paths, addresses and OS texts stay in the server log (HARD-106)."""
    if isinstance(exc, EngineStartError):
        return exc.public_message
    return f"the engine could not be prepared ({type(exc).__name__}; see the server log)"
