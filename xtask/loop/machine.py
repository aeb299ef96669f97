"""Which machine a figure came from (HARN-302): CPU model, cores, memory and the load average
when the run began. The loop's step table and every benchmark print it, so a number in the
README can always be matched with the machine beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _cpu_model(cpuinfo: Path) -> str:
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return "unknown CPU"


def _memory_gib(meminfo: Path) -> float | None:
    try:
        for line in meminfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe(proc: Path = Path("/proc")) -> dict[str, Any]:
    """This machine, now: call it when the run begins (the load average is of that moment)."""
    load = os.getloadavg()
    return {
        "cpu": _cpu_model(proc / "cpuinfo"),
        "cores": os.cpu_count() or 1,
        "memory_gib": _memory_gib(proc / "meminfo"),
        "load_average": [round(x, 2) for x in load],
    }


def line(machine: dict[str, Any]) -> str:
    memory = f", {machine['memory_gib']:g} GiB" if machine.get("memory_gib") else ""
    load = "/".join(f"{x:.2f}" for x in machine["load_average"])
    return (
        f"machine: {machine['cpu']}, {machine['cores']} cores{memory}; "
        f"load average {load} (1/5/15 min) at the start"
    )
