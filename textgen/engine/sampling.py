"""Choosing the next token for every row of a batch, each row with its own parameters and generator.

`choose_next_tokens` takes the logits at each row's last position ([rows, vocab] float32, left as
they are) and does, in this order:

1. Grammar masks (`allowed`, per row: packed bits from the row's compiled grammar, or None): the
   tokens a row's grammar forbids become -inf, for that row only.
2. Penalties, per row: CTRL's repetition penalty as transformers applies it (to every token of the
   prompt and of the output so far: a positive logit divided by it, a negative one multiplied), then
   OpenAI's frequency penalty (subtracted once for each time the row generated the token).
3. Greedy rows (`do_sample` false): the most likely token. Its log-probability (a pass over the
   vocabulary, so only where `want_logprobs` or `top_n` asks) and its alternatives are those of the
   distribution after steps 1 and 2.
4. Sampled rows:
   a. top-k, for the rows with 0 < top_k < vocab: the k best tokens, best first, equal scores in token
      order (`_k_best_ids`: a bound from the maxima of 64-token groups, then a sort of the few tokens
      at or above it, instead of sorting the vocabulary); every later step works on those k;
   b. temperature: each row's scores divided by its own, clamped to [1e-4, 1e30] (after top-k, whose
      order it does not change);
   c. top-p (nucleus), then typical-p, for the rows whose limit is below 1: the tokens they drop
      become -inf;
   d. the draw: one uniform number from the row's own `numpy.random.Generator`, looked up in the
      cumulative float64 probabilities of its own candidates only (what `Generator.choice(p=...)`
      does), so that a seeded row draws the same tokens whoever runs beside it.
5. What each row gets back (`Picks`): its token; the token's log-probability under the distribution
   it was drawn from, after every step above (None for a greedy row that did not ask); and, where
   `top_n` asks (at most MAX_TOP_N), that many most likely tokens of that same distribution, best
   first, leaving out those it filtered away (-inf). `most_likely` also gives a prompt's tokens their
   alternatives (generation.py).

The processors are those of transformers' `generate`, in numpy; each step runs on all the rows it
applies to at once, and only the draw is per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..validation.request import MAX_TOP_N  # the alternatives one row may ask for: one limit for every protocol

MIN_TEMPERATURE = 1e-4
# Above this a float32 temperature would be inf (and -inf scores / inf = NaN); the distribution is
# uniform to float32's precision long before.
MAX_TEMPERATURE = 1e30


@dataclass
class RowSampling:
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    typical_p: float
    repetition_penalty: float
    frequency_penalty: float
    generator: Optional[np.random.Generator]
    seen_ids: List[int]  # prompt + generated: what the repetition penalty looks at
    generated_ids: List[int] = field(default_factory=list)  # what the frequency penalty counts



Alternatives = List[Tuple[int, float]]  # (token id, log-probability), most likely first


class Picks(NamedTuple):
    """What `choose_next_tokens` decided for each row."""

    tokens: List[int]
    logprobs: List[Optional[float]]  # the picked token's log-probability (None: not asked for)
    top: List[Optional[Alternatives]]  # the row's most likely tokens (None: not asked for)


def choose_next_tokens(
    logits: np.ndarray,
    rows: Sequence[RowSampling],
    want_logprobs: Optional[Sequence[bool]] = None,
    allowed: Optional[Sequence[Optional[np.ndarray]]] = None,
    top_n: Optional[Sequence[int]] = None,
) -> Picks:
    """logits: [batch, vocab] float32 for the last position (left as they are). Returns each row's token,
    its log-probability and, where `top_n` asks (per row, 0 = none), that many most likely tokens.
    Log-probabilities are those of the distribution the token is drawn from: after the grammar's mask
    and the penalties and, for a sampled row, temperature, top-k, top-p and typical-p (so a token those
    filtered out is no alternative). A greedy row's log-probability costs a pass over the vocabulary,
    so it is only computed where `want_logprobs` (default: every row) says so, else None. `allowed`, per
    row, None or the tokens a grammar allows as packed bits (int32 words, bit i of word i // 32 =
    token i): the others are -inf for that row before penalties, top-k and the rest."""
    masked = _mask_disallowed(logits, allowed)
    logits = _apply_penalties(masked, rows, copy=masked is logits)
    picks = Picks([0] * len(rows), [None] * len(rows), [None] * len(rows))
    wanted_top = [0] * len(rows) if top_n is None else [min(int(n), MAX_TOP_N) for n in top_n]
    greedy = [i for i, r in enumerate(rows) if not r.do_sample]
    if greedy:
        wanted = [want_logprobs is None or want_logprobs[i] or wanted_top[i] for i in greedy]
        _pick_greedy(logits if len(greedy) == len(rows) else logits[greedy], greedy, wanted, wanted_top, picks)
    sampled = [i for i, r in enumerate(rows) if r.do_sample]
    if sampled:
        _pick_sampled(logits, rows, sampled, wanted_top, picks)
    return picks


def _pick_greedy(scores: np.ndarray, which: List[int], wanted: List[bool], wanted_top: List[int], out: Picks) -> None:
    """The most likely token of each of the rows `which` (their penalised scores); its log-probability
    where `wanted` says so, and the alternatives `wanted_top` asks for."""
    best = scores.argmax(axis=-1)
    # The rows asking for alternatives get them from one vectorised pass (best first).
    asking = [j for j, i in enumerate(which) if wanted_top[i]]
    if asking:
        best_ids, best_scores = most_likely(scores[asking], max(wanted_top[which[j]] for j in asking))
        rank = {j: a for a, j in enumerate(asking)}
    for j, i in enumerate(which):
        out.tokens[i] = int(best[j])
        if wanted[j]:
            log_z = _logsumexp(scores[j])
            out.logprobs[i] = float(scores[j, best[j]] - log_z)
            if wanted_top[i]:
                found = zip(best_ids[rank[j], : wanted_top[i]], best_scores[rank[j], : wanted_top[i]])
                out.top[i] = [(int(t), float(s - log_z)) for t, s in found if s > -np.inf]


def _pick_sampled(logits: np.ndarray, rows, which: List[int], wanted_top: List[int], out: Picks) -> None:
    """A draw for each of the rows `which`: those with a top-k on their k candidates, the others on the
    whole vocabulary."""
    vocab = logits.shape[-1]
    with_k = [i for i in which if 0 < rows[i].top_k < vocab]
    without_k = [i for i in which if not 0 < rows[i].top_k < vocab]
    if with_k:
        # Top-k first (temperature does not change the order), so everything after it works on
        # k candidates instead of the whole vocabulary.
        scores = logits if len(with_k) == len(rows) else logits[with_k]
        cand_scores, cand_ids = _top_k_candidates(scores, [rows[i].top_k for i in with_k])
        _draw(_with_temperature(cand_scores, rows, with_k), cand_ids, with_k, rows, out, wanted_top)
    if without_k:
        full = _with_temperature(logits[without_k], rows, without_k)
        _draw(full, None, without_k, rows, out, wanted_top)


def _alternatives(log_probs: np.ndarray, ids: Optional[np.ndarray], n: int) -> Alternatives:
    """The n most likely tokens of one row's log-probabilities (over `ids`, or the whole vocabulary when
    None), best first, ties by token order; tokens with probability 0 (filtered out) are left out."""
    best = _k_best_ids(log_probs[None, :], min(n, log_probs.shape[-1]))[0]
    return [
        (int(best_id if ids is None else ids[best_id]), float(log_probs[best_id]))
        for best_id in best
        if log_probs[best_id] > -np.inf
    ]


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Along the last axis; -inf scores stay -inf. The maximum is subtracted first, so exp never overflows."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _logsumexp(row: np.ndarray) -> float:
    top = row.max()
    return float(top + np.log(np.exp(row - top).sum()))


def softmax(scores: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(scores))


def _with_temperature(scores: np.ndarray, rows, which: List[int]) -> np.ndarray:
    """Temperature: flatten (>1) or sharpen (<1) each row's distribution."""
    # Below 1e-4 the division overflows float32 to inf and softmax to NaN; that low is greedy anyway.
    temps = [min(max(rows[i].temperature, MIN_TEMPERATURE), MAX_TEMPERATURE) for i in which]
    if all(t == 1.0 for t in temps):
        return scores
    return scores / np.array(temps, dtype=scores.dtype)[:, None]


