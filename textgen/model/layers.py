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


def embedding_and_head(table: torch.Tensor, head: Optional[torch.Tensor], quantize: str, skinny: bool = False):
    """The token embedding and the LM head. Tied (head None): float32 shares one table; int8 quantizes
    the table once and keeps those int8 rows for lookups beside FBGEMM's packed copy for the head."""
    if quantize == "int8":
        q, scale = quantize_rows(table)
        del table
        embed = Int8Embedding(q, scale)
        lm_head = Int8Linear.from_int8(q, scale) if head is None else Int8Linear(head)
        return embed, lm_head
    return _FloatEmbedding(table), make_linear(table if head is None else head, None, quantize, skinny)


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
