"""Start a real ``orchestratord`` (fronting a real ``llama-server``) as a child process.

Used by the end-to-end tests and the benchmarks: the server runs exactly as a user starts it
(``python -m orchestratord serve --config ...``), on loopback, on a free port, with its engine
on a known port so a test can also look at the engine directly (``/slots``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from orchestratord.models.tiny_gguf import TINY_MODEL_REF
from xtask.loop import coverage_map

_LISTENING = re.compile(r"listening on (http://\S+)")
TEST_TOKEN = "live-test-token-0123456789abcdef"


def wait_until(check: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll for an event a test caused, with a generous bound (a loaded machine is slow, not
    wrong); when it runs out, the assertion says what was waited for."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"waited {timeout_s:g} s for {what}"
        time.sleep(0.02)


def task_body(**overrides: Any) -> dict[str, Any]:
    """A valid completion task for the live server's default pool; override any field."""
    body: dict[str, Any] = {
        "task_id": str(uuid.uuid4()),
        "session_id": str(uuid.uuid4()),
        "workload": "completion",
        "model_ref": TINY_MODEL_REF,
        "engine": "llamacpp",
        "ctx": 2048,
        "priority": "interactive",
        "seed": 42,
        "prompt": "Once upon a time",
        "max_tokens": 16,
        "deadline_ms": 60_000,
    }
    body.update(overrides)
    return body


@dataclass
class LiveServer:
    url: str
    token: str
    engine_socket: Path  # the first pool's first replica listens here (a Unix socket)
    pid: int
    output: list[str]
    workdir: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    engine_url = "http://localhost"

    def engine_client(self, timeout_s: float = 5.0) -> httpx.Client:
        """A client for the engine itself, past orchestratord (its Unix socket)."""
        transport = httpx.HTTPTransport(uds=str(self.engine_socket))
        return httpx.Client(base_url=self.engine_url, transport=transport, timeout=timeout_s)

    def engine_session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """An aiohttp session for the engine itself (benchmarks' direct path)."""
        connector = aiohttp.UnixConnector(path=str(self.engine_socket), limit=64)
        return aiohttp.ClientSession(connector=connector, **kwargs)

    def engine_busy_slots(self) -> list[int]:
        """The slot ids llama-server's own ``/slots`` says are decoding, over every engine of
        the first pool that is listening now (a reload gives the pool new engines)."""
        busy: list[int] = []
        for socket in sorted(self.engine_socket.parent.glob(self.engine_socket.stem + "*.sock")):
            transport = httpx.HTTPTransport(uds=str(socket))
            try:
                with httpx.Client(
                    base_url=self.engine_url, transport=transport, timeout=5.0
                ) as engine:
                    slots = engine.get("/slots").json()
            except httpx.TransportError:
                continue  # an engine a reload retired
            if not isinstance(slots, list):
                continue  # {"error": ...}: an engine still loading (a reload's), decoding nothing
            busy += [s["id"] for s in slots if s["is_processing"]]
        return busy


SHARED_CPU_ENV = "LLORCH_SHARED_CPU"


def default_live_config(
    workdir: Path, server: dict[str, Any] | None = None, **pool: Any
) -> dict[str, Any]:
    pool_config: dict[str, Any] = {
        "id": "default",
        "engine": "llamacpp",
        "model_ref": TINY_MODEL_REF,
        "slots": 2,
        "ctx_max": 2048,
        "queue": {"capacity": 4, "full_policy": "reject"},
    }
    if os.environ.get(SHARED_CPU_ENV):
        # Many servers share few cores in a test run: one engine thread that sleeps while
        # idle, instead of every core busy-polling for work (llama.cpp's default).
        pool_config["llamacpp"] = {"threads": 1, "extra_args": ["--poll", "0"]}
    pool_config.update(pool)
    return {
        "server": {"host": "127.0.0.1", "port": 0, "heartbeat_ms": 200, **(server or {})},
        "state_dir": str(workdir / "state"),
        "sampler_profiles": {
            "v1": {},
            # Decodes exactly max_tokens: benchmarks and exact-length checks need it.
            "fixed-length": {"ignore_eos": True},
        },
        "pools": [pool_config],
    }


@contextmanager
def live_server(
    config: dict[str, Any] | None = None,
    *,
    startup_timeout_s: float = 180.0,
    server: dict[str, Any] | None = None,
    serve_args: tuple[str, ...] = (),
    source: Path | None = None,
    **pool: Any,
) -> Iterator[LiveServer]:
    """A real orchestratord on loopback. ``source``: the checkout whose ``orchestratord``
    package to run (a past commit's worktree, for benchmarks against our own past); by
    default, the installed one."""
    with tempfile.TemporaryDirectory(prefix="llorch-live-") as tmp:
        workdir = Path(tmp)
        config = config or default_live_config(workdir, server, **pool)
        config_path = workdir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {**os.environ, "LLORCH_API_TOKEN": TEST_TOKEN, "PYTHONUNBUFFERED": "1"}
        if source is not None:  # `python -m` puts the working directory first on the path
            env["PYTHONPATH"] = str(source)
        command = [sys.executable, "-m", "orchestratord", "serve", "--config", str(config_path)]
        proc = subprocess.Popen(
            coverage_map.server_command([*command, *serve_args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            cwd=source,
        )
        output: list[str] = []
        found = threading.Event()
        url_box: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line.rstrip("\n"))
                match = _LISTENING.search(line)
                if match and not url_box:
                    url_box.append(match.group(1))
                    found.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not found.wait(0.1):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("orchestratord did not start:\n" + "\n".join(output[-40:]))
            # The banner is printed as the lifespan finishes; uvicorn accepts right after.
            time.sleep(0.05)
            yield LiveServer(
                url=url_box[0],
                token=TEST_TOKEN,
                engine_socket=Path(config["state_dir"]) / "engines" / "default-r0.sock",
                pid=proc.pid,
                output=output,
                workdir=workdir,
            )
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
