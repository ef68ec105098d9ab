"""The engine's numpy KV cache seen from torch: views made with `torch.from_numpy`, so what the
attention writes lands in the engine's own arrays and nothing is copied per step."""

from __future__ import annotations

from typing import Tuple

import torch

from ..kv_cache import KVCache


def store_and_read(
    cache: KVCache, layer: int, first_slot: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """k, v: [rows, time, kv_heads, dim], the new keys and values of rows living in slots first_slot..
    at `positions` ([rows, time]). Writes them into the cache, then returns the rows' keys and values at
    positions 0..max(positions): [rows, kv_heads, length, dim] each (views, no copy)."""
    rows = positions.shape[0]
    length = int(positions.max()) + 1
    index = (torch.arange(rows)[:, None], slice(None), positions)
    views = []
    for store, new in ((cache.keys, k), (cache.values, v)):
        view = torch.from_numpy(store[layer])[first_slot : first_slot + rows]
        view[index] = new
        views.append(view[:, :, :length])
    return views[0], views[1]
