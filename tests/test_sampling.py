"""The batched logits processors (numpy) keep exactly the tokens that transformers' own warpers keep
(torch, as the reference), and each row's draw depends on its own generator only."""

import warnings

import numpy as np
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
    _k_best_ids,
    _top_k_candidates,
    _top_p,
    _typical_p,
    choose_next_tokens,
    log_softmax,
)


def logits(rows=3, vocab=200, seed=0):
    return (np.random.default_rng(seed).standard_normal((rows, vocab)) * 3).astype(np.float32)


def kept(scores):
    return np.isfinite(np.asarray(scores))


def theirs(warper, x):
    """What a transformers warper keeps of numpy scores (it works on torch tensors)."""
    return kept(warper(None, torch.from_numpy(x.copy())).numpy())


def row(seed=None, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, seen_ids=(), **kwargs):
    """A sampled row; its own generator when seeded."""
    generator = None if seed is None else np.random.default_rng(seed)
    return RowSampling(
        True, temperature, top_k, top_p, typical_p, repetition_penalty, 0.0, generator, seen_ids=list(seen_ids), **kwargs
    )


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.99])
def test_top_p_matches_transformers(p):
    x = logits()
    assert np.array_equal(kept(_top_p(x.copy(), [p] * 3)), theirs(TopPLogitsWarper(p), x))


@pytest.mark.parametrize("mass", [0.2, 0.5, 0.95])
def test_typical_p_matches_transformers(mass):
    x = logits()
    assert np.array_equal(kept(_typical_p(x.copy(), [mass] * 3)), theirs(TypicalLogitsWarper(mass), x))


def test_top_k_candidates_per_row_match_transformers():
    x = logits()
    values, ids = _top_k_candidates(x.copy(), [1, 10, 3])
    for r, k in enumerate([1, 10, 3]):
        expected = theirs(TopKLogitsWarper(k), x[r : r + 1])[0]
        assert set(ids[r, :k].tolist()) == set(np.flatnonzero(expected).tolist())
        assert np.all(np.diff(values[r, :k]) <= 0)  # best first
        assert np.isinf(values[r, k:]).all()


def test_sampled_tokens_stay_inside_top_k_and_top_p():
    x = logits(rows=2, seed=3)
    top5 = set(np.argsort(-x[0])[:5].tolist())
    nucleus = set(np.flatnonzero(theirs(TopPLogitsWarper(0.5), x[1:2])[0]).tolist())
    rows = [row(seed=0, top_k=5), row(seed=1, top_p=0.5)]
    picks = [choose_next_tokens(x, rows)[0] for _ in range(200)]
    assert {p[0] for p in picks} <= top5 and len({p[0] for p in picks}) > 1
    assert {p[1] for p in picks} <= nucleus


def test_rows_with_different_parameters_do_not_mix():
    x = logits()
    ours = _top_p(x.copy(), [0.3, 1.0, 0.9])
    assert kept(ours[1]).all()
    assert np.array_equal(kept(ours[0]), theirs(TopPLogitsWarper(0.3), x[0:1])[0])
    assert np.array_equal(kept(ours[2]), theirs(TopPLogitsWarper(0.9), x[2:3])[0])


def test_repetition_penalty_matches_transformers():
    x = logits(rows=1)
    seen = [3, 7, 7, 100]
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([seen]), torch.from_numpy(x.copy())).numpy()
    assert np.allclose(_apply_penalties(x.copy(), [row(repetition_penalty=1.7, seen_ids=seen)]), expected)


def test_frequency_penalty_subtracts_per_occurrence():
    x = np.zeros((1, 10), dtype=np.float32)
    r = RowSampling(True, 1.0, 0, 1.0, 1.0, 1.0, 0.5, None, seen_ids=[], generated_ids=[2, 2, 5])
    out = _apply_penalties(x, [r])
    assert out[0, 2] == -1.0 and out[0, 5] == -0.5 and out[0, 0] == 0.0


def test_choosing_leaves_the_callers_logits_alone():
    x = logits(rows=1)
    before = x.copy()
    choose_next_tokens(x, [row(seed=1, repetition_penalty=1.7, seen_ids=[3, 7])])
    assert np.array_equal(x, before)


def test_greedy_is_argmax_with_its_log_probability():
    x = logits()
    greedy = RowSampling(False, 1.0, 0, 1.0, 1.0, 1.0, 0.0, None, seen_ids=[])
    tokens, logprobs, _ = choose_next_tokens(x, [greedy] * 3)
    assert tokens == x.argmax(axis=-1).tolist()
    expected = torch.log_softmax(torch.from_numpy(x), dim=-1).max(dim=-1).values.numpy()
    assert np.allclose(logprobs, expected, atol=1e-5)


