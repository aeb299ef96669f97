"""Token resolution never leaks the token and keeps generated files private (HOME-102)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestratord.auth import TOKEN_ENV, resolve_token
from orchestratord.config import AuthConfig, Config


def config(tmp_path: Path, **auth: object) -> Config:
    return Config(state_dir=tmp_path / "state", auth=AuthConfig(**auth))  # type: ignore[arg-type]


@pytest.mark.req("HOME-102")
def test_env_token_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-env-token")
    token = resolve_token(config(tmp_path, token="from-config-token-xx"))
    assert (token.value, token.origin) == ("from-env-token", "env")


@pytest.mark.req("HOME-102", "OC-CTRL-2041")
def test_generated_token_is_private_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    first = resolve_token(config(tmp_path))
    assert first.origin == "generated"
    assert first.path == tmp_path / "state" / "api-token"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert len(first.value) >= 32
    assert first.value not in repr(first)
    again = resolve_token(config(tmp_path))
    assert (again.value, again.origin) == (first.value, "file")


@pytest.mark.req("HOME-102")
def test_world_readable_token_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    path = tmp_path / "token"
    path.write_text("some-token-value-123\n")
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        resolve_token(config(tmp_path, token_file=path))
