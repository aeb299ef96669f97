"""Sessions on a real llama-server: the second turn reuses the first turn's prompt cache in the
same engine slot; DELETE erases that slot, which the engine itself then shows."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, live_server, task_body

pytestmark = pytest.mark.e2e

STORY = "Once upon a time " + " ".join(f"there was a king number {n}" for n in range(40))


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as live:
        yield live


def turn(client: httpx.Client, session: str, prompt: str) -> list[tuple[str, object]]:
    body = task_body(session_id=session, prompt=prompt, max_tokens=8)
    assert client.post("/v1/tasks", json=body).status_code == 202
    return SSEParser().feed(client.get(f"/v1/tasks/{body['task_id']}/stream").content)


@pytest.mark.req("HOME-401", "HOME-403", "ORCH-2005", "ORCH-3009", "OC-CORE-1013")
def test_the_next_turn_is_warm_and_delete_erases_the_engine_slot(server: LiveServer) -> None:
    session = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        turn(client, session, STORY)
        second = turn(client, session, STORY + " and then")
        state = client.get(f"/v1/sessions/{session}").json()
        assert client.delete(f"/v1/sessions/{session}").status_code == 204
    metrics = [p for e, p in second if e == "metrics"]
    assert metrics[-1]["kv_warmth"] is True  # type: ignore[index]
    assert state["kv_warmth"] is True and state["kv_bytes"] > 0
    slot = state["slot_id"]
    # Ask the engine itself, pinned to that slot, for the same prompt: nothing is cached.
    with server.engine_client(timeout_s=60) as engine:
        body = {"prompt": STORY, "n_predict": 1, "id_slot": slot, "cache_prompt": True}
        reply = json.loads(engine.post("/completion", json=body).content)
    assert reply["timings"]["cache_n"] == 0