def test_log_probability_of_a_draw_is_that_of_the_processed_distribution():
    x = logits(rows=1)
    tokens, logprobs, _ = choose_next_tokens(x, [row(seed=4, temperature=0.7, top_k=20)])
    top = np.argsort(-x[0])[:20].tolist()
    expected = torch.log_softmax(torch.from_numpy(x[0, top] / np.float32(0.7)), dim=-1).numpy()
    assert tokens[0] in top
    assert np.isclose(logprobs[0], expected[top.index(tokens[0])], atol=1e-5)


def test_extreme_scores_stay_finite():
    """Softmax subtracts the maximum first: huge logits and a tiny temperature give no NaN or inf."""
    x = np.array([[1e30, 1e30 - 1e24, -1e30, 0.0]], dtype=np.float32)
    assert np.isfinite(log_softmax(x)[0, :2]).all()
    tokens, logprobs, _ = choose_next_tokens(x, [row(seed=1, temperature=1e-6, top_p=0.9, typical_p=0.9)])
    assert tokens[0] in (0, 1) and np.isfinite(logprobs[0])
    # A temperature past float32's range: uniform over the candidates (here the top 3), not NaN.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens, logprobs, _ = choose_next_tokens(logits(rows=1), [row(seed=1, temperature=1e300, top_k=3)])
    assert tokens[0] in np.argsort(-logits(rows=1)[0])[:3] and np.isclose(logprobs[0], -np.log(3))


def test_seeded_draw_depends_only_on_the_row():
    x = logits(rows=4)

    def rows():
        return [row(seed=s, temperature=0.8, top_k=k, top_p=0.9) for s, k in ((1, 0), (2, 50), (3, 7), (4, 50))]

    together, _, _ = choose_next_tokens(x, rows())
    alone = [choose_next_tokens(x[i : i + 1], [rows()[i]])[0][0] for i in range(4)]
    assert together == alone


def test_a_seeded_row_draws_the_same_alone_and_among_rows_with_other_parameters():
    """Its draws, step after step, whatever its neighbours ask for (greedy, other k, p, temperature,
    penalties) and whatever their generators draw."""
    x = logits(rows=5, seed=7)
    ours = dict(seed=42, temperature=0.9, top_k=30, top_p=0.95)

    def neighbours():
        return [
            RowSampling(False, 1.0, 0, 1.0, 1.0, 1.3, 0.0, None, seen_ids=[1, 2, 3]),
            row(seed=5, temperature=1.5),
            row(seed=6, top_k=3, typical_p=0.5),
            row(seed=7, top_p=0.2, generated_ids=[9]),
        ]

    alone, batched = row(**ours), row(**ours)
    others = neighbours()
    for _ in range(50):
        solo = choose_next_tokens(x[2:3], [alone])
        mixed = choose_next_tokens(x, others[:2] + [batched] + others[2:])
        assert (solo[0][0], solo[1][0]) == (mixed[0][2], mixed[1][2])


@pytest.mark.parametrize("kind", ["distinct", "ties", "mostly -inf"])
@pytest.mark.parametrize("k", [1, 7, 50, 300])
def test_k_best_of_a_gpt2_sized_vocabulary_are_the_k_best(kind, k):
    """The group-maxima shortcut (vocabularies above 64 x k) against a full sort, best first, ties by id."""
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((5, 50257)) * 3).astype(np.float32)
    if kind == "ties":
        x = np.round(x)  # thousands of equal scores at the cut
    elif kind == "mostly -inf":
        x[rng.random(x.shape) < 0.995] = -np.inf  # a few hundred finite scores, as after a mask
    ids = _k_best_ids(x, k)
    for r in range(5):
        expected = sorted(range(50257), key=lambda t: (-x[r, t], t))[:k]
        assert ids[r].tolist() == expected


def test_a_nan_row_falls_back_to_the_plain_partial_sort():
    x = logits(rows=2, vocab=50257)
    x[1, :] = np.nan
    assert _k_best_ids(x, 5)[0].tolist() == sorted(range(50257), key=lambda t: (-x[0, t], t))[:5]


def test_a_draw_is_the_one_generator_choice_makes():
    """Sampling picks exactly what `Generator.choice(p=...)` would from the same generator state, so a
    seed keeps giving the tokens it gave before the draw was batched."""
    x = logits(rows=1, vocab=1000)
    r, generator = row(seed=11, top_k=40, temperature=0.8), np.random.default_rng(11)
    scores, ids = _top_k_candidates(x, [40])
    probs = np.exp(log_softmax(scores / np.float32(0.8))[0].astype(np.float64))
    drawn = [choose_next_tokens(x, [r])[0][0] for _ in range(50)]
    expected = [int(ids[0, generator.choice(40, p=probs / probs.sum())]) for _ in range(50)]
    assert drawn == expected and len(set(drawn)) > 5


