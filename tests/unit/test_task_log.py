"""A task's frame log: one terminal frame, cancel cuts at what the subscriber received."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestratord.core.task import Task, TaskState
from tests.unit.conftest import new_task


def frames(task: Task) -> list[tuple[str, Any]]:
    blocks = [b for b in b"".join(task.frames).split(b"\n\n") if b]
    out = []
    for block in blocks:
        event, data = block.split(b"\n", 1)
        out.append((event.removeprefix(b"event: ").decode(), json.loads(data[6:])))
    return out


@pytest.mark.req("HOME-301", "OC-CTRL-2023")
def test_only_the_first_terminal_frame_counts() -> None:
    task = new_task(tokens=2)
    task.finish_end("length")
    task.finish_error("WORKER_RESET", "late", "llamacpp")
    task.finish_end("stop")
    task.cancel_output()
    task.append_token(" after")
    task.append_metrics({"queue_depth": 0})
    kinds = [e for e, _ in frames(task)]
    assert kinds == ["token", "token", "end"]
    assert task.terminal == {"tokens_out": 2, "decode_ms": 0, "finish_reason": "length"}
    assert task.state is TaskState.DONE and task.prompt == ""


@pytest.mark.req("HOME-304", "ORCH-3017")
def test_cancel_cuts_at_what_the_attached_subscriber_received() -> None:
    task = new_task(tokens=5)
    task.subscribed, task.delivered = True, 2  # two frames handed to the client so far
    task.cancel_output()
    assert [e for e, _ in frames(task)] == ["token", "token", "end"]
    assert task.tokens_out == 2 and task.terminal is not None
    assert task.terminal["tokens_out"] == 2 and task.terminal["finish_reason"] == "canceled"


@pytest.mark.req("HOME-305")
def test_a_disconnect_cuts_at_what_the_leaving_subscriber_received() -> None:
    task = new_task(tokens=5)
    task.subscribed, task.delivered = False, 0  # it already let go of the task
    task.cancel_output(delivered=3)
    assert [e for e, _ in frames(task)] == ["token"] * 3 + ["end"]
    assert task.tokens_out == 3


@pytest.mark.req("HOME-304")
def test_cancel_with_nobody_attached_keeps_every_frame() -> None:
    task = new_task(tokens=4)
    task.cancel_output()
    assert [e for e, _ in frames(task)] == ["token"] * 4 + ["end"]
    assert task.tokens_out == 4 and task.terminal is not None
    assert task.terminal["tokens_out"] == 4


def test_a_finished_log_is_one_block_once_nobody_reads_it() -> None:
    task = new_task(tokens=3)
    task.subscribed = True
    task.finish_end("length")
    assert len(task.frames) == 4  # a reader is attached: its cursor indexes frames
    task.detach()
    assert len(task.frames) == 1 and not task.subscribed
    assert [e for e, _ in frames(task)] == ["token"] * 3 + ["end"]
