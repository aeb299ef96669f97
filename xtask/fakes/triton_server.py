"""Start the real Triton server (``engines/triton_tiny.py`` in ``.venv-triton``) for tests.

Loopback ports only; ready means the model itself answers ready (Triton's server-level ready
comes before the model is loaded). Stopped with SIGTERM (Triton takes a few seconds), then
killed if it lingers.
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from orchestratord.replicas.engine_process import free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
MODEL = "tiny-words"


@dataclass(frozen=True)
class TritonServer:
    url: str
    metrics_url: str
    model: str = MODEL


def _environment(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    # The Python backend's stub must load this interpreter's libpython.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env["PYTRITON_HOME"] = home
    return env


@contextmanager
def triton_server(startup_timeout_s: float = 120.0) -> Iterator[TritonServer]:
    if not TRITON_PYTHON.exists():
        raise RuntimeError(f"{TRITON_PYTHON} is missing: run scripts/install.sh")
    http_port, metrics_port = free_loopback_port(), free_loopback_port()
    with tempfile.TemporaryDirectory(prefix="llorch-pytriton-") as home:
        log_path = Path(home) / "triton.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(TRITON_PYTHON), str(ROOT / "engines" / "triton_tiny.py"),
                 "--http-port", str(http_port), "--metrics-port", str(metrics_port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_environment(home),
            )  # fmt: skip
        url = f"http://127.0.0.1:{http_port}"
        try:
            deadline = time.monotonic() + startup_timeout_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"Triton did not become ready:\n{tail}")
                try:
                    ready = httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=1.0)
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            yield TritonServer(url, f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
