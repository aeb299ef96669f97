"""``orchestratord plan``: where each replica would run, and how its engine would be started.

Placement and the engine command lines are computed exactly as ``serve`` computes them, but
nothing is started: an operator checks a layout (or a declared inventory of cards they do
not own yet) before serving. Exit status 2 and the placement error if it does not fit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestratord.app import Orchestrator
from orchestratord.config import load_config
from orchestratord.devices.inventory import gib
from orchestratord.devices.nvml import NvmlUnavailable
from orchestratord.placement.plan import PlacementError

_PLAN_TOKEN = "plan-only-token-never-served"


def plan_report(config_path: Path | None) -> dict[str, Any]:
    config = load_config(config_path)
    # The real store: a pool may name a catalog model, whose file the catalog knows.
    orch = Orchestrator(config, token=_PLAN_TOKEN)
    inventory = orch.inventory
    report: dict[str, Any] = {
        "gpus": {
            "source": inventory.source if inventory is not None else None,
            "devices": [
                {"index": d.index, "name": d.name, "vram_total_bytes": d.vram_total_bytes}
                for d in (inventory.devices() if inventory is not None else [])
            ],
        },
        "pools": [],
    }
    for pool in orch.pools.values():
        replicas = []
        for replica in pool.replicas:
            entry: dict[str, Any] = {
                "id": replica.id,
                "devices": list(replica.devices),
                "vram_bytes": {str(i): b for i, b in replica.spec.vram_bytes.items()},
                "tensor_split": list(replica.spec.tensor_split or []) or None,
                "endpoint": replica.spec.remote,
            }
            if replica.process is not None:
                entry["argv"] = replica.process.command()
                entry["env"] = {
                    k: v for k, v in replica.process.env.items() if k.startswith("CUDA_")
                }
            replicas.append(entry)
        entry = {"id": pool.id, "model_ref": pool.config.model_ref, "replicas": replicas,
                 "residency": pool.config.residency}  # fmt: skip
        if pool.residency.on_demand:  # placed at each load, against what is loaded then
            need = orch.residency.needs.get(pool.id)
            entry["on_demand"] = {
                "devices": list(pool.config.devices),
                "need_bytes": need.total() if need is not None else None,
                "need": need.describe() if need is not None else None,
            }
        report["pools"].append(entry)
    return report


def _text(report: dict[str, Any]) -> str:
    gpus = report["gpus"]
    lines = [f"gpus ({gpus['source']}):"]
    lines += [
        f"  GPU{d['index']} {d['name']} {gib(d['vram_total_bytes'])}" for d in gpus["devices"]
    ] or ["  none"]
    for pool in report["pools"]:
        lines.append(f"pool {pool['id']} ({pool['model_ref']}):")
        on_demand = pool.get("on_demand")
        if on_demand is not None:
            where = " or ".join(f"GPU{i}" for i in on_demand["devices"]) or "the CPU"
            need = on_demand["need_bytes"]
            size = f" (needs {gib(need)}: {on_demand['need']})" if need is not None else ""
            lines.append(f"  on-demand: loads when asked, on {where}{size}")
        for replica in pool["replicas"]:
            where = replica["endpoint"] or (
                " + ".join(
                    f"GPU{i} ({gib(replica['vram_bytes'][str(i)])})" for i in replica["devices"]
                )
                or "CPU"
            )
            lines.append(f"  {replica['id']} on {where}")
            if "argv" in replica:
                env = " ".join(f"{k}={v!r}" for k, v in replica["env"].items())
                lines.append(f"    {env} {' '.join(replica['argv'])}")
    return "\n".join(lines)


def run_plan(config_path: Path | None, as_json: bool) -> int:
    try:
        report = plan_report(config_path)
    except ValidationError as exc:
        print(f"orchestratord: invalid config: {exc.error_count()} problem(s)", file=sys.stderr)
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            print(f"  {where}: {error['msg']}", file=sys.stderr)
        return 2
    except (PlacementError, NvmlUnavailable, OSError, ValueError) as exc:
        print(f"orchestratord: cannot place the pools: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if as_json else _text(report))
    return 0
