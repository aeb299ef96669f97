"""Free VRAM per device for placement, GPU metrics per replica, and the no-CPU-fallback check.

Placement reads free VRAM on every dispatch, so it reads a number cached here, refreshed
with the metrics every monitor interval (``refresh``), never NVML on the task path. While
serving, the NVML reads of a refresh run in a worker thread (``refresh_off_loop``): a
driver call that hangs delays the numbers, never the streams (HARD-204).

- NVML: free = total - used now - reserve; ``vram_used_bytes`` is what the replica's engine
  process holds on each card, ``gpu_utilization`` the card's utilization.
- Declared: free = total - used by others - reserve - the needs of the replicas placed on it;
  ``vram_used_bytes`` is a Ready replica's placed need, ``gpu_utilization`` the share of its
  slots decoding (the accounting a declared inventory can do; stated in the README).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestratord.devices.inventory import DeviceInventory, DeviceSample
from orchestratord.metrics import Metrics
from orchestratord.replicas.replica import Replica


@dataclass
class _Readings:
    samples: dict[int, DeviceSample | None] = field(default_factory=dict)
    held: dict[tuple[int, int], int | None] = field(default_factory=dict)  # (device, pid)


class DeviceAccounting:
    def __init__(self, inventory: DeviceInventory | None, reserve_bytes: int) -> None:
        self.inventory = inventory
        self.reserve_bytes = reserve_bytes
        devices = inventory.devices() if inventory is not None else []
        self.devices = {d.index: d for d in devices}
        self.free_bytes: dict[int, int] = {}

    @property
    def measured(self) -> bool:
        return self.inventory is not None and self.inventory.source == "nvml"

    def room_for_load(self, replicas: list[Replica]) -> dict[int, int]:
        """Each device's VRAM a load may use now. Declared: total minus others' use minus
        what every current replica (loaded, loading or unloading) was placed with. NVML: the
        last measured free memory minus what replicas still coming up will take."""
        room: dict[int, int] = {}
        for index, device in self.devices.items():
            if self.measured:
                free = self.room(index)
                pending = sum(r.spec.vram_bytes.get(index, 0) for r in replicas if not r.ready)
                room[index] = free - pending
            else:
                placed = sum(r.spec.vram_bytes.get(index, 0) for r in replicas)
                room[index] = device.vram_total_bytes - device.vram_used_bytes - placed
        return room

    def room(self, index: int) -> int:
        """Free VRAM on a device, before any reserve for a next process (0 if unknown)."""
        return self.free_bytes.get(index, 0) + self.reserve_bytes

    def free_vram(self, replica: Replica) -> int:
        """Free VRAM on the replica's tightest device (0 for a CPU or remote replica)."""
        if not replica.devices:
            return 0
        return min(self.free_bytes.get(i, 0) for i in replica.devices)

    def refresh(self, replicas: Iterable[Replica], metrics: Metrics) -> None:
        """Read and publish now (start-up, before the loop serves)."""
        replicas = list(replicas)
        self._apply(replicas, self._read(replicas), metrics)

    async def refresh_off_loop(self, replicas: Iterable[Replica], metrics: Metrics) -> None:
        replicas = list(replicas)
        readings = await asyncio.to_thread(self._read, replicas) if self.measured else None
        self._apply(replicas, readings if readings is not None else _Readings(), metrics)

    def _read(self, replicas: list[Replica]) -> _Readings:
        """Every NVML call of a refresh (a blocking driver call each)."""
        readings = _Readings()
        inventory = self.inventory
        if inventory is None:
            return readings
        for index in self.devices:
            readings.samples[index] = inventory.sample(index)
        if self.measured:
            for replica in replicas:
                pid = replica.process.pid if replica.process is not None else None
                for index in replica.devices:
                    if pid:
                        readings.held[(index, pid)] = inventory.process_vram_bytes(index, pid)
        return readings

    def _apply(self, replicas: list[Replica], readings: _Readings, metrics: Metrics) -> None:
        placed: dict[int, int] = {}
        for replica in replicas:
            for index, need in replica.spec.vram_bytes.items():
                placed[index] = placed.get(index, 0) + need
        for index, device in self.devices.items():
            sample = readings.samples.get(index)
            if sample is not None:
                free = device.vram_total_bytes - sample.vram_used_bytes
            else:
                free = device.vram_total_bytes - device.vram_used_bytes - placed.get(index, 0)
            self.free_bytes[index] = free - self.reserve_bytes
        for replica in replicas:
            self._publish(replica, readings, metrics)

    def _publish(self, replica: Replica, readings: _Readings, metrics: Metrics) -> None:
        labels = replica.labels()
        pid = replica.process.pid if replica.process is not None else None
        for index in replica.devices:
            device = {**labels, "device": str(index)}
            sample = readings.samples.get(index) if self.measured else None
            if sample is not None:
                held = readings.held.get((index, pid)) if pid else None
                metrics.vram_used_bytes.labels(**device).set(held or 0)
                metrics.gpu_utilization.labels(**device).set(sample.utilization)
            else:
                need = replica.spec.vram_bytes.get(index, 0) if replica.ready else 0
                metrics.vram_used_bytes.labels(**device).set(need)
                metrics.gpu_utilization.labels(**device).set(replica.load)

    def cpu_fallback(self, replica: Replica) -> str | None:
        """Why a Ready GPU replica is not on its GPUs, or None (ORCH-3018). Only NVML can
        tell; an engine that holds no memory on a card of its own is running on the CPU."""
        inventory = self.inventory
        if not self.measured or inventory is None or not replica.devices:
            return None
        pid = replica.process.pid if replica.process is not None else None
        if pid is None:
            return None
        held = [inventory.process_vram_bytes(i, pid) for i in replica.devices]
        if any(h is None for h in held) or any(h for h in held):
            return None
        names = ", ".join(f"GPU{i}" for i in replica.devices)
        return f"the engine holds no memory on {names}: it would run on the CPU (refused)"
