"""Start-up placement: fit from the GGUF's own metadata, masks, splits, and the numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import MIB, Device, gib
from orchestratord.models.gguf_shape import ModelShape, read_model_shape
from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.placement.fit import replica_need
from orchestratord.placement.plan import PlacementError, plan_replicas
from xtask.fakes.model_files import write_shaped_gguf

GIB = 1024 * MIB
RTX_3090 = Device(0, "RTX 3090", 24 * GIB)
RTX_3060 = Device(1, "RTX 3060", 12 * GIB)
BOX = [RTX_3090, RTX_3060]
RESERVE = 512 * MIB


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llama-2-7B-shaped f16 file: 12.6 GiB of weights, 0.5 MiB of KV per token."""
    path = tmp_path_factory.mktemp("models") / "7b-f16.gguf"
    write_shaped_gguf(path, n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_tiny_model(tmp_path_factory.mktemp("cache"))


def pool(pool_id: str, path: Path, **fields: object) -> PoolConfig:
    return PoolConfig.model_validate(
        {"id": pool_id, "model_ref": f"m/{pool_id}", "model_path": str(path), **fields}
    )


def plan(pools: list[PoolConfig], devices: list[Device] = BOX) -> dict[str, list[object]]:
    shapes = {p.id: read_model_shape(p.model_path) for p in pools if p.model_path}

    def shape_of(p: PoolConfig) -> ModelShape:
        return shapes[p.id]

    specs = plan_replicas(
        pools, devices, reserve_bytes=RESERVE, source="declared", shape_of=shape_of
    )
    return {pool_id: [s.devices for s in replicas] for pool_id, replicas in specs.items()}


@pytest.mark.req("HOME-1001", "HARD-207")
def test_the_need_is_offloaded_weights_kv_compute_and_a_reserve_per_process(
    seven_b: Path,
) -> None:
    shape = read_model_shape(seven_b)
    # llama-2-7B: 32 layers x 32 KV heads x (128 + 128) x f16 = 512 KiB per token.
    assert shape.kv_bytes(1) == 512 * 1024
    embeddings = 32000 * 4096 * 2  # stay in host memory, as llama.cpp keeps them
    assert shape.input_bytes == embeddings
    need = replica_need(pool("a", seven_b, ctx_max=4096, slots=2), shape, RESERVE)
    assert need.weights == shape.weights_bytes - embeddings
    assert need.kv == 8192 * 512 * 1024
    # One 512-token micro-batch: activations, and a byte per batch token and context token.
    assert need.compute == 512 * 4 * (3 * 11008 + 5.5 * 4096) + 512 * 8192
    assert need.total() == need.weights + need.kv + need.compute + RESERVE
    assert need.total(devices=2) == need.total() + RESERVE  # per process and device
    assert "KV cache 4.00 GiB for ctx 4096 x 2 slots (f16/f16)" in need.describe()
    quantized = pool(
        "b",
        seven_b,
        ctx_max=4096,
        slots=2,
        llamacpp={"extra_args": ["-ctk", "q8_0", "-ctv", "q4_0"]},
    )
    smaller = replica_need(quantized, shape, RESERVE)
    assert smaller.kv == int(32 * 32 * (128 * 34 / 32 + 128 * 18 / 32) * 8192)
    assert "(q8_0/q4_0)" in smaller.describe()


@pytest.mark.req("HARD-207")
def test_partial_offload_needs_only_the_offloaded_layers(seven_b: Path) -> None:
    shape = read_model_shape(seven_b)
    whole = replica_need(pool("a", seven_b, ctx_max=4096), shape, RESERVE)
    half = replica_need(pool("a", seven_b, ctx_max=4096, gpu_layers=16), shape, RESERVE)
    assert half.weights == shape.layer_bytes // 2  # 16 of 32 blocks, no output head
    assert half.kv == whole.kv // 2
    assert "16/32 layers" in half.describe()
    # The 3060 cannot hold the whole model, but it can hold half of it.
    with pytest.raises(PlacementError, match="fit no device") as refused:
        plan([pool("a", seven_b, devices=[1], ctx_max=4096)])
    assert "GiB" in str(refused.value) and "gpu_layers" in str(refused.value)  # the remedy
    assert plan([pool("a", seven_b, devices=[1], ctx_max=4096, gpu_layers=16)])["a"] == [(1,)]


@pytest.mark.req("HARD-207")
def test_two_replicas_on_one_card_each_pay_the_engine_reserve(tiny: Path) -> None:
    need = replica_need(pool("p", tiny), read_model_shape(tiny), RESERVE).total()
    assert need > RESERVE
    two = pool("p", tiny, devices=[0], replicas=2)
    assert plan([two], [Device(0, "card", 2 * need)])["p"] == [(0,), (0,)]
    with pytest.raises(PlacementError, match="placed 1 of 2 replicas"):
        plan([two], [Device(0, "card", 2 * need - 1)])  # one reserve short


@pytest.mark.req("HOME-1004", "HOME-1001", "ORCH-3011", "OC-CORE-1012")
def test_a_model_that_fits_only_the_big_card_never_lands_on_the_small_one(
    seven_b: Path, tiny: Path
) -> None:
    big = pool("big", seven_b, devices=[0, 1], ctx_max=4096, slots=1)  # 14.6 GiB per replica
    chat = pool("chat", tiny, devices=[0, 1])
    placed = plan([chat, big])
    assert placed["big"] == [(0,)]
    # No pinning: the tiny model gets a replica on each card, the big one only the 3090.
    assert sorted(placed["chat"]) == [(0,), (1,)]


@pytest.mark.req("HOME-1001", "ORCH-3011")
def test_numbered_replicas_go_to_the_most_free_vram_and_stack_when_they_fit(tiny: Path) -> None:
    placed = plan([pool("p", tiny, devices=[1, 0], replicas=3)])
    assert placed["p"] == [(0,), (0,), (0,)]  # 23.5 GiB free beats 11.5 each time
    assert plan([pool("q", tiny, devices=[1], replicas=2)])["q"] == [(1,), (1,)]


@pytest.mark.req("HOME-1001", "ORCH-3011")
def test_a_model_that_fits_nowhere_is_a_start_up_error_naming_the_numbers(seven_b: Path) -> None:
    too_big = pool("huge", seven_b, devices=[1], ctx_max=4096, slots=1)
    with pytest.raises(PlacementError) as error:
        plan([too_big])
    message = str(error.value)
    need = replica_need(too_big, read_model_shape(seven_b), RESERVE)
    assert "pool 'huge'" in message and f"needs {gib(need.total())} per replica" in message
    assert f"weights {gib(need.weights)} (all layers) + KV cache 2.00 GiB for ctx 4096" in message
    assert "GPU1 RTX 3060 12.00 GiB free" in message


@pytest.mark.req("HOME-1001")
def test_vram_is_shared_between_pools_biggest_first(seven_b: Path) -> None:
    first = pool("a", seven_b, devices=[0], ctx_max=4096, slots=1)
    second = pool("b", seven_b, devices=[0], ctx_max=4096, slots=1)
    left = 24 * GIB - replica_need(first, read_model_shape(seven_b), RESERVE).total()
    with pytest.raises(PlacementError, match=rf"pool 'b'.*GPU0 RTX 3090 {gib(left)} free"):
        plan([first, second])


@pytest.mark.req("ORCH-3012")
def test_a_model_is_split_only_with_explicit_ratios(seven_b: Path) -> None:
    # 3 slots x 8192 ctx: 24.55 GiB fits neither card whole.
    config = {"devices": [0, 1], "ctx_max": 8192, "slots": 3}
    with pytest.raises(PlacementError, match="fit no device"):
        plan([pool("s", seven_b, **config)])
    split = plan([pool("s", seven_b, tensor_split=[2, 1], **config)])
    assert split["s"] == [(0, 1)]
    need = replica_need(pool("t", seven_b, **config), read_model_shape(seven_b), RESERVE)
    on_gpu1 = -(-need.total(devices=0) * 2 // 3) + RESERVE  # its share, plus its own reserve
    with pytest.raises(PlacementError, match=re.escape(f"puts {gib(on_gpu1)} on GPU1")):
        plan([pool("t", seven_b, tensor_split=[1, 2], **config)])


@pytest.mark.req("OC-POOL-3020", "ORCH-3011")
def test_a_device_outside_the_inventory_is_named(tiny: Path) -> None:
    with pytest.raises(
        PlacementError,
        match=re.escape(
            "device 2 is not in the declared inventory (devices: 0 (RTX 3090), 1 (RTX 3060))"
        ),
    ):
        plan([pool("p", tiny, devices=[0, 2])])


@pytest.mark.req("OC-POOL-3020")
def test_cpu_and_remote_pools_need_no_device(tiny: Path) -> None:
    cpu = pool("cpu", tiny, replicas=2)
    remote = PoolConfig.model_validate(
        {"id": "far", "model_ref": "m/far", "endpoints": [{"url": "http://10.0.0.2:8080"}]}
    )
    placed = plan([cpu, remote], devices=[])
    assert placed == {"cpu": [(), ()], "far": [()]}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"devices": [0, 1], "tensor_split": [1.0]},
            "tensor_split has 1 ratios but the mask has 2",
        ),
        ({"devices": [0], "tensor_split": [1.0]}, "give one ratio per device"),
        ({"devices": [0, 1], "tensor_split": [1.0, 0.0]}, "ratios must be > 0"),
        ({"devices": [0, 0]}, "lists an index twice"),
        ({"replicas": 0}, "replicas must be 1..16"),
        ({"engine": "vllm"}, "give endpoints for vllm"),
        ({"endpoints": [{"url": "http://h:1"}], "devices": [0]}, "drop devices"),
        ({"endpoints": [{"url": "ftp://h"}]}, "String should match pattern"),
        ({"endpoints": [{"url": "http://h:1/v1"}]}, "without a path"),
        ({"engine": "triton", "endpoints": [{"url": "http://h:1"}]}, "needs model"),
    ],
)
@pytest.mark.req("OC-POOL-3020", "ORCH-3012")
def test_inconsistent_placement_settings_are_config_errors(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PoolConfig.model_validate({"id": "p", "model_ref": "llorch/tiny-llama", **fields})
