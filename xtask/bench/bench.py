"""``python -m xtask bench <name>``: ``--runs`` times each (relay, admission, small, placement,
session, swap; compare: the working tree against a past commit).

Every benchmark starts its own real orchestratord + llama-server on loopback, measures the
relay side by side with the baseline it compares to (llama-server directly, or the shallow
end of the queue), prints a table of the runs and their medians, and stops what it started.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from xtask.bench import (
    bench_admission,
    bench_compare,
    bench_peers,
    bench_placement,
    bench_relay,
    bench_session,
    bench_small,
    bench_swap,
)
from xtask.loop import machine


def run(args: argparse.Namespace) -> int:
    host = machine.describe()  # before the run: its load average is the machine's own
    if not args.json:
        print(machine.line(host))
    return _run(args, host)


def _run(args: argparse.Namespace, host: dict[str, Any]) -> int:
    if args.which == "relay":
        result = bench_relay.run(args.runs, args.pairs, args.tokens, args.seed, args.coalesce_ms)
        report = bench_relay.report
    elif args.which == "session":
        result = bench_session.run(args.runs, args.turns, args.opening_words)
        report = bench_session.report
    elif args.which == "placement":
        result = bench_placement.run(args.runs, args.decisions)
        report = bench_placement.report
    elif args.which == "compare":
        result = bench_compare.run(args.base, args.runs, args.streams, args.small, args.factor)
        if args.json:
            print(json.dumps({**result, "machine": host}, indent=2))
        else:
            bench_compare.report(result)
        return 1 if bench_compare.slowed(result) else 0
    elif args.which == "peers":
        result = bench_peers.run(args.runs, args.peer_pairs, args.tokens, args.small)
        report = bench_peers.report
    elif args.which == "swap":
        result = bench_swap.run(args.runs, args.switches, args.clients, args.tasks_per_client)
        report = bench_swap.report
    elif args.which == "admission":
        result = bench_admission.run(args.tasks, args.concurrency, args.runs)
        report = bench_admission.report
    else:
        result = bench_small.run(args.runs, args.per_block, args.blocks)
        report = bench_small.report
    if args.json:
        print(json.dumps({**result, "machine": host}, indent=2))
    else:
        report(result)
    return 0


def add_parser(sub: Any) -> None:
    names = ["relay", "admission", "small", "placement", "session", "swap", "compare", "peers"]
    parser = sub.add_parser("bench", help="benchmarks: " + ", ".join(names))
    parser.add_argument("which", choices=names)
    parser.add_argument("--runs", type=int, default=3, help="runs; the table gives medians")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    relay = parser.add_argument_group("relay")
    relay.add_argument("--pairs", type=int, default=15)
    relay.add_argument("--tokens", type=int, default=512)
    relay.add_argument("--seed", type=int, default=1234)
    relay.add_argument(
        "--coalesce-ms", type=float, help="server.stream_coalesce_ms for the run (default: 4)"
    )
    admission = parser.add_argument_group("admission")
    admission.add_argument("--tasks", type=int, default=20_000)
    admission.add_argument("--concurrency", type=int, default=32)
    session = parser.add_argument_group("session")
    session.add_argument("--turns", type=int, default=6)
    session.add_argument("--opening-words", type=int, default=600)
    placement = parser.add_argument_group("placement")
    placement.add_argument("--decisions", type=int, default=100_000)
    compare = parser.add_argument_group("compare (the working tree against a past commit)")
    compare.add_argument("--base", default="HEAD", help="the commit to compare with")
    compare.add_argument("--streams", type=int, default=6, help="512-token relays per round")
    compare.add_argument("--small", type=int, default=200, help="one-token tasks per round")
    compare.add_argument("--factor", type=float, default=1.25, help="worse ratio = slowdown")
    peers = parser.add_argument_group("peers (also --tokens, --small)")
    peers.add_argument("--peer-pairs", type=int, default=8, help="relays per path per run")
    swap = parser.add_argument_group("swap")
    swap.add_argument("--switches", type=int, default=6, help="model switches per run")
    swap.add_argument("--clients", type=int, default=4, help="alternating workload's clients")
    swap.add_argument("--tasks-per-client", type=int, default=12)
    small = parser.add_argument_group("small")
    small.add_argument("--per-block", type=int, default=200)
    small.add_argument("--blocks", type=int, default=4)
    parser.set_defaults(run=run)
