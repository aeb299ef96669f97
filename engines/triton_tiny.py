"""A real NVIDIA Triton server (PyTriton) serving a small decoupled text model, for tests.

Runs in its own virtualenv (``.venv-triton``: nvidia-pytriton pins numpy<2), so it imports
nothing from llama-orch. The model ``tiny-words`` streams one response per token through the
KServe v2 ``generate_stream`` extension: inputs ``text_input`` (BYTES), optional
``max_tokens`` and ``seed`` (INT32); output ``text_output``. Its text is a seeded draw from
a fixed word list: the same seed gives the same stream, any other seed another one.

    .venv-triton/bin/python engines/triton_tiny.py --http-port 8000 --metrics-port 8002
"""

from __future__ import annotations

import argparse
import random
import socket
import tempfile

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "the of and to in is was for on that with as it by at from his her they this be are "
    "queue token slot seed llama model stream cancel pool engine task batch night river"
).split()


@batch
def generate(
    text_input: np.ndarray, max_tokens: np.ndarray | None = None, seed: np.ndarray | None = None
):  # type: ignore[no-untyped-def]
    count = int(max_tokens[0][0]) if max_tokens is not None else 16
    rng = random.Random(int(seed[0][0]) if seed is not None else 0)
    for _ in range(count):
        word = " " + rng.choice(WORDS)
        yield {"text_output": np.array([[word.encode()]], dtype=np.object_)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=free_port(),
        metrics_port=args.metrics_port,
        log_verbose=0,
    )
    with (
        tempfile.TemporaryDirectory(prefix="llorch-triton-") as workspace,
        Triton(config=config, workspace=f"{workspace}/ws") as triton,
    ):
        triton.bind(
            model_name="tiny-words",
            infer_func=generate,
            inputs=[
                Tensor(name="text_input", dtype=bytes, shape=(1,)),
                Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
                Tensor(name="seed", dtype=np.int32, shape=(1,), optional=True),
            ],
            outputs=[Tensor(name="text_output", dtype=bytes, shape=(1,))],
            config=ModelConfig(decoupled=True, max_batch_size=8),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
