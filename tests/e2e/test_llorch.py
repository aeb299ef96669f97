"""``llorch`` against a live orchestratord and a real llama-server, as a user runs it.

Covers the first thing a new user types (``llorch run "Once upon a time"``), Ctrl-C, a
batch, and the model workflow: add a model served on loopback HTTP, pull it, verify it,
reload the pool onto it while a task streams, and a reload to a broken file that rolls back.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import psutil
import pytest

from cli_client.cli import main as cli_main
from orchestratord.models.tiny_gguf import ensure_tiny_model
from xtask.fakes.live_server import (
    LiveServer,
    default_live_config,
    live_server,
    task_body,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llorch")


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[LiveServer]:
    config = default_live_config(workdir)
    config["cache_dir"] = str(workdir / "cache")
    config["catalog"] = {"model_dirs": [str(workdir / "models")]}
    # The model site below listens on loopback: only an explicit network entry lets a pull
    # reach it (HARD-101).
    config["outbound"] = {"allow_networks": ["127.0.0.1/32"]}
    # A test here stops the engine to hold a state: it must not be killed as hung meanwhile.
    config["server"]["engine_hang_timeout_ms"] = 600_000
    (workdir / "models").mkdir()
    with live_server(config) as live:
        yield live


@pytest.fixture(scope="module")
def model_site(workdir: Path) -> Iterator[str]:
    """A loopback HTTP server with the tiny GGUF on it."""
    site = workdir / "site"
    site.mkdir()
    (site / "tiny.gguf").write_bytes(ensure_tiny_model(workdir / "gen").read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# The console script the install put next to this interpreter, exactly what a user runs.
LLORCH = str(Path(sys.executable).with_name("llorch"))


def llorch_env(server: LiveServer) -> dict[str, str]:
    return {**os.environ, "LLORCH_URL": server.url, "LLORCH_API_TOKEN": server.token}


def llorch(
    server: LiveServer, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LLORCH, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=llorch_env(server),
        check=False,
    )


@pytest.mark.req("HOME-204", "ORCH-2001", "ORCH-2002")
def test_llorch_run_streams_tokens_and_a_summary(server: LiveServer) -> None:
    done = llorch(server, "run", "Once upon a time", "--max-tokens", "16", "--seed", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the engine's text, streamed
    assert "16 tokens in" in done.stderr and "tok/s" in done.stderr
    as_json = llorch(
        server, "--json", "run", "Once upon a time", "--max-tokens", "16", "--seed", "5"
    )
    result = json.loads(as_json.stdout)
    assert result["tokens"] == 16 and result["text"] == done.stdout.rstrip("\n")


@pytest.mark.req("HOME-304", "ORCH-3026")
def test_ctrl_c_cancels_the_task_on_the_server(server: LiveServer) -> None:
    proc = subprocess.Popen(
        [LLORCH, "run", "load", "--max-tokens", "1900",
         "--profile", "fixed-length"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=llorch_env(server),
    )  # fmt: skip
    assert proc.stdout is not None
    (engine,) = [p for p in psutil.Process(server.pid).children() if "llama-server" in p.name()]
    proc.stdout.read(8)  # tokens are flowing ...
    engine.suspend()  # ... and the task can neither go on nor end until the test says so
    try:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        engine.resume()
    assert proc.returncode == 130, stderr
    assert "canceled" in stderr
    task_id = stderr.strip().split("task ")[-1]
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        frames = client.get(f"/v1/tasks/{task_id}/stream").text
    assert '"finish_reason":"canceled"' in frames
    wait_until(lambda: server.engine_busy_slots() == [], "the engine to free the slot")


@pytest.mark.req("FR-MA-001", "HOME-1002")
def test_a_batch_runs_every_prompt(server: LiveServer, workdir: Path) -> None:
    prompts = workdir / "prompts.txt"
    prompts.write_text("\n".join(f"prompt number {n}" for n in range(7)) + "\n")
    done = llorch(server, "--json", "run", "--batch", str(prompts), "--max-tokens", "8")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["prompt"] for r in results] == [f"prompt number {n}" for n in range(7)]
    assert all(r["error"] is None and r["tokens"] >= 1 for r in results)


def _digest(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _stream_in_background(server: LiveServer, results: dict[str, Any]) -> threading.Thread:
    def work() -> None:
        body = task_body(max_tokens=1500, sampler_profile_version="fixed-length", prompt="keep")
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=120) as client:
            client.post("/v1/tasks", json=body)
            results["stream"] = client.get(f"/v1/tasks/{body['task_id']}/stream").text

    thread = threading.Thread(target=work)
    thread.start()
    return thread


@pytest.mark.req("HOME-501", "HOME-505", "ORCH-2102", "ORCH-3031", "FR-CP-001")
def test_pull_verify_and_reload_while_tasks_stream_then_a_failed_reload_rolls_back(
    server: LiveServer, model_site: str, workdir: Path
) -> None:
    tiny = workdir / "site" / "tiny.gguf"
    added = llorch(server, "models", "add", "tiny-copy", "--digest", _digest(tiny),
                   "--source-url", f"{model_site}/tiny.gguf")  # fmt: skip
    assert added.returncode == 0, added.stderr
    pulled = llorch(server, "models", "pull", "tiny-copy")
    assert pulled.returncode == 0 and "pulled into" in pulled.stdout, pulled.stderr
    verified = llorch(server, "models", "verify", "tiny-copy")
    assert verified.returncode == 0 and "tiny-copy: trust_gap (no_signature)" in verified.stdout

    results: dict[str, Any] = {}
    streaming = _stream_in_background(server, results)
    for _ in range(200):  # until the long task is decoding on the current engine
        if server.engine_busy_slots():
            break
        time.sleep(0.01)
    reloaded = llorch(server, "pools", "reload", "default", "tiny-copy", "--wait")
    streaming.join(timeout=120)
    assert reloaded.returncode == 0 and "reload switched" in reloaded.stdout, reloaded.stderr
    assert results["stream"].count("event: end") == 1 and "event: error" not in results["stream"]
    assert '"replica_id":"default-r0"' in results["stream"]  # it finished on the old engine
    health = json.loads(llorch(server, "pools", "health", "default").stdout)
    assert health["model_ref"] == "tiny-copy" and health["ready"] is True
    assert [r["id"] for r in health["replicas"]] == ["default-r0-g1"]
    after = llorch(server, "run", "after the reload", "--model", "tiny-copy", "--max-tokens", "4")
    assert after.returncode == 0, after.stderr

    broken = workdir / "models" / "broken.gguf"
    broken.write_bytes(tiny.read_bytes()[:4096])  # a truncated GGUF llama-server cannot load
    assert llorch(server, "models", "add", "broken", "--digest", _digest(broken),
                  "--source-url", broken.as_uri()).returncode == 0  # fmt: skip
    failed = llorch(server, "pools", "reload", "default", "broken", "--wait")
    assert failed.returncode == 1 and "reload rolled_back" in failed.stdout
    health = json.loads(llorch(server, "pools", "health", "default").stdout)
    assert health["model_ref"] == "tiny-copy" and health["ready"] is True
    assert health["last_error"].startswith("reload to broken rolled back")
    still = llorch(server, "run", "still serving", "--model", "tiny-copy", "--max-tokens", "4")
    assert still.returncode == 0, still.stderr


@pytest.mark.req("HOME-701", "FR-AR-001")
def test_artifacts_put_get_and_list(server: LiveServer, workdir: Path) -> None:
    plan = workdir / "plan.json"
    plan.write_text(json.dumps({"steps": ["read", "write"]}))
    put = llorch(server, "artifacts", "put", str(plan), "--kind", "plan", "--tag", "demo")
    assert put.returncode == 0, put.stderr
    artifact_id = put.stdout.strip()
    got = json.loads(llorch(server, "artifacts", "get", artifact_id).stdout)
    assert got["content"] == {"steps": ["read", "write"]} and got["tags"] == ["demo"]
    listed = llorch(server, "artifacts", "ls", "--tag", "demo")
    assert artifact_id in listed.stdout


@pytest.mark.req("HOME-901", "HOME-103")
def test_user_mistakes_are_one_clean_line_and_a_non_zero_exit(server: LiveServer) -> None:
    missing = llorch(server, "models", "get", "nope")
    assert missing.returncode == 1
    assert "no model nope (NOT_FOUND, HTTP 404, correlation id" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_digest = llorch(server, "models", "add", "x", "--digest", "md5:1")
    assert bad_digest.returncode == 1 and "INVALID_PARAMS" in bad_digest.stderr
    unreachable = subprocess.run(
        [LLORCH, "--url", "http://127.0.0.1:9", "caps"],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "LLORCH_API_TOKEN": "x" * 20},
    )  # fmt: skip
    assert unreachable.returncode == 2 and "cannot reach orchestratord" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


@pytest.mark.req("FR-DP-004", "HOME-401", "ORCH-2004", "ORCH-2005")
def test_a_session_is_continued_shown_and_ended(server: LiveServer) -> None:
    session = "0b9f3c3e-7d1e-4f55-9a51-0c6f8a1d2e3f"
    for prompt in ("Once upon a time", "Once upon a time there was"):
        done = llorch(server, "run", prompt, "--session", session, "--max-tokens", "4")
        assert done.returncode == 0 and f"session {session}" in done.stderr, done.stderr
    shown = json.loads(llorch(server, "sessions", "show", session).stdout)
    assert shown["turns"] == 2 and shown["session_id"] == session
    assert shown["replica_id"].startswith("default-r0")  # -g1 after the reload test
    ended = llorch(server, "sessions", "end", session)
    assert ended.returncode == 0 and f"ended {session}" in ended.stdout
    gone = llorch(server, "sessions", "show", session)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


@pytest.mark.req("HARD-210")
def test_a_drained_pool_is_waited_on_visibly_and_given_up_on(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        drained = client.post("/v1/pools/default/drain", json={"deadline_ms": 0})
        assert drained.status_code == 202
        try:
            done = llorch(server, "run", "hello", "--max-wait-s", "3")
        finally:
            assert client.post("/v1/pools/default/resume").status_code in (200, 202)
    assert done.returncode == 1, done.stderr
    assert "waiting: " in done.stderr and "draining" in done.stderr and "retrying in" in done.stderr
    assert "gave up after waiting" in done.stderr


def llorch_in_process(server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``llorch`` run in this process, for a test about its output, not its process: it
    takes milliseconds, not an interpreter's start (so it can look while a task decodes)."""
    out, err = io.StringIO(), io.StringIO()
    env = {"LLORCH_URL": server.url, "LLORCH_API_TOKEN": server.token}
    with mock.patch.dict(os.environ, env), redirect_stdout(out), redirect_stderr(err):
        code = cli_main(list(args))
    return subprocess.CompletedProcess(["llorch", *args], code, out.getvalue(), err.getvalue())


