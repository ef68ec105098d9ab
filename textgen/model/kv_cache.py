"""The KV cache the engine owns: one slot per running request, each request's keys and values at
their absolute positions from 0.

Per layer, keys and values are [slots, kv_heads, time, head_dim]. A decode step writes one column per
row (at that row's own position) and reads a contiguous range of slots as a view, so nothing is copied
per step. The tensors grow in place when more slots or positions are needed (by a quarter, at least
16 positions), and are released when the batch empties. A request leaving moves at most one other
row's data into its slot (`move`), instead of copying the whole cache.
"""

from __future__ import annotations

from typing import List

import torch

TIME_HEADROOM = 16  # spare positions allocated beyond what is asked when the buffers grow


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype = torch.float32):
        self.n_layers, self.n_kv_heads, self.head_dim, self.dtype = n_layers, n_kv_heads, head_dim, dtype
        self.keys: List[torch.Tensor] = []
        self.values: List[torch.Tensor] = []
        self.slot_capacity = 0
        self.time_capacity = 0

    def reserve(self, slots: int, length: int) -> None:
        """Make room for `slots` rows of `length` positions, keeping what is stored."""
        if slots <= self.slot_capacity and length <= self.time_capacity:
            return
        new_slots = max(slots, self.slot_capacity)
        new_time = self.time_capacity
        if length > self.time_capacity:
            new_time = length + max(TIME_HEADROOM, length // 4)  # amortised: few regrowths per request
        shape = (new_slots, self.n_kv_heads, new_time, self.head_dim)
        fresh = not self.keys
        for store in (self.keys, self.values):
            for layer in range(self.n_layers):
                grown = torch.zeros(shape, dtype=self.dtype)
                if fresh:
                    store.append(grown)
                else:
                    old = store[layer]
                    grown[: old.shape[0], :, : old.shape[2]] = old
                    store[layer] = grown
        self.slot_capacity, self.time_capacity = new_slots, new_time

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """k, v: [rows, time, kv_heads, head_dim] for rows in `slots` ([rows]) at `positions` ([rows, time])."""
        index = (slots[:, None], slice(None), positions)
        self.keys[layer][index] = k
        self.values[layer][index] = v

    def view(self, layer: int, first: int, count: int, length: int):
        """Keys and values of slots [first, first+count), positions [0, length): [count, heads, length, dim]."""
        return (
            self.keys[layer][first : first + count, :, :length],
            self.values[layer][first : first + count, :, :length],
        )

    def move(self, source: int, target: int, length: int) -> None:
        """Copy one slot's first `length` positions into another slot (a row changing places)."""
        for store in (self.keys, self.values):
            for tensor in store:
                tensor[target, :, :length] = tensor[source, :, :length]

    def clear(self) -> None:
        """Give the memory back (the batch is empty)."""
        self.keys, self.values = [], []
        self.slot_capacity = self.time_capacity = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
