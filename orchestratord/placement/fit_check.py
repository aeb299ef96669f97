"""A second opinion on the fit (HARD-207): llama.cpp's own ``llama-fit-params``.

The installed llama.cpp ships ``llama-fit-params``; ``--fit-print on`` prints, per device,
the MiB it would allocate for the model, the context (KV cache) and the compute buffer. At
start-up each GPU pool's estimate is compared with it and the difference logged, so an
estimate that drifts from the engine's own arithmetic shows in the log before it costs an
out-of-memory. On a CPU-only build the one device is ``Host`` and its model column counts
only the buffers that are not memory-mapped, so only the context and compute figures are
comparable there (the README's table says how close they are).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import MIB
from orchestratord.placement.fit import Need

log = logging.getLogger("orchestratord.placement")

_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class EngineEstimate:
    """One device row of ``llama-fit-params --fit-print on``, in MiB."""

    device: str
    model_mib: int
    context_mib: int
    compute_mib: int


def fit_params_binary(server_binary: Path) -> Path | None:
    candidate = server_binary.with_name("llama-fit-params")
    return candidate if candidate.is_file() else None


def engine_estimate(
    binary: Path, model_path: Path, pool: PoolConfig
) -> list[EngineEstimate] | None:
    """What llama.cpp would allocate for ``pool``'s engine, or None if it cannot say."""
    command = [
        str(binary), "-m", str(model_path), "-c", str(pool.ctx_max * pool.slots),
        "-np", str(pool.slots), "-ngl", str(pool.gpu_layers), "--fit-print", "on",
        *pool.llamacpp.extra_args,
    ]  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="llorch-fit-") as cwd:
            done = subprocess.run(
                command, cwd=cwd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
            )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("llama-fit-params could not run: %s", exc)
        return None
    rows = [_row(line) for line in done.stdout.splitlines()]
    estimates = [row for row in rows if row is not None]
    if done.returncode != 0 or not estimates:
        log.info("llama-fit-params gave no estimate (exit %d)", done.returncode)
        return None
    return estimates


def _row(line: str) -> EngineEstimate | None:
    parts = line.split()
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        return None
    return EngineEstimate(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def compare(need: Need, estimates: list[EngineEstimate]) -> str:
    context = sum(e.context_mib for e in estimates)
    compute = sum(e.compute_mib for e in estimates)
    return (
        f"KV cache ours {need.kv / MIB:.0f} MiB, llama.cpp {context} MiB; "
        f"compute ours {need.compute / MIB:.0f} MiB, llama.cpp {compute} MiB "
        f"(devices: {', '.join(e.device for e in estimates)})"
    )


def log_cross_check(server_binary: Path, model_path: Path, pool: PoolConfig, need: Need) -> None:
    binary = fit_params_binary(server_binary)
    if binary is None:
        return
    estimates = engine_estimate(binary, model_path, pool)
    if estimates is not None:
        log.info("pool %s fit: %s", pool.id, compare(need, estimates))
