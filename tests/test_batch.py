"""The running batch on numpy arrays: rows joining with different widths, leaving, prefilled in
chunks; every row's logits equal those of the same tokens run alone."""

import os
import numpy as np
import pytest

from textgen.engine.batch import Batch
from textgen.model.loader import load_model
from textgen.settings import Settings


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(Settings.from_env(environ={}, model_id=tiny_model_dir, model_backend="torch"))[0]


def alone(model, prompt, continuation):
    """Logits after the prompt, then after each continuation token: one row, nothing else running."""
    batch = Batch(model, chunk_tokens=10_000)
    batch.add(["alone"], [prompt])
    logits = [finish_prefill(batch)[0]]
    for token in continuation:
        logits.append(batch.step([token])[0])
    return logits


def finish_prefill(batch):
    """The joined rows' next-token logits, once every prompt of the group is prefilled."""
    while True:
        joined = batch.prefill_step()
        if joined is not None:
            return joined.logits


def close(a, b):
    return np.allclose(a, b, atol=1e-5)


A = [5, 17, 23, 42, 8]
B = [3, 9, 11, 60, 61, 62, 70, 2, 19]
C = [7, 7, 30]
STEPS = [12, 13, 14, 15, 16]


def test_rows_of_different_widths_join_and_match_separate_runs(model):
    expect_a, expect_b = alone(model, A, STEPS), alone(model, B, STEPS[:3])
    batch = Batch(model)
    batch.add(["a"], [A])
    logits = finish_prefill(batch)
    assert batch.rows == ["a"] and close(logits[0], expect_a[0])
    got_a = [batch.step([STEPS[0]])[0], batch.step([STEPS[1]])[0]]
    batch.add(["b"], [B])  # a longer prompt joins a row already 7 positions in
    logits = finish_prefill(batch)
    assert batch.rows == ["a", "b"] and close(logits[0], expect_b[0])
    for i in range(3):
        both = batch.step([STEPS[2 + i], STEPS[i]])
        got_a.append(both[0])
        assert close(both[1], expect_b[1 + i])
    assert all(close(g, e) for g, e in zip(got_a, expect_a[1:]))


def test_keeping_a_subset_keeps_each_rows_own_cache(model):
    expected = {name: alone(model, p, STEPS) for name, p in (("a", A), ("b", B), ("c", C))}
    batch = Batch(model)
    batch.add(["a", "b", "c"], [A, B, C])  # prefilled together, right-padded to B's width
    logits = finish_prefill(batch)
    assert batch.rows == ["a", "b", "c"]
    for i, name in enumerate(batch.rows):
        assert close(logits[i], expected[name][0])
    batch.step([STEPS[0]] * 3)
    batch.remove(["a"])  # c moves into a's slot
    assert batch.rows == ["c", "b"]
    for step in range(1, 4):
        out = batch.step([STEPS[step]] * 2)
        assert close(out[0], expected["c"][step + 1]) and close(out[1], expected["b"][step + 1])
    batch.remove(["b", "c"])
    assert batch.empty and batch.cache.nbytes() == 0  # memory given back when idle


def test_chunked_prefill_equals_one_pass_and_decode_goes_on_between_chunks(model):
    long_prompt = list(range(3, 40))
    expected_long, expected_a = alone(model, long_prompt, STEPS[:2]), alone(model, A, STEPS)
    batch = Batch(model, chunk_tokens=8)
    batch.add(["a"], [A])
    finish_prefill(batch)
    batch.add(["long"], [long_prompt])
    got_a, chunks = [], 0
    while True:  # one prefill chunk, then one decode step of the running row: interleaved
        joined = batch.prefill_step()
        chunks += 1
        if joined is not None:
            break
        got_a.append(batch.step([STEPS[len(got_a)]])[0])
    assert chunks == 5  # 37 tokens in chunks of 8
    assert close(joined.logits[0], expected_long[0]) and joined.cached_tokens == [0]  # no prefix cache
    assert all(close(g, e) for g, e in zip(got_a, expected_a[1:]))
    out = batch.step([STEPS[len(got_a)], STEPS[0]])
    assert close(out[0], expected_a[len(got_a) + 1]) and close(out[1], expected_long[1])


