"""Registers the shared step library with behave (behave executes every file in steps/)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from behave import given, then, when  # noqa: E402

from steps.library import STEPS, StepDef  # noqa: E402

_DECORATORS = {"given": given, "when": when, "then": then}


def _bind(step_def: StepDef) -> Any:
    def run(context: Any, **kwargs: Any) -> None:
        step_def.func(context.world, **kwargs)

    run.__name__ = step_def.func.__name__
    run.__doc__ = step_def.func.__doc__
    return run


for _step in STEPS:
    _DECORATORS[_step.keyword](_step.pattern)(_bind(_step))
