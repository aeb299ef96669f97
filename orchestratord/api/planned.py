"""Operations the contracts already describe but the server does not serve yet.

Each answers a typed ``501 NOT_IMPLEMENTED`` envelope, which the contracts document on every
operation marked ``x-status: planned``, so a client (or a fuzzer following the contract) never
meets a bare router 404 for a documented path. A unit test keeps this list and the contracts'
planned operations identical.
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi

from orchestratord.errors import ApiError, ErrorCode

# (route, methods) in Falcon's template syntax; field names match the implemented routes'.
PLANNED_ROUTES: dict[str, tuple[str, ...]] = {}


async def _not_implemented(
    self: object, req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: Any
) -> None:
    raise ApiError(
        501,
        ErrorCode.NOT_IMPLEMENTED,
        f"{req.method} {req.path} is in the contract (planned) but not served yet",
    )


def planned_resource(methods: tuple[str, ...]) -> object:
    """A resource answering 501 on ``methods`` (other methods stay 405)."""
    responders = {f"on_{method.lower()}": _not_implemented for method in methods}
    return type("PlannedOperation", (), responders)()


def add_planned_routes(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    for route, methods in PLANNED_ROUTES.items():
        app.add_route(route, planned_resource(methods))
