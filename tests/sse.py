"""A small SSE parser for tests: bytes in, (event, JSON payload) frames out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SSEParser:
    """Feed raw chunks; complete frames come out in order. Comment lines (pings) are counted."""

    frames: list[tuple[str, Any]] = field(default_factory=list)
    pings: int = 0
    _buffer: str = ""

    def feed(self, chunk: bytes | str) -> list[tuple[str, Any]]:
        self._buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        new: list[tuple[str, Any]] = []
        while "\n\n" in self._buffer:
            block, self._buffer = self._buffer.split("\n\n", 1)
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith(":"):
                    self.pings += 1
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
            if data:
                new.append((event, json.loads("\n".join(data))))
        self.frames.extend(new)
        return new


def parse_sse(text: str | bytes) -> list[tuple[str, Any]]:
    parser = SSEParser()
    parser.feed(text)
    return parser.frames


def read_to_terminal_frame(chunks: Iterator[bytes], parser: SSEParser) -> None:
    """Feed ``parser`` from an open stream's ``chunks`` until its ``end`` or ``error``."""
    for chunk in chunks:
        if any(e in ("end", "error") for e, _ in parser.feed(chunk)):
            return
