"""The outbound audit log (OC-POLICY-4032): one JSON line per decision, appended, never
rewritten.

``<state_dir>/tool-audit.jsonl``, mode 0600, opened with ``O_APPEND`` for every record so a
record is one ``write`` and nothing in orchestratord can rewrite an earlier one. A decision
is written before the request it allows is sent. Records carry no secret: URLs and reasons
pass the redactor (``redact.py``) before they get here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, **fields: Any) -> None:
        entry = {"ts_ms": int(time.time() * 1000), **fields}
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
