"""What a model's lifecycle state does to the pools serving it (HOME-502, ORCH-3069..3071).

Deprecated or Retired: the pools serving the model drain (new tasks get
``MODEL_DEPRECATED`` from admission meanwhile); Active again: pools that the model's state
drained resume.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestratord.catalog.model import REFUSING, ModelState
from orchestratord.pools.drain import resume, start_drain
from orchestratord.pools.pool import Pool


def apply_model_state(
    pools: Mapping[str, Pool], model_ref: str, state: ModelState, deadline_ms: int
) -> list[str]:
    """Drain or resume the pools serving ``model_ref``; returns the pools it drained."""
    drained = []
    for pool in pools.values():
        if pool.config.model_ref != model_ref or not pool.accepting:
            continue
        if state in REFUSING and pool.drain is None:
            start_drain(pool, deadline_ms, f"model {model_ref} is {state.value}")
            drained.append(pool.id)
        elif (
            state not in REFUSING
            and pool.drain is not None
            and pool.drain.reason.startswith(f"model {model_ref} is ")
        ):
            resume(pool)
    return drained


def engine_serving(pools: Mapping[str, Pool], model_ref: str) -> str:
    engines = sorted({p.engine for p in pools.values() if p.config.model_ref == model_ref})
    return engines[0] if engines else "none"
