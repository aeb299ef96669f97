"""``llorch``: the command line for orchestratord, built on :mod:`cli_client.client`.

    llorch run "Once upon a time"            stream one prompt (Ctrl-C cancels it)
    llorch run --batch prompts.txt           many prompts at a safe concurrency
    llorch caps | pools ls | pools health ID | pools drain ID | pools resume ID
    llorch ps | stop MODEL                   what is loaded where; unload a model now
    llorch pools reload ID MODEL [--wait]
    llorch models add ID --digest sha256:... [--source-url URL] | pull | verify | retire | ls
    llorch artifacts put FILE --kind plan | get ID | ls [--tag T]
    llorch tasks cancel ID

Errors print the envelope's message, code and correlation ID and exit non-zero; no
tracebacks for mistakes a user can make. Every wait is visible and bounded: a full queue or
an unavailable pool is retried saying why (``--max-wait-s``), ``--wait`` on a reload, a pull
and a verification give up with the reason (``--timeout-s``, ``--stall-s``). To a loopback
server llorch ignores proxy variables, so the token never goes through a proxy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cli_client.client import OrchClient, OrchError
from cli_client.run import (
    MAX_WAIT_S,
    BatchInterrupted,
    Interrupted,
    Outcome,
    RunOptions,
    read_batch,
    run_batch,
    run_one,
)
from cli_client.settings import Settings, SettingsError, resolve

err = Console(stderr=True, highlight=False, soft_wrap=True)
POLL_S = 0.25


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llorch", description="Command line for orchestratord.")
    parser.add_argument(
        "--url", help="orchestratord URL (default: LLORCH_URL or the server config)"
    )
    parser.add_argument("--config", type=Path, help="the server's config file, for its defaults")
    parser.add_argument("--token-file", type=Path, help="API token file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a prompt (or --batch FILE) and stream the tokens")
    run.add_argument("prompt", nargs="?")
    run.add_argument("--batch", type=Path, help="a file of prompts, one per line ('-': stdin)")
    run.add_argument(
        "--concurrency", type=int, help="batch concurrency (default: from capabilities)"
    )
    run.add_argument("--max-tokens", type=int, default=64)
    run.add_argument("--seed", type=int)
    run.add_argument("--priority", choices=["interactive", "batch"], default="interactive")
    run.add_argument(
        "-m",
        "--model",
        dest="model_ref",
        help="model_ref (default: a Ready pool's, else the first pool's)",
    )
    run.add_argument("--engine")
    run.add_argument("--ctx", type=int)
    run.add_argument("--profile", help="sampler_profile_version")
    run.add_argument("--deadline-ms", type=int, default=300_000)
    run.add_argument("--session", help="continue this session_id (default: a new session)")
    run.add_argument(
        "--max-wait-s",
        type=float,
        default=MAX_WAIT_S,
        help="give up after waiting this long for a full queue or an unavailable pool",
    )

    sub.add_parser("caps", help="what the server offers")
    sub.add_parser("ps", help="which models are loaded where, and when they unload")
    sub.add_parser("stop", help="unload a model's on-demand pool now").add_argument(
        "model", help="a model_ref or a pool id"
    )
    _control_parsers(sub)
    return parser


def _control_parsers(sub: Any) -> None:
    tasks = sub.add_parser("tasks").add_subparsers(dest="action", required=True)
    tasks.add_parser("cancel").add_argument("task_id")
    sessions = sub.add_parser("sessions").add_subparsers(dest="action", required=True)
    sessions.add_parser("show", help="TTL, turns, KV warmth and where its cache is").add_argument(
        "session_id"
    )
    sessions.add_parser("end", help="end the session and drop its KV cache").add_argument(
        "session_id"
    )

    pools = sub.add_parser("pools").add_subparsers(dest="action", required=True)
    pools.add_parser("ls", help="replica sets with their load")
    pools.add_parser("health").add_argument("pool_id")
    drain = pools.add_parser("drain")
    drain.add_argument("pool_id")
    drain.add_argument("--deadline-ms", type=int, default=60_000)
    pools.add_parser("resume").add_argument("pool_id")
    reload = pools.add_parser("reload")
    reload.add_argument("pool_id")
    reload.add_argument("model_ref")
    reload.add_argument("--wait", action="store_true", help="until switched or rolled back")
    reload.add_argument("--timeout-s", type=float, default=600.0, help="how long --wait waits")
    _model_parsers(sub)
    _artifact_parsers(sub)


def _model_parsers(sub: Any) -> None:
    models = sub.add_parser("models").add_subparsers(dest="action", required=True)
    add = models.add_parser("add")
    add.add_argument("model_id")
    add.add_argument("--digest", required=True, help="sha256:<hex> of the file")
    add.add_argument("--source-url", help="https://, http://, file:// or hf://org/repo/file")
    add.add_argument("--tag", action="append", default=[])
    add.add_argument("--trust-policy", choices=["permissive", "strict"])
    pull = models.add_parser("pull")
    pull.add_argument("model_id")
    pull.add_argument(
        "--stall-s", type=float, default=120.0, help="give up when no byte arrives for this long"
    )
    verify = models.add_parser("verify")
    verify.add_argument("model_id")
    verify.add_argument("--timeout-s", type=float, default=3600.0)
    retire = models.add_parser("retire")
    retire.add_argument("model_id")
    retire.add_argument("--deadline-ms", type=int, default=60_000)
    state = models.add_parser("state")
    state.add_argument("model_id")
    state.add_argument("state", choices=["Draft", "Active", "Canary", "Deprecated", "Retired"])
    state.add_argument("--deadline-ms", type=int, default=60_000)
    ls = models.add_parser("ls")
    ls.add_argument("--tag")
    ls.add_argument("--state")
    models.add_parser("get").add_argument("model_id")


def _artifact_parsers(sub: Any) -> None:
    artifacts = sub.add_parser("artifacts").add_subparsers(dest="action", required=True)
    put = artifacts.add_parser("put")
    put.add_argument("file", type=Path, help="a JSON object file ('-': stdin)")
    put.add_argument("--kind", choices=["plan", "summary", "diff", "trace", "other"], required=True)
    put.add_argument("--tag", action="append", default=[])
    put.add_argument("--parent")
    artifacts.add_parser("get").add_argument("artifact_id")
    artifacts.add_parser("ls").add_argument("--tag")


def show(args: argparse.Namespace, value: Any, text: Callable[[Any], str] | None = None) -> None:
    if args.json or text is None:
        print(json.dumps(value, indent=2))
    else:
        print(text(value))


# --- run ---------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, settings: Settings, client: OrchClient) -> int:
    options = RunOptions(
        max_tokens=args.max_tokens,
        seed=args.seed,
        priority=args.priority,
        model_ref=args.model_ref,
        engine=args.engine,
        ctx=args.ctx,
        profile=args.profile,
        deadline_ms=args.deadline_ms,
        session_id=args.session,
        max_wait_s=args.max_wait_s,
    )
    caps = client.capabilities()
    if args.batch is not None:
        return _run_batch(args, settings, options, caps)
    if not args.prompt:
        err.print("llorch run: give a prompt, or --batch FILE")
        return 2
    try:
        outcome = run_one(
            client, args.prompt, options, caps, None if args.json else sys.stdout, notify=_waiting
        )
    except Interrupted as stop:
        if not args.json:
            print(flush=True)
        err.print(f"canceled: {stop.outcome.summary()}")
        return 130
    if args.json:
        print(json.dumps(outcome.as_json()))
    else:
        print(flush=True)
        err.print(outcome.summary(), style="dim" if outcome.error is None else "red")
    return 0 if outcome.error is None else 1


def _waiting(what: str) -> None:
    err.print(what, style="yellow")


def _run_batch(
    args: argparse.Namespace, settings: Settings, options: RunOptions, caps: dict[str, Any]
) -> int:
    prompts = read_batch(args.batch)
    with Progress(
        TextColumn("[bold]batch"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        console=err, disable=args.json,
    ) as progress:  # fmt: skip
        bar = progress.add_task("batch", total=len(prompts))

        def done(outcome: Outcome) -> None:
            progress.advance(bar)

        try:
            outcomes = run_batch(
                lambda: OrchClient(settings.url, settings.token, timeout=600),
                prompts,
                options,
                caps,
                concurrency=args.concurrency,
                progress=done,
                notify=_waiting,
            )
        except BatchInterrupted as stop:
            finished = sum(1 for o in stop.outcomes if o.finish_reason not in (None, "canceled"))
            err.print(
                f"canceled: {finished} of {len(prompts)} prompts had finished; the rest were "
                "not submitted or were canceled on the server"
            )
            return 130
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome.as_json()))
        else:
            print(f"{outcome.prompt!r}: {outcome.summary()}")
    failed = sum(1 for o in outcomes if o.error is not None)
    tokens = sum(o.tokens for o in outcomes)
    err.print(f"{len(outcomes)} prompts, {failed} failed, {tokens} tokens")
    return 0 if failed == 0 else 1


# --- the control plane -------------------------------------------------------------------------


def _pools_table(sets: list[dict[str, Any]]) -> str:
    lines = []
    for s in sets:
        lines.append(
            f"{s['id']:<16} {s['model_ref']:<28} ready={s['ready']!s:<5} load={s['load']:<6} "
            f"slots {s['slots_free']}/{s['slots_total']} free, queue {s['queue_depth']}"
        )
        for r in s["replicas"]:
            where = r["endpoint"] or ("+".join(f"GPU{d['index']}" for d in r["devices"]) or "CPU")
            lines.append(f"  {r['id']:<14} {where:<20} ready={r['ready']!s:<5} load={r['load']}")
    return "\n".join(lines)


class WaitGaveUp(Exception):
    pass


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    seconds = float(value) / 1000
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _bytes(size: int) -> str:
    if not size:
        return "-"
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def ps_table(sets: list[dict[str, Any]]) -> str:
    """``llorch ps``: what is loaded where (RES-204)."""
    lines = [f"{'POOL':<14} {'MODEL':<26} {'MODE':<9} {'STATE':<9} {'WHERE':<10} "
             f"{'VRAM':>9} {'IDLE':>7} {'UNLOADS IN':>10}"]  # fmt: skip
    for s in sets:
        residency = s.get("residency") or {}
        devices = [d for r in s["replicas"] for d in r["devices"]]
        where = "+".join(f"GPU{d['index']}" for d in devices) or ("CPU" if s["replicas"] else "-")
        vram = sum(d["vram_bytes"] for d in devices)
        lines.append(
            f"{s['id']:<14} {s['model_ref']:<26} {residency.get('mode', 'pinned'):<9} "
            f"{residency.get('state', 'loaded'):<9} {where:<10} "
            f"{_bytes(vram):>9} "
            f"{_ms(residency.get('idle_ms')):>7} {_ms(residency.get('unloads_in_ms')):>10}"
        )
    return "\n".join(lines)


def cmd_stop(args: argparse.Namespace, client: OrchClient) -> int:
    sets = client.replica_sets()
    pools = [s["id"] for s in sets if args.model in (s["id"], s["model_ref"])]
    if not pools:
        err.print(f"llorch: no pool serves {args.model!r}")
        return 2
    for pool_id in pools:
        done = client.unload(pool_id)
        show(args, done, lambda d: f"unloading {args.model} (pool {d['pool_id']})")
    return 0


def _wait_reload(client: OrchClient, pool_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reload = client.pool_health(pool_id).get("reload") or {}
        if reload.get("state") in ("switched", "rolled_back"):
            return dict(reload)
        if not reload:  # the server forgot it: it restarted since the reload began
            raise WaitGaveUp(f"pool {pool_id} reports no reload (did orchestratord restart?)")
        time.sleep(POLL_S)
    raise WaitGaveUp(f"the reload of pool {pool_id} did not finish within {timeout_s:g} s")


def _wait_pull(client: OrchClient, model_id: str, quiet: bool, stall_s: float) -> dict[str, Any]:
    with Progress(
        TextColumn(f"[bold]{model_id}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=quiet,
    ) as progress:  # fmt: skip
        bar = progress.add_task("pull", total=None)
        seen, moved_at = -1, time.monotonic()
        while True:
            entry = client.model(model_id)
            pull = entry.get("pull") or {}
            progress.update(bar, completed=pull.get("bytes", 0), total=pull.get("total_bytes"))
            if pull.get("state") in ("done", "failed"):
                return entry
            if pull.get("bytes", 0) != seen:
                seen, moved_at = pull.get("bytes", 0), time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise WaitGaveUp(
                    f"the pull of {model_id} made no progress for {stall_s:g} s "
                    f"(state {pull.get('state')}); it may still finish: llorch models get"
                )
            time.sleep(POLL_S)


def _wait_verify(client: OrchClient, model_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        entry = client.model(model_id)
        if (entry.get("verification") or {}).get("result") != "pending":
            return entry
        time.sleep(POLL_S)
    raise WaitGaveUp(f"the verification of {model_id} did not finish within {timeout_s:g} s")


def _pulled(entry: dict[str, Any]) -> str:
    pull = entry["pull"]
    if pull["state"] == "done":
        return f"{entry['id']}: pulled into {entry['local_path']}"
    return f"{entry['id']}: pull failed: {pull.get('error')}"


def _artifacts_table(items: list[dict[str, Any]]) -> str:
    return "\n".join(f"{a['id']} {a['kind']:<8} {','.join(a['tags'])}" for a in items) or "(none)"


def cmd_pools(args: argparse.Namespace, client: OrchClient) -> int:
    if args.action == "ls":
        show(args, client.replica_sets(), _pools_table)
    elif args.action == "health":
        show(args, client.pool_health(args.pool_id))
    elif args.action == "drain":
        show(args, client.drain(args.pool_id, args.deadline_ms))
    elif args.action == "resume":
        show(args, client.resume(args.pool_id))
    else:
        started = client.reload(args.pool_id, args.model_ref)
        if not args.wait:
            show(args, started)
            return 0
        reload = _wait_reload(client, args.pool_id, args.timeout_s)
        show(args, reload, lambda r: f"reload {r['state']}: {r['from_model_ref']} -> "
             f"{r['to_model_ref']}" + (f" ({r['error']})" if r["error"] else ""))  # fmt: skip
        return 0 if reload["state"] == "switched" else 1
    return 0


def cmd_models(args: argparse.Namespace, client: OrchClient) -> int:
    if args.action == "add":
        entry: dict[str, Any] = {"id": args.model_id, "digest": args.digest, "tags": args.tag}
        if args.source_url:
            entry["source_url"] = args.source_url
        if args.trust_policy:
            entry["trust_policy"] = args.trust_policy
        show(args, client.add_model(entry))
    elif args.action == "pull":
        client.pull_model(args.model_id)
        entry = _wait_pull(client, args.model_id, args.json, args.stall_s)
        show(args, entry, _pulled)
        return 0 if entry["pull"]["state"] == "done" else 1
    elif args.action == "verify":
        client.verify_model(args.model_id)
        entry = _wait_verify(client, args.model_id, args.timeout_s)
        verification = entry["verification"]
        show(args, verification, lambda v: f"{args.model_id}: {v['result']} ({v.get('reason')})")
        return 0 if verification["result"] in ("passed", "trust_gap") else 1
    elif args.action in ("retire", "state"):
        state = "Retired" if args.action == "retire" else args.state
        show(args, client.set_model_state(args.model_id, state, args.deadline_ms))
    elif args.action == "get":
        show(args, client.model(args.model_id))
    else:
        listed = client.models(args.tag, args.state)
        show(args, listed, lambda ms: "\n".join(
            f"{m['id']:<28} {m['state']:<10} {m['digest'][:19]}… {m.get('local_path') or '-'}"
            for m in ms) or "(no models)")  # fmt: skip
    return 0


def cmd_artifacts(args: argparse.Namespace, client: OrchClient) -> int:
    if args.action == "put":
        raw = sys.stdin.read() if str(args.file) == "-" else args.file.read_text(encoding="utf-8")
        try:
            content = json.loads(raw)
        except ValueError as exc:
            err.print(f"llorch: {args.file} is not JSON: {exc}")
            return 2
        artifact: dict[str, Any] = {"kind": args.kind, "content": content, "tags": args.tag}
        if args.parent:
            artifact["parent"] = args.parent
        show(args, client.put_artifact(artifact), lambda a: a["id"])
    elif args.action == "get":
        show(args, client.artifact(args.artifact_id))
    else:
        show(args, client.artifacts(args.tag), _artifacts_table)
    return 0


def dispatch(args: argparse.Namespace, settings: Settings) -> int:
    with OrchClient(settings.url, settings.token, timeout=600) as client:
        if args.command == "run":
            return cmd_run(args, settings, client)
        if args.command == "caps":
            show(args, client.capabilities())
            return 0
        if args.command == "ps":
            show(args, client.replica_sets(), ps_table)
            return 0
        if args.command == "stop":
            return cmd_stop(args, client)
        if args.command == "tasks":
            client.cancel(args.task_id)
            print(f"canceled {args.task_id}")
            return 0
        if args.command == "sessions":
            if args.action == "show":
                show(args, client.session(args.session_id))
            else:
                client.end_session(args.session_id)
                print(f"ended {args.session_id}")
            return 0
        if args.command == "pools":
            return cmd_pools(args, client)
        if args.command == "models":
            return cmd_models(args, client)
        return cmd_artifacts(args, client)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = resolve(args.url, args.config, args.token_file)
        return dispatch(args, settings)
    except SettingsError as exc:
        err.print(f"llorch: {exc}")
        return 2
    except WaitGaveUp as exc:
        err.print(f"llorch: gave up: {exc}")
        return 1
    except OrchError as exc:
        where = f", correlation id {exc.correlation_id}" if exc.correlation_id else ""
        err.print(f"llorch: {exc.envelope.get('message')} ({exc.code}, HTTP {exc.status}{where})")
        return 1
    except httpx.TransportError as exc:
        err.print(f"llorch: cannot reach orchestratord at {args.url or 'its default URL'}: {exc}")
        return 2
    except OSError as exc:
        err.print(f"llorch: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
