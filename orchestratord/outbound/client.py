"""The one HTTP client for outbound requests: the fetch tool and model pulls (HOME-107).

Redirects are followed by hand and every hop goes through :meth:`Policy.decide` again; the
connection uses exactly the addresses that hop's decision checked (a pinned resolver).
Every decision is written to the audit log *before* anything is sent. When a redirect
changes the origin (scheme, host or port) the credentials the caller sent —
``Authorization``, ``Cookie``, ``Proxy-Authorization`` and URL userinfo — are dropped, as
browsers do; a caller's ``Host`` and hop-by-hop headers are never forwarded at all, so a
request cannot be steered to a virtual host other than the one the policy decided on.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from orchestratord.outbound.addresses import IPAddress
from orchestratord.outbound.audit import AuditLog, AuditUnwritable
from orchestratord.outbound.policy import (
    Denied,
    FetchRequest,
    InvalidTarget,
    OutboundError,
    Policy,
    Target,
)
from orchestratord.outbound.redact import Redactor

log = logging.getLogger("orchestratord.outbound")

REDIRECTS = (301, 302, 303, 307, 308)
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})
_NEVER_FORWARDED = frozenset(
    {"host", "connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
     "content-length", "proxy-connection", "proxy-authenticate"}
)  # fmt: skip


class UpstreamFailed(OutboundError):
    """The request was allowed but did not complete (connection, timeout, bad redirect)."""


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses the policy checked for this host, nothing else."""

    def __init__(self, host: str, addresses: list[IPAddress]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self.host:
            raise OSError(f"unexpected host {host}")
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


@dataclass
class Opened:
    response: aiohttp.ClientResponse
    url: str
    redirects: list[str] = field(default_factory=list)


def forwarded_headers(
    headers: dict[str, str], previous: Target | None, target: Target
) -> dict[str, str]:
    """What a hop sends of the caller's headers: never ``Host`` or a hop-by-hop header, and
    no credentials once a redirect has changed the origin (scheme, host or port)."""
    kept = {k: v for k, v in headers.items() if k.lower() not in _NEVER_FORWARDED}
    if previous is not None and previous.origin != target.origin:
        kept = {k: v for k, v in kept.items() if k.lower() not in _CREDENTIALS}
    return kept


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class OutboundClient:
    def __init__(self, policy: Policy, redactor: Redactor, audit: AuditLog) -> None:
        self.policy = policy
        self.redactor = redactor
        self.audit = audit

    async def record(self, purpose: str, correlation_id: str | None, **fields: Any) -> None:
        """Store a refusal or an outcome; one that cannot be stored is logged, and changes
        nothing for the caller (what was refused stays refused, what was sent was sent)."""
        try:
            await self._store(purpose, correlation_id, fields)
        except AuditUnwritable as exc:
            log.error("outbound %s (correlation %s): %s", purpose, correlation_id, exc)

    async def _store(
        self, purpose: str, correlation_id: str | None, fields: dict[str, Any]
    ) -> None:
        if "url" in fields:
            fields["url"] = self.redactor.url(fields["url"])
        if "reason" in fields:
            fields["reason"] = self.redactor.text(fields["reason"])
        await self.audit.record(purpose=purpose, correlation_id=correlation_id, **fields)

    async def _decide(
        self, request: FetchRequest, hop: int, purpose: str, correlation_id: str | None
    ) -> Target:
        try:
            target = await self.policy.decide(request)
        except OutboundError as exc:
            await self.record(
                purpose, correlation_id, decision="deny", hop=hop, method=request.method,
                url=request.url, reason=str(exc),
            )  # fmt: skip
            if isinstance(exc, InvalidTarget) and hop > 0:
                raise UpstreamFailed(f"redirect to an invalid URL ({exc})") from exc
            raise
        try:  # an allow that is not on disk is not sent (HARD-105, HARD-107)
            await self._store(purpose, correlation_id, {
                "decision": "allow", "hop": hop, "method": request.method, "url": target.url,
                "addresses": [str(a) for a in target.addresses],
            })  # fmt: skip
        except AuditUnwritable as exc:
            log.error("outbound %s (correlation %s): %s", purpose, correlation_id, exc)
            raise Denied(f"{exc}; nothing is sent that is not audited") from exc
        return target

    @asynccontextmanager
    async def open(
        self,
        url: str,
        *,
        purpose: str,
        correlation_id: str | None = None,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> AsyncIterator[Opened]:
        """Send the request under the policy, following redirects; yields the final response.

        Raises Denied, InvalidTarget (the URL given) or UpstreamFailed."""
        sent = {k: v for k, v in (headers or {}).items() if k.lower() not in _NEVER_FORWARDED}
        redirects: list[str] = []
        previous: Target | None = None
        for hop in range(self.policy.config.max_redirects + 1):
            target = await self._decide(FetchRequest(url, method, sent, body), hop, purpose,
                                        correlation_id)  # fmt: skip
            sent = forwarded_headers(sent, previous, target)
            previous = target
            async with AsyncExitStack() as stack:
                connector = aiohttp.TCPConnector(
                    resolver=_PinnedResolver(target.host, target.addresses), use_dns_cache=False
                )
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(
                        connector=connector, timeout=client_timeout, trust_env=False
                    )
                )
                try:
                    response = await stack.enter_async_context(
                        session.request(
                            method, target.url, headers=sent, data=body, allow_redirects=False
                        )
                    )
                except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                    raise UpstreamFailed(f"{type(exc).__name__}: {exc}") from exc
                location = response.headers.get("Location")
                if response.status in REDIRECTS and location is not None:
                    try:
                        url = _without_userinfo(urljoin(target.url, location))
                    except ValueError as exc:
                        raise UpstreamFailed("a redirect's Location is not a valid URL") from exc
                    redirects.append(url)
                    post = response.status in (301, 302) and method == "POST"
                    if response.status == 303 or post:
                        method, body = "GET", None
                    continue
                yield Opened(response, target.url, redirects)
                return
        await self.record(purpose, correlation_id, decision="deny", hop=len(redirects), url=url,
                    reason="too many redirects")  # fmt: skip
        raise Denied(f"more than {self.policy.config.max_redirects} redirects")
