"""The GPUs orchestratord may place engines on (HOME-1001, HOME-1004).

Two sources behind one small interface: NVML (``nvml.py``) reads the real cards; a declared
inventory (the config's ``gpus.declared``) lists cards by index, name and VRAM. A declared
inventory is how placement is tested on a machine without GPUs and how an operator tries a
layout before buying the cards: placement, fit and the engine's argv are the same; the
engines themselves run wherever the llama-server build runs (on a CPU build, the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    name: str
    vram_total_bytes: int
    # In use by others when orchestratord started (a desktop, another program).
    vram_used_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DeviceSample:
    vram_used_bytes: int
    utilization: float  # 0..1


class DeviceInventory(Protocol):
    """What placement and the GPU metrics read about the cards."""

    @property
    def source(self) -> str:
        """``nvml`` or ``declared``."""

    def devices(self) -> list[Device]: ...

    def sample(self, index: int) -> DeviceSample | None:
        """Live use of a card; None when the source cannot measure (declared)."""

    def process_vram_bytes(self, index: int, pid: int) -> int | None:
        """VRAM a process holds on a card, 0 if none; None when the source cannot tell."""


class DeclaredInventory:
    source = "declared"

    def __init__(self, devices: list[Device]) -> None:
        self._devices = list(devices)

    def devices(self) -> list[Device]:
        return list(self._devices)

    def sample(self, index: int) -> DeviceSample | None:
        return None

    def process_vram_bytes(self, index: int, pid: int) -> int | None:
        return None


def gib(size: int) -> str:
    """A size for people: GiB with two decimals, MiB below one GiB."""
    if abs(size) < 1024 * MIB:
        return f"{size / MIB:.1f} MiB"
    return f"{size / (1024 * MIB):.2f} GiB"
