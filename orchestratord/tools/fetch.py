"""The mediated HTTP fetch tool behind the policy (FR-TL-001, HOME-104).

Redirects are followed by hand, each hop decided by the policy again, so a redirect cannot
lead out of the lists or onto the LAN. The connection uses exactly the addresses the policy
checked (a pinned resolver), so a second DNS answer cannot either. The response is bounded
in time, bytes and content type; secrets are redacted from what is sent and what comes back.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from orchestratord.tools.policy import Denied, FetchRequest, Policy

_KEPT_HEADERS = ("content-type", "content-length", "last-modified", "etag")
_REDIRECTS = (301, 302, 303, 307, 308)


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses the policy already checked, nothing else."""

    def __init__(self, host: str, addresses: list[str]) -> None:
        self.host = host
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower() != self.host:
            raise OSError(f"unexpected host {host}")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


@dataclass
class FetchResult:
    url: str
    final_url: str
    status: int = 0
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    bytes: int = 0
    redirects: list[str] = field(default_factory=list)
    error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "final_url": self.final_url,
            "status": self.status,
            "content_type": self.content_type,
            "headers": self.headers,
            "body": self.body,
            "bytes": self.bytes,
            "redirects": self.redirects,
            "error": self.error,
        }


async def fetch(policy: Policy, request: FetchRequest) -> FetchResult:
    """Fetch under the policy; raises Denied (for this URL or any redirect hop)."""
    config = policy.config
    headers = {k: policy.redact(v) for k, v in request.headers.items()}
    body = policy.redact(request.body) if request.body is not None else None
    url, method = request.url, request.method
    result = FetchResult(policy.redact(request.url), policy.redact(request.url))
    timeout = aiohttp.ClientTimeout(total=config.timeout_ms / 1000)
    for _ in range(config.max_redirects + 1):
        addresses = policy.check(FetchRequest(url, method, headers, body))
        host = (urlsplit(url).hostname or "").lower()
        connector = aiohttp.TCPConnector(resolver=_PinnedResolver(host, addresses))
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                ) as response,
            ):
                if response.status in _REDIRECTS and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    result.redirects.append(policy.redact(url))
                    if response.status == 303:
                        method, body = "GET", None
                    continue
                await _read(policy, response, result)
                result.final_url = policy.redact(url)
                return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.error = policy.redact(f"fetch failed: {type(exc).__name__}: {exc}")
            return result
    raise Denied(f"more than {config.max_redirects} redirects")


async def _read(policy: Policy, response: aiohttp.ClientResponse, result: FetchResult) -> None:
    config = policy.config
    content_type = response.headers.get("Content-Type", "")
    if response.method != "HEAD" and not any(
        content_type.lower().startswith(prefix) for prefix in config.mime_types
    ):
        raise Denied(f"content type {content_type or '(none)'} is not allowed")
    limit = config.max_response_bytes
    declared = response.content_length
    if declared is not None and declared > limit:
        raise Denied(f"the response has {declared} bytes, more than {limit}")
    raw = await response.content.read(limit + 1)
    if len(raw) > limit:
        raise Denied(f"the response has more than {limit} bytes")
    result.status = response.status
    result.content_type = content_type or None
    result.headers = {
        k: policy.redact(v) for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS
    }
    result.bytes = len(raw)
    result.body = policy.redact(raw.decode(response.charset or "utf-8", errors="replace"))
