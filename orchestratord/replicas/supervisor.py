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
  replica of a pool is in that state the pool's queued tasks end with ``POOL_UNAVAILABLE``.
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


async def supervise(replica: Replica) -> None:
    failures = 0
    unanswered_since: float | None = None
    while not replica.circuit_open:
        runtime = replica.runtime
        await replica.wait_for_check(runtime.monitor_interval_s)
        if replica.needs_start:
            unanswered_since = None
            reason = replica.last_error
            delay = min(runtime.restart_backoff_s * 2**failures, _BACKOFF_CAP_S)
            await asyncio.sleep(delay)
            if await replica.bring_up():
                failures = 0
                replica.last_error = f"engine restarted after: {reason}"
                log.warning("replica %s: %s", replica.id, replica.last_error)
                continue
            failures += 1
            log.error("replica %s: start %d failed: %s", replica.id, failures, replica.last_error)
            if failures >= runtime.max_restarts:
                replica.open_circuit(f"circuit open after {failures} failed starts")
            continue
        process = replica.process
        if process is not None and not process.running():
            replica.engine_lost(f"engine exited ({process.exit_code})")
            continue
        if await replica.adapter.healthy():
            unanswered_since = None
            if not replica.ready:
                replica.last_error = "engine answers again"
                replica.set_ready()
            await _scrape(replica)
            continue
        now = time.monotonic()
        unanswered_since = unanswered_since or now
        if replica.ready:
            replica.engine_failed("engine stopped answering /health")
        if process is not None and now - unanswered_since >= runtime.hang_timeout_s:
            process.kill()
            replica.engine_lost(
                f"engine hung: no /health answer for {runtime.hang_timeout_s:g}s; killed"
            )


async def _scrape(replica: Replica) -> None:
    try:
        ratio = await replica.adapter.kv_usage_ratio()
    except EngineError:
        return
    if ratio is not None:
        replica.series.kv_cache_usage.set(ratio)
