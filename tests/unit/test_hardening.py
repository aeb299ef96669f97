"""Bad input, secrets, memory and the cancel/disconnect races (mock engine)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestratord.adapters.mock import MockAdapter
from orchestratord.api.stream import TaskStreamResource
from orchestratord.auth import resolve_token
from orchestratord.cli import main as cli_main
from orchestratord.config import AuthConfig, Config
from orchestratord.core.registry import TaskRegistry
from orchestratord.core.task import Task
from orchestratord.replicas.engine_log import RotatingLog
from tests.unit.conftest import AUTH, collect_stream, held_handler, new_task, task_body
from tests.unit.faulty_engine import FaultyEngine

Conductor = Any


async def submit(conductor: Conductor, body: Any) -> Any:
    if isinstance(body, dict):
        return await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
    return await conductor.simulate_post("/v1/tasks", body=body, headers=AUTH)


# --- input -----------------------------------------------------------------------------------


@pytest.mark.req("HOME-205", "HOME-901", "OC-CTRL-2010")
@pytest.mark.parametrize(
    "raw",
    [
        '"deadline_ms": 1' + "0" * 400,
        '"expected_tokens": 1' + "0" * 400,
        '"ctx": 1' + "0" * 40,
        '"max_tokens": 1e400',
        '"seed": -1' + "0" * 30,
    ],
)
async def test_huge_numbers_are_400_never_500(conductor_for: Any, raw: str) -> None:
    body = task_body()
    field = raw.split('"')[1]
    body.pop(field, None)
    text = json.dumps(body)[:-1] + ", " + raw + "}"
    async with conductor_for() as (_, conductor):
        result = await submit(conductor, text.encode())
    assert result.status_code == 400, result.text
    assert result.json["code"] == "INVALID_PARAMS"
    assert field in result.json["message"]


@pytest.mark.req("HOME-204", "HOME-208")
@pytest.mark.parametrize(
    "spelling",
    [
        lambda u: str(u).upper(),
        lambda u: u.hex,
        lambda u: f"urn:uuid:{u}",
        lambda u: "{" + str(u) + "}",
    ],
)
async def test_task_ids_only_in_canonical_form(conductor_for: Any, spelling: Any) -> None:
    task_id = uuid.uuid4()
    async with conductor_for() as (_, conductor):
        refused = await submit(conductor, task_body(task_id=spelling(task_id)))
        path = await conductor.simulate_post(f"/v1/tasks/{spelling(task_id)}/cancel", headers=AUTH)
        other_session = await submit(conductor, task_body(session_id=spelling(uuid.uuid4())))
    assert refused.status_code == 400 and "task_id" in refused.json["message"]
    assert path.status_code in (400, 404) and path.json["code"] in ("INVALID_PARAMS", "NOT_FOUND")
    assert other_session.status_code == 400 and "session_id" in other_session.json["message"]


class _CountingAdapter(MockAdapter):
    max_token_bytes = 8

    def __init__(self) -> None:
        super().__init__()
        self.counted = 0

    async def count_tokens(self, text: str) -> int:
        self.counted += 1
        return await super().count_tokens(text)


@pytest.mark.req("HOME-205", "ORCH-3015", "OC-CORE-1021")
async def test_a_prompt_that_cannot_fit_is_refused_without_a_tokenizer_round_trip(
    conductor_for: Any,
) -> None:
    adapter = _CountingAdapter()
    async with conductor_for(adapter) as (_, conductor):
        # 100,000 bytes need at least 12,500 tokens of at most 8 bytes: far beyond ctx 256.
        huge = await submit(conductor, task_body(prompt="x" * 100_000))
        near = await submit(conductor, task_body(prompt="word " * 60, max_tokens=8))
    assert huge.status_code == 400 and "exceed ctx" in huge.json["message"]
    assert adapter.counted == 1  # only the prompt between the two bounds was tokenized
    assert near.status_code == 202


@pytest.mark.req("HOME-901", "OC-CTRL-2031")
async def test_an_unexpected_500_is_not_retriable(conductor_for: Any) -> None:
    async with conductor_for() as (orch, conductor):

        async def explode(*args: Any) -> Any:
            raise RuntimeError("bug")

        orch.admission.admit = explode  # type: ignore[method-assign]
        result = await submit(conductor, task_body())
    assert result.status_code == 500
    assert result.json["code"] == "INTERNAL" and result.json["retriable"] is False
    assert "bug" not in result.json["message"]


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.req("OC-CTRL-2041")
def test_a_rejected_config_token_is_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("auth:\n  token: short-secret\n")
    assert cli_main(["serve", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "auth.token" in err
    assert "short-secret" not in out + err


@pytest.mark.req("HOME-102", "OC-CTRL-2041")
def test_a_token_file_that_is_a_symlink_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLORCH_API_TOKEN", raising=False)
    real = tmp_path / "elsewhere"
    real.write_text("a-token-someone-else-controls\n")
    real.chmod(0o600)
    link = tmp_path / "api-token"
    link.symlink_to(real)
    config = Config(auth=AuthConfig(token_file=link), state_dir=tmp_path)
    with pytest.raises(PermissionError, match="symlink"):
        resolve_token(config)


@pytest.mark.req("HOME-102")
def test_a_token_file_owned_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLORCH_API_TOKEN", raising=False)
    path = tmp_path / "api-token"
    path.write_text("token-of-another-user-0123456789\n")
    path.chmod(0o600)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(PermissionError, match="belongs to uid"):
        resolve_token(Config(auth=AuthConfig(token_file=path), state_dir=tmp_path))


# --- memory ----------------------------------------------------------------------------------


def finished_task(tokens: int) -> Task:
    task = new_task(tokens)
    task.finish_end("length")
    return task


def test_retention_is_bounded_in_bytes_count_and_age() -> None:
    registry = TaskRegistry(retention_s=600, max_finished=1000, max_bytes=1_000_000)
    tasks = [finished_task(2000) for _ in range(40)]
    for task in tasks:
        registry.add(task)
        registry.finished(task)
    assert registry.finished_bytes <= 1_000_000
    kept = [t for t in tasks if t.id in registry]
    assert kept == tasks[-len(kept) :]  # the oldest finished went first
    assert 0 < len(kept) < 40
    # a token frame costs its bytes on the wire and little more
    assert kept[0].retained_bytes() / 2000 < 60
    registry.prune(now=kept[-1].finished_at + 601)  # type: ignore[operator]
    assert registry.finished_count == 0 and len(registry) == 0


# --- races -----------------------------------------------------------------------------------


@pytest.mark.req("HOME-304", "HOME-305")
async def test_a_disconnect_cleanup_never_wipes_a_reconnected_clients_log(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=3))
    async with conductor_for(adapter) as (orch, conductor):
        body = task_body(max_tokens=10)
        await submit(conductor, body)
        task = orch.registry.get(body["task_id"])
        assert task is not None
        await asyncio.sleep(0.05)
        resource = TaskStreamResource(orch)
        task.subscribed = True
        first = resource.emit(task)
        await anext(first)  # started
        await anext(first)  # the frames so far
        delivered = task.delivered
        await first.aclose()  # the client goes away
        replay = await collect_stream(conductor, body["task_id"])  # and comes straight back
        release.set()
    tokens = [p for e, p in replay if e == "token"]
    assert replay[-1][0] == "end" and replay[-1][1]["finish_reason"] == "canceled"
    assert len(tokens) == replay[-1][1]["tokens_out"] == 3
    assert delivered > 0


@pytest.mark.req("HOME-304", "ORCH-3026")
async def test_a_second_concurrent_cancel_also_waits_for_the_free_slot(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=2, token_delay_s=0.01)
    release_order: list[str] = []

    class SlowRelease(FaultyEngine):
        async def _generate(self, request: Any) -> Any:
            try:
                async for event in FaultyEngine._generate(self, request):
                    yield event
            finally:
                await asyncio.sleep(0.1)  # the engine takes a while to free the slot
                release_order.append("slot free")

    engine = SlowRelease(slots=2, token_delay_s=0.01)
    async with conductor_for(engine, ctx_max=2048) as (orch, conductor):
        body = task_body(ctx=2048, max_tokens=1000)
        await submit(conductor, body)
        task = orch.registry.get(body["task_id"])
        assert task is not None
        while task.tokens_out == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

        async def cancel(name: str) -> None:
            await orch.cancel(task, reason="client")
            release_order.append(name)

        await asyncio.gather(cancel("first 204"), cancel("second 204"))
    assert release_order[0] == "slot free", release_order


@pytest.mark.req("HOME-301")
async def test_shutdown_lets_running_tasks_finish_within_the_grace(conductor_for: Any) -> None:
    engine = FaultyEngine(slots=1, token_delay_s=0.002)
    async with conductor_for(engine, slots=1, queue={"capacity": 4}) as (orch, conductor):
        running = task_body(max_tokens=20)
        waiting = task_body(max_tokens=20)
        await submit(conductor, running)
        await submit(conductor, waiting)
        await orch.begin_shutdown(5.0)
        refused = await submit(conductor, task_body())
        ran = await collect_stream(conductor, running["task_id"])
        queued = await collect_stream(conductor, waiting["task_id"])
    assert ran[-1][0] == "end" and ran[-1][1]["finish_reason"] == "length"
    assert queued[-1][0] == "error" and queued[-1][1]["code"] == "POOL_UNAVAILABLE"
    assert refused.status_code == 503
    assert refused.json == {
        "code": "POOL_UNAVAILABLE",
        "message": "orchestratord is shutting down",
        "engine": "llamacpp",
        "retriable": True,
        "retry_after_ms": 5000,
        "correlation_id": refused.headers["X-Correlation-Id"],
    }
    assert refused.headers["Retry-After"] == "5" and refused.headers["X-Backoff-Ms"] == "5000"


def test_the_engine_log_is_capped_and_rotated(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "engine.log", max_bytes=1000)
    for n in range(100):
        log.write(f"line {n:04d} ".encode() + b"x" * 40 + b"\n")
    current = (tmp_path / "engine.log").stat().st_size
    rotated = (tmp_path / "engine.log.1").stat().st_size
    assert current <= 1000 and rotated <= 1000
    assert "line 0099" in (tmp_path / "engine.log").read_text()
    assert list(log.tail)[-1].startswith("line 0099")
    logging.getLogger(__name__).debug("rotated at %d/%d bytes", current, rotated)
