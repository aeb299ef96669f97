"""The CLI's expectations of orchestratord, shared by the consumer tests and the provider run.

Provider states name real conditions the provider verification creates on a live server
(``xtask/checks/pact.py``): a finished task, a running task, a full queue. Task ids are fixed per
interaction so a state can prepare exactly the task the request names.
"""

from __future__ import annotations

import uuid
from typing import Any

CONSUMER = "cli-consumer"
PROVIDER = "orchestratord"
PLACEHOLDER_TOKEN = "pact-placeholder-token"  # the verifier sends the live server's token

READY = "the default pool is Ready"
FINISHED_TASK = "task {task_id} has finished"
RUNNING_TASK = "task {task_id} is running"
QUEUE_FULL = "the default pool's queue is full"
MODEL_REGISTERED = "model {model_id} is registered"
MODEL_WITH_SOURCE = "model {model_id} is registered with a local source"
POOL_DRAINED = "the default pool is drained"
ARTIFACT_STORED = "the plan artifact is stored"
SESSION_USED = "session {session_id} has run a task"
SESSION_ID_SHOWN = "6f1c2b8e-1a2b-4c3d-8e9f-00000000000b"
SESSION_ID_ENDED = "6f1c2b8e-1a2b-4c3d-8e9f-00000000000c"

NEW_MODEL_ID = "pact-new-model"
KNOWN_MODEL_ID = "pact-known-model"
PULL_MODEL_ID = "pact-pull-model"
MODEL_DIGEST = "sha256:" + "ab" * 32
PLAN_ARTIFACT: dict[str, Any] = {"kind": "plan", "content": {"steps": ["pact"]}, "tags": ["pact"]}

ADMIT_ID = "6f1c2b8e-1a2b-4c3d-8e9f-000000000001"
STREAM_ID = "6f1c2b8e-1a2b-4c3d-8e9f-000000000002"
CANCEL_ID = "6f1c2b8e-1a2b-4c3d-8e9f-000000000003"
REJECTED_ID = "6f1c2b8e-1a2b-4c3d-8e9f-000000000004"
ONE_REQUEST_ID = "6f1c2b8e-1a2b-4c3d-8e9f-000000000005"
SESSION_ID = "6f1c2b8e-1a2b-4c3d-8e9f-00000000000a"

UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

# One SSE stream as the CLI relies on it: started, then metrics/token frames, then one end.
SSE_EXAMPLE = (
    'event: started\ndata: {"queue_position":0,"predicted_start_ms":0}\n\n'
    'event: metrics\ndata: {"queue_depth":0,"on_time_probability":1.0,"kv_warmth":false,'
    '"tokens_out":0}\n\n'
    'event: token\ndata: {"t":" hello","i":0}\n\n'
    'event: end\ndata: {"tokens_out":1,"decode_ms":3,"finish_reason":"length"}\n\n'
)
# Oniguruma (the verifier's engine): \A..\z anchor the whole body, [\s\S] spans lines.
# A comment line (": ping", the heartbeat sent while nothing else is) may come between any
# two frames: the CLI skips it, and a slow engine or a busy machine makes one appear.
SSE_COMMENTS = r"(?::[^\n]*\n\n)*"
SSE_REGEX = (
    r"\A" + SSE_COMMENTS + r"event: started\ndata: \{[^\n]*\}\n\n"
    r"(?:event: (?:metrics|token)\ndata: \{[^\n]*\}\n\n|:[^\n]*\n\n)*"
    r"event: end\ndata: \{[^\n]*\"finish_reason\":\"(?:stop|length)\"[^\n]*\}\n\n\z"
)

# The one-request form (PERF-101): `accepted` (the 202's body) first, then the stream.
ONE_REQUEST_EXAMPLE = (
    f'event: accepted\ndata: {{"task_id":"{ONE_REQUEST_ID}","queue_position":0,'
    '"predicted_start_ms":0,"backoff_ms":0}\n\n'
) + SSE_EXAMPLE
ONE_REQUEST_REGEX = (
    r"\Aevent: accepted\ndata: \{\"task_id\":\"[0-9a-f-]{36}\",\"queue_position\":\d+,"
    r"[^\n]*\"backoff_ms\":\d+\}\n\n" + SSE_REGEX.removeprefix(r"\A")
)


def task(task_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task_id": task_id,
        # A session per task: sessions end after a few turns, and every interaction starts
        # from its own state.
        "session_id": str(uuid.uuid5(uuid.UUID(SESSION_ID), task_id)),
        "workload": "completion",
        "model_ref": "llorch/tiny-llama",
        "engine": "llamacpp",
        "ctx": 2048,
        "priority": "interactive",
        "seed": 7,
        "determinism": "best_effort",
        "sampler_profile_version": "v1",
        "prompt": "Pact says hello",
        "max_tokens": 8,
        "deadline_ms": 60000,
    }
    body.update(overrides)
    return body
