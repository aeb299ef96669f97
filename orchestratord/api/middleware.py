"""Request middleware: correlation IDs (HOME-103) and bearer-token auth (HOME-102).

The correlation middleware runs first, so even a 401 from the auth middleware carries the
caller's ``X-Correlation-Id`` (or a fresh UUID).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import uuid

import falcon
import falcon.asgi

from orchestratord.errors import ApiError, ErrorCode
from orchestratord.logs import correlation_id

CORRELATION_HEADER = "X-Correlation-Id"
# Printable, header-safe and short: anything else is replaced rather than echoed back.
_CORRELATION_RE = re.compile(r"^[\x21-\x7e]{1,128}$")

METRICS_PATH = "/metrics"


def metrics_open(auth: str, host: str) -> bool:
    """Whether ``/metrics`` is served without the token (HARD-112): on a loopback bind
    under ``auto``, always under ``never``; everything else needs the token."""
    if auth == "never":
        return True
    if auth == "always":
        return False
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


class CorrelationIdMiddleware:
    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        sent = req.get_header(CORRELATION_HEADER)
        if sent is not None and _CORRELATION_RE.match(sent):
            req.context.correlation_id = sent
        else:
            req.context.correlation_id = str(uuid.uuid4())
        # Log records of this request (and of the tasks it starts) carry the ID.
        correlation_id.set(req.context.correlation_id)

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        correlation_id = getattr(req.context, "correlation_id", None) or str(uuid.uuid4())
        resp.set_header(CORRELATION_HEADER, correlation_id)


class AuthMiddleware:
    def __init__(self, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self._token = token.encode()
        self.open_paths = open_paths

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if req.path in self.open_paths:
            return
        header = req.get_header("Authorization")
        if not header:
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "missing bearer token")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "Authorization must be 'Bearer <token>'")
        if not hmac.compare_digest(credentials.strip().encode(), self._token):
            raise ApiError(403, ErrorCode.FORBIDDEN, "invalid bearer token")
