"""Keeps a pool's engine alive (OC-POOL-3003, OC-POOL-3010, OC-POOL-3011, ORCH-3010).

Every ``monitor_interval_s`` it asks the engine for health. A pool whose engine stops
answering is Unready (the dispatcher hands out nothing, admission answers 503) until it
answers again. An engine process that exited is restarted with exponential backoff; after
``max_restarts`` consecutive failed restarts the circuit opens and the pool stays Unready
with the reason in ``last_error`` until orchestratord is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from orchestratord.adapters.base import EngineError

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.pool")

_BACKOFF_CAP_S = 30.0


async def supervise(pool: Pool) -> None:
    runtime = pool.runtime
    failures = 0
    while True:
        await asyncio.sleep(runtime.monitor_interval_s)
        process = pool.process
        if process is not None and not process.running():
            if failures >= runtime.max_restarts:
                continue  # circuit open: last_error says so
            pool.ready = False
            delay = min(runtime.restart_backoff_s * 2**failures, _BACKOFF_CAP_S)
            pool.last_error = f"engine exited ({process.exit_code}); restarting in {delay:.1f}s"
            log.error("pool %s: %s", pool.id, pool.last_error)
            await asyncio.sleep(delay)
            try:
                await process.start(pool.config.llamacpp.startup_timeout_s)
                pool.info = await pool.adapter.info()
            except Exception as exc:
                failures += 1
                pool.last_error = f"restart {failures} failed: {exc}"
                if failures >= runtime.max_restarts:
                    pool.last_error = f"circuit open after {failures} failed restarts; last: {exc}"
                log.error("pool %s: %s", pool.id, pool.last_error)
                continue
            failures = 0
            pool.last_error = "engine restarted after exiting"
            pool.ready = True
            log.warning("pool %s: engine restarted", pool.id)
            continue
        healthy = await pool.adapter.healthy()
        if not healthy and pool.ready:
            pool.last_error = "engine stopped answering /health"
            log.error("pool %s: %s", pool.id, pool.last_error)
        pool.ready = healthy and pool.info is not None
        if healthy:
            with contextlib.suppress(EngineError):
                record_engine_metrics(pool, await pool.adapter.metrics_text())


def record_engine_metrics(pool: Pool, text: str) -> None:
    for line in text.splitlines():
        if line.startswith("llamacpp:kv_cache_usage_ratio "):
            ratio = float(line.split()[1])
            pool.metrics.kv_cache_usage_ratio.labels(**pool.replica_labels()).set(ratio)
