"""``python -m xtask pact consumer|verify``: write the CLI's pact, then replay it on a live server.

``consumer`` deletes the pact file and reruns the consumer tests, so the file holds exactly
what the client code exercised. ``verify`` starts a real orchestratord (+ llama-server) and
replays every interaction. Provider states create the real condition over the public API —
a finished task by running it, a running task by starting a long one, a full queue by
filling it with long tasks — never a magic request field; teardown cancels what a state
started. A failing interaction is printed with the verifier's own detail.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from orchestratord.models.tiny_gguf import default_cache_dir, ensure_tiny_model
from tests.pact import interactions as ix
from xtask.checks import deploy_matrix
from xtask.fakes.live_server import LiveServer, live_server
from xtask.loop.results import write_result
from xtask.spec.claims import pact_claims

ROOT = Path(__file__).resolve().parents[2]
PACT_FILE = ROOT / "contracts" / "pacts" / f"{ix.CONSUMER}-{ix.PROVIDER}.json"
REPORT = ROOT / "reports" / "pact-verify.json"
_LONG = {"max_tokens": 1900, "sampler_profile_version": "fixed-length", "prompt": "a"}


class ProviderStates:
    """Puts the live server into the state an interaction names, through its public API."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0)
        self.started: list[str] = []

    def _submit(self, body: dict[str, Any]) -> httpx.Response:
        response = self.http.post("/v1/tasks", json=body)
        if response.status_code == 202:
            self.started.append(body["task_id"])
        return response

    def handle(self, state: str, action: str = "setup", parameters: Any = None) -> None:
        if action == "teardown":
            self.teardown()
            return
        if state == ix.READY:
            self._wait_ready()
        elif state.startswith("model ") and state.endswith(" is registered"):
            self._register(state.split()[1], source=False)
        elif state.startswith("model ") and state.endswith(" with a local source"):
            self._register(state.split()[1], source=True)
        elif state.startswith("session ") and state.endswith(" has run a task"):
            body = ix.task(str(uuid.uuid4()), session_id=state.split()[1])
            if self._submit(body).status_code != 202:
                raise RuntimeError("state setup: the session's task was refused")
            self.http.get(f"/v1/tasks/{body['task_id']}/stream").raise_for_status()
        elif state == ix.POOL_DRAINED:
            self._drain()
        elif state == ix.ARTIFACT_STORED:
            self.http.post("/v1/artifacts", json=ix.PLAN_ARTIFACT).raise_for_status()
        elif state == ix.QUEUE_FULL:
            self._fill_queue()
        elif state.startswith("task ") and state.endswith(" has finished"):
            self._finished(state.split()[1])
        elif state.startswith("task ") and state.endswith(" is running"):
            self._running(state.split()[1])
        else:
            raise ValueError(f"unknown provider state {state!r}")

    def _register(self, model_id: str, *, source: bool) -> None:
        entry: dict[str, Any] = {"id": model_id, "digest": ix.MODEL_DIGEST}
        if source:  # the generated tiny model, inside the server's model directory
            tiny = ensure_tiny_model(default_cache_dir())
            entry["digest"] = "sha256:" + hashlib.sha256(tiny.read_bytes()).hexdigest()
            entry["source_url"] = tiny.as_uri()
        response = self.http.post("/v1/catalog/models", json=entry)
        if response.status_code not in (201, 409):
            raise RuntimeError(f"state setup: {response.status_code} {response.text}")

    def _drain(self) -> None:
        response = self.http.post("/v1/pools/default/drain", json={"deadline_ms": 600_000})
        if response.status_code not in (202, 409):
            raise RuntimeError(f"state setup: {response.status_code} {response.text}")

    def _wait_ready(self) -> None:
        caps = self.http.get("/v1/capabilities").json()
        if not all(p["ready"] for e in caps["engines"] for p in e["pools"]):
            raise RuntimeError(f"pool not Ready: {caps}")

    def _finished(self, task_id: str) -> None:
        response = self._submit(ix.task(task_id))
        if response.status_code != 202:
            raise RuntimeError(f"state setup: {response.status_code} {response.text}")
        self.http.get(f"/v1/tasks/{task_id}/stream").raise_for_status()  # runs to the end

    def _running(self, task_id: str) -> None:
        response = self._submit(ix.task(task_id, **_LONG))
        if response.status_code != 202:
            raise RuntimeError(f"state setup: {response.status_code} {response.text}")

    def _fill_queue(self) -> None:
        for _ in range(20):
            body = ix.task(str(uuid.uuid4()), priority="batch", **_LONG)
            if self._submit(body).status_code == 429:
                return
        raise RuntimeError("the queue never filled")

    def teardown(self) -> None:
        for task_id in self.started:
            self.http.post(f"/v1/tasks/{task_id}/cancel")
        self.started.clear()
        # A drain (or a drained state) must not outlive its interaction.
        if self.http.get("/v1/pools/default/health").json().get("drain"):
            self.http.post("/v1/pools/default/resume")
        # Leave the engine idle for the next interaction.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not self.server.engine_busy_slots():
                return
            time.sleep(0.02)


