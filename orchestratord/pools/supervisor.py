"""Keeps a pool's engine alive (OC-POOL-3002, OC-POOL-3003, OC-POOL-3010, OC-POOL-3011, ORCH-3010).

Every ``monitor_interval_s`` — or at once when a runner reports that the engine dropped a
connection — it checks the engine:

- an engine process that exited, or an engine whose first start failed, is (re)started
  after a delay of ``restart_backoff_s`` doubling per consecutive failure (capped at 30 s);
- an engine that does not answer ``/health`` makes the pool Unready (nothing is dispatched,
  queued tasks wait, admission answers 503) until it answers again; one whose process is
  alive but that has not answered for ``hang_timeout_s`` is hung: it is killed and restarted
  under the same backoff;
- after ``max_restarts`` consecutive failed starts the circuit opens: the pool stays Unready
  for good, its queued tasks end with ``POOL_UNAVAILABLE``, and ``last_error`` says why,
  until orchestratord is restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from orchestratord.adapters.base import EngineError

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.pool")

_BACKOFF_CAP_S = 30.0


async def supervise(pool: Pool) -> None:
    runtime = pool.runtime
    failures = 0
    unanswered_since: float | None = None
    while not pool.circuit_open:
        await pool.wait_for_check(runtime.monitor_interval_s)
        if pool.needs_start:
            unanswered_since = None
            reason = pool.last_error
            delay = min(runtime.restart_backoff_s * 2**failures, _BACKOFF_CAP_S)
            await asyncio.sleep(delay)
            if await pool.bring_up():
                failures = 0
                pool.last_error = f"engine restarted after: {reason}"
                log.warning("pool %s: %s", pool.id, pool.last_error)
                continue
            failures += 1
            log.error("pool %s: start %d failed: %s", pool.id, failures, pool.last_error)
            if failures >= runtime.max_restarts:
                pool.open_circuit(f"circuit open after {failures} failed starts")
            continue
        process = pool.process
        if process is not None and not process.running():
            pool.engine_lost(f"engine exited ({process.exit_code})")
            continue
        if await pool.adapter.healthy():
            unanswered_since = None
            if not pool.ready:
                pool.last_error = "engine answers again"
                pool.set_ready()
            await _scrape(pool)
            continue
        now = time.monotonic()
        unanswered_since = unanswered_since or now
        if pool.ready:
            pool.engine_failed("engine stopped answering /health")
        if process is not None and now - unanswered_since >= runtime.hang_timeout_s:
            process.kill()
            pool.engine_lost(
                f"engine hung: no /health answer for {runtime.hang_timeout_s:g}s; killed"
            )


async def _scrape(pool: Pool) -> None:
    try:
        text = await pool.adapter.metrics_text()
    except EngineError:
        return
    for line in text.splitlines():
        if line.startswith("llamacpp:kv_cache_usage_ratio "):
            ratio = float(line.split()[1])
            pool.metrics.kv_cache_usage_ratio.labels(**pool.replica_labels()).set(ratio)
