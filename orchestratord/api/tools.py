"""``POST /v1/tools/fetch`` (FR-TL-001, HOME-104, HOME-107): an HTTP fetch for agents.

Every decision — allowed, denied — is audited before anything is sent, and every request
ends with an outcome record (``outbound/audit.py``). A denial is a 403 FORBIDDEN envelope
whose message gives the policy's reason; a URL that cannot be a target (bad port, invalid
host) is a 400; an upstream failure is a 200 with ``error`` set, as the contract says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from orchestratord.api.bodies import parse_body
from orchestratord.config import FetchMethod
from orchestratord.errors import ApiError, ErrorCode, invalid_params
from orchestratord.outbound.policy import Denied, FetchRequest, InvalidTarget

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
        fetch_request = FetchRequest(
            request.url, request.method.value, dict(request.headers), request.body
        )
        try:
            result = await orch.fetch_tool.fetch(fetch_request, req.context.correlation_id)
        except Denied as exc:
            raise ApiError(403, ErrorCode.FORBIDDEN, f"tool policy: {exc}") from exc
        except InvalidTarget as exc:
            raise invalid_params(f"url: {exc}") from exc
        resp.media = result.view()
