"""Facts read from a model file (its sha256, its longest token), remembered while the file
is unchanged.

Hashing a 7 GB GGUF takes seconds, and an on-demand pool's engine starts many times in one
process's life (RES-101): each start would otherwise hash the file again before its first
token. A fact is remembered under the file's identity and version (device, inode, size,
modification time), so a file replaced or rewritten in place is read again. The residency
manager warms the facts of every on-demand model at start-up, off the load path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_MAX_FACTS = 256  # model files are few; a bound all the same
_facts: dict[tuple[str, str, int, int, int, int], object] = {}
_lock = threading.Lock()


def remembered(read: Callable[[Path], T], path: Path) -> T:
    """``read(path)``, or what it returned for this very file before. Blocking: call it in a
    worker thread."""
    stat = os.stat(path)
    key = (read.__qualname__, str(Path(path).resolve()), stat.st_dev, stat.st_ino,
           stat.st_size, stat.st_mtime_ns)  # fmt: skip
    with _lock:
        if key in _facts:
            return _facts[key]  # type: ignore[return-value]
    value = read(path)
    with _lock:
        _facts[key] = value
        while len(_facts) > _MAX_FACTS:
            del _facts[next(iter(_facts))]  # the oldest
    return value
