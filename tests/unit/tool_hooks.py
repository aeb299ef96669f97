"""Policy hooks for the tool tests (``outbound.hook: tests.unit.tool_hooks:...``)."""

from __future__ import annotations

from orchestratord.outbound.policy import FetchRequest


def deny_admin(request: FetchRequest) -> str | None:
    return "no admin pages" if "/admin" in request.url else None


def crash(request: FetchRequest) -> str | None:
    raise RuntimeError("bug in the user's hook")
