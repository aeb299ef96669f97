"""The NVML device inventory on a scripted NVML stand-in (no GPU on this machine)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestratord.adapters.mock import MockAdapter
from orchestratord.config import Config
from orchestratord.devices.accounting import DeviceAccounting
from orchestratord.devices.inventory import MIB
from orchestratord.devices.nvml import NvmlInventory, NvmlUnavailable
from orchestratord.devices.open import open_inventory
from orchestratord.metrics import Metrics
from orchestratord.replicas.replica import Replica, ReplicaSpec
from tests.unit.conftest import make_config
from tests.unit.nvml_standin import Card, FakeNvml

GIB = 1024 * MIB


def box() -> FakeNvml:
    return FakeNvml(
        [
            Card("NVIDIA GeForce RTX 3090", 24 * GIB, used=1 * GIB),
            Card("NVIDIA GeForce RTX 3060", 12 * GIB),
        ]
    )


def gpu_config(tmp_path: Path, source: str = "auto") -> Config:
    declared = [{"index": 0, "name": "declared card", "vram_total_mb": 8192}]
    return make_config(tmp_path, devices=[0], gpus={"source": source, "declared": declared})


@pytest.mark.req("HOME-1004", "OC-POOL-3020")
def test_nvml_devices_are_read_when_present(tmp_path: Path) -> None:
    inventory = open_inventory(gpu_config(tmp_path), nvml=box())
    assert inventory is not None and inventory.source == "nvml"
    assert [
        (d.index, d.name, d.vram_total_bytes, d.vram_used_bytes) for d in inventory.devices()
    ] == [
        (0, "NVIDIA GeForce RTX 3090", 24 * GIB, 1 * GIB),
        (1, "NVIDIA GeForce RTX 3060", 12 * GIB, 0),
    ]


@pytest.mark.req("HOME-1004")
def test_without_nvml_auto_falls_back_to_the_declared_list_and_nvml_refuses(
    tmp_path: Path,
) -> None:
    missing = FakeNvml([], library_missing=True)
    inventory = open_inventory(gpu_config(tmp_path), nvml=missing)
    assert inventory is not None and inventory.source == "declared"
    assert [d.name for d in inventory.devices()] == ["declared card"]
    with pytest.raises(NvmlUnavailable, match="Shared Library Not Found"):
        open_inventory(gpu_config(tmp_path, "nvml"), nvml=missing)
    with pytest.raises(NvmlUnavailable, match="found no GPU"):
        NvmlInventory(FakeNvml([]))


def replica_on(device: int, pid: int | None) -> Replica:
    process: Any = SimpleNamespace(pid=pid) if pid is not None else None
    spec = ReplicaSpec("p", 0, 2, devices=(device,), vram_bytes={device: 4 * GIB})
    replica = Replica(spec, "llamacpp", MockAdapter(), Metrics(), process)
    replica.ready = True
    return replica


@pytest.mark.req("HOME-1001", "HOME-801")
def test_free_vram_and_gpu_metrics_come_from_nvml_samples() -> None:
    nvml = box()
    inventory = NvmlInventory(nvml)
    accounting = DeviceAccounting(inventory, reserve_bytes=512 * MIB)
    replica = replica_on(1, pid=4242)
    nvml.cards[1].used = 5 * GIB
    nvml.cards[1].utilization = 73
    nvml.cards[1].processes = {4242: 4 * GIB + 7, 999: GIB}
    metrics = Metrics()
    accounting.refresh([replica], metrics)
    assert accounting.free_vram(replica) == 12 * GIB - 5 * GIB - 512 * MIB
    labels = {**replica.labels(), "device": "1"}
    assert metrics.vram_used_bytes.labels(**labels)._value.get() == 4 * GIB + 7
    assert metrics.gpu_utilization.labels(**labels)._value.get() == 0.73


@pytest.mark.req("ORCH-3018")
def test_an_engine_holding_no_memory_on_its_gpu_is_refused_as_a_cpu_fallback() -> None:
    nvml = box()
    accounting = DeviceAccounting(NvmlInventory(nvml), reserve_bytes=0)
    replica = replica_on(0, pid=77)
    reason = accounting.cpu_fallback(replica)
    assert reason == "the engine holds no memory on GPU0: it would run on the CPU (refused)"
    nvml.cards[0].processes = {77: 3 * GIB}
    assert accounting.cpu_fallback(replica) is None


@pytest.mark.req("ORCH-3018")
async def test_a_replica_that_fell_back_to_the_cpu_never_becomes_ready() -> None:
    nvml = box()
    accounting = DeviceAccounting(NvmlInventory(nvml), reserve_bytes=0)

    class Process:
        pid = 77
        stops = 0

        async def start(self, timeout_s: float) -> None:
            return None

        async def stop(self) -> None:
            self.stops += 1

    spec = ReplicaSpec("p", 0, 2, devices=(0,), vram_bytes={0: GIB})
    process: Any = Process()
    replica = Replica(spec, "llamacpp", MockAdapter(), Metrics(), process)
    replica.placement_check = accounting.cpu_fallback
    assert await replica.bring_up() is False
    assert not replica.ready and replica.needs_start and process.stops == 1
    assert replica.last_error is not None and "would run on the CPU" in replica.last_error
    nvml.cards[0].processes = {77: GIB}
    assert await replica.bring_up() is True
