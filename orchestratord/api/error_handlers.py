"""Render every failure as the one error envelope (HOME-901): ours, Falcon's and surprises."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import falcon
import falcon.asgi

from orchestratord.errors import ApiError, ErrorCode, code_for_status

log = logging.getLogger("orchestratord.api")


def _correlation_id(req: falcon.asgi.Request) -> str:
    value = getattr(req.context, "correlation_id", None)
    if value is None:
        value = str(uuid.uuid4())
        req.context.correlation_id = value
    return str(value)


def _render(req: falcon.asgi.Request, resp: falcon.asgi.Response, error: ApiError) -> None:
    resp.status = error.status
    resp.media = error.envelope(_correlation_id(req))
    for name, value in error.headers().items():
        resp.set_header(name, value)
    if error.status == 401:
        resp.set_header("WWW-Authenticate", "Bearer")


async def handle_api_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: ApiError, params: dict[str, Any]
) -> None:
    _render(req, resp, ex)


async def handle_http_error(
    req: falcon.asgi.Request,
    resp: falcon.asgi.Response,
    ex: falcon.HTTPError,
    params: dict[str, Any],
) -> None:
    status = ex.status_code
    message = ex.description or ex.title or "HTTP error"
    _render(req, resp, ApiError(status, code_for_status(status), message))
    for name, value in dict(ex.headers or {}).items():
        resp.set_header(name, value)


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: dict[str, Any]
) -> None:
    log.exception(
        "unhandled error on %s %s (correlation %s)",
        req.method,
        req.path,
        _correlation_id(req),
        exc_info=ex,
    )
    # A bug does not go away by retrying the same request.
    _render(req, resp, ApiError(500, ErrorCode.INTERNAL, "internal error", retriable=False))


def install(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    # Falcon picks the most specific handler, so the order here does not matter.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ApiError, handle_api_error)
