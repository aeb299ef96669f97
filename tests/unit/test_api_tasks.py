"""Data plane on the mock engine: admission, SSE framing, cancel, backpressure, auth."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestratord import API_VERSION
from orchestratord.adapters.base import EngineUnavailable
from orchestratord.adapters.mock import MockAdapter, seeded_words
from orchestratord.core.task import encode_frame
from tests.contract_schemas import assert_frames_match, assert_matches
from tests.sse import SSEParser
from tests.unit.conftest import AUTH, chunks, collect_stream, held_handler, task_body

Conductor = Any


async def submit(conductor: Conductor, body: dict[str, Any], **headers: str) -> Any:
    return await conductor.simulate_post("/v1/tasks", json=body, headers={**AUTH, **headers})


def assert_envelope(result: Any, status: int, code: str) -> dict[str, Any]:
    assert result.status_code == status, result.text
    body = result.json
    assert body["code"] == code
    assert body["message"]
    assert body["correlation_id"] == result.headers["X-Correlation-Id"]
    assert_matches("data", "ErrorEnvelope", body)
    return dict(body)


@pytest.mark.req("HOME-204", "HOME-206", "HOME-301", "ORCH-2001", "ORCH-2002")
async def test_task_streams_started_tokens_metrics_and_one_end(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        body = task_body(max_tokens=5, seed=11)
        accepted = await submit(conductor, body)
        assert accepted.status_code == 202
        admission = accepted.json
        assert_matches("data", "AdmissionResponse", admission)
        assert admission["task_id"] == body["task_id"]
        assert admission["queue_position"] == 0
        assert admission["predicted_start_ms"] == 0

        frames = await collect_stream(conductor, body["task_id"])
    events = [event for event, _ in frames]
    assert events[0] == "started"
    assert "metrics" in events
    tokens = [payload for event, payload in frames if event == "token"]
    assert [t["i"] for t in tokens] == list(range(5))
    assert "".join(t["t"] for t in tokens) == "".join(seeded_words(11, 5))
    assert events[-1] == "end" and events.count("end") + events.count("error") == 1
    assert frames[-1][1]["tokens_out"] == len(tokens)
    assert frames[-1][1]["finish_reason"] == "length"
    assert frames[0][1]["seed"] == 11


@pytest.mark.req("HOME-207")
async def test_seed_is_derived_from_task_id_when_absent(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        task_id = str(uuid.uuid4())
        await submit(conductor, task_body(task_id=task_id, seed=None))
        first = await collect_stream(conductor, task_id)
    seed = first[0][1]["seed"]
    assert isinstance(seed, int) and seed >= 0
    words = [p["t"] for e, p in first if e == "token"]
    assert words == seeded_words(seed % 0xFFFFFFFF, len(words))


@pytest.mark.req("HOME-103", "OC-CTRL-2052")
async def test_correlation_id_is_echoed_or_generated(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        sent = await submit(conductor, task_body(), **{"X-Correlation-Id": "corr-abc-123"})
        assert sent.headers["X-Correlation-Id"] == "corr-abc-123"
        fresh = await conductor.simulate_get("/v1/capabilities", headers=AUTH)
        assert uuid.UUID(fresh.headers["X-Correlation-Id"])
        missing = await conductor.simulate_get(
            f"/v1/tasks/{uuid.uuid4()}/stream", headers={**AUTH, "X-Correlation-Id": "corr-404"}
        )
        assert assert_envelope(missing, 404, "NOT_FOUND")["correlation_id"] == "corr-404"
        for unusable in ("", "has space", "x" * 129, "caf\u00e9"):
            replaced = await conductor.simulate_get(
                "/v1/capabilities", headers={**AUTH, "X-Correlation-Id": unusable}
            )
            assert replaced.status_code == 200
            assert uuid.UUID(replaced.headers["X-Correlation-Id"])


@pytest.mark.req("HOME-102", "OC-CTRL-2040")
async def test_missing_token_is_401_and_wrong_token_403(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        none = await conductor.simulate_post(
            "/v1/tasks", json=task_body(), headers={"X-Correlation-Id": "c-401"}
        )
        assert assert_envelope(none, 401, "UNAUTHORIZED")["correlation_id"] == "c-401"
        assert none.headers["WWW-Authenticate"] == "Bearer"
        wrong = await conductor.simulate_get(
            "/v1/capabilities", headers={"Authorization": "Bearer not-the-token"}
        )
        assert_envelope(wrong, 403, "FORBIDDEN")
        scrape = await conductor.simulate_get("/metrics")
        assert scrape.status_code == 200


@pytest.mark.req("HOME-205", "OC-CTRL-2010")
@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"task_id": "not-a-uuid"}, "task_id"),
        ({"ctx": "big"}, "ctx"),
        ({"engine": "gpt"}, "engine"),
        ({"ctx": 100_000}, "exceeds the pool limit"),
        ({"inputs": ["a"]}, "exactly one of prompt or inputs"),
        ({"prompt": None}, "exactly one of prompt or inputs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"surprise": 1}, "surprise"),
        ({"model_ref": "unknown/model"}, "no pool serves"),
        ({"engine": "vllm"}, "not 'vllm'"),
        ({"workload": "embedding", "prompt": None, "inputs": ["x"]}, "workload"),
        ({"sampler_profile_version": "v99"}, "sampler_profile_version"),
        ({"ctx": 10, "max_tokens": 9}, "exceed ctx"),
        ({"priority": "urgent"}, "priority"),
        ({"seed": 2**63}, "seed"),
    ],
)
async def test_invalid_payloads_get_400_envelope(
    conductor_for: Any, overrides: dict[str, Any], needle: str
) -> None:
    async with conductor_for() as (_, conductor):
        body = task_body(**{k: v for k, v in overrides.items() if v is not None})
        for key, value in overrides.items():
            if value is None:
                body.pop(key, None)
        result = await submit(conductor, body)
        assert needle in assert_envelope(result, 400, "INVALID_PARAMS")["message"]


@pytest.mark.req("HOME-205", "HOME-901")
async def test_malformed_json_and_oversized_bodies(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        bad = await conductor.simulate_post("/v1/tasks", body=b"{not json", headers=AUTH)
        assert_envelope(bad, 400, "INVALID_PARAMS")
        empty = await conductor.simulate_post("/v1/tasks", body=b"", headers=AUTH)
        assert_envelope(empty, 400, "INVALID_PARAMS")
        array = await conductor.simulate_post("/v1/tasks", body=b"[1]", headers=AUTH)
        assert_envelope(array, 400, "INVALID_PARAMS")
        huge = task_body(prompt="x" * 2_000_000)
        too_big = await submit(conductor, huge)
        assert_envelope(too_big, 413, "INVALID_PARAMS")


@pytest.mark.req("HOME-208", "ORCH-3024")
async def test_duplicate_task_id_is_409_and_runs_once(conductor_for: Any) -> None:
    adapter = MockAdapter()
    async with conductor_for(adapter) as (_, conductor):
        body = task_body()
        assert (await submit(conductor, body)).status_code == 202
        assert_envelope(await submit(conductor, body), 409, "CONFLICT")
        await collect_stream(conductor, body["task_id"])
    assert adapter.started == 1


@pytest.mark.req("HOME-902", "ORCH-2007", "OC-CTRL-2011", "OC-CTRL-2031", "HOME-203")
async def test_full_queue_answers_429_with_backoff_headers(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=1, queue={"capacity": 1}) as (orch, conductor):
        assert (await submit(conductor, task_body())).status_code == 202  # takes the slot
        await asyncio.sleep(0.05)
        queued = await submit(conductor, task_body())
        assert queued.status_code == 202 and queued.json["queue_position"] == 0
        rejected = await submit(conductor, task_body())
        body = assert_envelope(rejected, 429, "ADMISSION_REJECT")
        assert body["policy_label"] == "reject"
        assert body["retriable"] is True
        assert body["engine"] == "llamacpp"
        scrape = (await conductor.simulate_get("/metrics")).text
        assert (
            'admission_backpressure_events_total{engine="llamacpp",policy="reject"} 1.0' in scrape
        )
        default_ms = orch.config.pools[0].queue.default_backoff_ms
        assert body["retry_after_ms"] == default_ms
        assert rejected.headers["X-Backoff-Ms"] == str(default_ms)
        assert int(rejected.headers["Retry-After"]) * 1000 >= default_ms
        release.set()


@pytest.mark.req("HOME-203", "ORCH-3005", "OC-CTRL-2023")
async def test_drop_lru_policy_ends_the_dropped_task_with_an_error(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    pool = {"slots": 1, "queue": {"capacity": 1, "full_policy": "drop-lru"}}
    async with conductor_for(adapter, **pool) as (_, conductor):
        await submit(conductor, task_body())
        await asyncio.sleep(0.05)
        oldest = task_body(priority="batch")
        await submit(conductor, oldest)
        assert (await submit(conductor, task_body())).status_code == 202
        frames = await collect_stream(conductor, oldest["task_id"])
        release.set()
    assert frames[-1] == (
        "error",
        {
            "code": "QUEUE_FULL_DROP_LRU",
            "message": "dropped from the full queue by policy drop-lru",
            "engine": "llamacpp",
        },
    )


@pytest.mark.req("HOME-201", "OC-CORE-1001")
async def test_engine_never_runs_more_than_pool_slots(conductor_for: Any) -> None:
    adapter = MockAdapter()
    async with conductor_for(adapter, slots=2, queue={"capacity": 8}) as (_, conductor):
        bodies = [task_body(max_tokens=20) for _ in range(8)]
        for body in bodies:
            assert (await submit(conductor, body)).status_code == 202
        results = await asyncio.gather(*(collect_stream(conductor, b["task_id"]) for b in bodies))
    assert all(frames[-1][0] == "end" for frames in results)
    assert adapter.started == 8
    assert adapter.max_active == 2


@pytest.mark.req("HOME-201", "ORCH-3004")
async def test_interactive_overtakes_queued_batch(conductor_for: Any) -> None:
    release = asyncio.Event()
    order: list[int] = []
    held = held_handler(release, first_tokens=0)

    async def recording(request: Any) -> Any:
        order.append(request.max_tokens)
        async for event in held(request):
            yield event

    async with conductor_for(MockAdapter(recording), slots=1, queue={"capacity": 4}) as (
        _,
        conductor,
    ):
        await submit(conductor, task_body(max_tokens=1))
        await asyncio.sleep(0.05)
        await submit(conductor, task_body(priority="batch", max_tokens=2))
        await submit(conductor, task_body(priority="batch", max_tokens=3))
        last = task_body(priority="interactive", max_tokens=4)
        assert (await submit(conductor, last)).json["queue_position"] == 0
        release.set()
        await collect_stream(conductor, last["task_id"])
        await asyncio.sleep(0.05)
    assert order[:2] == [1, 4]
    assert order[2:] == [2, 3]


@pytest.mark.req("HOME-304", "ORCH-2003", "ORCH-3026")
async def test_cancel_mid_stream_stops_tokens_and_frees_the_slot(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=2))
    async with conductor_for(adapter) as (orch, conductor):
        body = task_body(max_tokens=10)
        await submit(conductor, body)
        parser = SSEParser()
        path = f"/v1/tasks/{body['task_id']}/stream"
        async with conductor.simulate_get_stream(path, headers=AUTH) as sr:
            stream_chunks = chunks(sr)
            async for chunk in stream_chunks:
                parser.feed(chunk)
                if sum(1 for e, _ in parser.frames if e == "token") == 2:
                    break
            cancel = await conductor.simulate_post(
                f"/v1/tasks/{body['task_id']}/cancel", headers=AUTH
            )
            assert cancel.status_code == 204
            assert cancel.headers["X-Correlation-Id"]
            tokens_at_cancel = sum(1 for e, _ in parser.frames if e == "token")
            assert adapter.active == 0
            release.set()
            async for chunk in stream_chunks:
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
        task = orch.registry.get(body["task_id"])
        assert task is not None
    assert_frames_match(parser.frames)
    events = [e for e, _ in parser.frames]
    assert events.count("token") == tokens_at_cancel == 2
    assert parser.frames[-1] == ("end", {**parser.frames[-1][1], "finish_reason": "canceled"})
    assert parser.frames[-1][1]["tokens_out"] == 2


@pytest.mark.req("HOME-304", "OC-CORE-1005")
async def test_cancel_of_a_queued_task_removes_it(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=1) as (orch, conductor):
        await submit(conductor, task_body())
        await asyncio.sleep(0.05)
        queued = task_body()
        await submit(conductor, queued)
        assert len(orch.pools["p1"].queue) == 1
        cancel = await conductor.simulate_post(
            f"/v1/tasks/{queued['task_id']}/cancel", headers=AUTH
        )
        assert cancel.status_code == 204
        assert len(orch.pools["p1"].queue) == 0
        frames = await collect_stream(conductor, queued["task_id"])
        release.set()
    assert [e for e, _ in frames] == ["end"]  # it never started
    assert frames[-1][1]["tokens_out"] == 0
    assert adapter.started == 1


@pytest.mark.req("HOME-305")
async def test_client_disconnect_cancels_and_frees_the_slot(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=1))
    async with conductor_for(adapter) as (orch, conductor):
        body = task_body(max_tokens=10)
        await submit(conductor, body)
        parser = SSEParser()
        path = f"/v1/tasks/{body['task_id']}/stream"
        async with conductor.simulate_get_stream(path, headers=AUTH) as sr:
            async for chunk in chunks(sr):
                if any(e == "token" for e, _ in parser.feed(chunk)):
                    break
        task = orch.registry.get(body["task_id"])
        assert task is not None
        for _ in range(200):
            if task.finished and adapter.active == 0:
                break
            await asyncio.sleep(0.01)
        assert task.terminal is not None
        assert task.terminal["finish_reason"] == "canceled"
        assert adapter.active == 0
        assert orch.pools["p1"].slots_free == 2


@pytest.mark.req("HOME-305", "HOME-901")
async def test_unknown_task_is_404_for_stream_and_cancel(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        missing = str(uuid.uuid4())
        stream = await conductor.simulate_get(f"/v1/tasks/{missing}/stream", headers=AUTH)
        assert_envelope(stream, 404, "NOT_FOUND")
        cancel = await conductor.simulate_post(f"/v1/tasks/{missing}/cancel", headers=AUTH)
        assert_envelope(cancel, 404, "NOT_FOUND")
        route = await conductor.simulate_get("/v1/nothing-here", headers=AUTH)
        assert_envelope(route, 404, "NOT_FOUND")
        method = await conductor.simulate_delete("/v1/tasks", headers=AUTH)
        assert method.status_code == 405
        assert method.json["correlation_id"] == method.headers["X-Correlation-Id"]


@pytest.mark.req("HOME-601", "HOME-602", "HOME-603", "HOME-1002")
async def test_capabilities_describe_engines_and_pools(conductor_for: Any) -> None:
    async with conductor_for(slots=2) as (_, conductor):
        caps = (await conductor.simulate_get("/v1/capabilities", headers=AUTH)).json
    assert_matches("control", "Capabilities", caps)
    assert caps["api_version"] == API_VERSION
    (engine,) = caps["engines"]
    assert engine["engine"] == "llamacpp"
    assert engine["supported_workloads"] == ["completion"]
    assert engine["slots_total"] == 2
    (pool,) = engine["pools"]
    assert pool["pool_id"] == "p1" and pool["ready"] is True
    assert pool["slots_free"] == 2 and pool["ctx_max"] == 512
    assert set(pool) >= {"pool_id", "model_ref", "ctx_max", "slots_total", "slots_free", "ready"}
    assert caps["sampler_profiles"]["v1"]["temperature"] == 0.8
    assert caps["determinism"]["default_sampler_profile"] == "v1"
    assert "seed" in caps["determinism"]["guarantee"]


@pytest.mark.req("HOME-801")
async def test_metrics_count_tasks_and_tokens(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        body = task_body(max_tokens=4)
        await submit(conductor, body)
        await collect_stream(conductor, body["task_id"])
        await asyncio.sleep(0.01)
        text = (await conductor.simulate_get("/metrics")).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (
        ("engine", "llamacpp"),
        ("engine_version", "mock-1"),
        ("pool_id", "p1"),
        ("replica_id", "p1-r0"),
    )
    assert samples[("tokens_out_total", labels)] == 4
    started = (*labels[:3], ("priority", "interactive"), labels[3])
    assert samples[("tasks_started_total", started)] == 1
    # Enqueued before placement: counted on the pool's queue, not on a replica.
    queue = (*labels[:3], ("priority", "interactive"), ("replica_id", "p1-queue"))
    assert samples[("tasks_enqueued_total", queue)] == 1
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"queue_depth", "tasks_rejected", "gpu_utilization", "vram_used_bytes"} <= names


def test_frame_payloads_are_single_line_json() -> None:
    frame = encode_frame("token", {"t": "line\nbreak", "i": 0})
    event, data, blank, end = frame.decode().split("\n")
    assert (event, blank, end) == ("event: token", "", "")
    assert json.loads(data.removeprefix("data: ")) == {"t": "line\nbreak", "i": 0}


@pytest.mark.req("HOME-803", "OC-CTRL-2041", "OC-CTRL-2050", "OC-CORE-1040", "ORCH-3027")
async def test_one_structured_log_line_per_task_without_text_or_token(
    conductor_for: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="orchestratord.task")
    async with conductor_for() as (_, conductor):
        body = task_body(prompt="secret prompt words", max_tokens=3)
        await submit(conductor, body, **{"X-Correlation-Id": "log-corr"})
        await collect_stream(conductor, body["task_id"])
        await asyncio.sleep(0.01)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("task end")]
    fields = json.loads(line.removeprefix("task end "))
    assert fields["task_id"] == body["task_id"]
    assert fields["session_id"] == body["session_id"]
    assert fields["correlation_id"] == "log-corr"
    assert (fields["engine"], fields["pool_id"], fields["replica_id"]) == (
        "llamacpp",
        "p1",
        "p1-r0",
    )
    assert (fields["model_id"], fields["ctx"]) == (body["model_ref"], body["ctx"])
    assert fields["kv_warmth"] is False
    assert fields["tokens_in"] == 3  # the mock engine counts prompt words
    assert fields["tokens_out"] == 3
    assert fields["outcome"] == "length"
    assert fields["queue_time_ms"] >= 0 and fields["decode_time_ms"] >= 0
    assert "secret" not in caplog.text
    assert AUTH["Authorization"].split()[1] not in caplog.text


@pytest.mark.req("HOME-301")
async def test_a_task_past_its_deadline_ends_with_deadline_unmet_and_frees_the_slot(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()  # never set: the engine would hold the slot forever
    adapter = MockAdapter(held_handler(release, first_tokens=1))
    async with conductor_for(adapter) as (orch, conductor):
        body = task_body(deadline_ms=100, max_tokens=10)
        assert (await submit(conductor, body)).status_code == 202
        frames = await collect_stream(conductor, body["task_id"])
        assert frames[-1] == (
            "error",
            {"code": "DEADLINE_UNMET", "message": "deadline_ms exceeded", "engine": "llamacpp"},
        )
        await asyncio.sleep(0.01)
        assert adapter.active == 0
        assert orch.pools["p1"].slots_free == 2


@pytest.mark.req("ORCH-3046", "OC-CORE-1032")
async def test_a_strict_task_runs_alone_on_the_engine(conductor_for: Any) -> None:
    release = asyncio.Event()
    held = held_handler(release, first_tokens=0)
    active_at_start: dict[int, int] = {}
    adapter: MockAdapter

    async def recording(request: Any) -> Any:
        active_at_start[request.max_tokens] = adapter.active
        async for event in held(request):
            await asyncio.sleep(0.005)  # decoding takes time: tasks that may overlap, do
            yield event

    adapter = MockAdapter(recording)
    async with conductor_for(adapter, slots=2, queue={"capacity": 4}) as (_, conductor):
        await submit(conductor, task_body(max_tokens=3))  # best effort, holds a slot
        await asyncio.sleep(0.02)
        strict = task_body(max_tokens=4, determinism="strict")
        await submit(conductor, strict)
        after = task_body(max_tokens=5)
        await submit(conductor, after)
        await asyncio.sleep(0.05)
        assert adapter.active == 1, "nothing may start beside a task a strict one waits on"
        release.set()
        await collect_stream(conductor, after["task_id"])
    assert active_at_start[4] == 1  # the strict task started alone
    assert active_at_start[5] == 1  # and nothing started beside it
    assert adapter.max_active == 1


@pytest.mark.req("ORCH-3016", "OC-CORE-1022")
async def test_watchdog_ends_a_stuck_task_with_decode_timeout_and_frees_the_slot(
    conductor_for: Any,
) -> None:
    release = asyncio.Event()  # never set: the engine goes silent after one token
    adapter = MockAdapter(held_handler(release, first_tokens=1))
    server = {"decode_idle_timeout_ms": 200}
    async with conductor_for(adapter, server=server) as (orch, conductor):
        body = task_body(max_tokens=10, deadline_ms=60_000)
        assert (await submit(conductor, body)).status_code == 202
        frames = await collect_stream(conductor, body["task_id"])
        await asyncio.sleep(0.01)
        assert [e for e, _ in frames].count("token") == 1
        assert frames[-1][0] == "error"
        assert frames[-1][1]["code"] == "DECODE_TIMEOUT"
        assert adapter.active == 0
        assert orch.pools["p1"].slots_free == 2


@pytest.mark.req("HOME-506", "ORCH-2103", "OC-CTRL-2001", "OC-POOL-3001")
async def test_pool_health_reports_a_ready_pool(conductor_for: Any) -> None:
    async with conductor_for() as (_, conductor):
        health = await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)
        missing = await conductor.simulate_get("/v1/pools/nope/health", headers=AUTH)
    assert health.status_code == 200
    assert_matches("control", "PoolHealth", health.json)
    assert health.json["ready"] is True and health.json["live"] is True
    assert health.json["last_error"] is None
    assert health.json["metrics"]["slots_total"] == 2
    assert_envelope(missing, 404, "NOT_FOUND")


class _FailingPreload(MockAdapter):
    async def info(self) -> Any:
        raise EngineUnavailable("disk error", public_message="model file is corrupt")


@pytest.mark.req("HOME-506", "OC-POOL-3002", "ORCH-3002", "OC-CORE-1010")
async def test_a_failed_preload_leaves_the_pool_unready_with_the_reason(
    conductor_for: Any,
) -> None:
    async with conductor_for(_FailingPreload()) as (_, conductor):
        health = (await conductor.simulate_get("/v1/pools/p1/health", headers=AUTH)).json
        refused = await submit(conductor, task_body())
    assert health["ready"] is False
    assert "model file is corrupt" in health["last_error"]
    body = assert_envelope(refused, 503, "POOL_UNREADY")
    assert body["retriable"] is True


def gauge(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {name} {labels}")


@pytest.mark.req("HOME-801")
async def test_queue_depth_and_free_slots_follow_the_pool(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=1, queue={"capacity": 4}) as (_, conductor):
        first, second = task_body(), task_body(priority="batch")
        await submit(conductor, first)
        await submit(conductor, second)
        busy = (await conductor.simulate_get("/metrics")).text
        release.set()
        await collect_stream(conductor, first["task_id"])
        await collect_stream(conductor, second["task_id"])
        await asyncio.sleep(0.01)
        idle = (await conductor.simulate_get("/metrics")).text
    assert gauge(busy, "queue_depth", priority="batch") == 1
    assert gauge(busy, "queue_depth", priority="interactive") == 0
    assert gauge(busy, "slots_free") == 0
    assert gauge(idle, "queue_depth", priority="batch") == 0
    assert gauge(idle, "slots_free") == 1


@pytest.mark.req("HOME-1003", "FR-PF-002")
async def test_the_pool_learns_service_times_by_how_busy_it_was(conductor_for: Any) -> None:
    release = asyncio.Event()
    adapter = MockAdapter(held_handler(release, first_tokens=0))
    async with conductor_for(adapter, slots=2, queue={"capacity": 4}) as (orch, conductor):
        estimator = orch.pools["p1"].estimator
        lone = task_body()
        assert (await submit(conductor, lone)).status_code == 202
        await asyncio.sleep(0.02)
        release.set()
        await collect_stream(conductor, lone["task_id"])
        assert set(estimator.by_occupancy) == {1}
        lone_ms = estimator.by_occupancy[1]

        release.clear()
        pair = [task_body(), task_body()]
        for body in pair:
            assert (await submit(conductor, body)).status_code == 202
        await asyncio.sleep(0.02)
        assert orch.pools["p1"].busy_slots == 2
        release.set()
        for body in pair:
            await collect_stream(conductor, body["task_id"])
        # Both ran side by side: each is learned as a full-pool service time, even the one
        # that finished last, alone.
        assert set(estimator.by_occupancy) == {1, 2}
        assert estimator.by_occupancy[1] == lone_ms
        assert estimator.samples == 3
