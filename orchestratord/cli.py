"""``orchestratord serve``: load config, resolve the token, preload pools, serve with uvicorn."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import logging.handlers
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
import yaml
from pydantic import ValidationError

from orchestratord.app import Orchestrator
from orchestratord.auth import ApiToken, resolve_token
from orchestratord.config import Config, load_config
from orchestratord.connections import bounded_protocol
from orchestratord.devices.inventory import MIB
from orchestratord.devices.nvml import NvmlUnavailable
from orchestratord.logdrain import LogDrain
from orchestratord.logs import TEXT_FORMAT, CorrelationFilter, JsonFormatter
from orchestratord.placement.plan import PlacementError
from orchestratord.plan_cli import run_plan
from orchestratord.version import API_VERSION, __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestratord", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API (embedded default without --config)")
    serve.add_argument("--config", type=Path, help="YAML config file")
    _plan_parser(sub)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (0 picks a free one)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object per line"
    )
    return parser


def _plan_parser(sub: Any) -> None:
    plan = sub.add_parser(
        "plan", help="show where each replica would run and its engine command, start nothing"
    )
    plan.add_argument("--config", type=Path, help="YAML config file")
    plan.add_argument("--json", action="store_true", help="machine-readable output")


def _with_overrides(config: Config, host: str | None, port: int | None) -> Config:
    update: dict[str, object] = {}
    if host is not None:
        update["host"] = host
    if port is not None:
        update["port"] = port
    if not update:
        return config
    server = type(config.server).model_validate({**config.server.model_dump(), **update})
    return config.model_copy(update={"server": server})


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it every keep-alive response waits ~40 ms on a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    # Left non-inheritable (Python's default): no engine we spawn may hold our listener.
    return sock


def _is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def banner(orch: Orchestrator, url: str, token: ApiToken) -> str:
    lines = [f"orchestratord {__version__} (api {API_VERSION}) listening on {url}"]
    if token.origin == "env":
        lines.append("  token: from LLORCH_API_TOKEN")
    elif token.origin == "config":
        lines.append("  token: from the config file (auth.token)")
    else:
        made = "generated" if token.origin == "generated" else "existing"
        lines.append(f"  token file: {token.path} ({made}, mode 0600)")
    inventory = orch.inventory
    if inventory is not None and inventory.devices():
        cards = ", ".join(
            f"GPU{d.index} {d.name} {d.vram_total_bytes // MIB} MiB" for d in inventory.devices()
        )
        lines.append(f"  gpus ({inventory.source}): {cards}")
        if inventory.source == "declared":
            lines.append(
                "  declared inventory: placement and engine flags as for these GPUs; the "
                "engines run wherever this llama-server build runs (a CPU build: the CPU)"
            )
    for pool in orch.pools.values():
        if pool.residency.on_demand and not pool.replicas:
            keep = pool.residency.keep_alive_s
            lines.append(
                f"  pool {pool.id}: on-demand, not loaded (loads on its first task, unloads "
                f"after {keep:g} s idle) engine={pool.config.engine.value} "
                f"model={pool.config.model_ref} slots={pool.config.slots} ctx_max={pool.ctx_max}"
            )
            continue
        state = "Ready" if pool.ready else f"NOT ready ({pool.last_error})"
        engine = f"{pool.engine} ({pool.engine_version})"
        detail = f"engine={engine} model={pool.config.model_ref} slots={pool.slots_total}"
        lines.append(f"  pool {pool.id}: {state} {detail} ctx_max={pool.ctx_max}")
        for replica in pool.replicas:
            where = replica.spec.remote or (
                "+".join(f"GPU{i}" for i in replica.devices) if replica.devices else "CPU"
            )
            rstate = "Ready" if replica.ready else f"NOT ready ({replica.last_error})"
            line = f"    replica {replica.id} on {where}: {rstate}"
            if replica.process is not None:
                line += f" engine-log={replica.process.log_path}"
            lines.append(line)
    auth = (
        '"Authorization: Bearer $LLORCH_API_TOKEN"'
        if token.path is None
        else f'"Authorization: Bearer $(cat {token.path})"'
    )
    lines.append(f"  try: curl -H {auth} {url}/v1/capabilities")
    return "\n".join(lines)


class _Server(uvicorn.Server):
    """uvicorn, told about SIGTERM/SIGINT before it starts draining connections, so the
    orchestrator can stop admission and end open streams with a terminal frame (an SSE
    connection would otherwise hold uvicorn's graceful wait until its timeout)."""

    def __init__(self, config: uvicorn.Config, orch: Orchestrator) -> None:
        super().__init__(config)
        self.orch = orch
        self.grace_s = orch.config.server.shutdown_grace_ms / 1000

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        loop = self.orch.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.orch.begin_shutdown, self.grace_s)
        super().handle_exit(sig, frame)


