"""Policy hooks for the tool tests (``outbound.hook: tests.unit.tool_hooks:...``)."""

from __future__ import annotations

import threading

from orchestratord.outbound.policy import FetchRequest


def deny_admin(request: FetchRequest) -> str | None:
    return "no admin pages" if "/admin" in request.url else None


def crash(request: FetchRequest) -> str | None:
    raise RuntimeError("bug in the user's hook")


# For the off-the-loop test: the hook blocks until the test releases it, and says whether the
# release came while it waited (it cannot, if the hook holds the event loop the test runs on).
entered = threading.Event()
released = threading.Event()
outcome: dict[str, bool] = {}


def wait_for_release(request: FetchRequest) -> str | None:
    entered.set()
    outcome["released_while_waiting"] = released.wait(5)
    return None
