"""Durability of the store (HOME-702, ORCH-3066): SIGKILL at random points, 20 times.

Each round starts orchestratord on the same state directory, writes catalog entries and
artifacts from two client threads as fast as it answers, and SIGKILLs the process at a
random moment. After the restart every write that was acknowledged (201 received) must be
there and intact, and SQLite's ``PRAGMA integrity_check`` must pass on the database.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from xtask.fakes.live_server import LiveServer, default_live_config, live_server

pytestmark = pytest.mark.e2e

ROUNDS = 20


def write_until_killed(server: LiveServer, round_no: int, kind: str, acked: dict[str, Any]) -> None:
    n = 0
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=10) as client:
        while True:
            n += 1
            try:
                if kind == "artifact":
                    body = {
                        "kind": "trace",
                        "content": {"round": round_no, "n": n, "pad": "x" * 200},
                    }
                    response = client.post("/v1/artifacts", json=body)
                    if response.status_code == 201:
                        acked[response.json()["id"]] = body["content"]
                else:
                    model_id = f"m-{round_no}-{n}"
                    digest = "sha256:" + hashlib.sha256(model_id.encode()).hexdigest()
                    response = client.post(
                        "/v1/catalog/models", json={"id": model_id, "digest": digest}
                    )
                    if response.status_code == 201:
                        acked[model_id] = digest
            except httpx.TransportError:
                return  # the server is gone


@pytest.mark.req("HOME-702", "ORCH-3066")
def test_every_acknowledged_write_survives_a_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    # The store is under test, not the engine: the pool loads on demand, and no task asks
    # for it, so the 21 restarts start no engine.
    config = default_live_config(tmp_path, residency="on-demand")
    artifacts: dict[str, Any] = {}
    models: dict[str, Any] = {}
    database = Path(config["state_dir"]) / "llorch.db"
    checked: set[str] = set()
    for round_no in range(ROUNDS):
        with live_server(config) as server:
            # After each kill, the writes acknowledged before it; at the end, every write.
            check_everything(server, unchecked(artifacts, checked), unchecked(models, checked))
            checked.update(artifacts.keys() | models.keys())
            check_integrity(database)
            writers = [
                threading.Thread(target=write_until_killed, args=(server, round_no, kind, acked))
                for kind, acked in (("artifact", artifacts), ("model", models))
            ]
            for writer in writers:
                writer.start()
            time.sleep(rng.uniform(0.05, 0.6))
            os.kill(server.pid, signal.SIGKILL)
            for writer in writers:
                writer.join(timeout=30)
    with live_server(config) as server:
        check_everything(server, artifacts, models)
    check_integrity(database)
    assert len(artifacts) > ROUNDS and len(models) > ROUNDS  # the writes really happened


def unchecked(written: dict[str, Any], checked: set[str]) -> dict[str, Any]:
    return {key: value for key, value in written.items() if key not in checked}


def check_everything(server: LiveServer, artifacts: dict[str, Any], models: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=10) as client:
        for artifact_id, content in artifacts.items():
            got = client.get(f"/v1/artifacts/{artifact_id}")
            assert got.status_code == 200, (artifact_id, got.text)
            assert got.json()["content"] == content
        listed = {m["id"]: m["digest"] for m in client.get("/v1/catalog/models").json()}
    for model_id, digest in models.items():
        assert listed.get(model_id) == digest, model_id


def check_integrity(database: Path) -> None:
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
