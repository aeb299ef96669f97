"""Reloading a pool onto another model (HOME-505, ORCH-2102, ORCH-3031, OC-CTRL-2003).

The new replicas (same devices, next generation) start beside the old ones and must come
up, Ready and through the self-test. Only then does the pool switch: placement sees only the
new replicas, queued tasks carry over to them, and tasks already decoding finish on the old
ones, which are stopped once idle. If any new replica fails, they are all stopped and the
pool keeps serving the old model, with the reason in ``last_error`` and in the reload's
status. The pool never serves nothing. The status is on the pool's health (``reload``).
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
from orchestratord.replicas.replica import Replica, ReplicaSpec

if TYPE_CHECKING:
    from orchestratord.pools.pool import Pool

log = logging.getLogger("orchestratord.pool")

BuildReplica = Callable[[PoolConfig, ReplicaSpec], Replica]


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
        }


def start_reload(pool: Pool, new_config: PoolConfig, build: BuildReplica) -> Reload:
    reload = Reload(pool.config.model_ref, new_config.model_ref)
    pool.reload = reload
    reload.runner = asyncio.get_running_loop().create_task(
        _run(pool, reload, new_config, build), name=f"reload-{pool.id}"
    )
    log.warning("pool %s: reloading %s -> %s", pool.id, reload.from_model_ref, reload.to_model_ref)
    return reload


async def _run(pool: Pool, reload: Reload, new_config: PoolConfig, build: BuildReplica) -> None:
    generation = max(r.spec.generation for r in pool.replicas) + 1
    new: list[Replica] = []
    try:
        for replica in pool.replicas:
            spec = dataclasses.replace(replica.spec, generation=generation)
            new.append(build(new_config, spec))
        started = await asyncio.gather(*(r.bring_up() for r in new))
    except Exception as exc:  # a replica that cannot even be built is a failed reload
        log.exception("pool %s: reload failed", pool.id)
        started = [False] * len(new)
        reload.error = f"the new engines could not be started: {exc}"
    except BaseException:
        await asyncio.gather(*(r.stop() for r in new), return_exceptions=True)
        raise
    if not new or not all(started) or not pool.accepting:
        reasons = [f"{r.id}: {r.last_error}" for r, ok in zip(new, started, strict=True) if not ok]
        reload.error = reload.error or "; ".join(reasons) or "orchestratord is shutting down"
        reload.state = "rolled_back"
        reload.finished_ms = _now_ms()
        await asyncio.gather(*(r.stop() for r in new), return_exceptions=True)
        log.error("pool %s: reload rolled back, still serving %s: %s", pool.id,
                  reload.from_model_ref, reload.error)  # fmt: skip
        return
    old = pool.switch(new, new_config)
    for replica in new:
        replica.supervise()
    reload.state = "switched"
    reload.finished_ms = _now_ms()
    log.warning("pool %s: now serving %s", pool.id, reload.to_model_ref)
    # Tasks already decoding finish on the old engines; then they go.
    for replica in old:
        await replica.wait_idle()
        await replica.stop()
        pool.retiring.remove(replica)
