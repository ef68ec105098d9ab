"""The running batch as an object of its own: which rows decode together, where their keys and values
sit in the KV cache, and the prompts being prefilled. The engine's loop only schedules and updates.

Row i of the batch lives in cache slot i. A group of new rows is prefilled into the slots after the
decoding rows, at most `chunk_tokens` prompt tokens per forward pass, so a long prompt never freezes
the running streams for longer than one chunk; when the whole group is prefilled it joins the batch
(`prefill_step` returns their next-token logits, in the group's order). Rows leave with `remove`: the last rows
move into the holes, so the rest never moves.

With a prefix cache (prefix_cache.py), a group's first prefill step begins by copying into each row's
slot the keys and values of the longest cached block prefix its prompt starts with; the row's prefill
then starts after them (its tokens done). A row that wants its prompt's log-probabilities (a scorer,
below) is prefilled whole: every prompt position's logits are needed. As each row's prefill ends, its
prompt's whole blocks are kept in the prefix cache for the rows that follow.

Rows are opaque to the batch (the engine's request state); it only needs each row's prompt, and, for a
row that wants its prompt's log-probabilities, a `scorer` that takes the logits at every prompt
position, chunk by chunk (`scorer(offset, logits)`), so that they never all sit in memory at once. The
model is any `CausalLM` (model/contract.py): numpy in, numpy out.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import numpy as np

from ..model.contract import CausalLM
from ..model.kv_cache import KVCache
from .prefix_cache import PrefixCache


class Batch:
    def __init__(self, model: CausalLM, chunk_tokens: int = 256, prefix_cache: Optional[PrefixCache] = None):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        self.prefix_cache = prefix_cache  # None: every prompt is prefilled from its first token
        self.rows: List[object] = []  # decoding; row i in slot i
        self.lengths: List[int] = []  # tokens each decoding row has in the cache
        # The group being prefilled, in slots len(rows)..: its rows, prompts, tokens done, final logits.
        self.group: List[object] = []
        self._prompts: List[List[int]] = []
        self._done: List[int] = []
        self._logits: List[Optional[np.ndarray]] = []
        self._scorers: List[Optional[Callable[[int, np.ndarray], None]]] = []
        self._cached: List[int] = []  # prompt tokens each took from the prefix cache
        self._looked_up = False  # the group's cached prefixes are in its slots
        # For the group that joined last, in its order: the prompt tokens each row took from the prefix
        # cache instead of computing them (OpenAI's usage reports them as cached_tokens).
        self.joined_cached: List[int] = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def prefilling(self) -> bool:
        return bool(self.group)

    @property
    def empty(self) -> bool:
        return not self.rows and not self.group

    def add(
        self,
        rows: Sequence[object],
        prompts: Sequence[Sequence[int]],
        scorers: Optional[Sequence[Optional[Callable[[int, np.ndarray], None]]]] = None,
    ) -> None:
        """Start prefilling a group of new rows (the previous group must have joined). `scorers`, per
        row, None or what takes the logits at every one of its prompt's positions."""
        assert not self.group, "one prefill group at a time"
        self.group = list(rows)
        self._prompts = [list(p) for p in prompts]
        self._done = [0] * len(rows)
        self._logits = [None] * len(rows)
        self._scorers = list(scorers) if scorers is not None else [None] * len(rows)
        self._cached = [0] * len(rows)
        self._looked_up = self.prefix_cache is None

    def prefill_step(self) -> Optional[np.ndarray]:
        """One forward pass over the next chunk of the group's prompts. When every prompt is done, the
        group joins the decoding rows (in its order) and this returns their next-token logits."""
        if not self._looked_up:
            self._load_cached_prefixes()
        k = len(self.group)
        per_row = max(1, self.chunk_tokens // k)
        take = np.array([min(len(p) - d, per_row) for p, d in zip(self._prompts, self._done)], dtype=np.int64)
        width = max(int(take.max()), 1)
        tokens = np.zeros((k, width), dtype=np.int64)  # right-padded
        for i, (p, d, n) in enumerate(zip(self._prompts, self._done, take)):
            tokens[i, :n] = p[d : d + n]
        starts = np.array(self._done, dtype=np.int64)
        finishing = [i for i in range(k) if take[i] > 0 and self._done[i] + take[i] == len(self._prompts[i])]
        first = len(self.rows)
        self.cache.reserve(first + k, int(starts.max()) + width)
        scored = [i for i in range(k) if self._scorers[i] is not None and take[i] > 0]
        if scored:
            # Every position of the scored rows, the last one of the others: each row's logits end with its last.
            counts = [int(take[i]) if i in scored else 1 for i in range(k)]
            index = np.concatenate([i * width + np.arange(n) + (0 if i in scored else max(int(take[i]) - 1, 0)) for i, n in enumerate(counts)])
            flat = self.model.forward(tokens, starts, take, self.cache, first, True, index)
            ends = np.cumsum(counts)
            for i in scored:
                self._scorers[i](self._done[i], flat[ends[i] - counts[i] : ends[i]])
            logits = flat[ends - 1]
        else:
            logits = self.model.forward(tokens, starts, take, self.cache, first, bool(finishing))
        for i in range(k):
            self._done[i] += int(take[i])
        for i in finishing:
            self._logits[i] = logits[i].copy()  # a backend may reuse its output buffer on the next call
            if self.prefix_cache is not None:
                self.prefix_cache.store(self._prompts[i], self.cache, first + i)
        if any(d < len(p) for d, p in zip(self._done, self._prompts)):
            return None
        joined_logits = np.stack(self._logits)
        self.rows.extend(self.group)
        self.lengths.extend(self._done)
        self.joined_cached = self._cached
        self.group, self._prompts, self._done, self._logits, self._scorers, self._cached = [], [], [], [], [], []
        return joined_logits

    def _load_cached_prefixes(self) -> None:
        """Copy each group row's longest cached block prefix into its slot; its prefill starts after it.
        A row scoring its prompt is prefilled whole (it needs the logits at every position)."""
        self._looked_up = True
        first, cache = len(self.rows), self.prefix_cache
        found = [cache.match(p) if scorer is None else [] for p, scorer in zip(self._prompts, self._scorers)]
        longest = max(len(blocks) for blocks in found) * cache.block_tokens
        if not longest:
            return
        self.cache.reserve(first + len(self.group), longest)
        for i, blocks in enumerate(found):
            if blocks:
                self._done[i] = self._cached[i] = cache.load(blocks, self.cache, first + i)

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """One decode step: row i feeds tokens[i] at its next position; returns logits [rows, vocab]."""
        n = len(self.rows)
        starts = np.array(self.lengths, dtype=np.int64)
        self.cache.reserve(n, int(starts.max()) + 1)  # grows only: the prefill group's slots stay
        logits = self.model.forward(
            np.array(tokens, dtype=np.int64)[:, None], starts, np.ones(n, dtype=np.int64), self.cache, 0, True
        )
        self.lengths = [length + 1 for length in self.lengths]
        return logits

    def fork(self, row: object, copies: Sequence[object]) -> None:
        """New decoding rows that continue from `row`'s place: its keys and values copied into slots
        after the last row (no prefill group may be pending, as right after one joined)."""
        assert not self.group, "fork only between prefill groups"
        i = next(j for j, r in enumerate(self.rows) if r is row)
        self.cache.reserve(len(self.rows) + len(copies), self.lengths[i])
        for copy in copies:
            self.cache.move(i, len(self.rows), self.lengths[i])
            self.rows.append(copy)
            self.lengths.append(self.lengths[i])

    def remove(self, leaving: Sequence[object]) -> None:
        """Drop rows (decoding or in the prefill group); the last rows fill the holes."""
        leaving_ids = {id(r) for r in leaving}
        group_first = len(self.rows)  # where the prefill group's slots start, before anything moves
        for i in reversed(range(len(self.rows))):
            if id(self.rows[i]) in leaving_ids:
                last = len(self.rows) - 1
                if i != last:  # the last row moves into the hole
                    self.cache.move(last, i, self.lengths[last])
                    self.rows[i], self.lengths[i] = self.rows[last], self.lengths[last]
                self.rows.pop()
                self.lengths.pop()
        if self.group:
            # The remaining prefill rows move down to the slots right after the decoding rows.
            kept = [i for i, r in enumerate(self.group) if id(r) not in leaving_ids]
            for j, i in enumerate(kept):
                if group_first + i != len(self.rows) + j:
                    self.cache.move(group_first + i, len(self.rows) + j, self._done[i])
            self.group = [self.group[i] for i in kept]
            self._prompts = [self._prompts[i] for i in kept]
            self._done = [self._done[i] for i in kept]
            self._logits = [self._logits[i] for i in kept]
            self._scorers = [self._scorers[i] for i in kept]
            self._cached = [self._cached[i] for i in kept]
        if self.empty:
            self.cache.clear()  # give the memory back while idle
