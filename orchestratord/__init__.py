"""llama-orch: a home-lab LLM inference orchestrator in front of real engines.

The public API is deliberately small: build an app with :func:`create_app` from a
:class:`Config`, or run ``orchestratord serve``.
"""

from orchestratord.app import Orchestrator, create_app
from orchestratord.config import Config, load_config
from orchestratord.version import API_VERSION, __version__

__all__ = ["API_VERSION", "Config", "Orchestrator", "__version__", "create_app", "load_config"]