def test_a_row_leaving_during_a_prefill_moves_the_group_down(model):
    expected_b, expected_c = alone(model, B, STEPS[:2]), alone(model, C, STEPS[:2])
    batch = Batch(model, chunk_tokens=4)
    batch.add(["a"], [A])
    finish_prefill(batch)
    batch.add(["b", "c"], [B, C])
    assert batch.prefill_step() is None  # two rows of 2 tokens each: not done yet
    batch.remove(["a"])  # the group's slots shift down under it
    logits = finish_prefill(batch)
    assert batch.rows == ["b", "c"] and close(logits[0], expected_b[0]) and close(logits[1], expected_c[0])
    out = batch.step([STEPS[0], STEPS[0]])
    assert close(out[0], expected_b[1]) and close(out[1], expected_c[1])


class RecordingModel:
    """A stand-in `CausalLM` that records each call and checks what ONNX Runtime will need: numpy int64
    inputs, and a cache already reserved for the rows' slots and positions."""

    n_layers, n_kv_heads, head_dim, vocab_size = 1, 1, 2, 5

    def __init__(self, min_width: int = 1):
        self.calls = []
        self.min_width = min_width  # the ONNX graph runs a one-token pass two wide

    def forward(self, tokens, starts, counts, cache, first_slot, want_logits, logit_index=None):
        assert tokens.dtype == starts.dtype == counts.dtype == np.int64
        rows, width = tokens.shape
        assert starts.shape == counts.shape == (rows,)
        assert first_slot + rows <= cache.slot_capacity
        assert int(starts.max()) + max(width, self.min_width) <= cache.time_capacity
        index = None if logit_index is None else logit_index.tolist()
        self.calls.append((tokens.tolist(), starts.tolist(), counts.tolist(), first_slot, want_logits, index))
        return np.zeros((rows if index is None else len(index), self.vocab_size), np.float32) if want_logits else None


def test_the_cache_has_room_for_the_models_narrowest_pass():
    """A model that runs a one-token pass two wide (ONNX) needs one more position than the tokens: the
    batch reserves it, also when a decoding row reaches the cache's last position (RecordingModel checks
    every call)."""
    model = RecordingModel(min_width=2)
    batch = Batch(model, chunk_tokens=4)
    batch.add(["a"], [A])
    finish_prefill(batch)
    capacity = batch.cache.time_capacity
    for _ in range(capacity):  # past the capacity the prefill left, one token a pass
        batch.step([STEPS[0]])
    assert batch.cache.time_capacity > capacity and len(model.calls) > capacity


def test_what_the_batch_asks_of_the_model():
    model = RecordingModel()
    batch = Batch(model, chunk_tokens=4)
    batch.add(["a"], [A])  # 5 tokens, chunks of 4: but never a one-token chunk after (Batch._takes)
    finish_prefill(batch)
    batch.step([STEPS[0]])
    batch.add(["b", "c"], [B, C])  # 2 tokens each per chunk, a last odd token joining the chunk before
    finish_prefill(batch)
    batch.step([STEPS[1], STEPS[2], STEPS[3]])
    assert model.calls == [  # (tokens, starts, counts, first slot, logits wanted, at which flat positions)
        ([A], [0], [5], 0, True, [4]),  # logits as the prompt ends
        ([[STEPS[0]]], [5], [1], 0, True, [0]),  # decode: one token at each row's length
        ([B[0:2] + [0], C], [0, 0], [2, 3], 1, True, [5]),  # the group in the slots after the decoding row,
        # right-padded; c's prompt ends here: its logits only
        ([B[2:4], [0, 0]], [2, 3], [2, 0], 1, False, []),  # c only waits: count 0
        ([B[4:6], [0, 0]], [4, 3], [2, 0], 1, False, []),
        ([B[6:], [0, 0, 0]], [6, 3], [3, 0], 1, True, [2]),
        ([[STEPS[1]], [STEPS[2]], [STEPS[3]]], [6, 9, 3], [1, 1, 1], 0, True, [0, 1, 2]),
    ]


