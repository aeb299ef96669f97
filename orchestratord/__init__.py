"""llama-orch: a home-lab LLM inference orchestrator in front of real engines.

The public API is deliberately small: build an app with :func:`create_app` from a
:class:`Config`, or run ``orchestratord serve``.

The names are imported when first used, not with the package: ``llorch`` and the tools that
import one submodule (``orchestratord.auth``, say) do not pay for the whole server's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from orchestratord.version import API_VERSION, __version__

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator, create_app
    from orchestratord.config import Config, load_config

__all__ = ["API_VERSION", "Config", "Orchestrator", "__version__", "create_app", "load_config"]

_WHERE = {
    "Orchestrator": "orchestratord.app",
    "create_app": "orchestratord.app",
    "Config": "orchestratord.config",
    "load_config": "orchestratord.config",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'orchestratord' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value
