"""Nothing blocking runs on the event loop while serving (HARD-204): with an NVML call or a
GGUF parse held up in a stand-in, a task's stream still runs to its end meanwhile.

Each stand-in blocks until the test has seen a whole stream complete (or 5 s pass). Run on
the event loop, it would freeze the loop, the stream could not complete, and the stand-in
would be released by its timeout instead: that is what the assertions tell apart.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from orchestratord.catalog import catalog as catalog_module
from orchestratord.catalog import pull as pull_module
from orchestratord.devices.open import open_inventory
from orchestratord.models.tiny_gguf import ensure_tiny_model
from orchestratord.pools import pool as pool_module
from orchestratord.store.db import Store
from tests.unit.conftest import AUTH, collect_stream, make_config, task_body
from tests.unit.nvml_standin import Card, FakeNvml
from tests.unit.test_catalog import SIGNED, model_file, register
from tests.unit.test_pull import LOOPBACK, model_server

GIB = 1024**3


class Hold:
    """A blocking call's gate: ``entered`` once it is held, opened by ``release``."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        self.threads: set[int] = set()
        self.held = False  # armed by the test once the server is up

    def arm(self) -> None:
        self.held = True

    def block(self) -> None:
        if not self.held:
            return
        self.threads.add(threading.get_ident())
        if self.held:
            self.entered.set()
            if not self.released.wait(5.0):
                self.held = False  # nobody released it: it was holding the loop up
                raise AssertionError("held for 5 s: the event loop never got to release it")

    def release(self) -> None:
        self.held = False
        self.released.set()


class SlowNvml(FakeNvml):
    def __init__(self, hold: Hold) -> None:
        super().__init__([Card("NVIDIA GeForce RTX 3090", 24 * GIB, used=GIB)])
        self.hold = hold

    def nvmlDeviceGetMemoryInfo(self, card: Card) -> SimpleNamespace:
        self.hold.block()
        return super().nvmlDeviceGetMemoryInfo(card)


async def stream_one(conductor: Any) -> list[Any]:
    body = task_body(session_id=str(uuid.uuid4()))
    admitted = await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
    assert admitted.status_code == 202
    return await collect_stream(conductor, body["task_id"])


async def wait_entered(hold: Hold) -> None:
    while not hold.entered.is_set():  # noqa: ASYNC110 - a thread's event, polled from the loop
        await asyncio.sleep(0.01)


@pytest.mark.req("HARD-204")
async def test_streams_flow_while_an_nvml_read_is_held_up(
    conductor_for: Any, tmp_path: Path
) -> None:
    hold = Hold()
    config = make_config(
        tmp_path,
        model_path=ensure_tiny_model(tmp_path / "models"),
        devices=[0],
        gpus={"source": "nvml"},
        server={"device_monitor_interval_ms": 50},
    )
    inventory = open_inventory(config, nvml=SlowNvml(hold))
    assert inventory is not None
    async with conductor_for(config=config, inventory=inventory) as (_, conductor):
        hold.arm()  # from now on, while serving, every memory read is held up
        async with asyncio.timeout(10):
            await wait_entered(hold)  # the device monitor is inside a held NVML call
        frames = await stream_one(conductor)
        hold.release()
    assert frames[-1][0] == "end"
    assert threading.get_ident() not in hold.threads


@pytest.mark.req("HARD-204", "HOME-401")
async def test_streams_flow_while_a_session_read_parses_the_model(
    conductor_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = Hold()
    real = pool_module.read_model_shape

    def slow_read(path: Path) -> Any:
        hold.block()
        return real(path)

    monkeypatch.setattr(pool_module, "read_model_shape", slow_read)
    async with conductor_for() as (_, conductor):
        session = str(uuid.uuid4())
        body = task_body(session_id=session)
        await conductor.simulate_post("/v1/tasks", json=body, headers=AUTH)
        await collect_stream(conductor, body["task_id"])
        hold.arm()
        reading = asyncio.create_task(
            conductor.simulate_get(f"/v1/sessions/{session}", headers=AUTH)
        )
        async with asyncio.timeout(10):
            await wait_entered(hold)
        frames = await stream_one(conductor)
        hold.release()
        info = await reading
    assert frames[-1][0] == "end"
    assert info.status_code == 200
    assert threading.get_ident() not in hold.threads


def held_up(hold: Hold, real: Any) -> Any:
    def slow(*args: Any, **kwargs: Any) -> Any:
        hold.block()
        return real(*args, **kwargs)

    return slow


@pytest.mark.parametrize("call", ["sqlite", "hashing", "fsync"])
@pytest.mark.req("HARD-204")
async def test_streams_flow_while_a_store_write_a_digest_or_an_fsync_is_held_up(
    conductor_for: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """A catalog registration (a SQLite transaction), a verification (the file's digest) and
    a pull (the ``.part`` file's fsync), each held up in its blocking call."""
    hold = Hold()
    path, digest = model_file(tmp_path)
    target = {
        "sqlite": (Store, "_transaction"),
        "hashing": (catalog_module, "sha256_file"),
        "fsync": (pull_module, "_sync"),
    }[call]
    monkeypatch.setattr(*target, held_up(hold, getattr(*target)))
    async with (
        model_server(path.read_bytes()) as (url, _),
        conductor_for(outbound=LOOPBACK) as (_, conductor),
    ):
        if call == "hashing":
            await register(conductor, id="m", digest=digest, source_url=path.as_uri(), **SIGNED)
        if call == "fsync":
            await register(
                conductor, id="m", digest=digest, source_url=f"{url}/good.gguf", **SIGNED
            )
        hold.arm()
        action = {
            "sqlite": lambda: register(conductor, id="m", digest=digest),
            "hashing": lambda: conductor.simulate_post("/v1/catalog/models/m/verify", headers=AUTH),
            "fsync": lambda: conductor.simulate_post("/v1/catalog/models/m/pull", headers=AUTH),
        }[call]
        acting = asyncio.create_task(action())
        async with asyncio.timeout(10):
            await wait_entered(hold)
        frames = await stream_one(conductor)
        hold.release()
        answered = await acting
    assert frames[-1][0] == "end"
    assert answered.status_code in (201, 202), answered.json
    assert threading.get_ident() not in hold.threads
