"""A stand-in for Text Generation Inference, built from TGI's documented HTTP protocol.

TGI needs a GPU build that cannot run where this project is tested, so the TGI adapter is
exercised against this server: ``/health``, ``/info``, ``/tokenize``, ``/metrics`` and
``/generate_stream`` with TGI's event shapes (a ``token`` object per event, written as
``data:`` without a space as TGI's server does; the last event carrying ``generated_text``
and ``details``). Text comes from the seed, so the same request gives the same tokens. It is
a protocol fake, not an engine, and every test that uses it says so.

``python -m xtask.fakes.fake_tgi --port N`` serves it on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from typing import Any

from aiohttp import web

WORDS = ("the", "queue", "token", "slot", "seed", "llama", "model", "stream", "pool", "task")
VERSION = "3.0.1-protocol-fake"


def seeded_tokens(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" " + rng.choice(WORDS) for _ in range(count)]


async def info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "model_id": "protocol-fake/tgi",
            "model_sha": None,
            "max_concurrent_requests": 128,
            "max_input_tokens": 4095,
            "max_total_tokens": 4096,
            "version": VERSION,
        }
    )


async def tokenize(request: web.Request) -> web.Response:
    text = (await request.json())["inputs"]
    pieces = text.split()
    return web.json_response(
        [{"id": i, "text": p, "start": 0, "stop": len(p)} for i, p in enumerate(pieces)]
    )


async def generate_stream(request: web.Request) -> web.StreamResponse:
    body: dict[str, Any] = await request.json()
    parameters = body.get("parameters") or {}
    if parameters.get("temperature") == 0:
        return web.json_response({"error": "temperature must be strictly positive"}, status=422)
    count = int(parameters.get("max_new_tokens", 20))
    tokens = seeded_tokens(int(parameters.get("seed") or 0), count)
    # TGI lists the prompt's tokens (prefill) only when asked with decoder_input_details.
    prefill = (
        [{"id": i, "text": w} for i, w in enumerate(str(body["inputs"]).split())]
        if parameters.get("decoder_input_details")
        else []
    )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for index, text in enumerate(tokens, 1):
        last = index == len(tokens)
        event = {
            "index": index,
            "token": {"id": index, "text": text, "logprob": -0.5, "special": False},
            "generated_text": "".join(tokens) if last else None,
            "details": (
                {
                    "finish_reason": "length",
                    "generated_tokens": count,
                    "seed": parameters.get("seed"),
                    "prefill": prefill,
                }
                if last
                else None
            ),
        }
        await response.write(b"data:" + json.dumps(event).encode() + b"\n\n")
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text="tgi_request_count 0\n")


def build_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/info", info)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/generate_stream", generate_stream)
    app.router.add_get("/metrics", metrics)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(build_app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
