"""Choosing the next token for every row of a batch, each row with its own parameters and generator.

The logits processors are those of transformers' `generate` (repetition penalty, temperature, top-k,
top-p, typical-p), applied to the whole batch at once where the parameter allows it; only the draw
itself is per row, so that each request's seeded generator sees exactly the same probabilities whether
it runs alone or beside others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch


MIN_TEMPERATURE = 1e-4


@dataclass
class RowSampling:
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    typical_p: float
    repetition_penalty: float
    frequency_penalty: float
    generator: Optional[torch.Generator]
    seen_ids: List[int]  # prompt + generated: what the repetition penalty looks at
    generated_ids: List[int] = field(default_factory=list)  # what the frequency penalty counts


def choose_next_tokens(logits: torch.Tensor, rows: Sequence[RowSampling]) -> Tuple[List[int], List[float]]:
    """logits: [batch, vocab] float32 for the last position. Returns (token ids, their log-probabilities)."""
    logits = _apply_penalties(logits.float(), rows)
    vocab = logits.shape[-1]
    tokens: List[int] = [0] * len(rows)
    logprobs: List[float] = [0.0] * len(rows)

    greedy = [i for i, r in enumerate(rows) if not r.do_sample]
    if greedy:
        # Greedy: the most likely token; its log-probability under the (penalised) distribution.
        scores = logits[greedy]
        best = scores.argmax(dim=-1)
        best_logprobs = torch.log_softmax(scores, dim=-1).gather(-1, best[:, None]).squeeze(-1)
        for j, i in enumerate(greedy):
            tokens[i], logprobs[i] = int(best[j]), float(best_logprobs[j])

    sampled = [i for i, r in enumerate(rows) if r.do_sample]
    if sampled:
        with_k = [i for i in sampled if 0 < rows[i].top_k < vocab]
        without_k = [i for i in sampled if not 0 < rows[i].top_k < vocab]
        if with_k:
            # Top-k first (temperature does not change the order), so everything after it works on
            # k candidates instead of the whole vocabulary.
            part = logits if len(with_k) == len(rows) else logits[with_k]
            cand_scores, cand_ids = _top_k_candidates(part, [rows[i].top_k for i in with_k])
            _draw(_with_temperature(cand_scores, rows, with_k), cand_ids, with_k, rows, tokens, logprobs)
        if without_k:
            full = _with_temperature(logits[without_k], rows, without_k)
            ids = torch.arange(vocab).expand(len(without_k), vocab)
            _draw(full, ids, without_k, rows, tokens, logprobs)
    return tokens, logprobs


def _with_temperature(scores: torch.Tensor, rows, which: List[int]) -> torch.Tensor:
    """Temperature: flatten (>1) or sharpen (<1) each row's distribution."""
    # Below 1e-4 the division overflows float32 to inf and softmax to NaN; that low is greedy anyway.
    temps = [max(rows[i].temperature, MIN_TEMPERATURE) for i in which]
    if all(t == 1.0 for t in temps):
        return scores
    return scores / torch.tensor(temps, dtype=scores.dtype)[:, None]


def _draw(scores, ids, which: List[int], rows, tokens: List[int], logprobs: List[float]) -> None:
    """Nucleus and typical filtering, then one draw per row from its own generator."""
    scores = _top_p(scores, [rows[i].top_p for i in which])
    scores = _typical_p(scores, [rows[i].typical_p for i in which])
    probs = torch.softmax(scores, dim=-1)
    for j, i in enumerate(which):
        # Only the row's own candidates take part, so the draw is the same whatever else is in the batch.
        width = rows[i].top_k if 0 < rows[i].top_k < probs.shape[-1] else probs.shape[-1]
        row_probs = probs[j, :width]
        pick = int(torch.multinomial(row_probs, 1, generator=rows[i].generator))
        tokens[i], logprobs[i] = int(ids[j, pick]), float(torch.log(row_probs[pick]))


def _top_k_candidates(scores: torch.Tensor, ks: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best scores (sorted, best first) and their token ids; -inf past a row's own k."""
    values, ids = torch.topk(scores, max(ks), dim=-1)
    beyond = torch.arange(values.shape[-1])[None, :] >= torch.tensor(ks)[:, None]
    return values.masked_fill(beyond, float("-inf")), ids


def _apply_penalties(logits: torch.Tensor, rows: Sequence[RowSampling]) -> torch.Tensor:
    for i, r in enumerate(rows):
        if r.repetition_penalty != 1.0 and r.seen_ids:
            # CTRL's repetition penalty, as transformers applies it: tokens already present become less likely.
            ids = torch.tensor(r.seen_ids, dtype=torch.long)
            score = logits[i].gather(0, ids)
            score = torch.where(score < 0, score * r.repetition_penalty, score / r.repetition_penalty)
            logits[i].scatter_(0, ids, score)
        if r.frequency_penalty != 0.0 and r.generated_ids:
            # OpenAI's frequency penalty: subtract in proportion to how often a token was generated.
            counts = torch.bincount(torch.tensor(r.generated_ids), minlength=logits.shape[-1])
            logits[i] -= r.frequency_penalty * counts[: logits.shape[-1]].to(logits.dtype)
    return logits


def _top_p(scores: torch.Tensor, ps: List[float]) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p (always one)."""

    def remove(sub: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(sub, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        remove_sorted = probs.cumsum(dim=-1) - probs > p  # mass before each token already reaches p
        return remove_sorted.scatter(-1, order, remove_sorted)

    return _filter_rows(scores, ps, remove)


def _typical_p(scores: torch.Tensor, masses: List[float]) -> torch.Tensor:
    """Locally typical sampling (Meister et al.): keep tokens whose surprise is closest to the entropy."""

    def remove(sub: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(sub, dim=-1)
        entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)
        sorted_shift, order = torch.sort(torch.abs(-log_probs - entropy), descending=False)
        cumulative = sub.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < mass).sum(dim=1).clamp_(max=sub.shape[-1] - 1)
        remove_sorted = sorted_shift > sorted_shift.gather(1, last[:, None])
        remove_sorted[..., :1] = False
        return remove_sorted.scatter(1, order, remove_sorted)

    return _filter_rows(scores, masses, remove)


def _filter_rows(scores: torch.Tensor, limits: List[float], remove) -> torch.Tensor:
    """Apply a filter to the rows whose limit is below 1.0 (1.0 = off); `remove(rows, limits)` says
    which tokens to drop, and they become -inf."""
    rows = [j for j, limit in enumerate(limits) if limit < 1.0]
    if not rows:
        return scores
    sub = scores[rows]
    dropped = remove(sub, torch.tensor([limits[j] for j in rows])[:, None])
    scores = scores.clone()
    scores[rows] = sub.masked_fill(dropped, float("-inf"))
    return scores
