"""Pieces both native models share: linear layers (float32 or int8), the embedding/LM-head pair,
and attention over the engine's KV cache."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..kv_cache import KVCache
from .int8 import Int8Linear
from .torch_cache import store_and_read


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

    float32 shares one table between them. int8 quantizes the head a slice at a time (a float32 copy
    of DistilGPT2's table alone is 154 MB) into FBGEMM's packed layout, which cannot be read back a
    row at a time; the embedding then reads its few rows per step straight from the checkpoint file
    (`FileEmbedding`), so the table is held in memory once, as int8, instead of twice (-38 MB here)."""
    if quantize == "int8":
        source = head or table
        lm_head = Int8Linear((checkpoint.shape(source), lambda a, b: checkpoint.rows(source, a, b)))
        return FileEmbedding(*checkpoint.locate(table)), lm_head
    weights = checkpoint.get(table)
    return _FloatEmbedding(weights), make_linear(weights if head is None else checkpoint.get(head), None, quantize, skinny)


class FileEmbedding(nn.Module):
    """Embedding rows read from the checkpoint file when looked up: a step needs one row per running
    request (a prompt chunk, one per token), a few KB from the page cache, and the table costs no
    resident memory. `os.pread` has no shared file position, so any thread may read."""

    def __init__(self, path: str, dtype: torch.dtype, shape: list, offset: int):
        super().__init__()
        self.path, self.dtype, self.offset = path, dtype, offset
        self.rows, self.width = shape
        self.row_bytes = self.width * torch.empty(0, dtype=dtype).element_size()
        self._fd = os.open(path, os.O_RDONLY)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        wanted = ids.reshape(-1).tolist()
        unique = sorted(set(wanted))
        if unique and not 0 <= unique[0] <= unique[-1] < self.rows:
            raise IndexError(f"token id out of range 0..{self.rows - 1}")
        table = torch.empty(len(unique), self.width, dtype=self.dtype)
        buffer = table.view(torch.uint8).numpy().reshape(len(unique), self.row_bytes)
        for i, token in enumerate(unique):
            data = os.pread(self._fd, self.row_bytes, self.offset + token * self.row_bytes)
            if len(data) != self.row_bytes:
                raise IOError(f"{self.path}: short read of embedding row {token}")
            buffer[i] = np.frombuffer(data, dtype=np.uint8)
        position = {t: i for i, t in enumerate(unique)}
        index = torch.tensor([position[t] for t in wanted], dtype=torch.long)
        return table.float()[index].reshape(*ids.shape, self.width)

    def __del__(self):
        try:
            os.close(self._fd)
        except (AttributeError, OSError):
            pass


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
    scale: Optional[float] = None,
) -> torch.Tensor:
    """q: [rows, time, heads, dim]; k, v: [rows, time, kv_heads, dim] for the new positions; `scale` of
    the scores, None: 1 / sqrt(dim).

    Writes k and v into the rows' cache slots at their positions, then attends each query to its own
    row's positions up to its own (`mask`: [rows, 1, time, length]). Returns [rows, time, heads*dim]."""
    rows, time, heads, dim = q.shape
    keys, values = store_and_read(cache, layer, first_slot, positions, k, v)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=keys.shape[1] != heads, scale=scale
    )
    return out.transpose(1, 2).reshape(rows, time, heads * dim)


def attention_mask(positions: torch.Tensor, window: Optional[int] = None) -> torch.Tensor:
    """Each query (at its absolute position) sees its row's positions 0..itself, or with a sliding
    `window` only the last `window` of them: [rows, 1, time, length]."""
    length = int(positions.max()) + 1
    keys, queries = torch.arange(length)[None, None, :], positions[:, :, None]
    seen = keys <= queries
    if window is not None:
        seen &= keys > queries - window
    return seen.unsqueeze(1)


def pick_positions(x: torch.Tensor, last) -> torch.Tensor:
    """x: [rows, time, ...]; last: [rows] (one position per row) or [rows, n] -> x at those positions;
    or a pair (row indices [R], positions [R]) -> x at each pair, [R, ...]."""
    if isinstance(last, tuple):
        return x[last[0], last[1]]
    rows = torch.arange(x.shape[0]).view(-1, *([1] * (last.dim() - 1)))
    return x[rows, last]
