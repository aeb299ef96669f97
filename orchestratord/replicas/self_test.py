"""The start-up self-test every replica passes before it is Ready (ORCH-3049).

After preload (the engine answers and its properties are read): a minimal decode (one token,
to a final event), a cancel (a longer decode closed after its first token; where the engine
reports slots, every slot must then be idle) and a telemetry read (the engine's metrics).
The same check runs after every restart. A replica that fails it stays Unready with
``last_error`` naming the step, and is retried under the supervisor's backoff.
"""

from __future__ import annotations

import asyncio
import contextlib

from orchestratord.adapters.base import (
    EngineAdapter,
    EngineError,
    GenerationRequest,
    Sampling,
    StreamEnd,
    TokenChunk,
)

_GREEDY = Sampling(
    temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, ignore_eos=True
)


class SelfTestFailed(Exception):
    """``str()`` is safe for clients: the step and the engine's public message."""


async def _minimal_decode(adapter: EngineAdapter) -> None:
    request = GenerationRequest("Hello", 1, 0, _GREEDY, reuse_kv=False, slot=0)
    events = adapter.generate(request)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, StreamEnd):
                return
    raise SelfTestFailed("decode: the engine sent no final event")


# How long the cancel check waits for the engine to free its slot. An engine notices a
# closed stream at its next write; on a machine with every core taken (or an engine at a
# lower priority) that took more than the adapter's own five seconds, and a healthy engine
# failed its start for it. The self-test's overall timeout still bounds the whole check.
CANCEL_SETTLE_S = 30.0
_SETTLE_POLL_S = 0.05


async def _cancel(adapter: EngineAdapter) -> None:
    request = GenerationRequest("Hello", 64, 1, _GREEDY, reuse_kv=False, slot=0)
    events = adapter.generate(request)
    async with contextlib.aclosing(events):
        async for event in events:
            if isinstance(event, TokenChunk | StreamEnd):
                break  # closing the stream is the cancel
    loop = asyncio.get_running_loop()
    give_up = loop.time() + CANCEL_SETTLE_S
    while True:
        busy = [s.id for s in await adapter.slots() if s.busy]
        if not busy:
            return
        if loop.time() >= give_up:
            raise SelfTestFailed(
                f"cancel: engine slots {busy} still busy after a cancel "
                f"({CANCEL_SETTLE_S:g} s later)"
            )
        await asyncio.sleep(_SETTLE_POLL_S)


async def self_test(adapter: EngineAdapter, timeout_s: float) -> None:
    step = "decode"
    try:
        async with asyncio.timeout(timeout_s):
            await _minimal_decode(adapter)
            step = "cancel"
            await _cancel(adapter)
            step = "telemetry"
            await adapter.metrics_text()
    except TimeoutError as exc:
        raise SelfTestFailed(f"{step}: no answer within {timeout_s:g}s") from exc
    except EngineError as exc:
        raise SelfTestFailed(f"{step}: {exc.public_message}") from exc
