"""``/v1/catalog/models`` (HOME-501..503, ORCH-3060..3073, FR-CP-001): register, read, list,
verify, pull (and cancel a pull), delete and change the lifecycle state of models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import falcon
import falcon.asgi

from orchestratord.api.bodies import parse_body
from orchestratord.catalog.catalog import CatalogError, CatalogRecord
from orchestratord.catalog.lifecycle import apply_model_state, engine_serving
from orchestratord.catalog.model import CatalogEntry, ModelState, StateRequest
from orchestratord.errors import ApiError, ErrorCode, conflict, invalid_params, not_found

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator


def refuse(exc: CatalogError) -> NoReturn:
    message = str(exc)
    if exc.kind == "conflict":
        raise conflict(message) from exc
    if exc.kind == "not_found":
        raise not_found(message) from exc
    if exc.kind == "untrusted":
        raise ApiError(400, ErrorCode.UNTRUSTED_ARTIFACT, message) from exc
    raise invalid_params(message) from exc


class _CatalogResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    def record(self, model_id: str) -> CatalogRecord:
        record = self.orch.catalog.get(model_id)
        if record is None:
            raise not_found(f"no model {model_id}")
        return record

    @property
    def limit(self) -> int:
        return self.orch.config.server.max_body_bytes


class CatalogModelsResource(_CatalogResource):
    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        entry = await parse_body(req, CatalogEntry, self.limit)
        credential = (
            self.orch.redactor.credentials_in(entry.source_url) if entry.source_url else None
        )
        if credential is not None:  # HOME-107: no secret in a durable, readable catalog row
            raise invalid_params(
                f"source_url carries a credential ({credential}); the catalog stores and "
                "shows its URLs, so credentials do not belong in them"
            )
        try:
            record = await self.orch.catalog.register(entry, req.context.correlation_id)
        except CatalogError as exc:
            refuse(exc)
        resp.status = falcon.HTTP_201
        resp.location = f"/v1/catalog/models/{record.id}"
        resp.media = record.view()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        state_name = req.get_param("state")
        try:
            state = ModelState(state_name) if state_name is not None else None
        except ValueError as exc:
            known = ", ".join(s.value for s in ModelState)
            raise invalid_params(f"unknown state {state_name!r}; known: {known}") from exc
        records = self.orch.catalog.entries(req.get_param("tag"), state)
        resp.media = [r.view() for r in records]


class CatalogModelResource(_CatalogResource):
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        resp.media = self.record(model_id).view()

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        record = self.record(model_id)
        serving = sorted(p.id for p in self.orch.pools.values() if p.config.model_ref == model_id)
        if serving:
            raise conflict(
                f"model {model_id} is served by pool(s) {', '.join(serving)}: reload or remove "
                "them first"
            )
        await self.orch.puller.cancel(record)
        try:
            await self.orch.catalog.delete(model_id)
        except CatalogError as exc:
            refuse(exc)
        deleted = await self.orch.puller.remove(record)
        resp.media = {"id": model_id, "deleted_files": deleted}


class CatalogVerifyResource(_CatalogResource):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        self.record(model_id)
        engine = engine_serving(self.orch.pools, model_id)
        record = await self.orch.catalog.start_verify(model_id, engine)
        resp.status = falcon.HTTP_202
        resp.media = {"id": model_id, "verification": record.verification}


class CatalogPullResource(_CatalogResource):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        record = self.record(model_id)
        try:
            await self.orch.puller.start(record, req.context.correlation_id)
        except CatalogError as exc:
            refuse(exc)
        resp.status = falcon.HTTP_202
        resp.media = {"id": model_id, "pull": record.pull}

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        record = self.record(model_id)
        if not await self.orch.puller.cancel(record):
            state = (record.pull or {}).get("state", "never pulled")
            raise conflict(f"model {model_id} has no pull running (its pull: {state})")
        resp.media = {"id": model_id, "pull": record.pull}


class CatalogStateResource(_CatalogResource):
    async def on_post(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, model_id: str
    ) -> None:
        self.record(model_id)
        request = await parse_body(req, StateRequest, self.limit)
        try:
            old, new = await self.orch.catalog.set_state(model_id, request.state)
        except CatalogError as exc:
            refuse(exc)
        drained = apply_model_state(self.orch.pools, model_id, new, request.deadline_ms)
        resp.status = falcon.HTTP_202
        body: dict[str, Any] = {
            "id": model_id,
            "state": new.value,
            "previous": old.value,
            "pools_draining": drained,
        }
        resp.media = body
