"""llorch's waits and exits (HARD-210): visible and bounded, Ctrl-C cancels what it started,
a 429 from anything is handled, and the token never goes through a proxy to this machine."""

from __future__ import annotations

import _thread
import contextlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from cli_client import cli
from cli_client.client import Backoff, OrchClient, OrchError, Unavailable, is_loopback_url
from cli_client.run import (
    BatchInterrupted,
    Interrupted,
    RunOptions,
    run_batch,
    run_one,
    submit_with_retries,
)

CAPS = {"engines": [{"engine": "llamacpp", "pools": [
    {"id": "default", "model_ref": "m", "ready": True, "ctx_max": 512, "slots_total": 2,
     "queue_capacity": 4}]}]}  # fmt: skip


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A loopback HTTP server in a thread, for the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def http_server(name: str, seen: list[str]) -> Iterator[str]:
    """A loopback HTTP server that records what reaches it and answers capabilities."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{name} {self.path}")
            body = json.dumps(CAPS).encode() if name == "server" else b"{}"
            self.send_response(200 if name == "server" else 502)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    with serving(Handler) as url:
        yield url


@pytest.mark.req("HARD-210")
def test_proxy_variables_are_ignored_for_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    with http_server("server", seen) as server, http_server("proxy", seen) as proxy:
        for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
            monkeypatch.setenv(variable, proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with OrchClient(server, "token-0123456789") as client:
            assert client.capabilities() == CAPS
        port = server.rsplit(":", 1)[1]
        spellings = ["localhost", "127.1", "2130706433", "0x7f000001",
                     "[::ffff:127.0.0.1]"]  # fmt: skip
        for spelling in spellings:
            with OrchClient(f"http://{spelling}:{port}", "token-0123456789") as client:
                client.capabilities()
        # Not loopback: the proxy is honoured. (It is a loopback stand-in that answers 502 and
        # forwards nothing, so no request leaves this machine.)
        with (
            OrchClient("http://orchestratord.lan:8080", "token-0123456789") as client,
            pytest.raises(OrchError),
        ):
            client.capabilities()
    assert seen == [
        "server /v1/capabilities",
        *["server /v1/capabilities"] * len(spellings),
        "proxy http://orchestratord.lan:8080/v1/capabilities",
    ]


@pytest.mark.req("HARD-210")
def test_a_429_without_hints_is_a_backoff_not_a_traceback() -> None:
    bare = Backoff(429, {"code": "HTTP", "message": "Too Many Requests"}, httpx.Headers())
    assert (bare.backoff_ms, bare.retry_after_s, bare.policy_label) == (1000, 1, "unknown")
    seconds = Backoff(429, {}, httpx.Headers({"Retry-After": "3"}))
    assert seconds.backoff_ms == 3000


class Drained:
    def __init__(self) -> None:
        self.calls = 0

    def enqueue(self, body: dict[str, Any]) -> None:
        self.calls += 1
        envelope = {"code": "POOL_UNAVAILABLE", "retriable": True, "retry_after_ms": 4000,
                    "message": "the pool for 'm' is draining or drained (operator); it admits "
                    "tasks again once resumed"}  # fmt: skip
        raise Unavailable(503, envelope, httpx.Headers())


@pytest.mark.req("HARD-210")
def test_waiting_on_a_drained_pool_says_why_and_gives_up_in_bounded_time() -> None:
    said: list[str] = []
    slept: list[float] = []
    with pytest.raises(OrchError, match=r"gave up after waiting \d+ s: the pool for 'm' is dr"):
        submit_with_retries(
            Drained(),  # type: ignore[arg-type]
            {},
            sleep=slept.append,
            notify=said.append,
            max_wait_s=30,
        )
    assert said and all("is draining or drained" in s and "retrying in" in s for s in said)
    assert sum(slept) <= 30  # bounded by max_wait_s, not by the number of attempts
    assert len(slept) == len(said)


class Recorder:
    """A client that admits, then streams until told to stop; records cancels."""

    def __init__(self, interrupt_submit: bool = False) -> None:
        self.interrupt_submit = interrupt_submit
        self.admitted: list[str] = []
        self.canceled: list[str] = []
        self.release = threading.Event()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit_stream(self, body: dict[str, Any]) -> Any:
        self.admitted.append(body["task_id"])  # the server took it...
        if self.interrupt_submit:
            raise KeyboardInterrupt  # ...and Ctrl-C came before the stream's first frame
        return contextlib.nullcontext(self.stream(body["task_id"]))

    def stream(self, task_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield "started", {}
        self.release.wait(10)
        yield "error", {"code": "CANCELED"}

    def cancel(self, task_id: str) -> None:
        self.canceled.append(task_id)
        self.release.set()


@pytest.mark.req("HARD-210")
def test_ctrl_c_during_the_submit_cancels_the_task_on_the_server() -> None:
    client = Recorder(interrupt_submit=True)
    with pytest.raises(Interrupted) as stopped:
        run_one(client, "hi", RunOptions(), CAPS, None)  # type: ignore[arg-type]
    assert client.canceled == client.admitted == [stopped.value.outcome.task_id]


@pytest.mark.req("HARD-210")
def test_ctrl_c_stops_a_batch_and_cancels_what_is_in_flight() -> None:
    client = Recorder()
    started = threading.Event()
    original_stream = client.stream

    def stream(task_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        started.set()
        yield from original_stream(task_id)

    client.stream = stream  # type: ignore[method-assign]

    def interrupt_when_streaming() -> None:
        started.wait(10)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_streaming, daemon=True).start()
    with pytest.raises(BatchInterrupted) as stopped:
        run_batch(lambda: client, [f"p{n}" for n in range(50)], RunOptions(), CAPS,  # type: ignore[arg-type, return-value]
                  concurrency=2, progress=lambda o: None)  # fmt: skip
    assert len(client.admitted) <= 2 + 2  # the workers' prompts, not the 50
    assert set(client.canceled) >= set(client.admitted[:1])
    assert sum(1 for o in stopped.value.outcomes if o.finish_reason == "canceled") >= 46


class Forgetful:
    """A server that restarts during a reload: health stops mentioning it."""

    def __init__(self) -> None:
        self.reads = 0

    def pool_health(self, pool_id: str) -> dict[str, Any]:
        self.reads += 1
        return {"reload": {"state": "starting"}} if self.reads < 3 else {"reload": None}


@pytest.mark.req("HARD-210")
def test_reload_wait_gives_up_when_the_server_forgot_the_reload() -> None:
    with pytest.raises(cli.WaitGaveUp, match="did orchestratord restart"):
        cli._wait_reload(Forgetful(), "default", timeout_s=30)  # type: ignore[arg-type]


class Stuck:
    def model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "pull": {"state": "downloading", "bytes": 10}}


@pytest.mark.req("HARD-210")
def test_a_pull_that_makes_no_progress_is_given_up_on() -> None:
    with pytest.raises(cli.WaitGaveUp, match=r"no progress for 0\.5 s"):
        cli._wait_pull(Stuck(), "m", True, stall_s=0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [("http://localhost.:8080", True), ("http://ip6-localhost:1", True),
     ("http://api.localhost", True), ("http://127.1:1", True),
     ("http://[::ffff:127.0.0.1]:1", True), ("http://[::1]:1", True),
     ("http://[::ffff:10.0.0.1]:1", False), ("http://10.0.0.1:1", False),
     ("http://localhost.example.org", False), ("http://orchestratord.lan", False)],
)  # fmt: skip
@pytest.mark.req("HARD-210")
def test_loopback_in_every_spelling_bypasses_the_proxy(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


@contextmanager
def scripted_orchestratord(answers: list[tuple[int, dict[str, str], bytes]],
                           seen: list[tuple[str, str, str]]) -> Iterator[str]:  # fmt: skip
    """Capabilities, then ``POST /v1/tasks`` answered from ``answers`` in turn; records
    (method, path, Accept) of every request."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _record(self) -> None:
            seen.append((self.command, self.path, self.headers.get("Accept", "")))

        def do_GET(self) -> None:
            self._record()
            self._answer(200, {"Content-Type": "application/json"}, json.dumps(CAPS).encode())

        def do_POST(self) -> None:
            self._record()
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(*answers.pop(0))

        def do_DELETE(self) -> None:
            self._record()
            self._answer(404, {"Content-Type": "application/json"}, b"{}")

        def log_message(self, *args: Any) -> None:
            return None

    with serving(Handler) as url:
        yield url


