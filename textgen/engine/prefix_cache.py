"""The prefix cache: the keys and values of recent prompts' first tokens, kept so that a new prompt that
begins the same way (a system prompt, few-shot examples, a chat's earlier turns) skips their prefill.

Prompts are cut into blocks of `BLOCK_TOKENS` (16) tokens, and only whole blocks are kept. A block is
known by its parent (the block before it in the prompt) and its own tokens: the key is the pair
(parent's id, the 16 token ids), so a block matches only when every token before it matched too, and
the match is exact. (vLLM keys blocks by chained hashes; a hash can collide, and one did: its
CVE-2025-25183 let a crafted prompt reuse another's cached block. Comparing the tokens themselves
costs nothing at these sizes.)

A new row looks up the longest run of cached blocks its prompt starts with, short of its last two
tokens (the last prompt token is always prefilled: its logits give the first new token; and never alone,
see `reusable_blocks`), and has their keys
and values copied into its KV cache slot; its prefill starts after them. When a row's prefill is done,
its prompt's whole blocks not cached yet are copied from its slot into the store. Copies, not shared
memory: the engine's cache keeps one contiguous slot per row (what ONNX Runtime binds in place), and a
copy of a 900-token prefix costs a few milliseconds where its prefill costs hundreds.

The store is numpy, per layer `[kv_heads, blocks, BLOCK_TOKENS, head_dim]` for keys and values alike,
bounded by a budget of tokens (PREFIX_CACHE_TOKENS, rounded down to whole blocks): n tokens hold
n x layers x 2 x kv_heads x head_dim x 4 bytes (DistilGPT2: 36,864 bytes a token). It is allocated at
the first store and its pages become resident only as blocks are written. When full, the least recently
used block goes first. A block is touched after its descendants whenever a prompt uses it, so a parent
is always more recent than its children: eviction takes leaves first and never leaves a block whose
parent is gone (such a block could never match again, only waste room).

Everything runs on the engine thread: no lock.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..model.contract import CausalLM
from ..model.kv_cache import KVCache

# Tokens per block. Smaller blocks reuse more of a prompt (up to BLOCK_TOKENS - 1 shared tokens are
# prefilled again) but cost more keys to build and compare per lookup; 16 is vLLM's default and
# ~57 dictionary lookups for a 900-token prompt. For DistilGPT2 one block of one head is 16 x 64 x 4 =
# 4 KB, a memory page.
BLOCK_TOKENS = 16

ROOT = 0  # the parent id of a prompt's first block

# (parent block's id, the block's tokens) -> (the block's own id, its index in the store)
Key = Tuple[int, Tuple[int, ...]]


class PrefixCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, budget_tokens: int, block_tokens: int = BLOCK_TOKENS):
        self.n_layers, self.n_kv_heads, self.head_dim = n_layers, n_kv_heads, head_dim
        self.block_tokens = block_tokens
        self.capacity_blocks = max(0, budget_tokens) // block_tokens
        self.keys: List[np.ndarray] = []  # per layer [kv_heads, blocks, block_tokens, head_dim]; at the first store
        self.values: List[np.ndarray] = []
        self._blocks: "OrderedDict[Key, Tuple[int, int]]" = OrderedDict()  # least recently used first
        self._free: List[int] = list(range(self.capacity_blocks - 1, -1, -1))  # pop() gives 0, 1, 2, ...
        self._ids = itertools.count(ROOT + 1)  # never reused: a new block never matches an old key
        # Counters since start (read by /metrics from another thread: plain ints, only ever replaced).
        self.lookups = 0  # prompts looked up
        self.looked_up_tokens = 0  # their tokens
        self.hit_tokens = 0  # tokens whose prefill was skipped
        self.evicted_blocks = 0

    @classmethod
    def for_model(cls, model: CausalLM, budget_tokens: int) -> Optional["PrefixCache"]:
        """A prefix cache for the model's keys and values within `budget_tokens` (PREFIX_CACHE_TOKENS),
        or None: 0, or less than one block, turns it off."""
        cache = cls(model.n_layers, model.n_kv_heads, model.head_dim, budget_tokens)
        return cache if cache.capacity_blocks else None

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens

    @property
    def tokens(self) -> int:
        """Tokens held now."""
        return len(self._blocks) * self.block_tokens

    @property
    def bytes_per_token(self) -> int:
        return self.n_layers * 2 * self.n_kv_heads * self.head_dim * 4

    def nbytes(self) -> int:
        """Bytes of the blocks held now (the store's pages beyond them may be resident from before, up to
        the budget)."""
        return self.tokens * self.bytes_per_token

    def stats(self) -> Dict[str, int]:
        return {
            "capacity_tokens": self.capacity_tokens,
            "tokens": self.tokens,
            "lookups": self.lookups,
            "looked_up_tokens": self.looked_up_tokens,
            "hit_tokens": self.hit_tokens,
            "evicted_blocks": self.evicted_blocks,
        }

    # -- the engine's calls ------------------------------------------------------------------------------
    def to_prefill(self, prompt: Sequence[int]) -> int:
        """The tokens of `prompt` left to prefill after its cached prefix, as `match` would find it now;
        changes nothing (the scheduler sizes prefill groups by it)."""
        return len(prompt) - len(self._walk(prompt, self.reusable_blocks(prompt))[1]) * self.block_tokens

    def reusable_blocks(self, prompt: Sequence[int]) -> int:
        """The most blocks a prompt may reuse: those before its last two tokens. A prompt left with one
        token to prefill would run it as a one-token chunk, which attention computes another way than a
        longer chunk's last token; with 8-bit weights its logits differed visibly from a full prefill's,
        and a seeded request sent twice changed its text the second time (SmolLM2, a 33-token prompt)."""
        return max(0, (len(prompt) - 2) // self.block_tokens)

    def match(self, prompt: Sequence[int]) -> List[int]:
        """The store indices of the longest run of cached blocks `prompt` begins with, leaving at least
        its last two tokens to prefill; they become the most recently used. Counts the lookup."""
        keys, found = self._walk(prompt, self.reusable_blocks(prompt))
        self._touch(keys)
        self.lookups += 1
        self.looked_up_tokens += len(prompt)
        self.hit_tokens += len(found) * self.block_tokens
        return found

    def load(self, blocks: Sequence[int], cache: KVCache, slot: int) -> int:
        """Copy the blocks `match` found into `slot`'s first positions (the cache reserved for them);
        returns the tokens copied, where the row's prefill starts."""
        for start, (first, count) in self._runs(blocks):
            for pool, store in self._pairs(cache):
                pool_part = pool[:, first : first + count]
                store[slot, :, start : start + count * self.block_tokens].reshape(pool_part.shape)[...] = pool_part
        return len(blocks) * self.block_tokens

    def store(self, prompt: Sequence[int], cache: KVCache, slot: int) -> int:
        """After `slot`'s prefill of `prompt`: keep its whole blocks not cached yet (as many as the budget
        holds), evicting the least recently used; returns the blocks added."""
        wanted = min(len(prompt) // self.block_tokens, self.capacity_blocks)
        keys, _ = self._walk(prompt, wanted)
        self._touch(keys)  # the cached part is now the most recent: what is evicted below is not of it
        cached = len(keys)
        if cached == wanted:
            return 0
        indices = self._allocate(wanted - cached)
        parent = self._blocks[keys[-1]][0] if keys else ROOT
        for b, index in zip(range(cached, wanted), indices):
            key = (parent, tuple(prompt[b * self.block_tokens : (b + 1) * self.block_tokens]))
            parent = next(self._ids)
            self._blocks[key] = (parent, index)
            keys.append(key)
        self._touch(keys)
        if not self.keys:
            shape = (self.n_kv_heads, self.capacity_blocks, self.block_tokens, self.head_dim)
            self.keys = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
            self.values = [np.zeros(shape, np.float32) for _ in range(self.n_layers)]
        for start, (first, count) in self._runs(indices, cached * self.block_tokens):
            for pool, store in self._pairs(cache):
                pool_part = pool[:, first : first + count]
                pool_part[...] = store[slot, :, start : start + count * self.block_tokens].reshape(pool_part.shape)
        return len(indices)

    # -- inside --------------------------------------------------------------------------------------
    def _walk(self, prompt: Sequence[int], most: int) -> Tuple[List[Key], List[int]]:
        """The keys and store indices of the cached blocks `prompt` begins with, at most `most` of them."""
        keys, found, parent, size = [], [], ROOT, self.block_tokens
        for b in range(most):
            key = (parent, tuple(prompt[b * size : (b + 1) * size]))
            entry = self._blocks.get(key)
            if entry is None:
                break
            keys.append(key)
            parent, index = entry
            found.append(index)
        return keys, found

    def _touch(self, keys: List[Key]) -> None:
        """Most recently used, the first block last: a parent stays more recent than its children."""
        for key in reversed(keys):
            self._blocks.move_to_end(key)

    def _allocate(self, count: int) -> List[int]:
        """`count` free store indices, evicting the least recently used blocks (leaves first) for them."""
        while len(self._free) < count:
            _, (_, index) = self._blocks.popitem(last=False)
            self._free.append(index)
            self.evicted_blocks += 1
        return [self._free.pop() for _ in range(count)]

    def _runs(self, indices: Sequence[int], start: int = 0):
        """(position in the slot, (first store index, blocks)) per run of consecutive store indices: one
        slice copy per run (a prompt's blocks stored together are consecutive) instead of one per block."""
        position = start
        for _, group in itertools.groupby(enumerate(indices), lambda item: item[1] - item[0]):
            run = [index for _, index in group]
            yield position, (run[0], len(run))
            position += len(run) * self.block_tokens

    def _pairs(self, cache: KVCache):
        """(store array, cache array) for every layer's keys and values."""
        return zip(self.keys + self.values, cache.keys + cache.values)