def _describe_config_error(exc: ValidationError) -> str:
    # Never the offending value: it may be a secret (auth.token).
    lines = [f"invalid config ({exc.error_count()} problem(s)):"]
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        lines.append(f"  {where}: {error['msg']}")
    return "\n".join(lines)


def serve(args: argparse.Namespace) -> int:
    listener = _log_off_the_event_loop(args.log_level.upper(), args.log_format)
    listener.start()
    try:
        return _serve(args)
    finally:
        listener.stop()


def _log_off_the_event_loop(level: str, log_format: str = "text") -> LogDrain:
    """Log records are queued by the event loop and written by a thread: a slow stderr (a
    full pipe, a terminal) never stalls request handling."""
    output = logging.StreamHandler()
    output.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    drain = LogDrain(output)
    root = logging.getLogger()
    queued = logging.handlers.QueueHandler(drain.records)
    queued.addFilter(CorrelationFilter())  # stamped where the record is made
    root.handlers[:] = [queued]
    root.setLevel(level)
    # The GGUF writer narrates every file it writes; only its problems matter here.
    logging.getLogger("gguf").setLevel(logging.WARNING)
    return drain


def _serve(args: argparse.Namespace) -> int:
    try:
        config = _with_overrides(load_config(args.config), args.host, args.port)
    except ValidationError as exc:
        print(f"orchestratord: {_describe_config_error(exc)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"orchestratord: cannot read config: {exc}", file=sys.stderr)
        return 2
    host = config.server.host
    if not _is_loopback(host):
        logging.getLogger("orchestratord").warning(
            "binding %s: the API is reachable from other machines (HOME-101)", host
        )
    try:
        token = resolve_token(config)
    except (OSError, ValueError) as exc:
        print(f"orchestratord: API token: {exc}", file=sys.stderr)
        return 2
    sock = _bind(host, config.server.port)
    bound_port = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"

    def on_started(orch: Orchestrator) -> None:
        # Everything loaded at start-up lives as long as the process: keep it out of the
        # collector's way, so a full collection costs what the tasks in flight cost.
        gc.freeze()
        print(banner(orch, url, token), flush=True)

    try:
        orch = Orchestrator(config, token=token.value, on_started=on_started)
    except (PlacementError, NvmlUnavailable) as exc:
        sock.close()
        print(f"orchestratord: cannot place the pools: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a setting only checkable at start (outbound.hook)
        sock.close()
        print(f"orchestratord: {exc}", file=sys.stderr)
        return 2
    grace_s = config.server.shutdown_grace_ms / 1000
    server = _Server(
        uvicorn.Config(
            orch.app,
            lifespan="on",
            http=bounded_protocol(orch.config.server),
            log_level=args.log_level,
            access_log=args.log_level == "debug",
            # Streams end by themselves once the grace is over; this is only a backstop.
            timeout_graceful_shutdown=int(grace_s) + 15,
        ),
        orch,
    )
    server.run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "plan":
        return run_plan(args.config, args.json)
    return 2


if __name__ == "__main__":
    sys.exit(main())
