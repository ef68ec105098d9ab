"""The KV cache the engine owns: one slot per running request, each request's keys and values at
their absolute positions from 0.

Per layer, keys and values are float32 numpy arrays `[slots, kv_heads, time, head_dim]`, so a range
of slots is one contiguous block: ONNX Runtime binds it as the attention's past and present at once
(written in place), torch wraps it with `torch.from_numpy` (no copy). The arrays grow when more slots
or positions are needed (by a quarter, at least 16 positions), and are released when the batch
empties. A request leaving moves at most one other row's data into its slot (`move`).
"""

from __future__ import annotations

from typing import List

import numpy as np

TIME_HEADROOM = 16  # spare positions allocated beyond what is asked when the buffers grow


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.keys: List[np.ndarray] = []
        self.values: List[np.ndarray] = []
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
        for store in (self.keys, self.values):
            for layer in range(self.n_layers):
                grown = np.zeros(shape, dtype=np.float32)
                if layer < len(store):
                    old = store[layer]
                    grown[: old.shape[0], :, : old.shape[2]] = old
                    store[layer] = grown
                else:
                    store.append(grown)
        self.slot_capacity, self.time_capacity = new_slots, new_time

    def move(self, source: int, target: int, length: int) -> None:
        """Copy one slot's first `length` positions into another slot (a row changing places)."""
        for store in (self.keys, self.values):
            for array in store:
                array[target, :, :length] = array[source, :, :length]

    def clear(self) -> None:
        """Give the memory back (the batch is empty)."""
        self.keys, self.values = [], []
        self.slot_capacity = self.time_capacity = 0

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys + self.values)
