"""An engine's output, copied from a pipe into a size-capped, rotated log file.

The engine writes to a pipe; a daemon thread copies it in chunks (one read, one write per
chunk, no per-line work: llama-server writes about ten lines per request) into
``<pool>.log``, renaming a full file to ``<pool>.log.1`` (one generation kept), so a
long-running engine never fills the disk. The last few KiB stay in memory for start-up error
messages.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_CHUNK = 64 * 1024
_TAIL_BYTES = 4096


class RotatingLog:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._tail = b""
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    @property
    def tail(self) -> list[str]:
        """The last lines written (a partial first line is dropped)."""
        lines = self._tail.decode("utf-8", "replace").splitlines()
        return lines[1:] if len(self._tail) >= _TAIL_BYTES else lines

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._size + len(data) > self.max_bytes and self._size > 0:
                os.close(self._fd)
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                self._size = 0
            os.write(self._fd, data)
            self._size += len(data)
            self._tail = (self._tail + data)[-_TAIL_BYTES:]

    def pump(self, read_fd: int) -> threading.Thread:
        """Copy everything from ``read_fd`` until the writer closes it (the engine exits)."""

        def copy() -> None:
            try:
                while chunk := os.read(read_fd, _CHUNK):
                    self.write(chunk)
            finally:
                os.close(read_fd)

        thread = threading.Thread(target=copy, name=f"engine-log-{self.path.stem}", daemon=True)
        thread.start()
        return thread