def _draw(scores, ids, which: List[int], rows, out: Picks, wanted_top: List[int]) -> None:
    """Nucleus and typical filtering, then one draw per row from its own generator. `ids`: the token id
    of each column of `scores` (None: the columns are the vocabulary)."""
    scores = _top_p(scores, [rows[i].top_p for i in which])
    scores = _typical_p(scores, [rows[i].typical_p for i in which])
    log_probs = log_softmax(scores)
    # float64 and renormalised, then the cumulative sum `Generator.choice(p=...)` would build, for all rows
    # in one operation: each row's draw below is exactly choice's (the same number from its generator).
    probs = np.exp(log_probs.astype(np.float64))
    cdf = (probs / probs.sum(axis=-1, keepdims=True)).cumsum(axis=-1)
    for j, i in enumerate(which):
        # Only the row's own candidates take part, so the draw is the same whatever else is in the batch.
        width = rows[i].top_k if 0 < rows[i].top_k < log_probs.shape[-1] else log_probs.shape[-1]
        row_cdf = cdf[j, :width] / cdf[j, width - 1]
        pick = int(row_cdf.searchsorted(rows[i].generator.random(), side="right"))
        row_ids = None if ids is None else ids[j]
        out.tokens[i] = pick if row_ids is None else int(row_ids[pick])
        out.logprobs[i] = float(log_probs[j, pick])
        if wanted_top[i]:
            out.top[i] = _alternatives(log_probs[j, :width], None if row_ids is None else row_ids[:width], wanted_top[i])


