"""The project's own tiny llama-architecture GGUF model.

No model can be downloaded where this project is built and tested, yet the end-to-end tests
and the embedded default must run a real ``llama-server``. So the model is generated: a
2-layer llama with an SPM vocabulary of English-ish pieces plus byte fallback, random
weights from a fixed seed, written with the official ``gguf`` writer. Same bytes on every
run and machine, so its sha256 (the model digest) is stable too.

The output matrix gives normal pieces most of the probability mass and leaves byte-fallback
and end-of-sequence rows at zero, so with the default top-k sampling the streamed text is
readable pieces and generations rarely stop early.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a model is written: a server that finds it pays nothing
    import gguf
    import numpy as np

TINY_MODEL_REF: str = "llorch/tiny-llama"
TINY_MODEL_FILENAME: str = "llorch-tiny-llama-f16.gguf"

_SEED = 20260917
_N_EMBD = 128
_N_LAYERS = 2
_N_HEAD = 4
_N_HEAD_KV = 2
_N_FF = 320
_CTX_TRAIN = 4096
_HEAD_DIM = _N_EMBD // _N_HEAD

_WORDS = (  # noqa: SIM905 - a word list reads better as prose
    "the of and to in is was for on that with as it by at from his her they this be are "
    "have had not but or an which one all were we when there can been has more if no out "
    "so what up its about into than them only other new some could time these two may "
    "then do first any my now such like our over man me even most made after also did "
    "many before must through back years where much your way well down should because "
    "each just those people how too little state good very make world still own see men "
    "work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three "
    "queue token slot seed llama model stream cancel pool engine task batch night river "
    "stone light garden window story king queen cat dog bird tree house road city sea sun "
    "moon star rain wind fire water"
).split()
_SUFFIXES = ("s", "ed", "ing", "er", "ly", "est", "tion")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;"


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    import gguf  # noqa: PLC0415

    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [
        gguf.TokenType.UNKNOWN.value,
        gguf.TokenType.CONTROL.value,
        gguf.TokenType.CONTROL.value,
    ]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(gguf.TokenType.BYTE.value)
    pieces: list[str] = ["▁"]
    pieces += [f"▁{word}" for word in dict.fromkeys(_WORDS)]
    pieces += list(_SUFFIXES)
    pieces += list(_CHARS)
    pieces += [f"▁{ch}" for ch in _CHARS]
    for rank, piece in enumerate(dict.fromkeys(pieces)):
        tokens.append(piece)
        # SPM merges prefer higher scores: whole words over single characters.
        scores.append(-float(rank) if len(piece) > 2 else -1000.0 - rank)
        types.append(gguf.TokenType.NORMAL.value)
    return tokens, scores, types


def _weights(rng: np.random.Generator, rows: int, cols: int, scale: float) -> np.ndarray:
    import numpy as np  # noqa: PLC0415

    return (rng.standard_normal((rows, cols)) * scale).astype(np.float16)


def _write_metadata(
    writer: gguf.GGUFWriter, tokens: list[str], scores: list[float], types: list[int]
) -> None:
    import gguf  # noqa: PLC0415

    writer.add_name("llorch tiny llama (random weights, for tests)")
    writer.add_context_length(_CTX_TRAIN)
    writer.add_embedding_length(_N_EMBD)
    writer.add_block_count(_N_LAYERS)
    writer.add_feed_forward_length(_N_FF)
    writer.add_head_count(_N_HEAD)
    writer.add_head_count_kv(_N_HEAD_KV)
    writer.add_rope_dimension_count(_HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_tiny_model(path: Path, seed: int = _SEED) -> None:
    """The tiny model; another ``seed`` gives a model of the same shape with other weights
    (a different model to llama.cpp: other digest, other text)."""
    import gguf  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp_name, "llama")
        _write_metadata(writer, tokens, scores, types)

        kv_dim = _N_HEAD_KV * _HEAD_DIM
        writer.add_tensor("token_embd.weight", _weights(rng, n_vocab, _N_EMBD, 0.5))
        for layer in range(_N_LAYERS):
            blk = f"blk.{layer}"
            writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
            writer.add_tensor(f"{blk}.attn_q.weight", _weights(rng, _N_EMBD, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.attn_k.weight", _weights(rng, kv_dim, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.attn_v.weight", _weights(rng, kv_dim, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.attn_output.weight", _weights(rng, _N_EMBD, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
            writer.add_tensor(f"{blk}.ffn_gate.weight", _weights(rng, _N_FF, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.ffn_up.weight", _weights(rng, _N_FF, _N_EMBD, 0.08))
            writer.add_tensor(f"{blk}.ffn_down.weight", _weights(rng, _N_EMBD, _N_FF, 0.08))
        writer.add_tensor("output_norm.weight", np.ones(_N_EMBD, dtype=np.float32))
        output = _weights(rng, n_vocab, _N_EMBD, 0.15)
        normal = np.array([t == gguf.TokenType.NORMAL.value for t in types])
        output[~normal] = 0  # bytes, controls and EOS stay below every top-k cut
        writer.add_tensor("output.weight", output)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def default_cache_dir() -> Path:
    explicit = os.environ.get("LLORCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "llama-orch"


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    path = (cache_dir or default_cache_dir()) / "models" / TINY_MODEL_FILENAME
    if not path.exists():
        write_tiny_model(path)
    return path
