"""Engine faults: who waits, who fails, and what admission says meanwhile (mock engine).

- A failed engine call makes the pool Unready at once, before the supervisor's next tick.
- Queued tasks stay queued and run after the engine is back; a task handed to a dead engine
  before anyone noticed goes back to the head of the queue; only tasks that were decoding
  end with WORKER_RESET.
- Admission while Unready is 503 POOL_UNREADY with Retry-After and X-Backoff-Ms.
- A queued task's deadline fires whatever the pool's state.
- A hung engine (alive, not answering) is killed and restarted; a failed first start is
  retried, and the engine it spawned is stopped; an open circuit ends queued work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestratord.app import Orchestrator
from orchestratord.core.task import Task
from orchestratord.replicas import engine_process
from orchestratord.replicas.engine_process import (
    EngineStartError,
    LlamaServerProcess,
    die_with_parent_prefix,
    private_directory,
)
from tests.unit.conftest import AUTH, collect_stream, task_body
from tests.unit.faulty_engine import FaultyEngine

Conductor = Any


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - observing state from outside, as a client would
            await asyncio.sleep(0.005)


def fast(orch: Orchestrator, **runtime: float) -> None:
    pool = orch.pools["p1"]
    for replica in pool.replicas:
        replica.runtime = dataclasses.replace(replica.runtime, **runtime)


async def submit(conductor: Conductor, **fields: Any) -> Any:
    return await conductor.simulate_post("/v1/tasks", json=task_body(**fields), headers=AUTH)


def task(orch: Orchestrator, task_id: str) -> Task:
    found = orch.registry.get(task_id)
    assert found is not None
    return found


@pytest.mark.req("OC-POOL-3003", "ORCH-3010", "OC-ADAPT-5011", "OC-CORE-1010")
async def test_a_crash_resets_only_decoding_tasks_and_queued_ones_run_after_recovery(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=1, token_delay_s=0.02)
    async with conductor_for(engine, slots=1, queue={"capacity": 4}) as (orch, conductor):
        # Slow checks: whatever makes the pool Unready below is not the supervisor's tick.
        fast(orch, monitor_interval_s=30.0)
        running = (await submit(conductor, max_tokens=200)).json["task_id"]
        await eventually(lambda: task(orch, running).tokens_out > 0)
        queued = [(await submit(conductor, max_tokens=3)).json["task_id"] for _ in range(2)]
        engine.down = True
        await eventually(lambda: task(orch, running).finished)
        assert task(orch, running).terminal == {
            "code": "WORKER_RESET",
            "message": "the engine connection was lost",
            "engine": "llamacpp",
        }
        pool = orch.pools["p1"]
        assert not pool.ready, "the failed call must make the pool Unready at once"
        await asyncio.sleep(0.05)
        assert [task(orch, t).finished for t in queued] == [False, False]
        assert len(pool.queue) == 2

        refused = await submit(conductor)
        assert refused.status_code == 503
        assert refused.json["code"] == "POOL_UNREADY" and refused.json["retriable"] is True
        assert refused.json["engine"] == "llamacpp"
        assert refused.json["message"] == "no Ready pool for 'test/mock-model'"
        assert refused.headers["X-Backoff-Ms"] == str(refused.json["retry_after_ms"])
        assert int(refused.headers["Retry-After"]) >= 1

        engine.down = False
        fast(orch, monitor_interval_s=0.01)
        pool.replicas[0].engine_failed("poke")  # wake the supervisor now rather than in 30 s
        for task_id in queued:
            frames = await collect_stream(conductor, task_id)
            assert frames[-1][0] == "end", frames[-1]
        assert pool.slots_free == 1


@pytest.mark.req("OC-POOL-3003", "ORCH-3010")
async def test_a_task_sent_to_a_dead_engine_before_anyone_noticed_is_requeued(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=1)
    async with conductor_for(engine, slots=1) as (orch, conductor):
        fast(orch, monitor_interval_s=0.02)
        engine.down = True  # killed between two health checks: the pool still says Ready
        assert orch.pools["p1"].ready
        accepted = await submit(conductor, max_tokens=4)
        assert accepted.status_code == 202
        task_id = accepted.json["task_id"]
        await eventually(lambda: engine.connect_attempts == 1)
        await asyncio.sleep(0.01)
        assert not orch.pools["p1"].ready
        assert not task(orch, task_id).finished
        assert orch.pools["p1"].queue.position(task(orch, task_id)) == 0
        engine.down = False
        frames = await collect_stream(conductor, task_id)
    assert frames[-1][0] == "end"
    assert sum(1 for e, _ in frames if e == "token") == 4
    assert engine.connect_attempts == 2


@pytest.mark.req("HOME-301", "HOME-901")
async def test_a_queued_task_meets_its_deadline_while_the_pool_is_unready(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=1, token_delay_s=0.01)
    async with conductor_for(engine, slots=1) as (orch, conductor):
        fast(orch, monitor_interval_s=30.0)
        holder = (await submit(conductor, ctx=512, max_tokens=500)).json["task_id"]
        await eventually(lambda: task(orch, holder).tokens_out > 0)
        waiting = (await submit(conductor, max_tokens=2, deadline_ms=150)).json["task_id"]
        orch.pools["p1"].replicas[0].engine_failed("engine stopped answering /health")
        frames = await collect_stream(conductor, waiting)
        assert len(orch.pools["p1"].queue) == 0  # it left the queue when its deadline fired
        await orch.cancel(task(orch, holder), "client")
    assert frames[-1] == (
        "error",
        {"code": "DEADLINE_UNMET", "message": "deadline passed while queued", "engine": "llamacpp"},
    )
    assert len(orch.pools["p1"].queue) == 0


class FakeProcess:
    """Stands in for LlamaServerProcess: can exit, hang, fail to start."""

    def __init__(self, fail_first_starts: int = 0) -> None:
        self.alive = False
        self.starts = 0
        self.stops = 0
        self.kills = 0
        self.fail_first_starts = fail_first_starts
        self.exit_code: int | None = None
        self.log_path = "engine.log"

    def running(self) -> bool:
        return self.alive

    async def start(self, timeout_s: float) -> None:
        self.starts += 1
        self.alive = True  # spawned
        if self.starts <= self.fail_first_starts:
            raise EngineStartError(
                "llama-server exited with 1:\nerror: /secret/path/model.gguf",
                "llama-server exited with 1",
            )
        self.exit_code = None

    def kill(self) -> None:
        self.kills += 1
        self.alive = False
        self.exit_code = -9

    async def stop(self, grace_s: float = 5.0) -> None:
        self.stops += 1
        self.alive = False


def with_process(orch: Orchestrator, process: FakeProcess) -> None:
    orch.pools["p1"].replicas[0].process = process  # type: ignore[assignment]


@pytest.mark.req("OC-POOL-3002", "OC-POOL-3010")
async def test_a_failed_first_start_is_retried_and_its_engine_stopped(tmp_path: Any) -> None:
    from tests.unit.conftest import TOKEN, make_config  # noqa: PLC0415

    engine = FaultyEngine()
    orch = Orchestrator(make_config(tmp_path), token=TOKEN, adapters={"p1": engine})
    process = FakeProcess(fail_first_starts=2)
    with_process(orch, process)
    fast(orch, monitor_interval_s=0.01, restart_backoff_s=0.01)
    pool = orch.pools["p1"]
    await orch.start()
    try:
        assert not pool.ready
        assert pool.last_error == "engine start failed: llama-server exited with 1"  # no path
        assert process.stops >= 1 and not process.alive  # the failed engine was not left running
        await eventually(lambda: pool.ready)
        assert process.starts == 3
        assert pool.last_error is not None and pool.last_error.startswith("engine restarted")
    finally:
        await orch.stop()


@pytest.mark.req("OC-POOL-3003", "OC-POOL-3010")
async def test_a_hung_engine_is_killed_and_restarted(tmp_path: Any) -> None:
    from tests.unit.conftest import TOKEN, make_config  # noqa: PLC0415

    engine = FaultyEngine()
    orch = Orchestrator(make_config(tmp_path), token=TOKEN, adapters={"p1": engine})
    process = FakeProcess()
    with_process(orch, process)
    fast(orch, monitor_interval_s=0.01, restart_backoff_s=0.01, hang_timeout_s=0.1)
    pool = orch.pools["p1"]
    await orch.start()
    try:
        assert pool.ready
        engine.hang()  # alive, but /health goes unanswered
        await eventually(lambda: process.kills == 1)
        engine.unhang()  # the new engine answers
        await eventually(lambda: pool.ready and process.starts == 2)
        assert pool.last_error is not None and "hung" in pool.last_error
    finally:
        await orch.stop()


@pytest.mark.req("OC-POOL-3011", "ORCH-3018")
async def test_an_open_circuit_ends_queued_work_and_refuses_new_work(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=1, token_delay_s=0.01)
    async with conductor_for(engine, slots=1, queue={"capacity": 4}) as (orch, conductor):
        holder = (await submit(conductor, ctx=512, max_tokens=500)).json["task_id"]
        await eventually(lambda: task(orch, holder).tokens_out > 0)
        queued = (await submit(conductor, max_tokens=2)).json["task_id"]
        orch.pools["p1"].replicas[0].open_circuit("circuit open after 5 failed starts")
        frames = await collect_stream(conductor, queued)
        refused = await submit(conductor)
        await orch.cancel(task(orch, holder), "client")
    assert frames[-1][0] == "error" and frames[-1][1]["code"] == "POOL_UNAVAILABLE"
    assert refused.status_code == 503
    assert refused.json == {
        "code": "POOL_UNAVAILABLE",
        "message": "the engine for 'test/mock-model' failed to start repeatedly (circuit open)",
        "engine": "llamacpp",
        "retriable": False,
        "correlation_id": refused.headers["X-Correlation-Id"],
    }


@pytest.mark.req("OC-POOL-3010", "HOME-301")
async def test_a_task_whose_engine_is_never_reachable_gives_up_after_three_starts(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=1)
    async with conductor_for(engine, slots=1) as (orch, conductor):
        fast(orch, monitor_interval_s=0.005)
        engine.down = True
        engine.healthy_flag = True
        pool = orch.pools["p1"]

        async def healthy_anyway() -> bool:  # answers /health, refuses every generation
            return True

        engine.healthy = healthy_anyway  # type: ignore[method-assign]
        accepted = await submit(conductor, max_tokens=4)
        frames = await collect_stream(conductor, accepted.json["task_id"])
        assert pool.ready
    assert engine.connect_attempts == 3
    assert frames[-1] == (
        "error",
        {"code": "POOL_UNAVAILABLE", "message": "the engine is unavailable", "engine": "llamacpp"},
    )


@pytest.mark.req("HARD-209")
async def test_engines_are_spawned_without_preexec_fn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def capture(*args: Any, **kwargs: Any) -> Any:
        seen["args"], seen["kwargs"] = args, kwargs
        raise OSError("not really starting it")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", capture)
    process = LlamaServerProcess(
        binary=Path("/opt/llama-server"), model_path=tmp_path / "m.gguf", ctx_per_slot=64,
        slots=1, log_path=tmp_path / "engine.log", socket_path=tmp_path / "s" / "e.sock",
    )  # fmt: skip
    with pytest.raises(OSError, match="not really"):
        await process._spawn()
    assert "preexec_fn" not in seen["kwargs"]
    args = list(seen["args"])
    assert args[: len(die_with_parent_prefix())] == die_with_parent_prefix()
    assert shutil.which("setpriv") is None or args[0].endswith("setpriv")
    assert args[len(die_with_parent_prefix())] == "/opt/llama-server"


@pytest.mark.req("HARD-209")
async def test_a_missing_setpriv_is_said_once_and_the_engine_still_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    seen: list[tuple[Any, ...]] = []

    async def capture(*args: Any, **kwargs: Any) -> Any:
        seen.append(args)
        raise OSError("not really starting it")

    monkeypatch.setattr(engine_process, "_said", set())
    monkeypatch.setattr(engine_process.sys, "platform", "linux")
    monkeypatch.setattr(engine_process.shutil, "which", lambda name: None)
    monkeypatch.setattr(asyncio, "create_subprocess_exec", capture)
    process = LlamaServerProcess(
        binary=Path("/opt/llama-server"), model_path=tmp_path / "m.gguf", ctx_per_slot=64,
        slots=1, log_path=tmp_path / "engine.log", socket_path=tmp_path / "s" / "e.sock",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="orchestratord.engine"):
        prefixes = [die_with_parent_prefix() for _ in range(3)]
        for _ in range(2):
            with pytest.raises(OSError, match="not really"):
                await process._spawn()
    assert prefixes == [[], [], []]
    assert [args[0] for args in seen] == ["/opt/llama-server"] * 2  # spawned, no wrapper
    said = [r.getMessage() for r in caplog.records if "setpriv" in r.getMessage()]
    assert len(said) == 1, said
    assert "outlive orchestratord" in said[0] and "util-linux" in said[0], said


@pytest.mark.req("HARD-209")
def test_a_socket_directory_that_is_not_ours_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "llorch-0"
    link.symlink_to(target)
    with pytest.raises(EngineStartError, match="not a directory"):
        private_directory(link)
    mine = tmp_path / "mine"
    private_directory(mine)
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    mine.chmod(0o777)
    private_directory(mine)  # ours, but open to others: closed again
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    monkeypatch.setattr(os, "getuid", lambda: mine.stat().st_uid + 1)  # as another user made it
    with pytest.raises(EngineStartError, match="belongs to uid"):
        private_directory(mine)
