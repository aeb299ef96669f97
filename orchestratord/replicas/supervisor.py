"""Keeps a replica's engine alive.

OC-POOL-3002, OC-POOL-3003, OC-POOL-3010, OC-POOL-3011, ORCH-3010.

Every ``monitor_interval_s`` — or at once when a runner reports that the engine dropped a
connection — it checks the engine:

- an engine process that exited, or an engine whose first start failed, is (re)started
  after a delay of ``restart_backoff_s`` doubling per consecutive failure (capped at 30 s);
- an engine that does not answer ``/health`` makes the replica Unready (nothing is
  dispatched to it; the pool's other replicas keep serving) until it answers again; one whose
  process is alive but that has not answered for ``hang_timeout_s`` is hung: it is killed and
  restarted under the same backoff;
- after ``max_restarts`` consecutive failed starts the circuit opens: the replica stays
  Unready for good and ``last_error`` says why, until orchestratord is restarted; when every
  replica of a pool is in that state the pool's queued tasks end with ``POOL_UNAVAILABLE``;
- a step that raises (a malformed reply, a bug) is logged and retried under the same backoff
  and circuit, so supervision never dies silently (HARD-201).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from orchestratord.adapters.base import EngineError

if TYPE_CHECKING:
    from orchestratord.replicas.replica import Replica

log = logging.getLogger("orchestratord.replica")

_BACKOFF_CAP_S = 30.0


class _State:
    __slots__ = ("failures", "faults", "unanswered_since")

    def __init__(self) -> None:
        self.failures = 0  # consecutive failed starts
        self.faults = 0  # consecutive supervision steps that raised
        self.unanswered_since: float | None = None


async def supervise(replica: Replica) -> None:
    """Supervise until the circuit opens. A step that raises anything — a malformed engine
    reply, a bug — is logged with the replica's id and counted like a failed start: the
    step is retried after the same backoff, and the circuit opens after ``max_restarts`` in
    a row (HARD-201). Supervision itself never ends by accident."""
    state = _State()
    while not replica.circuit_open:
        try:
            await _step(replica, state)
            state.faults = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.faults += 1
            log.exception("replica %s: supervision step failed (%d in a row)", replica.id,
                          state.faults)  # fmt: skip
            replica.supervision_fault(f"supervision error ({type(exc).__name__}); retrying")
            if state.faults >= replica.runtime.max_restarts:
                replica.open_circuit(f"circuit open after {state.faults} supervision errors")
                return
            await backoff(_delay(replica, state.faults - 1))


def _delay(replica: Replica, failures: int) -> float:
    return float(min(replica.runtime.restart_backoff_s * 2**failures, _BACKOFF_CAP_S))


async def backoff(delay_s: float) -> None:
    """The wait before a restart (one name, so tests can watch the delays it is given)."""
    await asyncio.sleep(delay_s)


async def _step(replica: Replica, state: _State) -> None:
    runtime = replica.runtime
    await replica.wait_for_check(runtime.monitor_interval_s)
    if replica.needs_start:
        state.unanswered_since = None
        reason = replica.last_error
        await backoff(_delay(replica, state.failures))
        if await replica.bring_up():
            state.failures = 0
            replica.last_error = f"engine restarted after: {reason}"
            log.warning("replica %s: %s", replica.id, replica.last_error)
            return
        state.failures += 1
        log.error("replica %s: start %d failed: %s", replica.id, state.failures,
                  replica.last_error)  # fmt: skip
        if state.failures >= runtime.max_restarts:
            replica.open_circuit(f"circuit open after {state.failures} failed starts")
        return
    process = replica.process
    if process is not None and not process.running():
        replica.engine_lost(f"engine exited ({process.exit_code})")
        return
    if await replica.adapter.healthy():
        state.unanswered_since = None
        if not replica.ready:
            replica.last_error = "engine answers again"
            replica.set_ready()
        await _scrape(replica)
        return
    now = time.monotonic()
    state.unanswered_since = state.unanswered_since or now
    if replica.ready:
        replica.engine_failed("engine stopped answering /health")
    if process is not None and now - state.unanswered_since >= runtime.hang_timeout_s:
        process.kill()
        replica.engine_lost(
            f"engine hung: no /health answer for {runtime.hang_timeout_s:g}s; killed"
        )


async def _scrape(replica: Replica) -> None:
    try:
        ratio = await replica.adapter.kv_usage_ratio()
    except EngineError as exc:
        log.debug("replica %s: no KV usage read: %s", replica.id, exc)
        return
    if ratio is not None:
        replica.series.kv_cache_usage.set(ratio)
