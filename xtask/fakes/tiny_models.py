"""``python -m xtask tiny-models DIR``: three small, distinct GGUF files to try models on demand.

The tiny model's shape with three weight seeds: to llama.cpp they are three different models
(different tokens for the same prompt), each about 1 MB. ``config/examples/models-on-demand.yaml``
serves them from ``models/`` as three on-demand pools on one declared card.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from orchestratord.models.tiny_gguf import write_tiny_model

NAMES = ("alpha", "beta", "gamma")
FIRST_SEED = 11


def run(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    directory.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(NAMES, FIRST_SEED):
        path = directory / f"{name}.gguf"
        write_tiny_model(path, seed=seed)
        print(f"{path} ({path.stat().st_size:,} bytes, seed {seed})")
    return 0


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "tiny-models", help="three small, distinct GGUF files (alpha, beta, gamma)"
    )
    parser.add_argument("directory", type=Path, nargs="?", default=Path("models"))
    parser.set_defaults(run=run)
