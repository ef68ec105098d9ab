"""The batched logits processors keep exactly the tokens that transformers' own warpers keep."""

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from textgen.engine.sampling import (
    RowSampling,
    _apply_penalties,
    _top_k_candidates,
    _top_p,
    _typical_p,
    choose_next_tokens,
)


def logits(rows=3, vocab=200, seed=0):
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def kept(scores):
    return torch.isfinite(scores)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    x = logits()
    ours = _top_p(x.clone(), [p] * 3)
    theirs = TopPLogitsWarper(p)(None, x.clone())
    assert torch.equal(kept(ours), kept(theirs))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_p_matches_transformers(mass):
    x = logits()
    ours = _typical_p(x.clone(), [mass] * 3)
    theirs = TypicalLogitsWarper(mass)(None, x.clone())
    assert torch.equal(kept(ours), kept(theirs))


def test_top_k_candidates_per_row_match_transformers():
    x = logits()
    values, ids = _top_k_candidates(x.clone(), [1, 10, 3])
    for row, k in enumerate([1, 10, 3]):
        theirs = TopKLogitsWarper(k)(None, x[row : row + 1].clone())[0]
        ours = set(ids[row, :k].tolist())
        assert ours == set(torch.nonzero(kept(theirs)).flatten().tolist())
        assert torch.isinf(values[row, k:]).all()


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    x = logits(rows=2, seed=3)
    top5 = set(torch.topk(x[0], 5).indices.tolist())
    nucleus = set(torch.nonzero(kept(TopPLogitsWarper(0.5)(None, x[1:2].clone())[0])).flatten().tolist())
    gen = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    rows = [
        RowSampling(True, 1.0, 5, 1.0, 1.0, 1.0, 0.0, gen[0], seen_ids=[]),
        RowSampling(True, 1.0, 0, 0.5, 1.0, 1.0, 0.0, gen[1], seen_ids=[]),
    ]
    picks = [choose_next_tokens(x.clone(), rows)[0] for _ in range(200)]
    assert {p[0] for p in picks} <= top5 and len({p[0] for p in picks}) > 1
    assert {p[1] for p in picks} <= nucleus


def test_rows_with_different_parameters_do_not_mix():
    x = logits()
    ours = _top_p(x.clone(), [0.3, 1.0, 0.9])
    assert kept(ours[1]).all()
    assert torch.equal(kept(ours[0]), kept(TopPLogitsWarper(0.3)(None, x[0:1].clone())[0]))
    assert torch.equal(kept(ours[2]), kept(TopPLogitsWarper(0.9)(None, x[2:3].clone())[0]))


def test_repetition_penalty_matches_transformers():
    x = logits(rows=1)
    seen = [3, 7, 7, 100]
    row = RowSampling(True, 1.0, 0, 1.0, 1.0, 1.7, 0.0, None, seen_ids=seen)
    theirs = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([seen]), x.clone())
    assert torch.allclose(_apply_penalties(x.clone(), [row]), theirs)


def test_frequency_penalty_subtracts_per_occurrence():
    x = torch.zeros(1, 10)
    row = RowSampling(True, 1.0, 0, 1.0, 1.0, 1.0, 0.5, None, seen_ids=[], generated_ids=[2, 2, 5])
    out = _apply_penalties(x, [row])
    assert out[0, 2] == -1.0 and out[0, 5] == -0.5 and out[0, 0] == 0.0


def test_seeded_draw_depends_only_on_the_row():
    x = logits(rows=4)

    def rows():
        return [
            RowSampling(True, 0.8, k, 0.9, 1.0, 1.0, 0.0, torch.Generator().manual_seed(s), seen_ids=[])
            for s, k in ((1, 0), (2, 50), (3, 7), (4, 50))
        ]

    together, _ = choose_next_tokens(x.clone(), rows())
    alone = [choose_next_tokens(x[i : i + 1].clone(), [rows()[i]])[0][0] for i in range(4)]
    assert together == alone
