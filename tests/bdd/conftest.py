"""Registers the shared step library with pytest-bdd; tags become requirement markers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_bdd import given, parsers, then, when

from steps.library import STEPS, StepDef, step_kwargs
from steps.world import World
from xtask.fakes.live_server import LiveServer, live_server
from xtask.spec.spec_extract import ID_RE

_DECORATORS = {"given": given, "when": when, "then": then}


def _bind(step_def: StepDef) -> Callable[..., None]:
    def run(world: World, **kwargs: Any) -> None:
        step_def.func(world, **kwargs)

    # pytest-bdd passes parsed fields by parameter name, so the wrapper declares them.
    params = [inspect.Parameter("world", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY) for n in step_kwargs(step_def.func)
    ]
    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__name__ = step_def.func.__name__
    return run


# Module level on purpose: pytest-bdd injects each step fixture into the calling module.
for _step in STEPS:
    _DECORATORS[_step.keyword](parsers.parse(_step.pattern))(_bind(_step))


def pytest_bdd_apply_tag(tag: str, function: Any) -> bool | None:
    if ID_RE.match(tag):
        pytest.mark.req(tag)(function)
        return True
    return None


@pytest.fixture(scope="session")
def bdd_server() -> Iterator[LiveServer]:
    with live_server() as server:
        yield server


@pytest.fixture
def world(bdd_server: LiveServer) -> Iterator[World]:
    w = World(bdd_server)
    yield w
    w.close()
