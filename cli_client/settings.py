"""Where ``llorch`` finds orchestratord and its token: the server's own defaults.

URL: ``--url``, else ``LLORCH_URL``, else the server config's ``server.host``/``port``
(``--config`` or the embedded default: http://127.0.0.1:8080). Token: ``LLORCH_API_TOKEN``,
else ``auth.token`` in that config, else the token file the server wrote
(``auth.token_file`` or ``<state_dir>/api-token``), read with the server's own checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestratord.auth import TOKEN_ENV, read_secret_file, token_file_path
from orchestratord.config import Config, load_config


class SettingsError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    url: str
    token: str


def resolve(url: str | None, config_path: Path | None, token_file: Path | None) -> Settings:
    try:
        config = load_config(config_path) if config_path is not None else Config()
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read {config_path}: {exc}") from exc
    host = config.server.host
    base = url or os.environ.get("LLORCH_URL")
    if base is None:
        shown = f"[{host}]" if ":" in host else host
        base = f"http://{shown}:{config.server.port}"
    token = os.environ.get(TOKEN_ENV, "").strip() or config.auth.token
    if not token:
        path = token_file or token_file_path(config)
        try:
            token = read_secret_file(path)
        except (OSError, ValueError) as exc:
            raise SettingsError(
                f"no API token: {exc}. Start orchestratord once (it writes {path}), or set "
                f"{TOKEN_ENV}"
            ) from exc
    return Settings(base.rstrip("/"), token)
