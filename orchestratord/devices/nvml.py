"""Real GPUs through NVML (``nvidia-ml-py``).

The module object is injected so the unit tests drive this code with a scripted stand-in;
in production it is ``pynvml`` from ``nvidia-ml-py``. NVML errors are translated here into
:class:`NvmlUnavailable` (at start-up) or a missing sample (at run time), never raised into
placement or the metrics scrape.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import Any

from orchestratord.devices.inventory import Device, DeviceSample

log = logging.getLogger("orchestratord.devices")


class NvmlUnavailable(Exception):
    """No NVML library, no driver or no GPU."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlInventory:
    source = "nvml"

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._devices = [self._read(i, h) for i, h in enumerate(self._handles)]
        except nvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML: {exc}") from exc
        if not self._devices:
            raise NvmlUnavailable("NVML found no GPU")

    def _read(self, index: int, handle: Any) -> Device:
        memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        return Device(
            index=index,
            name=_text(self._nvml.nvmlDeviceGetName(handle)),
            vram_total_bytes=int(memory.total),
            vram_used_bytes=int(memory.used),
        )

    def devices(self) -> list[Device]:
        return list(self._devices)

    def sample(self, index: int) -> DeviceSample | None:
        nvml = self._nvml
        try:
            handle = self._handles[index]
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        except (IndexError, nvml.NVMLError) as exc:
            log.warning("NVML sample of GPU %d failed: %s", index, exc)
            return None
        return DeviceSample(int(memory.used), float(rates.gpu) / 100.0)

    def process_vram_bytes(self, index: int, pid: int) -> int | None:
        nvml = self._nvml
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(self._handles[index])
        except (IndexError, nvml.NVMLError) as exc:
            log.warning("NVML process list of GPU %d failed: %s", index, exc)
            return None
        return sum(int(p.usedGpuMemory or 0) for p in processes if int(p.pid) == pid)


def load_nvml() -> ModuleType | None:
    """``pynvml`` if nvidia-ml-py is installed, else None."""
    try:
        import pynvml  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module
