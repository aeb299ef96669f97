"""Log records carry the correlation ID of the request they belong to; text or JSON lines.

The ID lives in a context variable set by the correlation middleware. asyncio copies the
context into every task created while handling a request, so the runner that decodes a task,
its adapter calls and its final task line all log the ID of the request that admitted it;
work that belongs to no request (supervision, start-up) logs ``-``.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s"


class CorrelationFilter(logging.Filter):
    """Stamps each record with the current correlation ID (in the emitting thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "correlation_id"):
            record.correlation_id = correlation_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, correlation ID."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))