def test_a_greedy_rows_log_probability_only_where_asked():
    x = logits(rows=2)
    greedy = RowSampling(False, 1.0, 0, 1.0, 1.0, 1.0, 0.0, None, seen_ids=[])
    tokens, logprobs, _ = choose_next_tokens(x, [greedy, greedy], want_logprobs=[False, True])
    assert tokens == x.argmax(axis=-1).tolist() and logprobs[0] is None
    assert np.isclose(logprobs[1], log_softmax(x[1])[tokens[1]], atol=1e-5)


# -- grammars' masks -----------------------------------------------------------------------------------
def packed(allowed_ids, vocab):
    """Allowed tokens as llguidance writes them: bit i of int32 word i // 32 is token i."""
    bits = np.zeros(-(-vocab // 32) * 32, dtype=np.uint8)
    bits[list(allowed_ids)] = 1
    return np.packbits(bits, bitorder="little").view("<i4")


@pytest.mark.parametrize("vocab", [200, 50257])  # the plain partial sort, and the group-maxima shortcut
def test_a_mask_limits_its_own_row_only(vocab):
    """The masked row takes only allowed tokens, fewer than its top-k among them; its neighbours draw
    exactly what they draw with no mask in the batch."""
    x = logits(rows=3, vocab=vocab, seed=3)
    allowed_ids = {5, 90, vocab - 7}

    def rows():
        return [row(seed=1, top_k=50), row(seed=2, top_k=50, top_p=0.9), row(seed=3, top_k=0, temperature=0.7)]

    masked, plain = rows(), rows()
    mask = [None, packed(allowed_ids, vocab), None]
    for _ in range(30):
        with_mask, _, _ = choose_next_tokens(x, masked, allowed=mask)
        without, _, _ = choose_next_tokens(x, plain)
        assert with_mask[1] in allowed_ids
        assert (with_mask[0], with_mask[2]) == (without[0], without[2])


@pytest.mark.parametrize("vocab", [200, 50257])
def test_a_masked_row_draws_the_same_alone_and_among_others(vocab):
    """Same seed, same tokens, whatever the neighbours (masked or not, other parameters)."""
    x = logits(rows=4, vocab=vocab, seed=9)
    rng = np.random.default_rng(0)
    ours_mask = packed(rng.choice(vocab, 40, replace=False), vocab)
    ours = dict(seed=42, temperature=0.9, top_k=50, top_p=0.95, repetition_penalty=1.2, seen_ids=[1, 2])
    neighbours = [row(seed=5, top_k=50), RowSampling(False, 1.0, 0, 1.0, 1.0, 1.0, 0.0, None, seen_ids=[]), row(seed=6)]
    neighbour_masks = [packed(rng.choice(vocab, 3, replace=False), vocab), None, None]
    alone, batched = row(**ours), row(**ours)
    for _ in range(40):
        solo = choose_next_tokens(x[1:2], [alone], allowed=[ours_mask])
        mixed = choose_next_tokens(x, neighbours[:1] + [batched] + neighbours[1:], allowed=neighbour_masks[:1] + [ours_mask] + neighbour_masks[1:])
        assert (solo[0][0], solo[1][0]) == (mixed[0][1], mixed[1][1])


def test_a_masked_greedy_row_takes_the_best_allowed_token():
    x = logits(rows=1, vocab=1000)
    allowed_ids = [3, 500, 999]
    greedy = RowSampling(False, 1.0, 0, 1.0, 1.0, 1.0, 0.0, None, seen_ids=[])
    tokens, logprobs, _ = choose_next_tokens(x, [greedy], allowed=[packed(allowed_ids, 1000)])
    best = max(allowed_ids, key=lambda t: x[0, t])
    assert tokens == [best]
    # Its log-probability is that of the masked distribution: over the allowed tokens only.
    assert np.isclose(logprobs[0], log_softmax(x[0, allowed_ids])[allowed_ids.index(best)], atol=1e-5)


def test_tokens_past_a_short_mask_are_not_allowed():
    """A mask narrower than the logits (a vocabulary padded past the tokenizer's) allows none beyond it."""
    x = logits(rows=1, vocab=300)
    x[0, 290:] = 100.0  # by far the likeliest, and not in the mask's 256 tokens
    tokens, _, _ = choose_next_tokens(x, [row(seed=1, top_k=50)], allowed=[packed([1, 2, 3], 256)])
    assert tokens[0] in (1, 2, 3)
