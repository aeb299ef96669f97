"""``python -m xtask conformance``: schemathesis fuzzes a live server against both contracts.

It starts a real orchestratord (+ llama-server) and runs schemathesis on
``contracts/openapi/data.yaml`` and ``control.yaml``: examples, coverage, fuzzing (valid and
invalid input) and stateful runs that follow the contracts' links from a 202 into the
task's stream and cancel. Checks: no server error, every status, content type, header and
body (SSE events included) as the contract documents. Operations marked
``x-status: planned`` are excluded by that rule (they answer a documented 501, which
schemathesis would count as a server error; a unit test checks them). The hooks in
``xtask/checks/schemathesis_hooks.py`` make half the generated tasks runnable on the live pool.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from xtask.fakes.live_server import default_live_config, live_server
from xtask.loop.results import write_result

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "schemathesis.json"
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance"
)
# What a clean run against a document shows about the live server.
PROVES = ["HOME-1201", "HOME-1202", "FR-CT-001", "FR-CT-002", "HOME-901", "ORCH-2006"]


def planned_operations(document: str) -> list[str]:
    doc = yaml.safe_load((ROOT / "contracts" / "openapi" / f"{document}.yaml").read_text())
    return sorted(
        op["operationId"]
        for item in doc["paths"].values()
        for op in item.values()
        if op.get("x-status") == "planned"
    )


def command(document: str, url: str, token: str, examples: int) -> list[str]:
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run",
        str(ROOT / "contracts" / "openapi" / f"{document}.yaml"),
        "--url", url,
        "--header", f"Authorization: Bearer {token}",
        "--checks", CHECKS,
        "--max-examples", str(examples),
        "--seed", "20261125",
        "--generation-database", "none",
        "--request-timeout", "30",
        "--workers", "1",
        "--no-color",
        "--report", "junit",
        "--report-junit-path", str(ROOT / "reports" / f"junit-schemathesis-{document}.xml"),
    ]  # fmt: skip
    for operation_id in planned_operations(document):
        cmd += ["--exclude-operation-id", operation_id]
    return cmd


def run(args: argparse.Namespace) -> int:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "xtask.checks.schemathesis_hooks",
        "PYTHONPATH": str(ROOT),
    }
    entries: dict[str, dict[str, Any]] = {}
    # The fuzzer sends the fetch tool arbitrary URLs: keep it to loopback, so no DNS lookup or
    # connection leaves this machine (the policy refuses every other name before resolving
    # it, and every address outside 127.0.0.1).
    with (
        tempfile.TemporaryDirectory(prefix="llorch-conformance-") as tmp,
        live_server(
            {
                **default_live_config(Path(tmp)),
                "outbound": {"allow_domains": ["localhost"], "allow_networks": ["127.0.0.1/32"]},
            }
        ) as server,
    ):
        for document in ("data", "control"):
            cmd = command(document, server.url, server.token, args.max_examples)
            done = subprocess.run(
                cmd, check=False, cwd=ROOT, env=env, text=True, capture_output=True
            )
            output = done.stdout.replace(server.token, "[token]")
            print(output[-4000:] if done.returncode else output[-1200:])
            if done.stderr.strip():
                print(done.stderr[-2000:], file=sys.stderr)
            entries[f"schemathesis::{document}.yaml"] = {
                "ids": PROVES,
                "outcome": "passed" if done.returncode == 0 else "failed",
                "excluded_planned": planned_operations(document),
            }
    write_result(REPORT, {"results": entries})
    failed = [name for name, entry in entries.items() if entry["outcome"] != "passed"]
    for name in failed:
        print(f"conformance: {name} FAILED", file=sys.stderr)
    print(f"conformance: {len(entries) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("conformance", help="schemathesis against both contracts, live")
    parser.add_argument("--max-examples", type=int, default=25)
    parser.set_defaults(run=run)
