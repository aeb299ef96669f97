"""Pact consumer tests: the CLI client against a Pact mock server (HOME-1204, FR-CT-003).

Each test declares one interaction, runs the real client code against the mock, and merges
the interaction into ``contracts/pacts/cli-consumer-orchestratord.json``. Provider
verification (``python -m xtask pact verify``) replays the file against a live server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pact import Pact, match

from cli_client import Backoff, OrchClient, OrchError
from cli_client.cli import ps_table
from tests.pact import interactions as ix

PACT_DIR = Path(__file__).resolve().parents[2] / "contracts" / "pacts"
os.environ.setdefault("PACT_DO_NOT_TRACK", "true")


# The CLI sends its own correlation ID and relies on getting exactly it back (HOME-103).
CORRELATION = "cli-pact-0001"
ENVELOPE = {"message": match.string("explanation"), "correlation_id": CORRELATION}


@pytest.fixture
def pact() -> Iterator[Pact]:
    pact = Pact(ix.CONSUMER, ix.PROVIDER).with_specification("V4")
    yield pact
    pact.write_file(PACT_DIR, overwrite=False)


@pytest.fixture
def declare(pact: Pact, request: pytest.FixtureRequest) -> Any:
    """Start an interaction that records, in the pact itself, the IDs its test proves."""
    ids = sorted({str(a) for mark in request.node.iter_markers("req") for a in mark.args})

    def make(description: str) -> Any:
        interaction = pact.upon_receiving(description)
        interaction.add_text_comment("req: " + " ".join(ids))
        return interaction

    return make


def client(url: object) -> OrchClient:
    return OrchClient(str(url), ix.PLACEHOLDER_TOKEN, correlation_id=CORRELATION)


def authorized(interaction: Any) -> None:
    interaction.with_header(
        "Authorization", match.regex(f"Bearer {ix.PLACEHOLDER_TOKEN}", regex=r"^Bearer \S+$")
    )
    interaction.with_header("X-Correlation-Id", CORRELATION)


@pytest.mark.req(
    "HOME-1204",
    "FR-CT-003",
    "HOME-103",
    "FR-OB-001",
    "HOME-204",
    "HOME-206",
    "ORCH-2001",
    "FR-DP-001",
    "FR-DP-005",
)
def test_enqueue_is_accepted_with_admission_metadata(pact: Pact, declare: Any) -> None:
    body = ix.task(ix.ADMIT_ID)
    interaction = (
        declare("a valid completion task")
        .given(ix.READY)
        .with_request("POST", "/v1/tasks")
        .with_body(body, content_type="application/json")
    )
    authorized(interaction)
    interaction.will_respond_with(202).with_header("X-Correlation-Id", CORRELATION).with_body(
        {
            "task_id": match.regex(ix.ADMIT_ID, regex=ix.UUID_RE),
            "queue_position": match.integer(0, min=0),
            "predicted_start_ms": match.integer(0),
            "backoff_ms": match.integer(0, min=0),
        },
        content_type="application/json",
    )
    with pact.serve() as server, client(server.url) as cli:
        admission = cli.enqueue(body)
    assert admission.task_id == ix.ADMIT_ID
    assert admission.queue_position >= 0


@pytest.mark.req(
    "HOME-1204", "FR-CT-003", "HOME-103", "FR-OB-001", "HOME-301", "ORCH-2002", "FR-DP-002"
)
def test_stream_frames_end_with_one_end(pact: Pact, declare: Any) -> None:
    interaction = (
        declare("the SSE stream of a finished task")
        .given(ix.FINISHED_TASK.format(task_id=ix.STREAM_ID))
        .with_request("GET", f"/v1/tasks/{ix.STREAM_ID}/stream")
    )
    authorized(interaction)
    (
        interaction.will_respond_with(200)
        .with_header("Content-Type", match.regex("text/event-stream", regex=r"^text/event-stream"))
        .with_header("X-Correlation-Id", CORRELATION)
        .with_body(ix.SSE_EXAMPLE, content_type="text/event-stream")
        .with_matching_rules(
            {
                "body": {
                    "$": {"combine": "AND", "matchers": [{"match": "regex", "regex": ix.SSE_REGEX}]}
                }
            },
            part="Response",
        )
    )
    with pact.serve() as server, client(server.url) as cli:
        frames = list(cli.stream(ix.STREAM_ID))
    assert frames[0][0] == "started"
    assert frames[-1][0] == "end"
    assert frames[-1][1]["tokens_out"] == sum(1 for e, _ in frames if e == "token")


@pytest.mark.req("HOME-1204", "FR-CT-003", "PERF-101", "PERF-103", "HOME-301")
def test_submit_and_stream_in_one_request(pact: Pact, declare: Any) -> None:
    body = ix.task(ix.ONE_REQUEST_ID)
    location = f"/v1/tasks/{ix.ONE_REQUEST_ID}/stream"
    interaction = (
        declare("a valid completion task, submitted and streamed in one request")
        .given(ix.READY)
        .with_request("POST", "/v1/tasks")
        .with_header("Accept", "text/event-stream")
        .with_body(body, content_type="application/json")
    )
    authorized(interaction)
    (
        interaction.will_respond_with(200)
        .with_header("Content-Type", match.regex("text/event-stream", regex=r"^text/event-stream"))
        .with_header("X-Correlation-Id", CORRELATION)
        .with_header("Location", match.regex(location, regex=r"^/v1/tasks/[0-9a-f-]{36}/stream$"))
        .with_body(ix.ONE_REQUEST_EXAMPLE, content_type="text/event-stream")
        .with_matching_rules(
            {
                "body": {
                    "$": {
                        "combine": "AND",
                        "matchers": [{"match": "regex", "regex": ix.ONE_REQUEST_REGEX}],
                    }
                }
            },
            part="Response",
        )
    )
    with pact.serve() as server, client(server.url) as cli, cli.submit_stream(body) as frames:
        seen = list(frames)
    assert seen[0] == ("accepted", {"task_id": ix.ONE_REQUEST_ID, "queue_position": 0,
                                    "predicted_start_ms": 0, "backoff_ms": 0})  # fmt: skip
    assert seen[1][0] == "started" and seen[-1][0] == "end"


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-103", "FR-OB-001", "HOME-304", "ORCH-2003")
def test_cancel_answers_204(pact: Pact, declare: Any) -> None:
    interaction = (
        declare("a cancel of a running task")
        .given(ix.RUNNING_TASK.format(task_id=ix.CANCEL_ID))
        .with_request("POST", f"/v1/tasks/{ix.CANCEL_ID}/cancel")
    )
    authorized(interaction)
    interaction.will_respond_with(204).with_header("X-Correlation-Id", CORRELATION)
    with pact.serve() as server, client(server.url) as cli:
        cli.cancel(ix.CANCEL_ID)


@pytest.mark.req(
    "HOME-1204", "FR-CT-003", "HOME-103", "FR-OB-001", "HOME-902", "ORCH-2007", "FR-DP-003"
)
def test_full_queue_is_429_with_backoff(pact: Pact, declare: Any) -> None:
    body = ix.task(ix.REJECTED_ID, priority="batch")
    interaction = (
        declare("a task while the queue is full")
        .given(ix.QUEUE_FULL)
        .with_request("POST", "/v1/tasks")
        .with_body(body, content_type="application/json")
    )
    authorized(interaction)
    (
        interaction.will_respond_with(429)
        .with_header("Retry-After", match.regex("1", regex=r"^[1-9][0-9]*$"))
        .with_header("X-Backoff-Ms", match.regex("250", regex=r"^[1-9][0-9]*$"))
        .with_header("X-Correlation-Id", CORRELATION)
        .with_body(
            {
                "code": "ADMISSION_REJECT",
                "policy_label": "reject",
                "retriable": True,
                "retry_after_ms": match.integer(250, min=1),
                "engine": "llamacpp",
                **ENVELOPE,
            },
            content_type="application/json",
        )
    )
    with pact.serve() as server, client(server.url) as cli, pytest.raises(Backoff) as backoff:
        cli.enqueue(body)
    assert backoff.value.policy_label == "reject"
    assert backoff.value.backoff_ms >= 1


@pytest.mark.req(
    "HOME-1204", "FR-CT-003", "HOME-103", "FR-OB-001", "HOME-205", "HOME-901", "FR-ER-001"
)
def test_invalid_task_is_400_envelope(pact: Pact, declare: Any) -> None:
    body = ix.task(ix.ADMIT_ID, ctx="big")
    interaction = (
        declare("a task with a non-integer ctx")
        .given(ix.READY)
        .with_request("POST", "/v1/tasks")
        .with_body(body, content_type="application/json")
    )
    authorized(interaction)
    interaction.will_respond_with(400).with_header("X-Correlation-Id", CORRELATION).with_body(
        {"code": "INVALID_PARAMS", **ENVELOPE}, content_type="application/json"
    )
    with pact.serve() as server, client(server.url) as cli, pytest.raises(OrchError) as error:
        cli.enqueue(body)
    assert error.value.code == "INVALID_PARAMS"


@pytest.mark.req(
    "HOME-1204", "FR-CT-003", "HOME-103", "FR-OB-001", "HOME-601", "FR-DV-001", "FR-MA-001"
)
def test_capabilities_give_version_and_capacity(pact: Pact, declare: Any) -> None:
    interaction = (
        declare("a capabilities request").given(ix.READY).with_request("GET", "/v1/capabilities")
    )
    authorized(interaction)
    pool = {
        "pool_id": match.string("default"),
        "model_ref": match.string("llorch/tiny-llama"),
        "ctx_max": match.integer(2048, min=1),
        "slots_total": match.integer(2, min=1),
        "slots_free": match.integer(2, min=0),
        "ready": match.boolean(True),
    }
    engine = {
        "engine": match.regex("llamacpp", regex=r"^(llamacpp|vllm|tgi|triton)$"),
        "ctx_max": match.integer(2048, min=1),
        "supported_workloads": match.each_like("completion"),
        "slots_total": match.integer(2, min=1),
        "slots_free": match.integer(2, min=0),
        "pools": match.each_like(pool),
    }
    interaction.will_respond_with(200).with_header("X-Correlation-Id", CORRELATION).with_body(
        {
            "api_version": match.regex("1.4.0", regex=r"^\d+\.\d+\.\d+$"),
            "engines": match.each_like(engine),
        },
        content_type="application/json",
    )
    with pact.serve() as server, client(server.url) as cli:
        caps = cli.capabilities()
    assert caps["engines"][0]["pools"][0]["slots_total"] >= 1


@pytest.mark.req("HOME-1204", "FR-CT-003", "ORCH-2104", "OC-CTRL-2004", "FR-CP-003")
def test_replica_sets_show_each_replica_with_its_slots_and_load(pact: Pact, declare: Any) -> None:
    interaction = (
        declare("a replica sets request").given(ix.READY).with_request("GET", "/v1/replicasets")
    )
    authorized(interaction)
    replica = {
        "id": match.regex("default-r0", regex=r"^.+-r\d+(-g\d+)?$"),
        "pool_id": match.string("default"),
        "engine": match.regex("llamacpp", regex=r"^(llamacpp|vllm|tgi|triton)$"),
        "devices": match.each_like(
            {"index": match.integer(0, min=0), "vram_bytes": match.integer(0, min=0)}, min=0
        ),
        "slots_total": match.integer(2, min=1),
        "slots_free": match.integer(2, min=0),
        "ready": match.boolean(True),
        "load": match.decimal(0.0),
    }
    replica_set = {
        "id": match.string("default"),
        "engine": match.regex("llamacpp", regex=r"^(llamacpp|vllm|tgi|triton)$"),
        "load": match.decimal(0.0),
        "slots_total": match.integer(2, min=1),
        "slots_free": match.integer(2, min=0),
        "model_ref": match.string("llorch/tiny-llama"),
        "slo": match.like({"samples": 0}),
        "residency": match.like({"mode": "pinned", "state": "loaded"}),
        "replicas": match.each_like(replica),
    }
    interaction.will_respond_with(200).with_header("X-Correlation-Id", CORRELATION).with_body(
        match.each_like(replica_set), content_type="application/json"
    )
    with pact.serve() as server, client(server.url) as cli:
        sets = cli.replica_sets()
    (first,) = sets
    assert first["replicas"][0]["slots_total"] >= 1 and first["slots_total"] >= 1
    assert "pinned" in ps_table(sets) and "loaded" in ps_table(sets)  # what llorch ps shows


# --- the control plane, as llorch uses it -------------------------------------------------------


def _json_interaction(  # noqa: PLR0917 - one line per interaction reads best
    declare: Any,
    description: str,
    state: str,
    method: str,
    path: str,
    status: int,
    response: Any,
    body: Any = None,
) -> Any:
    interaction = declare(description).given(state).with_request(method, path)
    if body is not None:
        interaction.with_body(body, content_type="application/json")
    authorized(interaction)
    interaction.will_respond_with(status).with_header("X-Correlation-Id", CORRELATION).with_body(
        response, content_type="application/json"
    )
    return interaction


MODEL_ENTRY = {
    "id": match.string(ix.KNOWN_MODEL_ID),
    "digest": match.regex(ix.MODEL_DIGEST, regex=r"^sha256:[0-9a-f]{64}$"),
    "state": match.regex("Active", regex=r"^(Draft|Active|Canary|Deprecated|Retired)$"),
}


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-501", "ORCH-3060", "FR-CP-001")
def test_models_add_registers_an_entry(pact: Pact, declare: Any) -> None:
    entry = {"id": ix.NEW_MODEL_ID, "digest": ix.MODEL_DIGEST, "tags": ["pact"]}
    response = {**MODEL_ENTRY, "id": ix.NEW_MODEL_ID, "tags": ["pact"]}
    _json_interaction(
        declare,
        "a model registration",
        ix.READY,
        "POST",
        "/v1/catalog/models",
        201,
        response,
        entry,
    )
    with pact.serve() as server, client(server.url) as cli:
        created = cli.add_model(entry)
    assert created["state"] == "Active"


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-501", "ORCH-3062")
def test_models_get_and_ls_read_entries(pact: Pact, declare: Any) -> None:
    state = ix.MODEL_REGISTERED.format(model_id=ix.KNOWN_MODEL_ID)
    path = f"/v1/catalog/models/{ix.KNOWN_MODEL_ID}"
    _json_interaction(declare, "a catalog entry read", state, "GET", path, 200, MODEL_ENTRY)
    _json_interaction(
        declare, "a catalog listing", state, "GET", "/v1/catalog/models", 200,
        match.each_like(MODEL_ENTRY),
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.model(ix.KNOWN_MODEL_ID)["digest"].startswith("sha256:")
        assert cli.models()[0]["id"]


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-501", "HOME-901")
def test_an_unknown_model_is_a_404_envelope(pact: Pact, declare: Any) -> None:
    _json_interaction(
        declare, "a read of an unknown model", ix.READY, "GET", "/v1/catalog/models/no-such-model",
        404, {"code": "NOT_FOUND", **ENVELOPE},
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli, pytest.raises(OrchError) as error:
        cli.model("no-such-model")
    assert error.value.code == "NOT_FOUND" and error.value.status == 404


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-501", "ORCH-3063", "ORCH-3065")
def test_models_pull_and_verify_start_in_the_background(pact: Pact, declare: Any) -> None:
    state = ix.MODEL_WITH_SOURCE.format(model_id=ix.PULL_MODEL_ID)
    base = f"/v1/catalog/models/{ix.PULL_MODEL_ID}"
    pull = {
        "id": ix.PULL_MODEL_ID,
        "pull": {"state": match.string("queued"), "bytes": match.integer(0, min=0)},
    }
    verification = {
        "result": match.regex("pending", regex=r"^(pending|passed|trust_gap|failed)$"),
        "checked_ms": match.integer(1, min=0),
    }
    _json_interaction(declare, "a model pull", state, "POST", f"{base}/pull", 202, pull)
    _json_interaction(
        declare, "a model verification", state, "POST", f"{base}/verify", 202,
        {"id": ix.PULL_MODEL_ID, "verification": verification},
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.pull_model(ix.PULL_MODEL_ID)["id"] == ix.PULL_MODEL_ID
        assert "result" in cli.verify_model(ix.PULL_MODEL_ID)["verification"]


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-502", "ORCH-3072")
def test_models_state_changes_the_lifecycle(pact: Pact, declare: Any) -> None:
    state = ix.MODEL_REGISTERED.format(model_id=ix.KNOWN_MODEL_ID)
    body = {"state": "Canary", "deadline_ms": 0}
    response = {
        "id": ix.KNOWN_MODEL_ID,
        "state": "Canary",
        "previous": match.string("Active"),
        "pools_draining": match.each_like("default", min=0),
    }
    _json_interaction(
        declare, "a model state change", state, "POST",
        f"/v1/catalog/models/{ix.KNOWN_MODEL_ID}/state", 202, response, body,
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.set_model_state(ix.KNOWN_MODEL_ID, "Canary")["state"] == "Canary"


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-504", "ORCH-2101", "OC-CTRL-2002", "HOME-506")
def test_pools_health_drain_and_resume(pact: Pact, declare: Any) -> None:
    health = {
        "live": match.boolean(True),
        "ready": match.boolean(True),
        "draining": match.boolean(False),
        "metrics": match.like({"slots_total": 2, "slots_free": 2, "queue_depth": 0}),
    }
    drain = {
        "pool_id": "default",
        "drain": {
            "state": "draining",
            "deadline_ms": 1000,
            "remaining_ms": match.integer(1000, min=0),
        },
    }
    _json_interaction(
        declare, "a pool health read", ix.READY, "GET", "/v1/pools/default/health", 200, health
    )
    _json_interaction(
        declare, "a pool drain", ix.READY, "POST", "/v1/pools/default/drain", 202, drain,
        {"deadline_ms": 1000},
    )  # fmt: skip
    _json_interaction(
        declare, "a resume of a drained pool", ix.POOL_DRAINED, "POST",
        "/v1/pools/default/resume", 200, {"pool_id": "default", "draining": False},
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.pool_health("default")["ready"] is True
        assert cli.drain("default", 1000)["drain"]["state"] == "draining"
        assert cli.resume("default")["draining"] is False


@pytest.mark.req("HOME-1204", "FR-CT-003", "RES-203", "RES-204")
def test_stop_of_a_pinned_pool_is_a_409_with_the_reason(pact: Pact, declare: Any) -> None:
    _json_interaction(
        declare, "an unload of a pinned pool", ix.READY, "POST", "/v1/pools/default/unload",
        409, {"code": "CONFLICT", **ENVELOPE},
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli, pytest.raises(OrchError) as error:
        cli.unload("default")
    assert error.value.code == "CONFLICT" and error.value.status == 409


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-505", "ORCH-2102", "OC-CTRL-2003")
def test_pools_reload_starts_a_reload(pact: Pact, declare: Any) -> None:
    reload = {
        "pool_id": "default",
        "reload": {
            "state": "starting",
            "to_model_ref": "llorch/tiny-llama",
            "from_model_ref": match.string("llorch/tiny-llama"),
        },
    }
    _json_interaction(
        declare, "a pool reload", ix.READY, "POST", "/v1/pools/default/reload", 202, reload,
        {"new_model_ref": "llorch/tiny-llama"},
    )  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.reload("default", "llorch/tiny-llama")["reload"]["state"] == "starting"


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-701", "ORCH-3097", "ORCH-3098", "FR-AR-001")
def test_artifacts_put_get_and_ls(pact: Pact, declare: Any) -> None:
    artifact_id = hashlib.sha256(
        json.dumps(
            {**ix.PLAN_ARTIFACT, "metadata": {}, "parent": None},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()
    ref = {
        "id": artifact_id,
        "kind": "plan",
        "digest": f"sha256:{artifact_id}",
        "created_ms": match.integer(1, min=0),
        "tags": ["pact"],
    }
    _json_interaction(
        declare, "an artifact store", ix.READY, "POST", "/v1/artifacts", 201, ref, ix.PLAN_ARTIFACT
    )
    _json_interaction(
        declare, "an artifact read", ix.ARTIFACT_STORED, "GET", f"/v1/artifacts/{artifact_id}", 200,
        {**ref, "content": ix.PLAN_ARTIFACT["content"], "parent": None, "lineage": []},
    )  # fmt: skip
    _json_interaction(
        declare, "an artifact listing by tag", ix.ARTIFACT_STORED, "GET", "/v1/artifacts", 200,
        match.each_like(ref),
    ).with_query_parameter("tag", "pact")  # fmt: skip
    with pact.serve() as server, client(server.url) as cli:
        assert cli.put_artifact(dict(ix.PLAN_ARTIFACT))["id"] == artifact_id
        assert cli.artifact(artifact_id)["content"] == {"steps": ["pact"]}
        assert cli.artifacts("pact")[0]["id"] == artifact_id


@pytest.mark.req("HOME-1204", "FR-CT-003", "HOME-401", "ORCH-2004", "ORCH-2005", "FR-DP-004")
def test_sessions_show_and_end(pact: Pact, declare: Any) -> None:
    shown = ix.SESSION_ID_SHOWN
    info = {
        "session_id": shown,
        "turns": match.integer(1, min=1),
        "max_turns": match.integer(8, min=1),
        "ttl_ms_remaining": match.integer(599_000, min=0),
        "kv_tokens": match.integer(12, min=0),
        "kv_bytes": match.integer(6144, min=0),
        "kv_warmth": match.boolean(False),
    }
    _json_interaction(
        declare, "a session read", ix.SESSION_USED.format(session_id=shown), "GET",
        f"/v1/sessions/{shown}", 200, info,
    )  # fmt: skip
    ended = ix.SESSION_ID_ENDED
    interaction = (
        declare("a session end")
        .given(ix.SESSION_USED.format(session_id=ended))
        .with_request("DELETE", f"/v1/sessions/{ended}")
    )
    authorized(interaction)
    interaction.will_respond_with(204).with_header("X-Correlation-Id", CORRELATION)
    with pact.serve() as server, client(server.url) as cli:
        assert cli.session(shown)["turns"] >= 1
        cli.end_session(ended)


def test_the_stream_bodies_allow_heartbeat_comments_between_frames() -> None:
    """The verifier matches streamed bodies with these regexes: a slow stream carries
    ``: ping`` comments (the heartbeat), which the CLI skips, so the contract allows them."""

    def matches(regex: str, body: str) -> bool:  # Oniguruma's \z is Python's \Z
        return re.fullmatch(regex.replace(r"\z", r"\Z"), body) is not None

    ping = ": ping\n\n"
    token = "event: token"
    assert matches(ix.SSE_REGEX, ix.SSE_EXAMPLE)
    assert matches(ix.SSE_REGEX, ping + ix.SSE_EXAMPLE.replace(token, ping + token, 1))
    assert matches(ix.ONE_REQUEST_REGEX, ix.ONE_REQUEST_EXAMPLE.replace(token, ping + token, 1))
    assert not matches(ix.SSE_REGEX, ix.SSE_EXAMPLE.replace(token, "event: junk", 1))
    assert not matches(ix.SSE_REGEX, ix.SSE_EXAMPLE + ping)  # nothing after `end`