def most_likely(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's k best token ids and their scores (logits or log-probabilities), best first."""
    ids = _k_best_ids(scores, k)
    return ids, np.take_along_axis(scores, ids, axis=-1)


def _top_k_candidates(scores: np.ndarray, ks: List[int]) -> Tuple[np.ndarray, np.ndarray]:
    """Each row's k best scores (sorted, best first; equal scores in token order, so a row's candidates
    never depend on its neighbours) and their token ids; -inf past a row's own k."""
    k = max(ks)
    ids = _k_best_ids(scores, k)
    values = np.take_along_axis(scores, ids, axis=-1)
    beyond = np.arange(k)[None, :] >= np.array(ks)[:, None]
    return np.where(beyond, -np.inf, values).astype(scores.dtype), ids


# Tokens per group when bounding the k-th best score from group maxima (see _k_best_ids).
_GROUP = 64


def _k_best_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """The ids of each row's k best scores, best first (equal scores: lowest id first).

    A partial sort of the whole vocabulary per row (argpartition) costs ~0.2 ms for GPT-2's 50,257 tokens.
    Instead the vocabulary is cut into groups of 64 tokens; the k-th best of the group maxima is a score
    that at least k tokens reach (the maxima of those k groups), so only the few tokens at or above it
    are candidates, sorted: one vectorised pass over the scores instead of a sort (~0.04 ms a row)."""
    rows, vocab = scores.shape
    groups = vocab // _GROUP
    if groups > k:
        group_max = scores[:, : groups * _GROUP].reshape(rows, _GROUP, groups).max(axis=1)
        bound = np.partition(group_max, groups - k, axis=-1)[:, groups - k]
        keep = scores >= bound[:, None]
        # A grammar's mask can leave fewer than k groups with an allowed token: the bound is then -inf,
        # and only the allowed tokens are candidates (the row's last places are filled below).
        short = np.isneginf(bound)
        if short.any():
            keep[short] &= scores[short] > -np.inf
        flat = np.flatnonzero(keep)  # row-major: row by row, each in token order
        row_of, token = np.divmod(flat, vocab)
        counts = np.bincount(row_of, minlength=rows)
        if (counts[~short] >= k).all():  # only NaN scores can break the bound; the plain way below then
            order = np.lexsort((token, -scores[row_of, token], row_of))
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            if counts.min() >= k:
                return token[order[starts[:, None] + np.arange(k)[None, :]]]
            return _padded(scores, token[order], starts, counts, k)
    ids = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    ids.sort(axis=-1)  # token order first, so that the sort by score below keeps ties by id
    order = np.argsort(-np.take_along_axis(scores, ids, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(ids, order, axis=-1)


def _padded(scores: np.ndarray, sorted_tokens: np.ndarray, starts, counts, k: int) -> np.ndarray:
    """Each row's k best ids from its sorted candidates; a row with fewer than k allowed tokens gets
    disallowed (-inf) tokens after them, which no draw can pick."""
    ids = np.empty((scores.shape[0], k), dtype=np.int64)
    for r in range(scores.shape[0]):
        best = sorted_tokens[starts[r] : starts[r] + min(counts[r], k)]
        ids[r, : len(best)] = best
        if len(best) < k:
            ids[r, len(best) :] = np.flatnonzero(np.isneginf(scores[r]))[: k - len(best)]
    return ids


def _mask_disallowed(logits: np.ndarray, allowed: Optional[Sequence[Optional[np.ndarray]]]) -> np.ndarray:
    """The logits with the tokens each constrained row may not take at -inf: a copy when a row has a
    mask, else `logits` itself. Tokens past a mask's last word are not allowed either."""
    which = [i for i, mask in enumerate(allowed or ()) if mask is not None]
    if not which:
        return logits
    vocab = logits.shape[-1]
    packed = np.stack([allowed[i] for i in which]).astype("<i4", copy=False)
    covered = min(vocab, packed.shape[-1] * 32)
    # The disallowed tokens as booleans, straight from the inverted words, written row by row in place
    # (a gather, a `where` and a scatter of the rows cost ~1.4x more at 8 rows of 50,257, the benchmark's masks).
    disallowed = np.unpackbits(np.invert(packed).view(np.uint8), axis=-1, count=covered, bitorder="little").view(bool)
    logits = np.array(logits, dtype=np.float32)  # the caller's stay as they are
    minus_inf = np.float32(-np.inf)
    for j, i in enumerate(which):
        np.copyto(logits[i, :covered], minus_inf, where=disallowed[j])
        logits[i, covered:] = minus_inf
    return logits


def _apply_penalties(logits: np.ndarray, rows: Sequence[RowSampling], copy: bool = True) -> np.ndarray:
    """The logits with each row's penalties applied: a copy when any row has one (unless `copy` is False:
    the caller's own copy is changed), else `logits` itself."""
    penalised = [
        i
        for i, r in enumerate(rows)
        if (r.repetition_penalty != 1.0 and r.seen_ids) or (r.frequency_penalty != 0.0 and r.generated_ids)
    ]
    if not penalised:
        return logits
    if copy:
        logits = np.array(logits, dtype=np.float32)  # the caller's stay as they are
    for i in penalised:
        r = rows[i]
        if r.repetition_penalty != 1.0 and r.seen_ids:
            # CTRL's repetition penalty, as transformers applies it: tokens already present become less likely.
            ids = np.array(r.seen_ids, dtype=np.int64)
            score = logits[i, ids]
            logits[i, ids] = np.where(score < 0, score * r.repetition_penalty, score / r.repetition_penalty)
        if r.frequency_penalty != 0.0 and r.generated_ids:
            # OpenAI's frequency penalty: subtract in proportion to how often a token was generated.
            # (ufunc.at applies a repeated id once per occurrence.)
            np.subtract.at(logits[i], np.array(r.generated_ids, dtype=np.int64), np.float32(r.frequency_penalty))
    return logits


def _top_p(scores: np.ndarray, ps: List[float]) -> np.ndarray:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p (always one)."""

    def remove(sub: np.ndarray, p: np.ndarray) -> np.ndarray:
        order = np.argsort(-sub, axis=-1, kind="stable")
        probs = softmax(np.take_along_axis(sub, order, axis=-1))
        remove_sorted = probs.cumsum(axis=-1) - probs > p  # mass before each token already reaches p
        return _unsort(remove_sorted, order)

    return _filter_rows(scores, ps, remove)


def _typical_p(scores: np.ndarray, masses: List[float]) -> np.ndarray:
    """Locally typical sampling (Meister et al.): keep tokens whose surprise is closest to the entropy."""

    def remove(sub: np.ndarray, mass: np.ndarray) -> np.ndarray:
        log_probs = log_softmax(sub)
        probs = np.exp(log_probs)
        # Tokens already filtered out (-inf, probability 0) add nothing (0 * -inf would be NaN).
        plogp = np.multiply(log_probs, probs, out=np.zeros_like(probs), where=probs > 0)
        entropy = -plogp.sum(axis=-1, keepdims=True)
        shift = np.abs(-log_probs - entropy)
        order = np.argsort(shift, axis=-1, kind="stable")
        sorted_shift = np.take_along_axis(shift, order, axis=-1)
        cumulative = softmax(np.take_along_axis(sub, order, axis=-1)).cumsum(axis=-1)
        last = np.minimum((cumulative < mass).sum(axis=1), sub.shape[-1] - 1)
        remove_sorted = sorted_shift > np.take_along_axis(sorted_shift, last[:, None], axis=1)
        remove_sorted[:, :1] = False
        return _unsort(remove_sorted, order)

    return _filter_rows(scores, masses, remove)


def _unsort(sorted_mask: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A mask over sorted positions back at the tokens' own positions (`order`: the sorting indices)."""
    mask = np.empty_like(sorted_mask)
    np.put_along_axis(mask, order, sorted_mask, axis=-1)
    return mask


def _filter_rows(scores: np.ndarray, limits: List[float], remove) -> np.ndarray:
    """Apply a filter to the rows whose limit is below 1.0 (1.0 = off); `remove(rows, limits)` says
    which tokens to drop, and they become -inf."""
    rows = [j for j, limit in enumerate(limits) if limit < 1.0]
    if not rows:
        return scores
    sub = scores[rows]
    dropped = remove(sub, np.array([limits[j] for j in rows], dtype=scores.dtype)[:, None])
    scores = scores.copy()
    scores[rows] = np.where(dropped, -np.inf, sub)
    return scores
