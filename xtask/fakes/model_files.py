"""GGUF files of real model shapes without their weights, for placement tests.

The header, metadata and tensor table are written with the official ``gguf`` writer exactly
as for a real model; the tensor data is a hole (a sparse file), so a "13 GiB" model costs a
few kilobytes of disk. Placement reads only the header and tensor table, like llama.cpp's
own size estimate; no engine is ever asked to load these files.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from orchestratord.models.tiny_gguf import tiny_vocab


def write_shaped_gguf(
    path: Path,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int = 32000,
    with_tokenizer: bool = False,
) -> int:
    """Write a llama-shaped f16 GGUF whose tensors are holes; returns the weights' bytes.

    ``with_tokenizer`` adds the tiny model's vocabulary (and sizes the embeddings to it), so
    that llama.cpp's own tools, which load the vocabulary, can read the file too."""
    writer = gguf.GGUFWriter(path, "llama")
    if with_tokenizer:
        tokens, scores, types = tiny_vocab()
        n_vocab = len(tokens)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
    writer.add_block_count(n_layer)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    head_dim = n_embd // n_head
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for layer in range(n_layer):
        prefix = f"blk.{layer}."
        shapes |= {
            prefix + "attn_norm.weight": (n_embd,),
            prefix + "attn_q.weight": (n_embd, n_embd),
            prefix + "attn_k.weight": (n_head_kv * head_dim, n_embd),
            prefix + "attn_v.weight": (n_head_kv * head_dim, n_embd),
            prefix + "attn_output.weight": (n_embd, n_embd),
            prefix + "ffn_norm.weight": (n_embd,),
            prefix + "ffn_gate.weight": (n_ff, n_embd),
            prefix + "ffn_up.weight": (n_ff, n_embd),
            prefix + "ffn_down.weight": (n_embd, n_ff),
        }
    total = 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        writer.add_tensor_info(
            name, shape, np.dtype(np.float16), nbytes, gguf.GGMLQuantizationType.F16
        )
        total += nbytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    # Tensor data starts at the next alignment boundary; every tensor is padded to it too.
    reader_end = path.stat().st_size
    align = 32
    padded = sum(-(-int(np.prod(s)) * 2 // align) * align for s in shapes.values())
    with path.open("r+b") as fh:
        fh.truncate(-(-reader_end // align) * align + padded)
    return total
