"""Per-priority rate limits (ORCH-3006): a token bucket before enqueue."""

from __future__ import annotations

from typing import Any

import pytest

from orchestratord.core.rate_limit import TokenBucket
from tests.contract_schemas import assert_matches
from tests.unit.conftest import AUTH, task_body


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_grants_its_burst_then_one_token_per_interval() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0, 0, 0]
    assert bucket.take() == 500  # 2/s: the next token in 500 ms
    clock.now += 0.25
    assert bucket.take() == 250
    clock.now += 0.25
    assert bucket.take() == 0
    clock.now += 100  # refills to the burst, not beyond
    assert [bucket.take() for _ in range(4)][-1] > 0


@pytest.mark.req("ORCH-3006", "HOME-902", "HOME-601")
async def test_over_the_rate_is_a_429_with_the_buckets_wait_and_the_policy_label(
    conductor_for: Any,
) -> None:
    limits = {"capacity": 8, "rate_limit_rps": {"batch": 0.5}, "rate_limit_burst": 2}
    async with conductor_for(queue=limits) as (_, conductor):
        batch = [
            await conductor.simulate_post(
                "/v1/tasks", json=task_body(priority="batch", max_tokens=1), headers=AUTH
            )
            for _ in range(3)
        ]
        interactive = await conductor.simulate_post(
            "/v1/tasks", json=task_body(max_tokens=1), headers=AUTH
        )
        caps = (await conductor.simulate_get("/v1/capabilities", headers=AUTH)).json
        text = (await conductor.simulate_get("/metrics")).text
    assert [r.status_code for r in batch] == [202, 202, 429]
    refused = batch[2]
    assert_matches("data", "ErrorEnvelope", refused.json)
    assert (
        refused.json["code"] == "ADMISSION_REJECT" and refused.json["policy_label"] == "rate-limit"
    )
    assert 1500 < refused.json["retry_after_ms"] <= 2000  # 0.5/s: up to 2 s for the next token
    assert refused.headers["X-Backoff-Ms"] == str(refused.json["retry_after_ms"])
    assert refused.headers["Retry-After"] == "2"
    assert interactive.status_code == 202  # interactive has no limit
    assert caps["engines"][0]["rate_limits"]["rate_limit_rps"] == {
        "interactive": None,
        "batch": 0.5,
    }
    assert 'admission_backpressure_events_total{engine="llamacpp",policy="rate-limit"} 1.0' in text


@pytest.mark.parametrize("rps", [0, -1, 10_000_000])
def test_absurd_rates_are_config_errors(rps: float) -> None:
    from orchestratord.config import QueueConfig  # noqa: PLC0415

    with pytest.raises(ValueError, match="rate_limit_rps"):
        QueueConfig.model_validate({"rate_limit_rps": {"batch": rps}})