def interaction_outcomes(descriptions: list[str], results: Any) -> dict[str, str]:
    """Per interaction: "passed" only if the verifier's own JSON results say it verified OK.

    Fails closed: an interaction the verifier never reported (it aborted, a state handler
    broke, the results are missing or unreadable) is failed, with the reason as detail.
    """
    reported: dict[str, str] = {}
    errors: dict[str, str] = {}
    if isinstance(results, dict):
        for error in results.get("errors") or []:
            name = error.get("interaction", "?")
            mismatch = error.get("mismatch", {})
            details = mismatch.get("mismatches") if isinstance(mismatch, dict) else None
            texts = [m.get("mismatch", m) if isinstance(m, dict) else m for m in details or []]
            errors[name] = "; ".join(str(t) for t in texts) or str(mismatch)[:300]
        for entry in results.get("interactionResults") or []:
            ok = entry.get("result") == "OK" and not entry.get("pending", False)
            reported[entry.get("description", "?")] = "OK" if ok else str(entry.get("result"))
    outcomes = {}
    for description in descriptions:
        if description in errors:
            outcomes[description] = f"failed: {errors[description]}"
        elif reported.get(description) == "OK":
            outcomes[description] = "passed"
        elif description in reported:
            outcomes[description] = f"failed: {reported[description]}"
        else:
            outcomes[description] = "failed: the verifier reported no result for it"
    return outcomes


def write_report(outcomes: dict[str, str]) -> None:
    """Per interaction: the IDs its consumer test recorded in the pact, and the outcome."""
    entries: dict[str, dict[str, Any]] = {}
    for claim in pact_claims(PACT_FILE):
        outcome = outcomes.get(claim.key, "failed: not verified")
        entries[f"pact-provider::{claim.key}"] = {
            # Replaying the pact on the live provider is itself what these two require.
            "ids": sorted(set(claim.ids) | {"HOME-1204", "FR-TH-002"}),
            "outcome": "passed" if outcome == "passed" else "failed",
            "detail": "" if outcome == "passed" else outcome.removeprefix("failed: ")[:300],
        }
    write_result(REPORT, {"results": entries})


def consumer() -> int:
    PACT_FILE.unlink(missing_ok=True)
    env = {**os.environ, "PACT_DO_NOT_TRACK": "true"}  # no anonymous telemetry
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/pact",
        "--req-report", "reports/pytest-pact.json", "--junitxml", "reports/junit-pact.xml",
    ]  # fmt: skip
    code = subprocess.call(command, cwd=ROOT, env=env)
    if code == 0 and not PACT_FILE.exists():
        print(f"pact: consumer tests passed but wrote no {PACT_FILE}", file=sys.stderr)
        return 1
    return code


def verify() -> int:
    from pact import Verifier  # noqa: PLC0415 - the FFI loads only for this step

    os.environ["PACT_DO_NOT_TRACK"] = "true"  # no anonymous telemetry from any run
    if not PACT_FILE.exists():
        print(f"pact: {PACT_FILE} missing; run `python -m xtask pact consumer`")
        return 1
    descriptions = [claim.key for claim in pact_claims(PACT_FILE)]
    results: Any = None
    with live_server() as server:
        states = ProviderStates(server)
        verifier = (
            Verifier(ix.PROVIDER, host="127.0.0.1")
            .add_transport(url=server.url)
            .add_source(PACT_FILE)
            .add_custom_header("Authorization", f"Bearer {server.token}")
            .state_handler(states.handle, teardown=True)
            .set_coloured_output(enabled=False)
            # The verifier's 5 s default also bounds state handlers: a reload's teardown waits
            # for the new engine, which on a saturated machine (the loop) took longer.
            .set_request_timeout(60_000)
        )
        try:
            verifier.verify()
        except Exception as exc:  # the verifier raises on any failed interaction
            print(f"pact: verifier: {exc}", file=sys.stderr)
        finally:
            states.http.close()
        try:
            results = verifier.results
        except Exception as exc:
            print(f"pact: no structured results from the verifier: {exc}", file=sys.stderr)
    outcomes = interaction_outcomes(descriptions, results)
    write_report(outcomes)
    deploy_matrix.record(outcomes)  # which provider verified which pact (HARN-501)
    failed = {d: o for d, o in outcomes.items() if o != "passed"}
    for description, outcome in sorted(failed.items()):
        print(f"pact: {description}: {outcome}", file=sys.stderr)
    if failed or not descriptions:
        print("pact: provider verification FAILED", file=sys.stderr)
        return 1
    print(f"pact: provider verification passed ({len(descriptions)} interactions)")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.which == "consumer":
        return consumer()
    if args.which == "verify":
        return verify()
    return consumer() or verify()


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("pact", help="Pact consumer tests and provider verification")
    parser.add_argument("which", choices=["consumer", "verify", "all"], nargs="?", default="all")
    parser.set_defaults(run=run)
