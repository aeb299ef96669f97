"""An engine's output, copied from a pipe into a size-capped, rotated log file.

The engine writes to a pipe; a daemon thread copies it line by line into ``<pool>.log``,
renaming a full file to ``<pool>.log.1`` (one generation kept), so a long-running engine never
fills the disk. The last lines stay in memory for start-up error messages.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.tail: deque[str] = deque(maxlen=15)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write(self, line: bytes) -> None:
        with self._lock:
            if self._size + len(line) > self.max_bytes and self._size > 0:
                self._file.close()
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = self.path.open("ab")
                self._size = 0
            self._file.write(line)
            self._file.flush()
            self._size += len(line)
            self.tail.append(line.decode("utf-8", "replace").rstrip("\n"))

    def pump(self, read_fd: int) -> threading.Thread:
        """Copy everything from ``read_fd`` until the writer closes it (the engine exits)."""

        def copy() -> None:
            with os.fdopen(read_fd, "rb") as pipe:
                for line in pipe:
                    self.write(line)

        thread = threading.Thread(target=copy, name=f"engine-log-{self.path.stem}", daemon=True)
        thread.start()
        return thread
