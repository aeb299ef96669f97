"""``python -m xtask fit-check``: our VRAM estimate beside ``llama-fit-params``'s, as a table.

The tiny model and two llama shapes written with a tokenizer (sparse weights), each at two
context sizes. The README's table is this command's output.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import MIB
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.placement.fit import replica_need
from orchestratord.placement.fit_check import engine_estimate, fit_params_binary
from orchestratord.replicas.engine_process import llama_server_binary
from xtask.fakes.model_files import write_shaped_gguf

SHAPES = {
    "1B-like (16 x 2048, ff 5632, 4 KV heads)": (16, 2048, 16, 4, 5632),
    "8B-like (32 x 4096, ff 14336, 8 KV heads)": (32, 4096, 32, 8, 14336),
}
CONTEXTS = ((2048, 1), (8192, 2))


@dataclass(frozen=True)
class Comparison:
    model: str
    ctx_max: int
    slots: int
    ours_kv_mib: float
    engine_kv_mib: int
    ours_compute_mib: float
    engine_compute_mib: int


def comparisons(workdir: Path) -> Iterator[Comparison]:
    binary = fit_params_binary(llama_server_binary())
    if binary is None:
        raise SystemExit("llama-fit-params is not installed next to llama-server")
    models = {"tiny (2 x 128, the project's test model)": ensure_tiny_model(workdir / "cache")}
    for name, (layers, embd, heads, kv_heads, ff) in SHAPES.items():
        path = workdir / f"{layers}x{embd}.gguf"
        write_shaped_gguf(path, n_layer=layers, n_embd=embd, n_head=heads, n_head_kv=kv_heads,
                          n_ff=ff, with_tokenizer=True)  # fmt: skip
        models[name] = path
    for name, path in models.items():
        shape = read_model_shape(path)
        for ctx, slots in CONTEXTS:
            pool = PoolConfig(id="p", model_ref="m", model_path=path, ctx_max=ctx, slots=slots)
            need = replica_need(pool, shape, 0)
            rows = engine_estimate(binary, path, pool)
            if rows is None:
                raise SystemExit(f"llama-fit-params gave no estimate for {path}")
            yield Comparison(name, ctx, slots, need.kv / MIB, sum(r.context_mib for r in rows),
                             need.compute / MIB, sum(r.compute_mib for r in rows))  # fmt: skip


def table(rows: list[Comparison]) -> str:
    lines = [
        "| model | ctx x slots | KV ours | KV llama.cpp | compute ours | compute llama.cpp |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.ctx_max} x {r.slots} | {r.ours_kv_mib:.0f} MiB | "
            f"{r.engine_kv_mib} MiB | {r.ours_compute_mib:.1f} MiB | {r.engine_compute_mib} MiB |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="llorch-fit-check-") as tmp:
        print(table(list(comparisons(Path(tmp)))))
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("fit-check", help="our VRAM estimate beside llama-fit-params'")
    parser.set_defaults(run=run)