def test_a_decode_step_and_a_prefill_chunk_in_one_pass():
    """run_pass with both: the decoding rows' tokens and the group's chunk in one call, the group in the
    slots after the rows; the logits after each decoding row's token, and the group's as its prompts end."""
    model = RecordingModel()
    batch = Batch(model, chunk_tokens=4)
    batch.add(["a"], [A])
    finish_prefill(batch)
    batch.add(["b", "c"], [B, C])
    stepped, joined = batch.run_pass([[STEPS[0]]], None, prefill=True)
    assert joined is None and stepped.logits.shape == (1, model.vocab_size)
    stepped, joined = batch.run_pass([[STEPS[1]]], None, prefill=True)
    assert joined is None  # c is done, b is not
    while joined is None:
        stepped, joined = batch.run_pass([[STEPS[2]]], None, prefill=True)
    assert batch.rows == ["a", "b", "c"] and joined.logits.shape == (2, model.vocab_size)
    assert model.calls[1:4] == [  # c's 3 tokens in one chunk: a last token alone would run apart (_takes)
        ([[STEPS[0], 0, 0], B[0:2] + [0], C], [5, 0, 0], [1, 2, 3], 0, True, [0, 8]),
        ([[STEPS[1], 0], B[2:4], [0, 0]], [6, 2, 3], [1, 2, 0], 0, True, [0]),
        ([[STEPS[2], 0], B[4:6], [0, 0]], [7, 4, 3], [1, 2, 0], 0, True, [0]),
    ]


def test_a_chunk_wider_than_the_shared_pass_takes_runs_apart_after_the_decode_step():
    """Attention sees right-padded rows: a prompt chunk wider than TOGETHER_MAX_TOKENS would make every
    decoding row attend with its width, so run_pass runs the two passes, decode first."""
    from textgen.engine.batch import TOGETHER_MAX_TOKENS

    model = RecordingModel()
    batch = Batch(model, chunk_tokens=256)
    batch.add(["a"], [A])
    finish_prefill(batch)
    long_prompt = list(range(1, TOGETHER_MAX_TOKENS + 2))
    batch.add(["b"], [long_prompt])
    stepped, joined = batch.run_pass([[STEPS[0]]], None, prefill=True)
    assert stepped.logits.shape == (1, model.vocab_size) and joined.logits.shape == (1, model.vocab_size)
    assert model.calls[-2:] == [
        ([[STEPS[0]]], [5], [1], 0, True, [0]),
        ([long_prompt], [0], [len(long_prompt)], 1, True, [len(long_prompt) - 1]),
    ]
    assert batch.rows == ["a", "b"]


def test_kv_cache_memory_follows_the_rows_not_the_arrays_shape():
    """What MAX_BATCH_TOTAL_TOKENS relies on: the cache's resident memory is the positions rows hold.
    Reserving is free, a slot left empty or the tail of a slot a shorter row moved into is given back,
    and a regrowth copies only the positions held (SmolLM2's shape: 46,080 bytes a token)."""
    from textgen.model.kv_cache import KVCache

    def resident_mib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    cache = KVCache(30, 3, 64)
    token_mib = cache.bytes_per_token / 2**20
    before = resident_mib()
    cache.reserve(16, 4000)  # 3.4 GiB of address space
    assert resident_mib() - before < 5
    for array in cache.keys + cache.values:
        array[0, :, :3000] = 1.0  # a long row in slot 0, a short one in slot 1
        array[1, :, :100] = 2.0
    assert abs(resident_mib() - before - 3100 * token_mib) < 10
    cache.move(1, 0, 100)  # the long row leaves: the short one moves into its slot
    cache.release(1)
    assert resident_mib() - before < 100 * token_mib + 10
    cache.reserve(16, 6000, lengths=[100])  # regrowth keeps the 100 positions held, and only them
    assert resident_mib() - before < 100 * token_mib + 10
    assert (cache.keys[29][0, :, :100] == 2.0).all() and (cache.values[0][0, :, 112:] == 0).all()
