"""The one contract every model backend fills: what the engine may ask of a model, in numpy.

The engine owns the KV cache (`KVCache`, numpy arrays `[slots, kv_heads, time, head_dim]` per layer)
and hands the model a contiguous range of its slots each call. A call is either a prefill chunk
(several tokens per row, right-padded) or a decode step (one token per row); the model writes each
row's new keys and values into its slot at the row's own positions and returns the logits at each
row's last new token (`HiddenStates.hidden_states`: the final hidden states instead, for embeddings).
Backends: `onnx` (ONNX Runtime, one graph, the cache bound in place), `torch` (the native modules, the
readable reference), `transformers` (AutoModelForCausalLM, the fallback).
"""

from __future__ import annotations

from typing import Optional, Protocol, Set, runtime_checkable

import numpy as np

from .kv_cache import KVCache


@runtime_checkable
class CausalLM(Protocol):
    backend: str  # "onnx", "torch" or "transformers"
    dtype_name: str  # "int4", "int8" or "float32": the weights' numbers
    n_layers: int
    n_kv_heads: int
    head_dim: int
    context: int  # positions the model was trained for: no row may go past it
    vocab_size: int
    eos_token_ids: Set[int]
    threads: int  # intra-op threads the runtime uses (reported by /info)
    # A forward costs only the rows' real tokens, not rows x width, so the engine may run a joining
    # prompt's chunk in the decode step's pass (the ONNX graph packs them). Tests' stand-ins may omit it.
    packs_tokens: bool
    # The narrowest pass the model computes: a narrower one runs this wide, its extra columns padding
    # (the ONNX graph: 2, see OnnxModel._two_wide). The engine reserves positions for it. Stand-ins: 1.
    min_width: int

    def forward(
        self,
        tokens: np.ndarray,
        starts: np.ndarray,
        counts: np.ndarray,
        cache: KVCache,
        first_slot: int,
        want_logits: bool,
        logit_index: Optional[np.ndarray] = None,
    ) -> Optional[np.ndarray]:
        """One forward pass over rows that live in cache slots `first_slot, first_slot + 1, ...`.

        tokens: int64 `[rows, width]`, right-padded; starts: int64 `[rows]`, tokens each row already
        has in the cache (the position of its first token here); counts: int64 `[rows]`, its real
        tokens here (0..width; 0 = the row only waits). Positions below a row's start are never written;
        its padding may be (torch does), past its real tokens, where nothing reads before the row's own
        next tokens overwrite it. The engine reserves the cache first: `first_slot + rows` slots and
        `max(starts) + max(width, min_width)` positions fit. Returns float32 `[rows, vocab]`, the logits after each
        row's last real token (rows with count 0: any values), or None when `want_logits` is False.
        `logit_index` (with `want_logits`): int64 `[R]`, flat indices `row * width + s` of the positions
        whose logits are wanted instead, any number per row (a prompt's log-probabilities need every
        position's); the logits come back in that order, `[R, vocab]`."""
        ...


@runtime_checkable
class HiddenStates(Protocol):
    """What embeddings ask of a model beyond `CausalLM` (engine/embeddings.py). Every backend has it; a
    model whose `width` is None (an ONNX graph prebuilt before the graph had a hidden output) serves no
    embeddings, and neither does one without it (the tests' stand-ins)."""

    width: Optional[int]  # the hidden states' width: an embedding's length

    def hidden_states(
        self, tokens: np.ndarray, starts: np.ndarray, counts: np.ndarray, cache: KVCache, first_slot: int, index: np.ndarray,
    ) -> np.ndarray:
        """A pass exactly like `forward`'s (the same cache writes), returning float32 `[len(index), width]`:
        the final hidden states (after the final norm, before the LM head) at the flat positions `index`
        (`row * width + s`, as `logit_index`), in that order."""
        ...
