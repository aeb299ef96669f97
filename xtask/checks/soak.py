"""``python -m xtask soak [--short]``: load and fault probes against a real server.

Each probe starts (or reuses) a real orchestratord + llama-server on loopback, is bounded in
count and time, and stops by itself. What every probe checks on the wire, as a client would:
each accepted task's stream holds exactly one terminal frame, last, and when it is an
``end`` its ``tokens_out`` equals the token frames the client counted.

- overload: many clients submitting at once against a small queue; only 202/429/503 come
  back, and 429s are obeyed (``X-Backoff-Ms`` plus jitter);
- engine kill: llama-server SIGKILLed mid-stream; the decoding tasks end ``WORKER_RESET``,
  the queued one and one submitted during the restart (retried on 503) complete;
- engine hang: llama-server SIGSTOPped mid-stream; it is killed and replaced, the task ends
  once, the next task completes;
- cancel at random points: after each 204 the engine's own ``/slots`` shows every slot idle
  and no frame follows the terminal one;
- SIGTERM under load: every open stream gets its terminal frame, the process exits and no
  llama-server is left.

``--short`` runs a smaller version of each probe; the dev loop runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil
from multidict import CIMultiDict

from tests.sse import SSEParser
from xtask.fakes.live_server import LiveServer, live_server, task_body
from xtask.loop.results import write_result

REPORT = Path(__file__).resolve().parents[2] / "reports" / "soak.json"
LONG = {"max_tokens": 1900, "sampler_profile_version": "fixed-length", "prompt": "a"}
# What each probe, passing, shows about the live server.
PROVES = {
    "overload": ["HOME-201", "HOME-301", "HOME-902", "FR-DP-002", "FR-DP-003"],
    "engine kill": ["OC-POOL-3010", "OC-ADAPT-5011", "ORCH-3010", "HOME-301"],
    "engine hang": ["OC-POOL-3003", "ORCH-3010"],
    "cancel": ["HOME-304", "ORCH-3017", "ORCH-3026", "OC-CTRL-2012"],
    "SIGTERM": ["HOME-301", "FR-DP-002"],
}
SERVER = {"engine_restart_backoff_ms": 50, "engine_hang_timeout_ms": 1000, "heartbeat_ms": 100}


@dataclass
class Probe:
    name: str
    count: int = 0
    seconds: float = 0.0
    tally: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(why)
        self.tally["FAILED"] += 1


def check_frames(frames: list[tuple[str, Any]]) -> str | None:
    """None when the stream ended properly, else what is wrong with it."""
    terminal = [i for i, (event, _) in enumerate(frames) if event in ("end", "error")]
    if len(terminal) != 1:
        return f"{len(terminal)} terminal frames"
    if terminal[0] != len(frames) - 1:
        return "a frame after the terminal one"
    tokens = [p for e, p in frames if e == "token"]
    if [t["i"] for t in tokens] != list(range(len(tokens))):
        return "token indexes not consecutive"
    event, payload = frames[-1]
    if event == "end" and payload["tokens_out"] != len(tokens):
        return f"end says {payload['tokens_out']} tokens, client counted {len(tokens)}"
    return None


def outcome(frames: list[tuple[str, Any]]) -> str:
    event, payload = frames[-1]
    return str(payload.get("finish_reason") if event == "end" else payload.get("code"))


async def stream(
    session: aiohttp.ClientSession, server: LiveServer, task_id: str, timeout_s: float = 120
) -> list[tuple[str, Any]]:
    parser = SSEParser()
    async with asyncio.timeout(timeout_s):
        url = f"{server.url}/v1/tasks/{task_id}/stream"
        async with session.get(url) as response:
            async for chunk in response.content.iter_any():
                if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
                    break
            # Read what else the server sends before closing: nothing may follow the end.
            rest = await response.content.read()
            parser.feed(rest)
    return parser.frames


async def submit(session: aiohttp.ClientSession, server: LiveServer, body: dict[str, Any]) -> Any:
    async with session.post(server.url + "/v1/tasks", json=body) as response:
        # Header names stay case-insensitive (the server sends them lower-case).
        return response.status, CIMultiDict(response.headers), await response.json()


async def submit_until_admitted(
    session: aiohttp.ClientSession, server: LiveServer, body: dict[str, Any], deadline_s: float
) -> int:
    """Submit, obeying 503/429 retry hints, until admitted (or the deadline passes)."""
    end = time.monotonic() + deadline_s
    while True:
        status, headers, _ = await submit(session, server, body)
        if status == 202 or time.monotonic() > end or status not in (429, 503):
            return int(status)
        backoff_ms = int(headers.get("X-Backoff-Ms", "100"))
        await asyncio.sleep(min(backoff_ms, 1000) / 1000 * random.uniform(1.0, 1.5))


def engine_of(server: LiveServer) -> psutil.Process:
    (engine,) = [p for p in psutil.Process(server.pid).children() if "llama-server" in p.name()]
    return engine


async def first_token(
    session: aiohttp.ClientSession, server: LiveServer, task_id: str
) -> tuple[asyncio.Task[list[tuple[str, Any]]], asyncio.Event]:
    """Stream a task in the background; the event is set at its first token."""
    seen = asyncio.Event()

    async def follow() -> list[tuple[str, Any]]:
        parser = SSEParser()
        async with session.get(f"{server.url}/v1/tasks/{task_id}/stream") as response:
            async for chunk in response.content.iter_any():
                new = parser.feed(chunk)
                if any(e == "token" for e, _ in new):
                    seen.set()
                if any(e in ("end", "error") for e, _ in new):
                    break
            parser.feed(await response.content.read())
        seen.set()
        return parser.frames

    return asyncio.create_task(follow()), seen


# --- probes ----------------------------------------------------------------------------------


async def overload(server: LiveServer, probe: Probe, clients: int, each: int) -> None:
    connector = aiohttp.TCPConnector(limit=clients * 2)
    async with aiohttp.ClientSession(headers=server.auth, connector=connector) as session:

        async def client(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(each):
                body = task_body(
                    max_tokens=rng.randint(1, 16),
                    priority=rng.choice(["interactive", "batch"]),
                    seed=rng.randint(0, 2**31),
                )
                status, headers, reply = await submit(session, server, body)
                probe.count += 1
                probe.tally[str(status)] += 1
                if status == 202:
                    frames = await stream(session, server, body["task_id"])
                    problem = check_frames(frames)
                    if problem:
                        probe.fail(f"{body['task_id']}: {problem}")
                elif status in (429, 503):
                    problem = check_refusal(status, headers, reply)
                    if problem:
                        probe.fail(f"{body['task_id']}: {problem}")
                        return
                    backoff = int(headers["X-Backoff-Ms"])
                    await asyncio.sleep(min(backoff, 200) / 1000 * rng.uniform(1.0, 1.5))
                else:
                    probe.fail(f"unexpected status {status}")

        await asyncio.gather(*(client(n) for n in range(clients)))
    if probe.tally["429"] == 0:  # HOME-902 is about the 429s: an overload must produce some
        probe.fail(f"no 429 in {probe.count} submissions: the queue never filled")


def check_refusal(status: int, headers: CIMultiDict[str], envelope: Any) -> str | None:
    """A 429 or 503 must tell the client when to come back (HOME-902, FR-DP-003)."""
    backoff = headers.get("X-Backoff-Ms", "")
    if not backoff.isdigit() or int(backoff) <= 0:
        return f"{status} without a positive X-Backoff-Ms ({backoff!r})"
    retry_after = headers.get("Retry-After", "")
    if retry_after != str(max(1, -(-int(backoff) // 1000))):
        return f"{status}: Retry-After {retry_after!r} does not round X-Backoff-Ms {backoff} up"
    if not isinstance(envelope, dict) or envelope.get("retry_after_ms") != int(backoff):
        return f"{status}: the envelope's retry_after_ms is not X-Backoff-Ms ({envelope})"
    if status == 429 and (
        envelope.get("code") != "ADMISSION_REJECT" or not envelope.get("policy_label")
    ):
        return f"429 without ADMISSION_REJECT and a policy_label ({envelope})"
    if status == 503 and envelope.get("retriable") is not True:
        return f"503 during an overload that is not retriable ({envelope})"
    return None


async def engine_kills(server: LiveServer, probe: Probe, kills: int) -> None:
    async with aiohttp.ClientSession(headers=server.auth) as session:
        for _ in range(kills):
            await wait_ready(session, server)
            decoding = [task_body(**LONG) for _ in range(2)]
            queued = task_body(max_tokens=8)
            for body in [*decoding, queued]:
                status, _, reply = await submit(session, server, body)
                if status != 202:
                    probe.fail(f"setup: {status} {reply}")
            followers = [await first_token(session, server, b["task_id"]) for b in decoding]
            await asyncio.gather(*(seen.wait() for _, seen in followers))
            engine_of(server).send_signal(signal.SIGKILL)
            during = task_body(max_tokens=8)
            admitted = await submit_until_admitted(session, server, during, 60)
            probe.count += 1
            for follower, _ in followers:
                frames = await follower
                problem = check_frames(frames)
                if problem or outcome(frames) not in ("WORKER_RESET", "length"):
                    probe.fail(f"decoding task: {problem or outcome(frames)}")
                probe.tally[f"decoding:{outcome(frames)}"] += 1
            for body in (queued, during) if admitted == 202 else (queued,):
                frames = await stream(session, server, body["task_id"])
                problem = check_frames(frames)
                if problem or outcome(frames) != "length":
                    probe.fail(f"queued/late task: {problem or outcome(frames)}")
                probe.tally[f"waiting:{outcome(frames)}"] += 1
            if admitted != 202:
                probe.fail(f"a task submitted during the restart was never admitted ({admitted})")


async def wait_ready(session: aiohttp.ClientSession, server: LiveServer) -> None:
    async with asyncio.timeout(60):
        while True:
            async with session.get(server.url + "/v1/pools/default/health") as response:
                if (await response.json())["ready"]:
                    return
            await asyncio.sleep(0.05)


async def engine_hangs(server: LiveServer, probe: Probe, hangs: int) -> None:
    async with aiohttp.ClientSession(headers=server.auth) as session:
        for _ in range(hangs):
            await wait_ready(session, server)
            # Stopped before the task is sent: the task is placed on an engine that can never
            # finish it, however fast the engine would have been.
            hung = engine_of(server)
            hung.send_signal(signal.SIGSTOP)
            body = task_body(**LONG)
            try:
                status, _, reply = await submit(session, server, body)
                if status != 202:
                    probe.fail(f"setup: {status} {reply}")
                    continue
                frames = await stream(session, server, body["task_id"], 60)
            finally:
                if hung.is_running():
                    hung.send_signal(signal.SIGCONT)
            probe.count += 1
            problem = check_frames(frames)
            probe.tally[outcome(frames)] += 1
            # The hung engine must have been killed and replaced. Its task had no output yet,
            # so it runs again on the new engine and ends `length` (OC-POOL-3010); ended by
            # the hang itself it is WORKER_RESET or DECODE_TIMEOUT.
            replaced = not hung.is_running() or hung.status() == psutil.STATUS_ZOMBIE
            if not replaced:
                probe.fail("the hung engine was never killed")
            if problem or outcome(frames) not in ("WORKER_RESET", "DECODE_TIMEOUT", "length"):
                probe.fail(f"hung task: {problem or outcome(frames)}")
            after = task_body(max_tokens=8)
            if await submit_until_admitted(session, server, after, 60) != 202:
                probe.fail("no task admitted after the hang")
                continue
            frames = await stream(session, server, after["task_id"])
            if check_frames(frames) or outcome(frames) != "length":
                probe.fail(f"task after the hang: {outcome(frames)}")


def random_cancels(server: LiveServer, probe: Probe, count: int) -> None:
    rng = random.Random(11)
    with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as client:
        for _ in range(count):
            body = task_body(**LONG)
            client.post("/v1/tasks", json=body).raise_for_status()
            parser = SSEParser()
            target = rng.randint(0, 30)
            with client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as response:
                chunks = response.iter_raw()
                for chunk in chunks:
                    parser.feed(chunk)
                    if sum(1 for e, _ in parser.frames if e == "token") >= target:
                        break
                cancel = client.post(f"/v1/tasks/{body['task_id']}/cancel")
                busy = server.engine_busy_slots()
                for chunk in chunks:
                    parser.feed(chunk)
            probe.count += 1
            probe.tally[outcome(parser.frames)] += 1
            problem = check_frames(parser.frames)
            if cancel.status_code != 204 or busy or problem:
                probe.fail(f"cancel {cancel.status_code}, busy slots {busy}, {problem}")


def sigterm_under_load(probe: Probe, streams: int) -> None:
    overrides = {**SERVER, "shutdown_grace_ms": 200}
    with live_server(server=overrides, queue={"capacity": 32, "full_policy": "reject"}) as server:
        engines = [p for p in psutil.Process(server.pid).children() if "llama" in p.name()]
        results: dict[str, list[tuple[str, Any]]] = {}
        started: list[threading.Event] = []
        with httpx.Client(base_url=server.url, headers=server.auth, timeout=30.0) as client:
            bodies = [task_body(**LONG) for _ in range(streams)]
            accepted = [b for b in bodies if client.post("/v1/tasks", json=b).status_code == 202]

        def follow(task_id: str, ready: threading.Event) -> None:
            parser = SSEParser()
            with (
                httpx.Client(base_url=server.url, headers=server.auth, timeout=60.0) as c,
                c.stream("GET", f"/v1/tasks/{task_id}/stream") as response,
            ):
                for chunk in response.iter_raw():
                    parser.feed(chunk)
                    ready.set()
            results[task_id] = parser.frames

        threads = []
        for body in accepted:
            ready = threading.Event()
            started.append(ready)
            thread = threading.Thread(target=follow, args=(body["task_id"], ready))
            thread.start()
            threads.append(thread)
        for ready in started:
            ready.wait(30)
        os.kill(server.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        psutil.Process(server.pid).wait(60)
        probe.count = len(accepted)
        for body in accepted:
            frames = results.get(body["task_id"], [])
            problem = check_frames(frames) if frames else "no frames"
            probe.tally[outcome(frames) if frames else "none"] += 1
            if problem:
                probe.fail(f"{body['task_id']}: {problem}")
        if any(p.is_running() for p in engines):
            probe.fail("llama-server still running after orchestratord exited")


# --- the suite -------------------------------------------------------------------------------

FULL = {"clients": 200, "each": 50, "kills": 20, "hangs": 3, "cancels": 1000, "streams": 24}
SHORT = {"clients": 40, "each": 10, "kills": 3, "hangs": 1, "cancels": 100, "streams": 8}


async def _timed(probe: Probe, work: Awaitable[None]) -> None:
    started = time.monotonic()
    try:
        await asyncio.wait_for(work, 600)
    except Exception as exc:  # a probe that breaks is a failed probe, not a crashed suite
        probe.fail(f"probe aborted: {type(exc).__name__}: {exc}")
    probe.seconds = time.monotonic() - started


def _timed_sync(probe: Probe, work: Callable[[], None]) -> None:
    started = time.monotonic()
    try:
        work()
    except Exception as exc:
        probe.fail(f"probe aborted: {type(exc).__name__}: {exc}")
    probe.seconds = time.monotonic() - started


def run_suite(size: dict[str, int]) -> list[Probe]:
    probes = {n: Probe(n) for n in ("overload", "engine kill", "engine hang", "cancel", "SIGTERM")}
    with live_server(server=SERVER, queue={"capacity": 32, "full_policy": "reject"}) as server:
        load = probes["overload"]
        asyncio.run(_timed(load, overload(server, load, size["clients"], size["each"])))
        kill = probes["engine kill"]
        asyncio.run(_timed(kill, engine_kills(server, kill, size["kills"])))
        hang = probes["engine hang"]
        asyncio.run(_timed(hang, engine_hangs(server, hang, size["hangs"])))
        cancel = probes["cancel"]
        _timed_sync(cancel, lambda: random_cancels(server, cancel, size["cancels"]))
    _timed_sync(probes["SIGTERM"], lambda: sigterm_under_load(probes["SIGTERM"], size["streams"]))
    return list(probes.values())


def report(probes: list[Probe]) -> None:
    print("probe          count  seconds  result  outcomes")
    for probe in probes:
        result = "FAILED" if probe.failures else "ok"
        tally = ", ".join(f"{k} {v}" for k, v in sorted(probe.tally.items()))
        print(f"{probe.name:<14} {probe.count:>5} {probe.seconds:>8.1f}  {result:<6}  {tally}")
        for failure in probe.failures:
            print(f"    {failure}")


def run(args: argparse.Namespace) -> int:
    probes = run_suite(SHORT if args.short else FULL)
    report(probes)
    failed = [p.name for p in probes if p.failures]
    entries = {
        f"soak::{p.name}": {
            "ids": PROVES[p.name],
            "outcome": "failed" if p.failures else "passed",
            "count": p.count,
        }
        for p in probes
    }
    write_result(REPORT, {"results": entries})
    print(f"soak: {len(probes) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("soak", help="load and fault probes against a real server")
    parser.add_argument("--short", action="store_true", help="the smaller version (dev loop)")
    parser.set_defaults(run=run)
