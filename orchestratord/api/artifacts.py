"""``/v1/artifacts`` (HOME-701, HOME-702, OC-CTRL-2065, OC-CTRL-2066, FR-AR-001)."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import falcon
import falcon.asgi

from orchestratord.api.bodies import parse_body
from orchestratord.errors import conflict, invalid_params, not_found
from orchestratord.store.artifacts import ArtifactCreate, StoreFull, UnknownParent

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator

log = logging.getLogger("orchestratord.artifacts")

_ID = re.compile(r"^[0-9a-f]{64}$")
_DEFAULT_LIMIT = 100
_MAX_LIMIT = 1000


class ArtifactsResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        limit = self.orch.config.server.max_artifact_bytes
        artifact = await parse_body(req, ArtifactCreate, limit)
        try:
            stored, created = await self.orch.artifacts.put(artifact)
        except UnknownParent as exc:
            raise invalid_params(f"parent {exc} is not a stored artifact") from exc
        except StoreFull as exc:
            raise conflict(str(exc)) from exc
        if created and not artifact.signed:
            log.warning(
                "trust gap: artifact %s (%s) is unsigned (correlation %s)",
                stored.id,
                stored.kind,
                req.context.correlation_id,
            )
            self.orch.metrics.trust_gaps.labels(subject="artifact").inc()
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/artifacts/{stored.id}"
        resp.media = stored.ref()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        tag = req.get_param("tag")
        limit = req.get_param_as_int("limit", min_value=1, max_value=_MAX_LIMIT)
        listed = await self.orch.artifacts.list(tag, limit or _DEFAULT_LIMIT)
        resp.media = [a.ref() for a in listed]


class ArtifactResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, artifact_id: str
    ) -> None:
        if not _ID.match(artifact_id):
            raise invalid_params("artifact id must be 64 lower-case hex digits (a sha256)")
        stored = await self.orch.artifacts.get(artifact_id)
        if stored is None:
            raise not_found(f"no artifact {artifact_id}")
        resp.media = stored.full()