def _json(
    status: int, envelope: dict[str, Any], **headers: str
) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(envelope).encode()


@pytest.mark.req("PERF-103")
def test_llorch_run_submits_in_one_request_and_keeps_its_retries(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full queue (429) and an unavailable pool (503) are waited out as before; each try
    is ``POST /v1/tasks`` asking for the stream, and no separate stream request is made."""
    frames = [("accepted", {"task_id": "t", "queue_position": 0, "predicted_start_ms": 0}),
              ("started", {"queue_position": 0, "predicted_start_ms": 0}),
              ("token", {"t": " Once", "i": 0}), ("token", {"t": " upon", "i": 1}),
              ("end", {"finish_reason": "length", "tokens_out": 2})]  # fmt: skip
    stream = b"".join(f"event: {e}\ndata: {json.dumps(p)}\n\n".encode() for e, p in frames)
    answers = [
        _json(429, {"code": "ADMISSION_REJECT", "message": "the queue is full",
                    "policy_label": "reject"}, **{"X-Backoff-Ms": "10", "Retry-After": "1"}),
        _json(503, {"code": "POOL_UNAVAILABLE", "message": "the pool is not ready",
                    "retriable": True, "retry_after_ms": 10}),
        (200, {"Content-Type": "text/event-stream"}, stream),
    ]  # fmt: skip
    seen: list[tuple[str, str, str]] = []
    token_file = tmp_path / "token"
    token_file.write_text("token-0123456789")
    token_file.chmod(0o600)
    with scripted_orchestratord(answers, seen) as url:
        code = cli.main(["--url", url, "--token-file", str(token_file), "run", "hi"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.startswith(" Once upon")
    posts = [(path, accept) for method, path, accept in seen if method == "POST"]
    assert posts == [("/v1/tasks", "text/event-stream")] * 3
    assert [path for method, path, _ in seen if method == "GET"] == ["/v1/capabilities"]
    assert answers == []  # both refusals were retried, then the stream was read
