"""End to end: a live orchestratord (started as a user would) fronting a real llama-server.

Every token here comes from llama.cpp running the project's generated tiny model; the engine
is also queried directly (``/slots``) to prove the orchestrator freed what it says it freed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from orchestratord.models.tiny_gguf import TINY_MODEL_REF, ensure_tiny_model
from tests.contract_schemas import assert_frames_match, assert_matches
from tests.sse import SSEParser, read_to_terminal_frame
from xtask.fakes.held import cancel_while_stopped, managed_engine
from xtask.fakes.live_server import LiveServer, live_server, task_body, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with live_server() as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as c:
        yield c


def task(**overrides: Any) -> dict[str, Any]:
    return task_body(**{"max_tokens": 24, **overrides})


def stream(client: httpx.Client, task_id: str) -> SSEParser:
    parser = SSEParser()
    with client.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Correlation-Id"]
        for chunk in response.iter_raw():
            if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                break
    assert_frames_match(parser.frames)
    return parser


def run_text(client: httpx.Client, **overrides: Any) -> str:
    body = task(**overrides)
    assert client.post("/v1/tasks", json=body).status_code == 202
    frames = stream(client, body["task_id"]).frames
    return "".join(p["t"] for e, p in frames if e == "token")


def engine_busy_slots(server: LiveServer) -> list[int]:
    return server.engine_busy_slots()


@pytest.mark.req("HOME-601", "HOME-1002", "OC-POOL-3001")
def test_capabilities_report_the_ready_llamacpp_pool(client: httpx.Client) -> None:
    caps = client.get("/v1/capabilities").json()
    assert_matches("control", "Capabilities", caps)
    (engine,) = caps["engines"]
    assert engine["engine"] == "llamacpp"
    assert engine["engine_version"]
    (pool,) = engine["pools"]
    assert pool["ready"] is True
    assert pool["model_ref"] == TINY_MODEL_REF
    assert pool["slots_total"] == 2
    assert pool["ctx_max"] == 2048


@pytest.mark.req("HOME-301", "HOME-302", "OC-CTRL-2020", "OC-CTRL-2021", "ORCH-2002")
def test_stream_frames_carry_real_engine_tokens(client: httpx.Client, server: LiveServer) -> None:
    body = task(max_tokens=32, sampler_profile_version="fixed-length")
    accepted = client.post("/v1/tasks", json=body)
    assert accepted.status_code == 202
    assert_matches("data", "AdmissionResponse", accepted.json())
    assert accepted.json()["task_id"] == body["task_id"]
    frames = stream(client, body["task_id"]).frames
    events = [e for e, _ in frames]
    assert events[0] == "started"
    assert "metrics" in events
    tokens = [p for e, p in frames if e == "token"]
    assert len(tokens) >= 1
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    assert events[-1] == "end" and events.count("end") == 1 and "error" not in events
    end = frames[-1][1]
    assert end["tokens_out"] == len(tokens)
    assert end["finish_reason"] == "length"
    started = frames[0][1]
    digest = hashlib.sha256(ensure_tiny_model(server.workdir / "unused").read_bytes())
    assert started["model_digest"] == "sha256:" + digest.hexdigest()
    metrics = [p for e, p in frames if e == "metrics"]
    assert all({"queue_depth", "on_time_probability", "kv_warmth"} <= set(m) for m in metrics)


@pytest.mark.req("HOME-207", "FR-DE-001", "ORCH-3045")
def test_same_seed_same_text_other_seed_other_text(client: httpx.Client) -> None:
    first = run_text(client, seed=1234, sampler_profile_version="fixed-length")
    again = run_text(client, seed=1234, sampler_profile_version="fixed-length")
    other = run_text(client, seed=4321, sampler_profile_version="fixed-length")
    assert first
    assert first == again
    assert other != first


@pytest.mark.req("HOME-102", "HOME-103")
def test_no_token_401_and_correlation_echo(server: LiveServer) -> None:
    response = httpx.post(
        server.url + "/v1/tasks", json=task(), headers={"X-Correlation-Id": "e2e-corr-1"}
    )
    assert response.status_code == 401
    assert response.headers["X-Correlation-Id"] == "e2e-corr-1"
    assert response.json()["code"] == "UNAUTHORIZED"
    assert response.json()["correlation_id"] == "e2e-corr-1"


@pytest.mark.req("HOME-902", "ORCH-2007", "HOME-201")
def test_full_queue_gets_429_with_backoff(client: httpx.Client, server: LiveServer) -> None:
    long = {"max_tokens": 1900, "sampler_profile_version": "fixed-length", "prompt": "a"}
    accepted = []
    rejected = None
    # The engine is stopped while the queue fills: the two tasks placed on it hold their
    # slots (none can end and make room), however fast the engine would have been.
    engine = managed_engine(server)
    engine.suspend()
    try:
        for _ in range(8):  # 2 slots + 4 queue places, then the queue is full
            response = client.post("/v1/tasks", json=task(**long))
            if response.status_code == 429:
                rejected = response
                break
            assert response.status_code == 202
            accepted.append(response.json()["task_id"])
    finally:
        engine.resume()
    try:
        assert rejected is not None, "queue never filled"
        assert len(accepted) == 6
        body = rejected.json()
        assert_matches("data", "ErrorEnvelope", body)
        assert body["code"] == "ADMISSION_REJECT"
        assert body["policy_label"] == "reject"
        assert body["retriable"] is True
        assert int(rejected.headers["X-Backoff-Ms"]) == body["retry_after_ms"] > 0
        assert int(rejected.headers["Retry-After"]) >= 1
        assert len(engine_busy_slots(server)) <= 2
    finally:
        for task_id in accepted:
            assert client.post(f"/v1/tasks/{task_id}/cancel").status_code == 204
    assert engine_busy_slots(server) == []


@pytest.mark.req("HOME-304", "ORCH-2003", "OC-CTRL-2012")
def test_cancel_mid_stream_stops_tokens_and_frees_engine_slot(
    client: httpx.Client, server: LiveServer
) -> None:
    body = task(max_tokens=1900, sampler_profile_version="fixed-length")
    assert client.post("/v1/tasks", json=body).status_code == 202
    parser = SSEParser()
    with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
        chunks = response.iter_raw()
        for chunk in chunks:
            parser.feed(chunk)
            if sum(1 for e, _ in parser.frames if e == "token") >= 3:
                break
        # The engine is stopped mid-decode while the cancel is answered: the task cannot end
        # by itself first, however fast the engine or slow this test.
        to_the_end = partial(read_to_terminal_frame, chunks, parser)
        cancel = cancel_while_stopped(server, body["task_id"], managed_engine(server), to_the_end)
        assert cancel.status_code == 204
        assert engine_busy_slots(server) == []  # freed before the 204, not eventually
    tokens = [p for e, p in parser.frames if e == "token"]
    event, end = parser.frames[-1]
    assert event == "end" and end["finish_reason"] == "canceled"
    # The end frame counts what was emitted before the cancel cut; had any token frame been
    # emitted after it, the client would have received more token frames than that.
    assert len(tokens) == end["tokens_out"] < 1900


@pytest.mark.req("HOME-305")
def test_disconnect_cancels_the_task_and_frees_the_engine_slot(
    client: httpx.Client, server: LiveServer
) -> None:
    body = task(max_tokens=1900, sampler_profile_version="fixed-length")
    assert client.post("/v1/tasks", json=body).status_code == 202
    with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
        parser = SSEParser()
        for chunk in response.iter_raw():
            if any(e == "token" for e, _ in parser.feed(chunk)):
                break
    # The server notices at its next write; until then the old stream holds the task (409).
    # Reading the stream again then replays the task's frames: had the disconnect not
    # canceled it, the replay would end with all 1900 tokens and finish_reason "length".
    wait_until(
        lambda: client.get(f"/v1/tasks/{body['task_id']}/stream").status_code != 409,
        "the server to notice the disconnect (the old stream holds the task until then)",
    )
    replay = stream(client, body["task_id"]).frames
    event, end = replay[-1]
    assert event == "end"
    assert end["finish_reason"] == "canceled"
    assert end["tokens_out"] < 1900
    # No 204 to wait for: the slot is freed once the runner has stopped the engine's decode.
    wait_until(lambda: engine_busy_slots(server) == [], "the engine slot to be freed")
    metrics = httpx.get(server.url + "/metrics", timeout=5.0).text
    assert 'reason="client_disconnect"' in metrics


@pytest.mark.req("HOME-305", "HOME-901")
def test_unknown_task_stream_is_404_envelope(client: httpx.Client) -> None:
    response = client.get(f"/v1/tasks/{uuid.uuid4()}/stream")
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"
    assert response.json()["correlation_id"] == response.headers["X-Correlation-Id"]


@pytest.mark.req("HOME-205")
def test_prompt_beyond_ctx_is_rejected_by_real_tokenizer(client: httpx.Client) -> None:
    response = client.post("/v1/tasks", json=task(ctx=64, max_tokens=60, prompt="word " * 50))
    assert response.status_code == 400
    assert "exceed ctx" in response.json()["message"]


@pytest.mark.req("HOME-801", "OC-CTRL-2051")
def test_metrics_after_real_traffic(client: httpx.Client, server: LiveServer) -> None:
    run_text(client, max_tokens=8)
    text = httpx.get(server.url + "/metrics", timeout=5.0).text
    for name in ("queue_depth", "tasks_enqueued_total", "tokens_out_total", "tokens_in_total"):
        assert f"\n{name}{{" in text, name
    assert 'pool_id="default"' in text


@pytest.mark.req("HOME-101", "OC-CTRL-2041")
def test_banner_tells_where_it_listens_and_never_prints_the_token(server: LiveServer) -> None:
    output = "\n".join(server.output)
    assert f"listening on {server.url}" in output
    assert server.url.startswith("http://127.0.0.1:")
    assert "pool default: Ready" in output
    assert server.token not in output
    log = (server.workdir / "state" / "logs" / "default-r0-llama-server.log").read_text()
    assert server.token not in log


@pytest.mark.req("HOME-803", "HOME-103", "FR-OB-001")
def test_json_logs_are_one_object_per_line_with_the_correlation_id() -> None:
    with live_server(serve_args=("--log-format", "json")) as live:
        body = task_body(max_tokens=3)
        with httpx.Client(base_url=live.url, headers=live.auth, timeout=30) as client:
            client.post("/v1/tasks", json=body, headers={"X-Correlation-Id": "json-log-1"})
            client.get(f"/v1/tasks/{body['task_id']}/stream")
        wait_until(  # the log drain writes from its own thread
            lambda: any("task end" in line for line in live.output), "the task's end logged"
        )
        records = [json.loads(line) for line in live.output if line.startswith('{"ts"')]
    (end,) = [r for r in records if r["message"].startswith("task end")]
    assert end["correlation_id"] == "json-log-1" and end["logger"] == "orchestratord.task"
    assert json.loads(end["message"].removeprefix("task end "))["task_id"] == body["task_id"]


@pytest.mark.req("HOME-801")
def test_kv_cache_usage_comes_from_the_engine(server: LiveServer) -> None:
    """This llama.cpp build exports no KV gauge: the ratio is read from its own /slots."""
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30) as client:
        body = task_body(max_tokens=16, prompt="Once upon a time " * 20)
        client.post("/v1/tasks", json=body)
        client.get(f"/v1/tasks/{body['task_id']}/stream")
        with server.engine_client() as engine:
            slots = engine.get("/slots").json()
        held = sum(s.get("n_prompt_tokens", 0) for s in slots)
        expected = held / sum(s["n_ctx"] for s in slots)

        def gauge() -> float | None:
            for line in client.get("/metrics").text.splitlines():
                if line.startswith("kv_cache_usage_ratio{"):
                    return float(line.rsplit(" ", 1)[1])
            return None

        wait_until(  # the supervisor reads it every monitor interval (1 s)
            lambda: (ratio := gauge()) is not None and abs(ratio - expected) < 1e-9,
            f"kv_cache_usage_ratio to read {expected}",
        )
    assert held > 0 and 0 < expected <= 1


@pytest.mark.req("PERF-101", "PERF-102")
def test_one_request_streams_the_same_engine_tokens_and_closing_it_frees_the_slot(
    client: httpx.Client, server: LiveServer
) -> None:
    """Submit and stream in one request on a real llama-server: `accepted`, then the frames
    the two-request form gives for the same seed; a stream closed early cancels its task."""
    one = task(seed=11)
    parser = SSEParser()
    headers = {"Accept": "text/event-stream"}
    with client.stream("POST", "/v1/tasks", json=one, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["location"] == f"/v1/tasks/{one['task_id']}/stream"
        for chunk in response.iter_raw():
            if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                break
    frames = parser.frames
    assert_frames_match(frames)
    assert frames[0][0] == "accepted" and frames[0][1]["task_id"] == one["task_id"]
    assert frames[1][0] == "started" and frames[-1][0] == "end"
    text = "".join(p["t"] for e, p in frames if e == "token")
    assert text and text == run_text(client, seed=11)

    long = task(max_tokens=1900, sampler_profile_version="fixed-length")
    with client.stream("POST", "/v1/tasks", json=long, headers=headers) as response:
        early = SSEParser()
        for chunk in response.iter_raw():
            if any(e == "token" for e, _ in early.feed(chunk)):
                break
    wait_until(  # the server notices at its next write
        lambda: client.get(f"/v1/tasks/{long['task_id']}/stream").status_code != 409,
        "the server to notice the closed one-request stream",
    )
    replay = stream(client, long["task_id"]).frames
    assert replay[0][0] == "started"  # a replay has no `accepted`
    assert replay[-1][0] == "end" and replay[-1][1]["finish_reason"] == "canceled"
    assert replay[-1][1]["tokens_out"] < 1900
    wait_until(lambda: engine_busy_slots(server) == [], "the engine slot to be freed")
