"""Pieces both native models share: linear layers (float32 or int8), the embedding/LM-head pair,
and attention over the engine's KV cache."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .int8 import Int8Embedding, Int8Linear, quantize_rows
from .kv_cache import KVCache


class Linear(nn.Module):
    """float32 `x @ W.T + b`; the weight is the checkpoint's tensor (no copy)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None):
        super().__init__()
        self.weight = weight.contiguous()
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def make_linear(weight: torch.Tensor, bias: Optional[torch.Tensor], quantize: str, skinny: bool = False):
    if quantize == "int8":
        return Int8Linear(weight, bias)
    if skinny:
        from .skinny import SkinnyLinear

        return SkinnyLinear(weight.contiguous(), bias)
    return Linear(weight, bias)


def embedding_and_head(checkpoint, table: str, head: Optional[str], quantize: str, skinny: bool = False):
    """The token embedding and the LM head, from checkpoint tensor names (`head` None: tied).
    float32 shares one table between them. int8 quantizes the table once, a slice at a time (a float32
    copy of DistilGPT2's table alone is 154 MB), and keeps those int8 rows for lookups beside FBGEMM's
    packed copy of the same numbers for the head."""
    if quantize == "int8":
        q, scale = quantize_rows(checkpoint.shape(table), lambda a, b: checkpoint.rows(table, a, b))
        embed = Int8Embedding(q, scale)
        if head is None:
            return embed, Int8Linear.from_int8(q, scale)
        return embed, Int8Linear.from_int8(*quantize_rows(checkpoint.shape(head), lambda a, b: checkpoint.rows(head, a, b)))
    weights = checkpoint.get(table)
    return _FloatEmbedding(weights), make_linear(weights if head is None else checkpoint.get(head), None, quantize, skinny)


class _FloatEmbedding(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: KVCache,
    layer: int,
    first_slot: int,
    positions: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """q: [rows, time, heads, dim]; k, v: [rows, time, kv_heads, dim] for the new positions.

    Writes k and v into the rows' cache slots at their positions, then attends each query to its own
    row's positions up to its own (`mask`: [rows, 1, time, length]). Returns [rows, time, heads*dim]."""
    rows, time, heads, dim = q.shape
    slots = torch.arange(first_slot, first_slot + rows)
    cache.write(layer, slots, positions, k, v)
    keys, values = cache.view(layer, first_slot, rows, mask.shape[-1])
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != heads
    )
    return out.transpose(1, 2).reshape(rows, time, heads * dim)


def attention_mask(positions: torch.Tensor) -> torch.Tensor:
    """Each query (at its absolute position) sees its row's positions 0..itself: [rows, 1, time, length]."""
    length = int(positions.max()) + 1
    return (torch.arange(length)[None, None, :] <= positions[:, :, None]).unsqueeze(1)


def pick_positions(x: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """x: [rows, time, ...]; last: [rows] (one position per row) or [rows, n] -> x at those positions."""
    rows = torch.arange(x.shape[0]).view(-1, *([1] * (last.dim() - 1)))
    return x[rows, last]
