"""Where the shared API token comes from (HOME-102, OC-CTRL-2041).

Order: ``LLORCH_API_TOKEN``, then ``auth.token`` in the config, then a token file. If none
exists a random token is generated into that file with mode 0600. Only the file's path is ever
printed or logged, never the token.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orchestratord.config import Config

TOKEN_ENV = "LLORCH_API_TOKEN"


@dataclass(frozen=True, repr=False)
class ApiToken:
    value: str
    origin: Literal["env", "config", "file", "generated"]
    path: Path | None = None

    def __repr__(self) -> str:  # keeps the secret out of tracebacks and debug logs
        return f"ApiToken(origin={self.origin!r}, path={self.path!r})"


def token_file_path(config: Config) -> Path:
    return config.auth.token_file or config.resolved_state_dir() / "api-token"


def resolve_token(config: Config) -> ApiToken:
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return ApiToken(from_env, "env")
    if config.auth.token:
        return ApiToken(config.auth.token, "config")
    path = token_file_path(config)
    if os.path.lexists(path):
        return ApiToken(read_secret_file(path), "file", path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return ApiToken(value, "generated", path)


def read_secret_file(path: Path) -> str:
    """Read the token only from a regular file of ours that nobody else can read.

    A symlink is refused (it could point the server at another user's file or let someone
    swap the token under it), and so is a file owned by another user.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise PermissionError(
                f"{path} is a symlink; the token file must be a plain file"
            ) from None
        raise PermissionError(f"cannot open {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "r", encoding="utf-8") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{path} is not a regular file")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this user")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
        value = fh.read().strip()
    if not value:
        raise ValueError(f"{path} is empty")
    return value
