"""The determinism suite on real engines: the full 64-seed corpus on llama.cpp, 8 seeds on
the vLLM adapter and Triton (``python -m xtask determinism`` runs 64 on each; both share the
code)."""

from __future__ import annotations

import pytest

from xtask.checks.determinism import ENGINES, EngineResult, corpus, run_suite

pytestmark = pytest.mark.e2e


SEEDS = {"llamacpp": 64, "vllm": 8, "triton": 8}


@pytest.mark.req("OC-TEST-7001", "OC-TEST-7002", "OC-TEST-7003", "HOME-207")
def test_two_replicas_give_byte_identical_streams_per_engine() -> None:
    results = run_suite(SEEDS)
    assert [r.engine for r in results] == list(ENGINES)
    for result in results:
        assert result.passed, result
        assert result.seeds == result.distinct_streams == SEEDS[result.engine]
        assert result.tokens_compared == SEEDS[result.engine] * 24


def test_the_suite_fails_on_a_mismatch_a_shared_replica_or_a_degenerate_corpus() -> None:
    good = EngineResult("x", seeds=4, identical=4, on_two_replicas=4, distinct_streams=4)
    assert good.passed
    assert not EngineResult("x", 4, 3, 4, 4).passed  # one pair differed
    assert not EngineResult("x", 4, 4, 3, 4).passed  # one pair ran on one replica
    assert not EngineResult("x", 4, 4, 4, 1).passed  # every seed gave the same stream
    assert not EngineResult("x", 4, 4, 4, 3).passed  # two seeds gave one stream
    assert not EngineResult("x").passed  # nothing ran
    assert corpus(64) == corpus(64) and len(set(corpus(64))) == 64
