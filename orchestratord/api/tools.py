"""``POST /v1/tools/fetch`` (FR-TL-001, HOME-104): an HTTP fetch for agents, behind the policy.

Every request — allowed, denied, failed — leaves one audit record (``tools/audit.py``); a
denial is a 403 FORBIDDEN envelope whose message gives the policy's reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.bodies import parse_body
from orchestratord.config import FetchMethod
from orchestratord.errors import ApiError, ErrorCode
from orchestratord.tools.fetch import fetch
from orchestratord.tools.policy import Denied, FetchRequest

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator


class FetchBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1, max_length=4096)
    method: FetchMethod = FetchMethod.GET
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    body: str | None = Field(None, max_length=1_048_576)


class ToolFetchResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        orch = self.orch
        request = await parse_body(req, FetchBody, orch.config.server.max_body_bytes)
        policy = orch.tool_policy
        fetch_request = FetchRequest(
            request.url, request.method.value, dict(request.headers), request.body
        )
        audit = {
            "correlation_id": req.context.correlation_id,
            "method": request.method.value,
            "url": policy.redact(request.url),
        }
        try:
            result = await fetch(policy, fetch_request)
        except Denied as exc:
            reason = policy.redact(str(exc))
            orch.tool_audit.record(**audit, decision="deny", reason=reason)
            raise ApiError(403, ErrorCode.FORBIDDEN, f"tool policy: {reason}") from exc
        orch.tool_audit.record(
            **audit,
            decision="allow",
            status=result.status,
            bytes=result.bytes,
            redirects=result.redirects,
            error=result.error,
        )
        resp.media = result.view()
