"""Queue-time estimates come from observed service times (HOME-206, HOME-902, HOME-1003)."""

from __future__ import annotations

import pytest

from orchestratord.core.estimates import ServiceTimeEstimator


@pytest.mark.req("HOME-206")
def test_unknown_until_first_observation_except_free_slot() -> None:
    est = ServiceTimeEstimator()
    assert est.predicted_start_ms(0, slots_total=2, slots_free=1) == 0
    assert est.predicted_start_ms(0, slots_total=2, slots_free=0) is None
    assert est.drain_interval_ms(2) is None


@pytest.mark.req("HOME-206", "HOME-902", "HOME-1003")
def test_waves_of_service_time_per_slot() -> None:
    est = ServiceTimeEstimator()
    est.observe(1000)
    # two slots busy: positions 0 and 1 start after one service time, 2 and 3 after two
    assert est.predicted_start_ms(0, 2, 0) == 1000
    assert est.predicted_start_ms(1, 2, 0) == 1000
    assert est.predicted_start_ms(2, 2, 0) == 2000
    assert est.drain_interval_ms(2) == 500


@pytest.mark.req("HOME-206")
def test_mean_follows_new_observations() -> None:
    est = ServiceTimeEstimator()
    est.observe(1000)
    est.observe(2000)
    assert est.mean_ms is not None and 1000 < est.mean_ms < 2000


@pytest.mark.req("HOME-1003", "FR-PF-002")
def test_queued_tasks_are_predicted_from_tasks_that_ran_on_a_busy_pool() -> None:
    est = ServiceTimeEstimator()
    est.observe(1000, busy_slots=2)
    for _ in range(10):  # many quick lone tasks since
        est.observe(400, busy_slots=1)
    # A queued task only exists while both slots are busy: it waits busy service times.
    assert est.predicted_start_ms(0, slots_total=2, slots_free=0) == 1000
    assert est.predicted_start_ms(2, slots_total=2, slots_free=0) == 2000
    assert est.drain_interval_ms(2) == 500
    # A pool never seen full falls back to the fullest occupancy it has seen.
    assert est.predicted_start_ms(0, slots_total=4, slots_free=0) == 1000
    lone = ServiceTimeEstimator()
    lone.observe(400, busy_slots=1)
    assert lone.predicted_start_ms(1, slots_total=2, slots_free=0) == 400
    assert est.mean_ms is not None and est.mean_ms < 500  # the overall mean forgot the burst
