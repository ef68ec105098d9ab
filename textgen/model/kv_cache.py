"""The KV cache the engine owns: one slot per running request, each request's keys and values at
their absolute positions from 0.

Per layer, keys and values are float32 numpy arrays `[slots, kv_heads, time, head_dim]`, so a range
of slots is one contiguous block: ONNX Runtime binds it as the attention's past and present at once
(written in place), torch wraps it with `torch.from_numpy` (no copy). The arrays grow when more slots
or positions are needed (by a quarter, at least 16 positions), and are released when the batch
empties. A request leaving moves at most one other row's data into its slot (`move`).

Memory follows the rows, not the arrays' shape (MAX_BATCH_TOTAL_TOKENS counts the rows' tokens): the
arrays are anonymous memory maps whose pages become resident only when written; a regrowth copies only
the positions rows hold (`lengths`). While the arrays' whole shape (slots x positions) fits
`budget_tokens` (the engine sets MAX_BATCH_TOTAL_TOKENS), even all of it resident stays within the
budget: the pages are 2 MB huge pages and a leaving row's pages are kept for the next row (giving them
back and faulting them in again cost SmolLM2 4-5% of its tokens/s at 1 client). Beyond it, pages are
4 KB, so one written position does not make its neighbours resident, and the positions a row no longer
holds are given back to the system at once (`release`: a slot left empty, the tail of a slot a shorter
row moved into). Huge pages make decode steps faster (DistilGPT2's shape, 8 rows
of 512: 4 KB pages took 1.07-1.17x as long; docs/performance.md, KV-cache budget). numpy's own
allocation would not do: it asks for huge pages whatever the size, and glibc zeroes a reused heap block
by writing it.
"""

from __future__ import annotations

import mmap
from typing import List, Optional, Sequence

import numpy as np

# Spare positions allocated beyond what is asked when the buffers grow. A regrowth maps and copies every
# layer's arrays (SmolLM2, one row: ~1.1 ms each); at 16 a 64-token answer regrew four times, 0.1 ms a
# token of a 5.6 ms step. Beyond the huge-page budget, unwritten positions take no memory: their 4 KB
# pages are never touched.
TIME_HEADROOM = 64
DTYPE = np.dtype(np.float32)


def _zeros(shape, huge_pages: bool = False) -> np.ndarray:
    """A zero array whose pages are resident only once written (an anonymous map, in 4 KB pages unless
    `huge_pages`)."""
    size = max(1, int(np.prod(shape)) * DTYPE.itemsize)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # shared memory would keep what DONTNEED drops
    advice = "MADV_HUGEPAGE" if huge_pages else "MADV_NOHUGEPAGE"
    if hasattr(mmap, advice):
        region.madvise(getattr(mmap, advice))
    return np.frombuffer(region, dtype=DTYPE, count=int(np.prod(shape))).reshape(shape)


def _release(array: np.ndarray, start: int, stop: int) -> None:
    """Give back the whole pages within bytes [start, stop) of `array` (they read as zeros again)."""
    region = array.base
    while isinstance(region, np.ndarray):  # the reshaped view -> the flat one -> its buffer
        region = region.base
    region = region.obj  # the buffer is a memoryview of the map
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last = stop // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        region.madvise(mmap.MADV_DONTNEED, first, last - first)


class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.keys: List[np.ndarray] = []
        self.values: List[np.ndarray] = []
        self.slot_capacity = 0
        self.time_capacity = 0
        self.budget_tokens = 0  # slots x positions up to which the arrays take huge pages and keep released rows' pages

    @property
    def bytes_per_token(self) -> int:
        """Memory one token of one row takes: keys and values of every layer (MAX_BATCH_TOTAL_TOKENS's unit)."""
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * DTYPE.itemsize

    def reserve(self, slots: int, length: int, lengths: Optional[Sequence[int]] = None) -> None:
        """Make room for `slots` rows of `length` positions, keeping what is stored: everything, or, given
        `lengths` (positions held by each slot from 0 on), only that."""
        if slots <= self.slot_capacity and length <= self.time_capacity:
            return
        new_slots = max(slots, self.slot_capacity)
        new_time = self.time_capacity
        if length > self.time_capacity:
            new_time = length + max(TIME_HEADROOM, length // 4)  # amortised: few regrowths per request
        shape = (new_slots, self.n_kv_heads, new_time, self.head_dim)
        huge = new_slots * new_time <= self.budget_tokens
        for store in (self.keys, self.values):
            for layer in range(self.n_layers):
                grown = _zeros(shape, huge)
                if layer < len(store):
                    old = store[layer]
                    if lengths is None:
                        grown[: old.shape[0], :, : old.shape[2]] = old
                    else:
                        for slot, held in enumerate(lengths[: old.shape[0]]):  # slots past the old ones hold nothing yet
                            grown[slot, :, :held] = old[slot, :, :held]
                    store[layer] = grown
                else:
                    store.append(grown)
        self.slot_capacity, self.time_capacity = new_slots, new_time

    def move(self, source: int, target: int, length: int) -> None:
        """Copy one slot's first `length` positions into another slot (a row changing places); what the
        target held past them is released."""
        for store in (self.keys, self.values):
            for array in store:
                array[target, :, :length] = array[source, :, :length]
        self.release(target, length)

    def release(self, slot: int, keep: int = 0) -> None:
        """Give back the memory of the slot's positions from `keep` on (0: the whole slot, left empty), where
        the arrays could outgrow the budget."""
        if slot >= self.slot_capacity or keep >= self.time_capacity or self._within_budget():
            return
        row = self.head_dim * DTYPE.itemsize  # bytes of one position of one head
        run = self.time_capacity * row  # one head's positions in one slot
        for array in self.keys + self.values:
            base = slot * self.n_kv_heads * run
            if keep == 0:
                _release(array, base, base + self.n_kv_heads * run)
                continue
            for head in range(self.n_kv_heads):
                _release(array, base + head * run + keep * row, base + (head + 1) * run)

    def _within_budget(self) -> bool:
        return self.slot_capacity * self.time_capacity <= self.budget_tokens

    def clear(self) -> None:
        """Give the memory back (the batch is empty)."""
        self.keys, self.values = [], []
        self.slot_capacity = self.time_capacity = 0

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys + self.values)
