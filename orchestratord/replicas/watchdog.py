"""Ends running tasks that stopped progressing or ran too long (ORCH-3016, OC-CORE-1022).

Tokens only stamp a time on their task; checking here, a few times per idle timeout, keeps
the relay's per-token path free of timers. The runner is canceled, which closes the engine
stream and waits for the engine slot to go idle, exactly like a client's cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from orchestratord.errors import ErrorCode

if TYPE_CHECKING:
    from orchestratord.replicas.replica import Replica

log = logging.getLogger("orchestratord.replica")


async def watch_decodes(replica: Replica) -> None:
    idle_limit = replica.runtime.idle_timeout_s
    wall_limit = replica.runtime.wall_timeout_s
    while True:
        await asyncio.sleep(min(1.0, idle_limit / 4))
        now = time.monotonic()
        for task in list(replica.running):
            started = task.started_at or now
            idle = now - task.last_progress > idle_limit
            too_long = now - started > wall_limit
            if (idle or too_long) and not task.finished and task.runner is not None:
                why = "no output from the engine" if idle else "decoding too long"
                task.finish_error(ErrorCode.DECODE_TIMEOUT, f"watchdog: {why}", replica.engine)
                task.runner.cancel()
                log.warning("replica %s: task %s aborted: %s", replica.id, task.id, why)
