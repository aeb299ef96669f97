"""Deterministic shares of the checks for ``dev-loop --shard I/N`` (HARN-303).

A share is decided by a stable hash of a file path (a test module or a feature file), so
every runner agrees on it without talking to the others, module fixtures stay with their
tests, and both BDD runners get the same scenarios. Whole steps that are not split (pact,
conformance, soak, the static checks, ...) go to one shard each, by their place in the chain.
"""

from __future__ import annotations

import hashlib
import os
import re

SHARD_ENV = "LLORCH_SHARD"
_SPEC = re.compile(r"^(\d+)/(\d+)$")


class ShardError(ValueError):
    pass


def parse(spec: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 1 ≤ I ≤ N."""
    match = _SPEC.match(spec.strip())
    if not match:
        raise ShardError(f"shard {spec!r} is not I/N (for example 1/2)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ShardError(f"shard {spec!r}: I must be between 1 and N")
    return index, count


def current() -> tuple[int, int] | None:
    """The shard this process belongs to (from ``LLORCH_SHARD``), or None for the whole run."""
    spec = os.environ.get(SHARD_ENV)
    return parse(spec) if spec else None


def owner(key: str, count: int) -> int:
    """The shard (1-based) that owns ``key`` (a path relative to the repository root)."""
    digest = hashlib.sha256(key.replace(os.sep, "/").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def owns(key: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or owner(key, shard[1]) == shard[0]


def step_owner(position: int, count: int) -> int:
    """The shard that runs an unsplit step, by its place in the chain (round robin)."""
    return position % count + 1
