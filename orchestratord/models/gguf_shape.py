"""What a GGUF model needs in memory, read from the file's own metadata (HOME-1001 fit).

Weights are the tensors' bytes as stored; the KV cache is, per token of context,
``n_layer x n_head_kv x (key_length + value_length)`` elements of the cache type. Only the
header and tensor table are read (memory-mapped), never the weights themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gguf brings numpy: imported when a file is read, not at start-up
    from gguf import GGUFReader

# Bytes per cached element for llama.cpp's --cache-type-k/-v values (block formats: block
# bytes / block size).
CACHE_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}


class ModelShapeError(ValueError):
    """The file is not a GGUF model whose shape can be read."""


@dataclass(frozen=True, slots=True)
class ModelShape:
    architecture: str
    weights_bytes: int
    n_layer: int
    n_head_kv: int
    key_length: int
    value_length: int
    # What partial offload and the compute buffer need (placement/fit.py).
    layer_bytes: int = 0  # the repeating blocks' tensors (blk.N.*)
    input_bytes: int = 0  # token embeddings: llama.cpp keeps them in host memory
    n_embd: int = 0
    n_ff: int = 0
    n_head: int = 0
    n_vocab: int = 0

    @property
    def output_bytes(self) -> int:
        """Tensors outside the blocks and the input embeddings: the output head and norms."""
        return self.weights_bytes - self.layer_bytes - self.input_bytes

    def kv_bytes(self, tokens: int, cache_type_k: str = "f16", cache_type_v: str = "f16") -> int:
        per_layer_token = self.n_head_kv * (
            self.key_length * CACHE_TYPE_BYTES[cache_type_k]
            + self.value_length * CACHE_TYPE_BYTES[cache_type_v]
        )
        return int(self.n_layer * per_layer_token * tokens)


def _scalar(reader: GGUFReader, key: str) -> int | str | None:
    from gguf import GGUFValueType  # noqa: PLC0415

    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    if field.types and field.types[0] is GGUFValueType.STRING:
        return str(value)
    if isinstance(value, int):
        return value
    raise ModelShapeError(f"metadata {key} is not a number")


def read_model_shape(path: Path) -> ModelShape:
    from gguf import GGUFReader  # noqa: PLC0415

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise ModelShapeError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = _scalar(reader, "general.architecture")
    if not isinstance(arch, str):
        raise ModelShapeError(f"{path}: no general.architecture")

    def number(name: str, default: int | None = None) -> int:
        value = _scalar(reader, f"{arch}.{name}")
        if isinstance(value, int):
            return value
        if default is not None:
            return default
        raise ModelShapeError(f"{path}: no {arch}.{name}")

    n_embd = number("embedding_length")
    n_head = number("attention.head_count")
    head_dim = n_embd // max(n_head, 1)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    embeddings = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    n_vocab = len(tokens.data) if tokens is not None else 0
    if not n_vocab and embeddings is not None:
        n_vocab = int(max(embeddings.shape))
    return ModelShape(
        architecture=arch,
        weights_bytes=sum(sizes.values()),
        n_layer=number("block_count"),
        n_head_kv=number("attention.head_count_kv", n_head),
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
        layer_bytes=sum(size for name, size in sizes.items() if name.startswith("blk.")),
        input_bytes=sizes.get("token_embd.weight", 0),
        n_embd=n_embd,
        n_ff=number("feed_forward_length", 4 * n_embd),
        n_head=n_head,
        n_vocab=n_vocab,
    )
