"""Ends running tasks that stopped progressing or ran too long (ORCH-3016, OC-CORE-1022).

Tokens only stamp a time on their task; checking here, a few times per idle timeout, keeps
the relay's per-token path free of timers. The runner is canceled, which closes the engine
stream and waits for the engine slot to go idle, exactly like a client's cancel.

Working through the prompt is progress (HARD-202): before its first token a task may take
``prompt_s_per_token`` per prompt token on top of the idle timeout (the prompt's exact count,
or its UTF-8 length, an upper bound), and an engine that reports its progress through the
prompt (llama.cpp) stamps the task with every batch it finishes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from orchestratord.core.task import Task
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
            idle = now - task.last_progress > idle_limit + _prompt_allowance(replica, task)
            too_long = now - started > wall_limit
            if (idle or too_long) and not task.finished and task.runner is not None:
                why = "no output from the engine" if idle else "decoding too long"
                task.finish_error(ErrorCode.DECODE_TIMEOUT, f"watchdog: {why}", replica.engine)
                task.runner.cancel()
                log.warning("replica %s: task %s aborted: %s", replica.id, task.id, why)


def _prompt_allowance(replica: Replica, task: Task) -> float:
    if task.tokens_out:
        return 0.0
    prompt_tokens = task.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = len(task.prompt.encode()) + 2
    return prompt_tokens * replica.runtime.prompt_s_per_token
