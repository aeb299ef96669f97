"""Each replica's real llama-server, started for its devices: argv and environment as placed.

The GPUs are declared (this machine has none), so the engines are the packaged CPU build
running under the flags and CUDA_VISIBLE_DEVICES placement chose; read here from the spawned
processes' ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ``. The same engines then decode.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import MIB
from orchestratord.models.gguf_shape import read_model_shape
from orchestratord.placement.fit import replica_need
from steps.placement import example_config
from xtask.fakes.live_server import LiveServer, live_server, task_body

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    config = example_config("mixed-gpus-declared.yaml", tmp_path_factory.mktemp("mixed"))
    # Log verbosity 4 makes llama.cpp print the KV cache it allocated (checked below).
    config["pools"][0]["llamacpp"] = {"extra_args": ["-lv", "4"]}
    config["pools"].append(
        {
            "id": "split",
            "model_ref": "llorch/tiny-llama",
            "devices": [0, 1],
            "tensor_split": [3, 1],
            "slots": 1,
            "ctx_max": 1024,
        }
    )
    with live_server(config) as server:
        yield server


def engines(server: LiveServer) -> dict[str, psutil.Process]:
    """Spawned engines by replica id (from the Unix socket each one listens on)."""
    found = {}
    for child in psutil.Process(server.pid).children():
        cmdline = child.cmdline()
        socket = Path(cmdline[cmdline.index("--host") + 1])
        found[socket.stem] = child
    return found


def environ(process: psutil.Process) -> dict[str, str]:
    raw = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    pairs = (item.decode().split("=", 1) for item in raw if b"=" in item)
    return dict(pairs)


def flag(cmdline: list[str], name: str) -> str | None:
    return cmdline[cmdline.index(name) + 1] if name in cmdline else None


@pytest.mark.req("HOME-1001", "HOME-1004", "ORCH-3011", "OC-CORE-1012")
def test_each_replica_engine_sees_only_its_own_card(mixed: LiveServer) -> None:
    spawned = engines(mixed)
    assert sorted(spawned) == ["chat-r0", "chat-r1", "split-r0"]
    for replica_id, device in (("chat-r0", "0"), ("chat-r1", "1")):
        cmdline, env = spawned[replica_id].cmdline(), environ(spawned[replica_id])
        assert env["CUDA_VISIBLE_DEVICES"] == device
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        assert flag(cmdline, "--n-gpu-layers") == "999"
        assert flag(cmdline, "--main-gpu") == "0"  # the first (only) visible card
        assert flag(cmdline, "--split-mode") == "none"
        assert "--tensor-split" not in cmdline


@pytest.mark.req("ORCH-3012")
def test_a_split_replica_gets_both_cards_and_the_explicit_ratios(mixed: LiveServer) -> None:
    engine = engines(mixed)["split-r0"]
    cmdline = engine.cmdline()
    assert environ(engine)["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert flag(cmdline, "--split-mode") == "layer"
    assert flag(cmdline, "--tensor-split") == "3,1"


@pytest.mark.req("HOME-1001", "OC-CORE-1011")
def test_every_replica_decodes_and_reports_where_it_ran(mixed: LiveServer) -> None:
    with httpx.Client(base_url=mixed.url, headers=mixed.auth, timeout=30) as client:
        sets = {s["id"]: s for s in client.get("/v1/replicasets").json()}
        assert sets["split"]["replicas"][0]["tensor_split"] == [3.0, 1.0]
        assert [d["index"] for d in sets["split"]["replicas"][0]["devices"]] == [0, 1]
        for _ in range(4):
            body = task_body(max_tokens=4)
            assert client.post("/v1/tasks", json=body).status_code == 202
            stream = client.get(f"/v1/tasks/{body['task_id']}/stream").text
            assert "event: end" in stream
            started = re.search(r'"replica_id":"([^"]+)"', stream)
            assert started is not None and started.group(1).startswith(("chat-r", "split-r"))


@pytest.mark.req("HOME-1001", "HARD-207")
def test_the_kv_estimate_matches_what_the_engine_allocated(
    mixed: LiveServer, tmp_path: Path
) -> None:
    """Placement's KV figure for a replica equals llama.cpp's own report in its log, and the
    VRAM placed for it is the whole estimate: weights, KV, compute and the reserve."""
    with httpx.Client(base_url=mixed.url, headers=mixed.auth, timeout=30) as client:
        sets = {s["id"]: s for s in client.get("/v1/replicasets").json()}
    placed = sets["chat"]["replicas"][0]["devices"][0]["vram_bytes"]
    (line,) = [line for line in mixed.output if "replica chat-r0 on GPU0: Ready" in line]
    log = Path(line.split("engine-log=")[1].strip()).read_text()
    match = re.search(r"llama_kv_cache: size = +([\d.]+) MiB", log)
    assert match is not None, log[-2000:]
    kv_bytes = float(match.group(1)) * MIB
    model = Path(flag(engines(mixed)["chat-r0"].cmdline(), "--model") or "")
    config = example_config("mixed-gpus-declared.yaml", tmp_path)
    chat = PoolConfig.model_validate({**config["pools"][0], "model_path": str(model)})
    need = replica_need(chat, read_model_shape(model), config["gpus"]["reserve_mb"] * MIB)
    assert abs(need.kv - kv_bytes) <= 0.01 * MIB  # the log rounds to 1/100 MiB
    assert placed == need.total()
