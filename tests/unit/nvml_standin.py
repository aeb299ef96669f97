"""A scripted stand-in for ``pynvml``: the calls NvmlInventory makes, on cards a test declares.

Only the functions and shapes orchestratord uses are modelled (names as bytes, memory info,
utilization rates, compute processes), after nvidia-ml-py's documented API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    pass


@dataclass
class Card:
    name: str
    total: int
    used: int = 0
    utilization: int = 0  # percent
    processes: dict[int, int] = field(default_factory=dict)  # pid -> bytes


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, cards: list[Card], *, library_missing: bool = False) -> None:
        self.cards = cards
        self.library_missing = library_missing
        self.calls = 0

    def nvmlInit(self) -> None:
        if self.library_missing:
            raise NVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Card:
        return self.cards[index]

    def nvmlDeviceGetName(self, card: Card) -> bytes:
        return card.name.encode()

    def nvmlDeviceGetMemoryInfo(self, card: Card) -> SimpleNamespace:
        self.calls += 1
        return SimpleNamespace(total=card.total, used=card.used, free=card.total - card.used)

    def nvmlDeviceGetUtilizationRates(self, card: Card) -> SimpleNamespace:
        return SimpleNamespace(gpu=card.utilization, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, card: Card) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=p, usedGpuMemory=b) for p, b in card.processes.items()]
