"""The mediated HTTP fetch tool for agents (FR-TL-001, HOME-104), on the outbound client.

Where a request may go is the outbound policy's decision (``outbound/``); this module adds
the tool's own bounds — methods, total time, bytes and content type — and shapes what the
agent gets back. The body is read to the limit and refused past it, whatever the server
declared or left out. Secrets are redacted from what is sent and what comes back.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from orchestratord.config import ToolsConfig
from orchestratord.outbound.client import OutboundClient, UpstreamFailed
from orchestratord.outbound.policy import Denied, FetchRequest, OutboundError

log = logging.getLogger("orchestratord.tools")

_KEPT_HEADERS = ("content-type", "content-length", "last-modified", "etag")
_READ_CHUNK = 64 * 1024


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


class FetchTool:
    def __init__(self, client: OutboundClient, config: ToolsConfig) -> None:
        self.client = client
        self.config = config

    async def fetch(self, request: FetchRequest, correlation_id: str) -> FetchResult:
        """Fetch under the policy and the tool's bounds; raises Denied or InvalidTarget.

        A request that was allowed but failed upstream (connection, timeout, a bad redirect)
        comes back with ``error`` set, as the contract says."""
        redact, config = self.client.redactor, self.config
        shown = redact.url(request.url)
        result = FetchResult(shown, shown)
        if request.method not in config.methods:
            reason = f"method {request.method} is not allowed ({', '.join(config.methods)})"
            await self.client.record("fetch", correlation_id, decision="deny", hop=0,
                               method=request.method, url=request.url, reason=reason)  # fmt: skip
            raise Denied(reason)
        # The API token and redact_patterns never leave, in the URL as in headers and body;
        # redact_query_params values are secrets to show, not to strip from the request.
        url = redact.text(request.url)
        headers = {k: redact.text(v) for k, v in request.headers.items()}
        body = redact.text(request.body) if request.body is not None else None
        seconds = config.timeout_ms / 1000
        try:
            async with (
                asyncio.timeout(seconds),
                self.client.open(
                    url, purpose="fetch", correlation_id=correlation_id,
                    method=request.method, headers=headers, body=body,
                    client_timeout=aiohttp.ClientTimeout(total=seconds),
                ) as opened,
            ):  # fmt: skip
                result.redirects = [redact.url(u) for u in opened.redirects]
                result.final_url = redact.url(opened.url)
                await self._read(opened.response, result)
        except Denied as exc:
            await self.client.record("fetch", correlation_id, outcome="refused", reason=str(exc))
            raise
        except UpstreamFailed as exc:
            result.error = redact.text(f"fetch failed: {exc}")
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            result.error = redact.text(f"fetch failed: {type(exc).__name__}: {exc}")
        except OutboundError:  # InvalidTarget: a 400, audited where it was decided
            raise
        except Exception:  # an allowed request always gets its outcome, never a 500
            log.exception("fetch %s failed", shown)
            result.error = "fetch failed: an internal error (see the server log)"
        await self.client.record(
            "fetch", correlation_id, outcome="error" if result.error else "ok",
            status=result.status, bytes=result.bytes, error=result.error,
        )  # fmt: skip
        return result

    async def _read(self, response: aiohttp.ClientResponse, result: FetchResult) -> None:
        config, redact = self.config, self.client.redactor
        content_type = response.headers.get("Content-Type", "")
        if response.method != "HEAD" and not any(
            content_type.lower().startswith(prefix) for prefix in config.mime_types
        ):
            raise Denied(f"content type {content_type or '(none)'} is not allowed")
        limit = config.max_response_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            raise Denied(f"the response has {declared} bytes, more than {limit}")
        raw = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK):
            raw += chunk
            if len(raw) > limit:
                raise Denied(f"the response has more than {limit} bytes")
        result.status = response.status
        result.content_type = content_type or None
        result.headers = {
            k: redact.text(v) for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS
        }
        result.bytes = len(raw)
        charset = response.charset or "utf-8"
        refused = _not_a_text_encoding(charset)
        if refused is not None:
            result.error = f"{refused}; the body was decoded as UTF-8"
            charset = "utf-8"
        result.body = redact.text(bytes(raw).decode(charset, errors="replace"))


def _not_a_text_encoding(name: str) -> str | None:
    """Why ``name`` cannot decode a body: unknown, or one of Python's bytes-to-bytes or
    text-to-text codecs (base64, hex, zlib, bz2, uu, quopri, rot13); None for a charset."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        return f"unknown charset {name[:40]!r}"
    if not getattr(info, "_is_text_encoding", True):
        return f"charset {name[:40]!r} is not a text encoding"
    return None