def slots_free(server: LiveServer) -> int:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        (pool,) = client.get("/v1/replicasets").json()
    return int(pool["slots_free"])


def pool_of(server: LiveServer) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers=server.auth) as client:
        (pool,) = client.get("/v1/replicasets").json()
    return dict(pool)


def listings_while_a_task_is_held_on_a_stopped_engine(
    server: LiveServer,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """``pools ls`` and ``--json pools ls`` taken in a state the test holds. The engine is
    stopped (SIGSTOP) and a task sent at once is placed on it: it holds a slot and can
    neither go on nor end. Once the engine has missed a health check (a second or two
    later) the pool reads not ready, and it stays so (this module's hang timeout is ten
    minutes) until the test lets the engine go on and cancels the task."""
    wait_until(lambda: slots_free(server) == 2, "both slots free before the test")
    (engine,) = [p for p in psutil.Process(server.pid).children() if "llama-server" in p.name()]
    body = task_body(max_tokens=4, model_ref=pool_of(server)["model_ref"])  # a reload may move it
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=60) as client:
        engine.suspend()
        try:
            admitted = client.post("/v1/tasks", json=body)
            assert admitted.status_code == 202, admitted.json()
            wait_until(lambda: not pool_of(server)["ready"], "the stopped engine to miss /health")
            listed = llorch_in_process(server, "pools", "ls")
            as_json = json.loads(llorch_in_process(server, "--json", "pools", "ls").stdout)
            client.post(f"/v1/tasks/{body['task_id']}/cancel")
        finally:
            engine.resume()
    wait_until(lambda: pool_of(server)["ready"] and slots_free(server) == 2, "the pool back")
    return listed, as_json


@pytest.mark.req("FR-CP-003", "OC-CTRL-2004")
def test_pools_ls_lists_the_replica_sets_with_their_load(server: LiveServer) -> None:
    listed, as_json = listings_while_a_task_is_held_on_a_stopped_engine(server)
    assert listed.returncode == 0, listed.stderr
    first, replica_line = listed.stdout.splitlines()[:2]
    assert first.startswith("default") and "ready=False" in first and "load=0.5" in first
    assert "slots 0/2 free" in first  # an engine that does not answer offers none
    assert "ready=False" in replica_line and "load=0.5" in replica_line
    (pool,) = as_json
    assert pool["engine"] == "llamacpp" and pool["load"] == 0.5 and pool["slots_free"] == 0
    (replica,) = pool["replicas"]
    assert replica["load"] == 0.5 and replica["ready"] is False
    assert "/health" in replica["last_error"]
