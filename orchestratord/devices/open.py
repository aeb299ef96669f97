"""Choose the device inventory the config asks for (``gpus.source``)."""

from __future__ import annotations

import logging
from typing import Any

from orchestratord.config import Config, DeclaredGpu
from orchestratord.devices.inventory import MIB, DeclaredInventory, Device, DeviceInventory
from orchestratord.devices.nvml import NvmlInventory, NvmlUnavailable, load_nvml

log = logging.getLogger("orchestratord.devices")


def declared_devices(declared: list[DeclaredGpu]) -> list[Device]:
    return [
        Device(gpu.index, gpu.name, gpu.vram_total_mb * MIB, gpu.vram_used_mb * MIB)
        for gpu in declared
    ]


def open_inventory(config: Config, nvml: Any = None) -> DeviceInventory | None:
    """NVML, the declared list, or None when no pool asks for a GPU (nothing to open).

    ``nvml`` replaces the ``pynvml`` module (tests).
    """
    gpus = config.gpus
    wants_gpus = any(pool.devices for pool in config.pools)
    if gpus.source == "declared" or (gpus.source == "auto" and not wants_gpus):
        return DeclaredInventory(declared_devices(gpus.declared))
    module = nvml if nvml is not None else load_nvml()
    try:
        if module is None:
            raise NvmlUnavailable("nvidia-ml-py is not installed")
        return NvmlInventory(module)
    except NvmlUnavailable as exc:
        if gpus.source == "nvml":
            raise
        log.info("no NVML (%s): using the declared GPU inventory", exc)
        return DeclaredInventory(declared_devices(gpus.declared))
