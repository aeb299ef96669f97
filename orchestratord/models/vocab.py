"""What a GGUF model's vocabulary says about prompt sizes, read once per pool start."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("orchestratord.models")


def max_token_bytes(path: Path) -> int | None:
    """The longest piece of text one token of this model can stand for, in UTF-8 bytes.

    A prompt of ``b`` bytes needs at least ``b // max_token_bytes`` tokens, so admission can
    refuse a prompt that cannot fit without asking the engine to tokenize it. None when the
    file has no readable vocabulary (the bound is then not used).
    """
    from gguf import GGUFReader  # noqa: PLC0415 - only pools with a GGUF file need it

    try:
        field = GGUFReader(path).fields["tokenizer.ggml.tokens"]
        longest = max(len(bytes(field.parts[index])) for index in field.data)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("no vocabulary bound for %s: %s", path.name, exc)
        return None
    return max(longest, 1)
