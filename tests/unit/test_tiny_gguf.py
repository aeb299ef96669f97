"""The generated test model is byte-identical on every run and shaped as declared."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import pytest

from orchestratord.models.digest import sha256_file
from orchestratord.models.tiny_gguf import (
    TINY_MODEL_FILENAME,
    default_cache_dir,
    ensure_tiny_model,
    write_tiny_model,
)


def test_generation_is_byte_identical(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "a.gguf")
    write_tiny_model(tmp_path / "b.gguf")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    assert sha256_file(tmp_path / "a.gguf") == sha256_file(tmp_path / "b.gguf")
    assert not list(tmp_path.glob("*.tmp"))


def test_ensure_generates_once(tmp_path: Path) -> None:
    path = ensure_tiny_model(tmp_path)
    assert path == tmp_path / "models" / TINY_MODEL_FILENAME
    before = path.stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == path
    assert path.stat().st_mtime_ns == before


def test_metadata_describes_a_small_llama_with_byte_fallback(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_tiny_model(path)
    reader = gguf.GGUFReader(path)

    def scalar(key: str) -> object:
        field = reader.fields[key]
        return field.parts[field.data[0]].tolist()[0]

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama"
    assert scalar("llama.block_count") == 2
    assert scalar("llama.embedding_length") == 128
    types = reader.fields["tokenizer.ggml.token_type"]
    values = [types.parts[i].tolist()[0] for i in types.data]
    assert values.count(gguf.TokenType.BYTE.value) == 256
    assert path.stat().st_size < 2_000_000


def test_cache_dir_honours_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLORCH_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LLORCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "llama-orch"
    assert os.environ["XDG_CACHE_HOME"]
