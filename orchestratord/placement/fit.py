"""What one engine process needs on its GPUs (HOME-1001 fit, HARD-207), from the GGUF alone.

llama.cpp places a model like this, and the estimate follows it:

- **Weights**: the first ``gpu_layers`` repeating blocks go to the GPU; the output head too
  once every block is there (``gpu_layers`` > block count); the token embeddings stay in
  host memory. So a model bigger than the card still fits with a partial offload.
- **KV cache**: ``ctx_max x slots`` tokens of the cache types in ``llamacpp.extra_args``,
  for the offloaded blocks only.
- **Compute buffer**: the graph's scratch memory for one micro-batch. Measured with
  ``llama-fit-params`` on llama-shaped models (flash attention on, the default), it is about
  ``ubatch x (3 n_ff + 5.5 n_embd)`` float32 values plus one byte per ``ubatch x context``
  token, within a few percent (the README's table, ``python -m xtask fit-check``); with
  ``-fa off`` the attention scores add ``ubatch x n_head x ctx`` half-precision values (an
  upper bound: llama.cpp reuses part of it).
- **Per process**: ``gpus.reserve_mb`` for the CUDA context and driver, counted once for
  every engine process on every device it uses: two replicas on one card pay it twice.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from orchestratord.config import PoolConfig
from orchestratord.devices.inventory import gib
from orchestratord.models.gguf_shape import CACHE_TYPE_BYTES, ModelShape

_CACHE_FLAGS = {"--cache-type-k": "k", "-ctk": "k", "--cache-type-v": "v", "-ctv": "v"}
_UBATCH_FLAGS = ("-ub", "--ubatch-size")
_FLASH_FLAGS = ("-fa", "--flash-attn")
DEFAULT_UBATCH = 512
_FF_FACTOR = 3.0
_EMBD_FACTOR = 5.5


class FitError(ValueError):
    """The pool's engine arguments cannot be sized."""


def _flag_values(extra_args: list[str]) -> dict[str, str]:
    return dict(itertools.pairwise(extra_args))


def cache_types(extra_args: list[str]) -> tuple[str, str]:
    types = {"k": "f16", "v": "f16"}
    for flag, value in itertools.pairwise(extra_args):
        which = _CACHE_FLAGS.get(flag)
        if which is not None:
            if value not in CACHE_TYPE_BYTES:
                raise FitError(f"unknown KV cache type {value!r} in {flag}")
            types[which] = value
    return types["k"], types["v"]


def _ubatch(extra_args: list[str]) -> int:
    values = _flag_values(extra_args)
    for flag in _UBATCH_FLAGS:
        if flag in values:
            try:
                return max(1, int(values[flag]))
            except ValueError as exc:
                raise FitError(f"{flag} {values[flag]!r} is not a number") from exc
    return DEFAULT_UBATCH


def _flash_attention_off(extra_args: list[str]) -> bool:
    values = _flag_values(extra_args)
    return any(values.get(flag) == "off" for flag in _FLASH_FLAGS)


@dataclass(frozen=True)
class Need:
    """One engine process's VRAM, by part (bytes, over all its devices)."""

    weights: int
    kv: int
    compute: int
    reserve_per_device: int
    layers_on_gpu: int
    n_layer: int
    how_kv: str

    def total(self, devices: int = 1) -> int:
        return self.weights + self.kv + self.compute + self.reserve_per_device * devices

    def describe(self) -> str:
        offload = (
            f"{self.layers_on_gpu}/{self.n_layer} layers"
            if self.layers_on_gpu < self.n_layer
            else "all layers"
        )
        return (
            f"weights {gib(self.weights)} ({offload}) + KV cache {gib(self.kv)} {self.how_kv} "
            f"+ compute {gib(self.compute)} + engine reserve {gib(self.reserve_per_device)}"
        )


def replica_need(pool: PoolConfig, shape: ModelShape, reserve_bytes: int) -> Need:
    args = pool.llamacpp.extra_args
    k_type, v_type = cache_types(args)
    layers = shape.n_layer
    on_gpu = min(pool.gpu_layers, layers)
    head_on_gpu = pool.gpu_layers > layers
    share = on_gpu / layers if layers else 1.0
    layer_bytes = shape.layer_bytes or (shape.weights_bytes - shape.input_bytes)
    weights = math.ceil(layer_bytes * share) + (shape.output_bytes if head_on_gpu else 0)
    tokens = pool.ctx_max * pool.slots
    kv = math.ceil(shape.kv_bytes(tokens, k_type, v_type) * share)
    compute = 0
    if on_gpu:
        ubatch = _ubatch(args)
        activations = ubatch * 4 * (_FF_FACTOR * shape.n_ff + _EMBD_FACTOR * shape.n_embd)
        compute = math.ceil(activations) + ubatch * tokens
        if _flash_attention_off(args):
            compute += ubatch * 2 * shape.n_head * tokens
    how_kv = f"for ctx {pool.ctx_max} x {pool.slots} slots ({k_type}/{v_type})"
    return Need(weights, kv, compute, reserve_bytes, on_gpu, layers, how_kv)
