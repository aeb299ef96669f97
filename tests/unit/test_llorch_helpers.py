"""llorch's own logic: retries after the server's hints, batch files, safe concurrency, the
server's URL and token defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_client.client import Backoff, OrchError, Unavailable
from cli_client.run import RunOptions, read_batch, safe_concurrency, submit_with_retries, task_body
from cli_client.settings import SettingsError, resolve


class Refusing:
    """A client whose enqueue answers the given refusals, then accepts."""

    def __init__(self, refusals: list[OrchError]) -> None:
        self.refusals = list(refusals)
        self.calls = 0

    def enqueue(self, body: dict[str, Any]) -> None:
        self.calls += 1
        if self.refusals:
            raise self.refusals.pop(0)


def backoff(ms: int) -> Backoff:
    headers = httpx.Headers({"X-Backoff-Ms": str(ms), "Retry-After": "1"})
    return Backoff(429, {"code": "ADMISSION_REJECT", "policy_label": "reject"}, headers)


def unavailable(ms: int, retriable: bool = True) -> Unavailable:
    envelope = {"code": "POOL_UNREADY", "retriable": retriable, "retry_after_ms": ms}
    return Unavailable(503, envelope, httpx.Headers())


def test_429_and_retriable_503_are_retried_after_the_hint_with_doubling() -> None:
    slept: list[float] = []
    client = Refusing([backoff(200), unavailable(300), backoff(100)])
    submit_with_retries(client, {}, sleep=slept.append)  # type: ignore[arg-type]
    assert client.calls == 4
    # hint x doubling x jitter in [1, 1.5)
    for seconds, (hint, factor) in zip(slept, [(0.2, 1), (0.3, 2), (0.1, 4)], strict=True):
        assert hint * factor <= seconds < hint * factor * 1.5


def test_a_503_that_is_not_retriable_is_raised_at_once() -> None:
    client = Refusing([unavailable(100, retriable=False)])
    with pytest.raises(Unavailable):
        submit_with_retries(client, {}, sleep=lambda s: None)  # type: ignore[arg-type]
    assert client.calls == 1


def test_retries_are_bounded() -> None:
    client = Refusing([backoff(1) for _ in range(50)])
    with pytest.raises(OrchError):
        submit_with_retries(client, {}, sleep=lambda s: None)  # type: ignore[arg-type]
    assert client.calls == 8


@pytest.mark.req("FR-MA-001", "HOME-1002")
def test_batch_concurrency_keeps_the_slots_busy_inside_the_queue(tmp_path: Path) -> None:
    assert safe_concurrency({"slots_total": 4, "queue_capacity": 16}) == 12
    assert safe_concurrency({"slots_total": 1, "queue_capacity": 0}) == 1
    batch = tmp_path / "prompts.txt"
    batch.write_text('one\n\n{"prompt": "two"}\n  three  \n')
    assert read_batch(batch) == ["one", "two", "  three  "]


def test_a_task_body_is_a_valid_admission_request() -> None:
    body = task_body("hi", RunOptions(max_tokens=5, seed=3, profile="v1"), "llamacpp", "m", 512)
    assert body["seed"] == 3 and body["sampler_profile_version"] == "v1"
    assert body["task_id"] != body["session_id"]


def test_url_and_token_come_from_the_servers_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLORCH_API_TOKEN", raising=False)
    monkeypatch.delenv("LLORCH_URL", raising=False)
    config = tmp_path / "server.yaml"
    token_file = tmp_path / "state" / "api-token"
    config.write_text(f"server: {{port: 9123}}\nstate_dir: {tmp_path / 'state'}\n")
    with pytest.raises(SettingsError, match="Start orchestratord once"):
        resolve(None, config, None)
    token_file.parent.mkdir()
    token_file.write_text("secret-token-0123456789\n")
    os.chmod(token_file, 0o600)
    settings = resolve(None, config, None)
    assert (settings.url, settings.token) == ("http://127.0.0.1:9123", "secret-token-0123456789")
    monkeypatch.setenv("LLORCH_URL", "http://10.0.0.2:8080/")
    assert resolve(None, config, None).url == "http://10.0.0.2:8080"
