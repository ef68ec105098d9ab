"""The running batch as an object of its own: which rows decode together, where their keys and values
sit in the KV cache, and the prompts being prefilled. The engine's loop only schedules and updates.

Row i of the batch lives in cache slot i. A group of new rows is prefilled into the slots after the
decoding rows, at most `chunk_tokens` prompt tokens per forward pass, so a long prompt never freezes
the running streams for longer than one chunk; when the whole group is prefilled it joins the batch
(`prefill_step` returns their next-token logits and what each took from the prefix cache, in the
group's order). Rows leave with `remove`: the last rows move into the holes, so the rest never moves, and the
slots left empty give their memory back (KVCache.release).

With a prefix cache (prefix_cache.py), a group's first prefill step begins by copying into each row's
slot the keys and values of the longest cached block prefix its prompt starts with; the row's prefill
then starts after them (its tokens done). A row that wants its prompt's log-probabilities (a scorer,
below) is prefilled whole: every prompt position's logits are needed. As each row's prefill ends, its
prompt's whole blocks are kept in the prefix cache for the rows that follow.

Each row is one `Row` record in `Batch.slots` (record i in cache slot i: the decoding rows, then the
prefill group), holding its prompt, its length in the cache and what its prefill needs. What a row
stands for (the engine's request state, its `owner`) is opaque to the batch: it only needs each row's
prompt, and, for a row that wants its prompt's log-probabilities, a `scorer` that takes the logits at every prompt
position, chunk by chunk (`scorer(offset, logits)`), so that they never all sit in memory at once. The
model is any `CausalLM` (model/contract.py): numpy in, numpy out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..model.contract import CausalLM
from ..model.kv_cache import KVCache
from .prefix_cache import PrefixCache

# run_pass with feeds and prefill (`decode` and `prefill_step` in one pass) spares a joining prompt a
# pass of its own. Worth it on a model that computes real tokens only (the ONNX graph packs them; the
# engine asks it of a model that `packs_tokens`), and for a short chunk only: attention runs on
# right-padded rows, so each decoding row attends with the chunk's width. A wider chunk runs apart,
# after the decode step. One pass against two, 8 decoding rows 300 positions in plus one prompt's
# chunk (python bench/merged_pass.py --model random|smollm2), ms: DistilGPT2 int8 16 tokens 14.0 / 14.7,
# 32: 17.5 / 18.2, 128: 38.7 / 38.1, 256: 82.5 / 68.0; SmolLM2 16: 35.4 / 35.0, 32: 47.0 / 45.2.
TOGETHER_MAX_TOKENS = 16

# Takes the logits at a row's prompt positions offset.. (one prefill chunk): `scorer(offset, logits)`.
Scorer = Callable[[int, np.ndarray], None]


@dataclass(eq=False)
class Row:
    """One row of the batch; it sits in the cache slot of its place in `Batch.slots`."""

    owner: object  # what the row stands for (the engine's request state); opaque here
    prompt: List[int]
    scorer: Optional[Scorer] = None  # None: only the logits after the prompt's last token are wanted
    length: int = 0  # tokens in its slot: its prompt's prefilled part, then one more each decode step
    cached: int = 0  # prompt tokens loaded from the prefix cache instead of computed
    logits: Optional[np.ndarray] = None  # next-token logits, kept from its prefill's end until the group joins
    decoding: bool = False  # joined the batch (False: in the prefill group)

    @property
    def to_prefill(self) -> int:
        return len(self.prompt) - self.length


@dataclass(frozen=True)
class Joined:
    """A prefill group that joined the batch, in its order: each row's next-token logits [rows, vocab]
    and the prompt tokens each took from the prefix cache (OpenAI's usage reports them as cached_tokens)."""

    logits: np.ndarray
    cached_tokens: List[int]


@dataclass(frozen=True)
class Stepped:
    """A decode step's logits: after each row's last token [rows, vocab], and for each row that fed
    forced tokens and wants their log-probabilities, those before each of them ([k, vocab]; else None)."""

    logits: np.ndarray
    forced_logits: List[Optional[np.ndarray]]


class Batch:
    def __init__(self, model: CausalLM, chunk_tokens: int = 256, prefix_cache: Optional[PrefixCache] = None):
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        self.prefix_cache = prefix_cache  # None: every prompt is prefilled from its first token
        self.min_width = getattr(model, "min_width", 1)  # a pass's positions past its rows' starts, at least
        self.slots: List[Row] = []  # slot i holds slots[i]: the decoding rows first, then the prefill group
        self._looked_up = False  # the group's cached prefixes are in its slots

    def __len__(self) -> int:
        return sum(row.decoding for row in self.slots)

    @property
    def rows(self) -> List[object]:
        """What the decoding rows stand for, in slot order."""
        return [row.owner for row in self.slots if row.decoding]

    @property
    def group(self) -> List[object]:
        """What the rows being prefilled stand for, in the order they will join."""
        return [row.owner for row in self._group()]

    @property
    def prefilling(self) -> bool:
        return not all(row.decoding for row in self.slots)

    @property
    def empty(self) -> bool:
        return not self.slots

    def add(
        self,
        owners: Sequence[object],
        prompts: Sequence[Sequence[int]],
        scorers: Optional[Sequence[Optional[Scorer]]] = None,
    ) -> None:
        """Start prefilling a group of new rows (the previous group must have joined). `scorers`, per
        row, None or what takes the logits at every one of its prompt's positions."""
        assert not self.prefilling, "one prefill group at a time"
        scorers = list(scorers) if scorers is not None else [None] * len(owners)
        self.slots += [Row(owner, list(prompt), scorer) for owner, prompt, scorer in zip(owners, prompts, scorers)]
        self._looked_up = self.prefix_cache is None

    def prefill_step(self) -> Optional[Joined]:
        """One forward pass over the next chunk of the group's prompts. When every prompt is done, the
        group joins the decoding rows (in its order), and this returns what it brought (`Joined`)."""
        return self.run_pass([], None, prefill=True)[1]

    def _takes(self, group: List[Row]) -> List[int]:
        """Prompt tokens each group row brings to its next chunk: `chunk_tokens` shared among them, and
        never one token of a longer prompt (its last one joins the chunk before). Attention computes a
        one-token chunk another way than a token of a longer one, so a prompt's keys and first new token
        would depend on how the traffic split it; with 8-bit weights the logits differed visibly. (The
        prefix cache leaves two tokens to prefill for the same reason.)"""
        per_row = max(2, self.chunk_tokens // max(len(group), 1))
        takes = [min(row.to_prefill, per_row) for row in group]
        return [row.to_prefill if row.to_prefill - take == 1 else take for row, take in zip(group, takes)]

    def _join(self, group: List[Row]) -> Joined:
        joined = Joined(np.stack([row.logits for row in group]), [row.cached for row in group])
        for row in group:
            row.decoding, row.logits = True, None
        return joined

    def _group(self) -> List[Row]:
        return [row for row in self.slots if not row.decoding]

    def _load_cached_prefixes(self) -> None:
        """Copy each group row's longest cached block prefix into its slot; its prefill starts after it.
        A row scoring its prompt is prefilled whole (it needs the logits at every position)."""
        self._looked_up = True
        group, first, cache = self._group(), len(self), self.prefix_cache
        found = [cache.match(row.prompt) if row.scorer is None else [] for row in group]
        longest = max(len(blocks) for blocks in found) * cache.block_tokens
        if not longest:
            return
        self.cache.reserve(first + len(group), longest, self._lengths())
        for i, (row, blocks) in enumerate(zip(group, found)):
            if blocks:
                row.length = row.cached = cache.load(blocks, self.cache, first + i)

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        """One decode step: row i feeds tokens[i] at its next position; returns logits [rows, vocab]."""
        return self.decode([[token] for token in tokens]).logits

    def decode(self, feeds: Sequence[Sequence[int]], scored: Optional[Sequence[bool]] = None) -> Stepped:
        """One decode step: row i feeds feeds[i] at its next positions (its token picked, and any tokens a
        grammar forced after it: a short chunk). Returns the logits after each row's last token, and for
        the rows `scored` says, those before each of its other tokens (what predicted them)."""
        return self.run_pass(feeds, scored, prefill=False)[0]

    def run_pass(self, feeds, scored, prefill: bool) -> Tuple[Optional[Stepped], Optional[Joined]]:
        """One forward pass over the decoding rows' `feeds` (when any) and, when `prefill`, the group's
        next prompt chunk (at most `chunk_tokens` tokens, shared among its rows), right-padded to the
        longest. Only the logits something needs are computed: after each decoding row's last token
        (and before its others when scored), at every position of a chunk whose row scores its prompt,
        after the last token of a prompt that ends in this chunk. Both at once: see TOGETHER_MAX_TOKENS."""
        if prefill and not self._looked_up:
            self._load_cached_prefixes()
        group = self._group() if prefill else []
        takes = self._takes(group)
        if feeds and max(takes, default=0) > TOGETHER_MAX_TOKENS:
            # Apart, decode first: attention would pad every decoding row to the chunk's width.
            stepped = self.run_pass(feeds, scored, prefill=False)[0]
            return stepped, self.run_pass([], None, prefill=True)[1]
        n = len(self)
        decoding = self.slots[:n] if feeds else []
        rows, first = decoding + group, 0 if feeds else n
        chunks = [list(feed) for feed in feeds]
        chunks += [row.prompt[row.length : row.length + take] for row, take in zip(group, takes)]
        counts = np.array([len(chunk) for chunk in chunks], dtype=np.int64)
        tokens = np.zeros((len(rows), max(int(counts.max()), 1)), dtype=np.int64)
        for i, chunk in enumerate(chunks):
            tokens[i, : len(chunk)] = chunk
        starts = np.array([row.length for row in rows], dtype=np.int64)
        # Grows only: a decode-only pass keeps the group's slots.
        self.cache.reserve(first + len(rows), int(starts.max()) + max(tokens.shape[1], self.min_width), self._lengths())
        scored_rows = [bool(scored and scored[i]) and counts[i] > 1 for i in range(len(decoding))]
        logits, segments = self._forward(tokens, starts, counts, first, self._wanted(counts, scored_rows, group))
        stepped = None
        if decoding:
            # Unscored, each decoding row wants one position, and they come first: their rows as they are
            # (a copy of [rows, vocab] floats each step cost 0.3 ms at 16 rows of a 49k vocabulary).
            last = np.stack([s[-1] for s in segments[: len(decoding)]]) if any(scored_rows) else logits[: len(decoding)]
            stepped = Stepped(last, [segments[i][:-1] if scored_rows[i] else None for i in range(len(decoding))])
        for row, count in zip(decoding, counts):
            row.length += int(count)
        self._advance(group, counts[len(decoding):], segments[len(decoding):], n)
        joined = self._join(group) if group and all(row.to_prefill == 0 for row in group) else None
        return stepped, joined

    @staticmethod
    def _wanted(counts, scored_rows: List[bool], group: List[Row]) -> List[range]:
        """Per row of a pass (the decoding rows, then the group), the positions whose logits it needs."""
        wanted = [range(counts[i]) if scored else range(counts[i] - 1, counts[i]) for i, scored in enumerate(scored_rows)]
        for row, count in zip(group, counts[len(scored_rows):]):
            scoring, finishing = row.scorer is not None and count > 0, 0 < count == row.to_prefill
            wanted.append(range(count) if scoring else range(count - 1, count) if finishing else range(0))
        return wanted

    def _forward(self, tokens, starts, counts, first: int, wanted: List[range]) -> tuple:
        """The model's pass: its logits [wanted positions, vocab] (None: none wanted) and, per row, the
        logits at its `wanted` positions (a view of them; None: none wanted)."""
        width = tokens.shape[1]
        index = np.concatenate([i * width + np.arange(r.start, r.stop, dtype=np.int64) for i, r in enumerate(wanted)])
        logits = self.model.forward(tokens, starts, counts, self.cache, first, bool(len(index)), index)
        ends = np.cumsum([len(r) for r in wanted])
        return logits, [logits[end - len(r) : end] if len(r) else None for end, r in zip(ends, wanted)]

    def _advance(self, group: List[Row], counts, segments, first: int) -> None:
        """The group's rows after their chunk: scorers given their logits, lengths advanced, and a prompt
        that ended keeps its next-token logits (and its blocks go to the prefix cache)."""
        for j, (row, count, segment) in enumerate(zip(group, counts, segments)):
            count = int(count)
            if row.scorer is not None and count > 0:
                row.scorer(row.length, segment)
            finishing = 0 < count == row.to_prefill
            row.length += count
            if finishing:
                row.logits = segment[-1].copy()  # a backend may reuse its output buffer on the next call
                if self.prefix_cache is not None:
                    self.prefix_cache.store(row.prompt, self.cache, first + j)

    def fork(self, owner: object, copies: Sequence[object]) -> None:
        """New decoding rows that continue from `owner`'s row: its keys and values copied into slots
        after the last row (no prefill group may be pending, as right after one joined)."""
        assert not self.prefilling, "fork only between prefill groups"
        i = next(i for i, row in enumerate(self.slots) if row.owner is owner)
        source = self.slots[i]
        self.cache.reserve(len(self.slots) + len(copies), source.length, self._lengths())
        for copy in copies:
            self.cache.move(i, len(self.slots), source.length)
            self.slots.append(Row(copy, source.prompt, length=source.length, decoding=True))

    def remove(self, leaving: Sequence[object]) -> None:
        """Drop rows (decoding or in the prefill group); the last decoding rows fill the holes, and the
        group moves down to the slots right after them."""
        leaving_ids = {id(owner) for owner in leaving}
        decoding, group = self.slots[: len(self)], self._group()
        for i in reversed(range(len(decoding))):
            if id(decoding[i].owner) in leaving_ids:
                last = decoding.pop()
                if i < len(decoding):  # the last row moves into the hole
                    self.cache.move(len(decoding), i, last.length)
                    decoding[i] = last
        kept = []
        for i, row in enumerate(group, start=len(self)):  # slots as they were, before anything moved
            if id(row.owner) not in leaving_ids:
                if i != len(decoding) + len(kept):
                    self.cache.move(i, len(decoding) + len(kept), row.length)
                kept.append(row)
        for slot in range(len(decoding) + len(kept), len(self.slots)):
            self.cache.release(slot)  # left empty: its memory goes back at once, not when the batch empties
        self.slots = decoding + kept
        if self.empty:
            self.cache.clear()  # give the memory back while idle

    def _lengths(self) -> List[int]:
        """Positions each slot holds, in slot order: what a regrowing cache copies."""
        return [row.length for row in self.slots]
