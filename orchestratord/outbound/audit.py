"""The outbound audit log (OC-POLICY-4032, HARD-105, HARD-107): one JSON line per decision,
appended, never rewritten.

``<state_dir>/tool-audit.jsonl``, mode 0600, opened with ``O_APPEND`` for every record so a
record is one ``write`` and nothing in orchestratord can rewrite an earlier one. A decision
is written before the request it allows is sent. Records carry no secret: URLs and reasons
pass the redactor (``redact.py``) before they get here.

The write runs in a worker thread, so a slow disk never stalls streams. The log is bounded:
past ``outbound.audit_max_bytes`` the file is renamed to ``tool-audit.jsonl.1`` (and so on,
``outbound.audit_keep`` old files, the oldest dropped), so the log never grows without end
while the newest records are always on disk. A record that cannot be written raises
``AuditUnwritable``: the client refuses what it cannot audit (fail closed).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any


class AuditUnwritable(Exception):
    """The record could not be stored; the message says why (no secret in it)."""


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = 64 * 1024**2, keep: int = 2) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        # Rotation and append must not interleave between worker threads.
        self._lock = threading.Lock()

    async def record(self, **fields: Any) -> None:
        entry = {"ts_ms": int(time.time() * 1000), **fields}
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise AuditUnwritable(
                f"the audit log {self.path.name} cannot be written ({exc.strerror or exc})"
            ) from exc

    def _append(self, line: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                status = self.path.lstat()
            except FileNotFoundError:
                status = None
            # Only the log itself is rotated: whatever else is at its path fails the open.
            if (
                status is not None
                and stat.S_ISREG(status.st_mode)
                and (status.st_size + len(line) > self.max_bytes)
            ):
                self._rotate()
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
            fd = os.open(self.path, flags, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        older = [self.path.with_name(f"{self.path.name}.{n}") for n in range(1, self.keep + 1)]
        if not older:
            self.path.unlink(missing_ok=True)
            return
        older[-1].unlink(missing_ok=True)
        for newer, old in zip(reversed(older[:-1]), reversed(older[1:]), strict=True):
            if newer.exists():
                os.replace(newer, old)
        os.replace(self.path, older[0])
