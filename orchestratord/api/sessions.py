"""``/v1/sessions/{id}`` (HOME-401, ORCH-2004, ORCH-2005, FR-DP-004): read and end a session."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import falcon
import falcon.asgi

from orchestratord.core.request import is_canonical_uuid
from orchestratord.core.sessions import Session
from orchestratord.errors import invalid_params, not_found

if TYPE_CHECKING:
    from orchestratord.app import Orchestrator


class SessionResource:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orch = orchestrator

    def _live(self, session_id: str) -> Session:
        if not is_canonical_uuid(session_id):
            raise invalid_params("session id must be a UUID in canonical form")
        session = self.orch.sessions.get(session_id)
        if session is None:
            raise not_found(f"no live session {session_id}")
        return session

    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        session = self._live(session_id)
        pool = self.orch.pools.get(session.pool_id)
        per_token = await pool.kv_bytes_per_token() if pool is not None else None
        resp.media = session.view(time.monotonic(), self.orch.sessions.max_turns, per_token)

    async def on_delete(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, session_id: str
    ) -> None:
        self._live(session_id)
        await self.orch.canceller.end_session(self.orch.sessions, session_id)
        resp.status = falcon.HTTP_204
