"""Guarantees whose evidence must not come from the server's own bookkeeping (mock engine):
the 429 hint follows the measured drain rate, the wall-clock watchdog, no token emitted after
a cancel returned, sampler profiles pinned by version, and `draining` in pool health."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestratord.adapters.base import GenerationRequest, StreamEnd, StreamEvent, TokenChunk
from orchestratord.adapters.mock import MockAdapter
from orchestratord.api.stream import TaskStreamResource
from orchestratord.config import SamplerProfile
from orchestratord.core.task import Burst
from tests.unit.conftest import AUTH, collect_stream, held_handler, make_config, task_body
from tests.unit.faulty_engine import FaultyEngine

Conductor = Any


async def submit(conductor: Conductor, **fields: Any) -> Any:
    return await conductor.simulate_post("/v1/tasks", json=task_body(**fields), headers=AUTH)


def timed_handler(per_task_s: float) -> Any:
    async def handler(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        await asyncio.sleep(per_task_s)
        yield TokenChunk(" done")
        yield StreamEnd("length", 1, 0, 1, per_task_s * 1000)

    return handler


@pytest.mark.req("HOME-902", "OC-CTRL-2011", "ORCH-2007", "FR-DP-003")
async def test_the_429_hint_is_the_measured_drain_interval(conductor_for: Any) -> None:
    service_s = 0.2
    adapter = MockAdapter(timed_handler(service_s))
    async with conductor_for(adapter, slots=2, queue={"capacity": 2}) as (orch, conductor):
        started = time.monotonic()
        first = await submit(conductor, max_tokens=1)
        await collect_stream(conductor, first.json["task_id"])
        measured_ms = (time.monotonic() - started) * 1000  # by the client, not the server
        accepted = [await submit(conductor, max_tokens=1) for _ in range(4)]
        assert [r.status_code for r in accepted] == [202] * 4  # 2 running + 2 queued
        rejected = await submit(conductor, max_tokens=1)
        for result in accepted:
            await collect_stream(conductor, result.json["task_id"])
    assert rejected.status_code == 429
    hint = rejected.json["retry_after_ms"]
    assert int(rejected.headers["X-Backoff-Ms"]) == hint
    assert int(rejected.headers["Retry-After"]) == math.ceil(hint / 1000)
    # one queue place frees every service time / slots: ~100 ms here, not the 1000 ms default
    assert 0.5 * measured_ms / 2 <= hint <= 1.5 * measured_ms / 2, (hint, measured_ms)
    assert hint != orch.config.pools[0].queue.default_backoff_ms


@pytest.mark.req("ORCH-3016", "OC-CORE-1022")
async def test_the_wall_clock_watchdog_ends_a_decode_that_never_stalls(
    conductor_for: Any,
) -> None:
    engine = FaultyEngine(slots=2, token_delay_s=0.005)  # a token every few ms, for ~10 s
    server = {"decode_wall_timeout_ms": 300, "decode_idle_timeout_ms": 30_000}
    async with conductor_for(engine, ctx_max=2048, server=server) as (orch, conductor):
        body = task_body(ctx=2048, max_tokens=2000)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        frames = await collect_stream(conductor, body["task_id"])
        await asyncio.sleep(0.01)
        assert orch.pools["p1"].slots_free == 2
    assert frames[-1] == (
        "error",
        {"code": "DECODE_TIMEOUT", "message": "watchdog: decoding too long", "engine": "llamacpp"},
    )
    assert 0 < sum(1 for e, _ in frames if e == "token") < 2000
    assert engine.active == 0


@pytest.mark.req("ORCH-3017", "HOME-304")
async def test_no_token_frame_is_emitted_after_cancel_returned(conductor_for: Any) -> None:
    """Watches the emitter itself: every write it hands to the server is timestamped, and
    none carrying a token may come after the cancel call returned."""
    rng = random.Random(3)
    writes: list[tuple[int, bytes]] = []
    clock = 0

    original = TaskStreamResource.emit

    async def recording(
        self: TaskStreamResource, task: Any, lead: bytes = b""
    ) -> AsyncIterator[Burst | None]:
        nonlocal clock
        async for burst in original(self, task, lead):
            clock += 1
            writes.append((clock, burst.raw if burst is not None else b""))
            yield burst

    engine = FaultyEngine(slots=2, token_delay_s=0.0005)
    async with conductor_for(engine, ctx_max=2048) as (orch, conductor):
        TaskStreamResource.emit = recording  # type: ignore[method-assign]
        try:
            for _ in range(30):
                writes.clear()
                body = task_body(ctx=2048, max_tokens=2000)
                await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
                path = f"/v1/tasks/{body['task_id']}/stream"
                async with conductor.simulate_get_stream(path, headers=AUTH) as stream:
                    await asyncio.sleep(rng.uniform(0.001, 0.03))
                    task = orch.registry.get(body["task_id"])
                    assert task is not None
                    await orch.cancel(task, reason="client")
                    cancel_returned = clock
                    async with asyncio.timeout(5):
                        while b"event: end" not in b"".join(w for _, w in writes):  # noqa: ASYNC110
                            await asyncio.sleep(0.001)
                    del stream
                after = [raw for at, raw in writes if at > cancel_returned]
                assert not any(b"event: token" in raw for raw in after), after
        finally:
            TaskStreamResource.emit = original  # type: ignore[method-assign]


@pytest.mark.req("OC-CORE-1031", "HOME-207", "HOME-603")
async def test_sampler_profiles_are_pinned_by_version(conductor_for: Any, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    async def recording(request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        seen[request.prompt] = request.sampling
        yield TokenChunk(" x")
        yield StreamEnd("length", 1, 0, 1, 1.0)

    base = make_config(tmp_path)
    profiles = {**base.sampler_profiles, "v2": SamplerProfile(temperature=0.1, top_k=5)}
    config = base.model_copy(update={"sampler_profiles": profiles})  # as the config file says
    async with conductor_for(MockAdapter(recording), config=config) as (_, conductor):
        for prompt, version in (("a", "v2"), ("b", None), ("c", "v2")):
            body = task_body(prompt=prompt, sampler_profile_version=version)
            await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
            await collect_stream(conductor, body["task_id"])
    v2, v1 = profiles["v2"], profiles["v1"]
    assert seen["a"] == seen["c"]  # same version, same settings, every time
    assert (seen["a"].temperature, seen["a"].top_k) == (v2.temperature, v2.top_k)
    assert (seen["b"].temperature, seen["b"].top_k) == (v1.temperature, v1.top_k)


@pytest.mark.req("HOME-506", "OC-CTRL-2001", "ORCH-2103")
async def test_health_says_draining_while_running_work_finishes_after_admission_stopped(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=1))
    async with conductor_for(adapter, slots=1) as (orch, conductor):
        body = task_body(max_tokens=4)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        before = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        shutdown = orch.begin_shutdown(30.0)
        during = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        release.set()
        await shutdown
    assert before["draining"] is False
    assert during["draining"] is True


@pytest.mark.req("HOME-301")
async def test_a_finished_task_can_be_replayed_again_and_again(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        body = task_body(max_tokens=5)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        first = await collect_stream(conductor, body["task_id"])
        again = await collect_stream(conductor, body["task_id"])
        third = await collect_stream(conductor, body["task_id"])
    assert first == again == third
    assert first[-1][0] == "end"


@pytest.mark.req("HOME-301", "FR-DP-002")
async def test_tokens_reach_the_client_while_the_engine_still_decodes(conductor_for: Any) -> None:
    from tests.sse import SSEParser  # noqa: PLC0415
    from tests.unit.conftest import chunks  # noqa: PLC0415

    engine = FaultyEngine(slots=1, token_delay_s=0.02)  # 40 tokens over about a second
    async with conductor_for(engine, slots=1) as (orch, conductor):
        body = task_body(max_tokens=40)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        task = orch.registry.get(body["task_id"])
        assert task is not None
        parser = SSEParser()
        path = f"/v1/tasks/{body['task_id']}/stream"
        async with conductor.simulate_get_stream(path, headers=AUTH) as stream:
            async for chunk in chunks(stream):
                parser.feed(chunk)
                if sum(1 for e, _ in parser.frames if e == "token") >= 5:
                    break
            assert not task.finished, "tokens waited for the end of the decode"
            await orch.cancel(task, "client")
