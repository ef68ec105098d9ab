"""The prefix cache: the store on plain data (whole blocks, the longest exact prefix, never a whole prompt,
least recently used out within the budget), then on the tiny model's backends (a prefill started after
a cached prefix gives the logits of a full one; rows leave and move while they use it; chunked
prefill), then the engine (greedy and seeded texts equal with and without it, one after another and
prefilled together), its settings and its metrics."""

import json

import numpy as np
import pytest

from tests.batching import DecodeSteps, submit_together
from textgen.engine.batch import Batch
from textgen.engine.handle import Handle
from textgen.engine.prefix_cache import ROOT, PrefixCache
from textgen.engine.queue import Entry, next_group
from textgen.model.kv_cache import KVCache
from textgen.settings import Settings
from textgen.validation import GenerationRequest, validate_generate

B = 16  # the block size the tests of the store use (the default)


# -- the store on plain data -------------------------------------------------------------------------
def marked(prompt, cache, slot):
    """Write into `slot` what a prefill of `prompt` would leave there, as plain data: at each position
    p, a number determined by the whole prompt up to p (so a slot holding another prompt's prefix, or a
    block out of place, shows), distinct in every layer, head, dimension, for keys and values."""
    cache.reserve(slot + 1, len(prompt))
    for p in range(len(prompt)):
        tag = hash(tuple(prompt[: p + 1])) % 100_003
        for kind, store in enumerate((cache.keys, cache.values)):
            for layer, array in enumerate(store):
                heads, dim = array.shape[1], array.shape[3]
                array[slot, :, p] = tag + np.arange(heads * dim).reshape(heads, dim) / 1000 + layer * 10 + kind * 5


def loaded_matches(prompt, cache, slot, tokens):
    """The slot's first `tokens` positions are what a prefill of `prompt` writes there."""
    reference = KVCache(cache.n_layers, cache.n_kv_heads, cache.head_dim)
    marked(prompt[:tokens], reference, 0)
    return all(
        np.array_equal(a[slot, :, :tokens], r[0, :, :tokens])
        for a, r in zip(cache.keys + cache.values, reference.keys + reference.values)
    )


def store_cache(budget_tokens, layers=2, heads=3, dim=4):
    return PrefixCache(layers, heads, dim, budget_tokens), KVCache(layers, heads, dim)


def prefill(store, prompt, cache=None, slot=0):
    """What the batch does when a row's prefill ends: the slot holds the prompt, the store keeps it."""
    if cache is None:
        cache = KVCache(store.n_layers, store.n_kv_heads, store.head_dim)
    marked(prompt, cache, slot)
    return store.store(prompt, cache, slot)


def reuse(store, prompt, slot=1):
    """What the batch does when a row joins: the longest cached prefix, copied into a fresh slot.
    Returns the tokens reused and the cache they went to."""
    cache = KVCache(store.n_layers, store.n_kv_heads, store.head_dim)
    blocks = store.match(prompt)
    cache.reserve(slot + 1, max(len(blocks) * store.block_tokens, 1))
    return store.load(blocks, cache, slot), cache


P = list(range(100, 150))  # 50 tokens: 3 whole blocks and 2 tokens


def test_only_whole_blocks_are_kept_and_the_last_two_prompt_tokens_are_never_reused():
    store, _ = store_cache(1024)
    assert prefill(store, P) == 3 and store.tokens == 48  # 3 blocks; the last 2 tokens are not kept
    assert store.nbytes() == 48 * 2 * 2 * 3 * 4 * 4  # tokens x layers x (K, V) x heads x dim x 4 bytes
    reused, cache = reuse(store, P + [7, 8])
    assert reused == 48 and loaded_matches(P, cache, 1, 48)
    # A prompt that is exactly cached blocks keeps its last block to prefill: its logits are needed.
    assert reuse(store, P[:48])[0] == 32
    # One token past a block keeps that block too: never a one-token chunk (Batch._takes says why).
    assert reuse(store, P[:49])[0] == 32 and reuse(store, P[:50])[0] == 48
    assert reuse(store, P[:32])[0] == 16
    assert reuse(store, P[:16])[0] == 0 and reuse(store, P[:1])[0] == 0
    assert reuse(store, P[:47])[0] == 32  # and never a part of a block
    assert store.stats()["hit_tokens"] == 48 + 32 + 32 + 48 + 16 + 32


def test_the_longest_exact_prefix_matches():
    store, _ = store_cache(1024)
    prefill(store, P)
    other = P[:20] + [1] * 30  # the same first block, then different
    reused, cache = reuse(store, other)
    assert reused == 16 and loaded_matches(P, cache, 1, 16)
    # Same tokens in the second block but not the first: nothing matches (a block only after its parent).
    assert reuse(store, [1] * 16 + P[16:])[0] == 0
    assert reuse(store, [P[0] + 1] + P[1:])[0] == 0  # one token off in the first block
    # A prompt branching off in the third block: the first two blocks are shared, the branch is added.
    branch = P[:40] + [2] * 40  # 5 whole blocks
    assert prefill(store, branch) == 3
    assert store.tokens == 48 + 48
    for prompt, expected in ((P + [5], 48), (branch + [5, 6], 80), (P[:40] + [3] * 20, 32)):
        reused, cache = reuse(store, prompt)
        assert reused == expected and loaded_matches(prompt, cache, 1, reused)


def test_the_least_recently_used_blocks_leave_first_within_the_budget():
    store, _ = store_cache(4 * B)  # 4 blocks; prompts end in two more tokens, which are always prefilled
    a, b, c = ([t] * 2 * B for t in (1, 2, 3))  # two blocks each
    prefill(store, a)
    prefill(store, b)
    assert store.tokens == 4 * B
    assert reuse(store, a + [0, 0])[0] == 2 * B  # a is now the most recently used
    prefill(store, c)  # room for c: b's two blocks go
    assert store.tokens == 4 * B and store.stats()["evicted_blocks"] == 2
    assert reuse(store, b + [0, 0])[0] == 0
    reused, cache = reuse(store, a + [0, 0])
    assert reused == 2 * B and loaded_matches(a, cache, 1, reused)
    reused, cache = reuse(store, c + [0, 0])
    assert reused == 2 * B and loaded_matches(c, cache, 1, reused)
    # The tail goes before the head: a third block on c evicts a's second block, not its first.
    prefill(store, c + [4] * B)
    assert reuse(store, a + [0, 0])[0] == B and reuse(store, c + [4] * B + [0, 0])[0] == 3 * B


def test_a_prompt_longer_than_the_budget_keeps_its_first_blocks():
    store, _ = store_cache(2 * B + 5)  # rounded down: 2 blocks
    assert store.capacity_tokens == 2 * B
    assert prefill(store, P) == 2 and store.tokens == 2 * B
    reused, cache = reuse(store, P)
    assert reused == 2 * B and loaded_matches(P, cache, 1, reused)
    assert PrefixCache(1, 1, 1, B - 1).capacity_blocks == 0


def test_any_sequence_of_stores_and_lookups_reuses_only_exact_prefixes():
    """Prompts drawn from a few shared beginnings, stored and looked up in random order under a budget
    that forces evictions: every reuse is exactly the prompt's own prefix, whole blocks, never the whole
    prompt; the budget holds; no block outlives its parent; and at least the newest stored prompt's
    whole blocks are found again right after its store."""
    rng = np.random.default_rng(0)
    heads = [list(rng.integers(0, 5, 40)) for _ in range(4)]
    store, _ = store_cache(10 * B, layers=1, heads=1, dim=2)
    hits = 0
    for step in range(300):
        prompt = heads[rng.integers(4)][: rng.integers(1, 41)] + list(rng.integers(0, 5, rng.integers(0, 30)))
        if rng.random() < 0.5:
            added = prefill(store, prompt, slot=int(rng.integers(3)))
            assert added <= len(prompt) // B
            reused, cache = reuse(store, prompt + [9, 9])
            assert reused == min(len(prompt) // B, store.capacity_blocks) * B
        else:
            reused, cache = reuse(store, prompt, slot=int(rng.integers(3)) + 1)
            assert reused % B == 0 and reused <= len(prompt) - 1
        hits += reused > 0
        assert loaded_matches(prompt + [9, 9], cache, cache.slot_capacity - 1, reused), step
        assert store.tokens <= store.capacity_tokens
        ids = {block_id for block_id, _ in store._blocks.values()} | {ROOT}
        assert all(parent in ids for parent, _ in store._blocks), step  # no orphan
        indices = [index for _, index in store._blocks.values()]
        assert len(set(indices)) == len(indices) and len(indices) + len(store._free) == store.capacity_blocks
    assert hits > 100 and store.stats()["evicted_blocks"] > 0


def test_prompts_are_grouped_by_the_tokens_they_have_left_to_prefill():
    """The scheduler counts a prompt's tokens after its cached prefix: prompts sharing a cached 96-token
    prefix fit one 256-token prefill chunk together (8 x 20 left), where whole (8 x 100) they would go two
    at a time; a miss still counts whole."""
    store, _ = store_cache(1024)
    shared = list(range(200, 296))
    prefill(store, shared + [1] * 4)
    before = store.stats()

    def waiting(prompts):
        request = GenerationRequest(prompt="x", max_new_tokens=5, do_sample=False)
        return [Entry(Handle(), request, tuple(p), 0.0, str(i)) for i, p in enumerate(prompts)]

    hits = [shared + [i] * 20 for i in range(8)]
    assert [store.to_prefill(p) for p in hits] == [20] * 8
    assert store.stats() == before  # a peek: no lookup counted, nothing touched
    def cached(entry):
        return store.to_prefill(entry.prompt_ids)

    assert len(next_group(waiting(hits), 16, 256, 1.0, 60.0, cached).group) == 8
    assert len(next_group(waiting(hits), 16, 256, 1.0, 60.0).group) == 2  # counted whole (the default)
    misses = [[i] + shared for i in range(8)]
    assert len(next_group(waiting(misses), 16, 256, 1.0, 60.0, cached).group) == 2
    assert store.to_prefill(shared) == 16 and store.to_prefill(shared[:10]) == 10  # never the whole prompt


# -- on the model's backends ---------------------------------------------------------------------------
@pytest.fixture
def model(loaded):
    return loaded[0]


def prefix_cache(model, tokens=1024):
    return PrefixCache(model.n_layers, model.n_kv_heads, model.head_dim, tokens)


def joined_when_prefilled(batch):
    while True:
        joined = batch.prefill_step()
        if joined is not None:
            return joined


def finish_prefill(batch):
    return joined_when_prefilled(batch).logits


def run_alone(batch, prompt, steps=(12, 13, 14)):
    """Logits after `prompt`'s prefill, then after each decode step; the row then leaves."""
    batch.add(["row"], [prompt])
    logits = [finish_prefill(batch)[0]]
    for token in steps:
        logits.append(batch.step([token])[0])
    batch.remove(["row"])
    return logits


def assert_close(got, expected):
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() <= 1e-5, np.abs(g - e).max()


RNG = np.random.default_rng(1)
PREFIX = [int(t) for t in RNG.integers(3, 300, 101)]  # 6 whole blocks and 5 tokens
SUFFIXES = ([7, 8, 9], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57], [1])


def test_a_prefill_after_a_cached_prefix_gives_a_full_prefills_logits(model):
    """Chunks of 24 tokens (the prompt is longer than one chunk, and chunks and blocks do not line up)."""
    plain, cached = Batch(model, chunk_tokens=24), Batch(model, chunk_tokens=24, prefix_cache=prefix_cache(model))
    for n, suffix in enumerate(SUFFIXES):
        prompt = PREFIX + suffix
        expected = run_alone(plain, prompt)
        assert_close(run_alone(cached, prompt), expected)
        assert cached.prefix_cache.hit_tokens == 96 * n  # the first one stores, the others reuse 6 blocks
    # The reused keys and values are what the logits come from: spoil them and the logits change.
    for array in cached.prefix_cache.keys + cached.prefix_cache.values:
        array[...] = 0
    prompt = PREFIX + SUFFIXES[0]
    assert np.abs(run_alone(cached, prompt)[0] - run_alone(plain, prompt)[0]).max() > 1e-3


def test_the_remainder_longer_than_a_chunk_and_a_longer_cached_prompt(model):
    """A prompt reusing 48 tokens has 100 more to prefill, in chunks of 16; a later, shorter prompt
    reuses the longer one's blocks it begins with."""
    plain, cached = Batch(model, chunk_tokens=16), Batch(model, chunk_tokens=16, prefix_cache=prefix_cache(model))
    run_alone(cached, PREFIX[:50])
    long_prompt = PREFIX[:50] + [int(t) for t in RNG.integers(3, 300, 98)]
    assert_close(run_alone(cached, long_prompt), run_alone(plain, long_prompt))
    assert cached.prefix_cache.hit_tokens == 48
    assert_close(run_alone(cached, long_prompt[:120]), run_alone(plain, long_prompt[:120]))
    assert cached.prefix_cache.hit_tokens == 48 + 112


def test_rows_using_cached_prefixes_leave_and_move(model):
    """A group of rows reusing a prefix is prefilled while a decoding row leaves (the group's slots move
    down), then one of the group leaves mid-prefill, then a decoding row with a reused prefix leaves
    (the last row moves into its slot): every remaining row's logits stay those of its prompt alone."""
    prompts = {name: PREFIX + suffix for name, suffix in zip("bcd", SUFFIXES)}
    prompts["a"] = [5, 6, 7, 8]
    plain = Batch(model, chunk_tokens=10_000)
    expected = {name: run_alone(plain, p, steps=(12, 13, 14, 15)) for name, p in prompts.items()}
    batch = Batch(model, chunk_tokens=6, prefix_cache=prefix_cache(model))
    run_alone(batch, PREFIX)  # stores 6 blocks
    batch.add(["a"], [prompts["a"]])
    assert_close(finish_prefill(batch), expected["a"][:1])
    batch.add(["b", "c", "d"], [prompts["b"], prompts["c"], prompts["d"]])
    assert batch.prefill_step() is None  # 2 tokens each after the 96 reused: not done
    assert batch.prefix_cache.hit_tokens == 3 * 96
    batch.remove(["a"])  # the group's slots shift down under it
    assert batch.prefill_step() is None
    batch.remove(["c"])  # and again, from inside the group
    joined = joined_when_prefilled(batch)
    assert batch.rows == ["b", "d"] and joined.cached_tokens == [96, 96]  # in the group's order, c gone
    assert_close(joined.logits, [expected["b"][0], expected["d"][0]])
    out = batch.step([12, 12])
    assert_close(out, [expected["b"][1], expected["d"][1]])
    batch.add(["c"], [prompts["c"]])  # c again: reuses its prefix, joins after b and d
    assert_close(finish_prefill(batch), expected["c"][:1])
    batch.remove(["b"])  # c (last) moves into b's slot, its reused positions with it
    assert batch.rows == ["c", "d"]
    assert_close(batch.step([12, 13]), [expected["c"][1], expected["d"][2]])
    assert_close(batch.step([13, 14]), [expected["c"][2], expected["d"][3]])


# -- the engine ------------------------------------------------------------------------------------------
SENTENCE = "Streaming sends each token as soon as it exists; batching decodes many requests together."
SYSTEM = " ".join([SENTENCE] * 3)  # ~120 tokens of the tiny model's tokenizer
QUESTIONS = [" Q: why?", " Q: what is a model and how does it predict the next token?", " Hi", " Q: and finance?"]


def bodies(**extra):
    out = []
    for i, question in enumerate(QUESTIONS):
        out.append(dict(prompt=SYSTEM + question, max_new_tokens=12, do_sample=False, **extra))
        out.append(dict(prompt=SYSTEM + question, max_new_tokens=12, seed=10 + i, temperature=1.0, **extra))
    return out


def assert_same_logprobs(got, expected):
    """The generated tokens' log-probabilities (from the logits after each prefill and decode step) agree."""
    for g, e in zip(got, expected):
        assert [t.id for t in g.tokens] == [t.id for t in e.tokens] and g.tokens
        assert np.allclose([t.logprob for t in g.tokens], [t.logprob for t in e.tokens], atol=1e-5, rtol=0)


def request(settings, prompt, **parameters):
    return validate_generate({"inputs": prompt, "parameters": parameters}, settings)


def test_texts_are_the_same_with_and_without_the_cache_one_after_another(make_engine):
    off = make_engine(prefix_cache_tokens=0, prefill_chunk_tokens=32)
    on = make_engine(prefix_cache_tokens=1024, prefill_chunk_tokens=32)
    assert off.prefix_cache_stats() is None
    expected = [off.submit(request(off.settings, **b)).result() for b in bodies(details=True)]
    got = [on.submit(request(on.settings, **b)).result() for b in bodies(details=True)]
    assert got == expected
    assert_same_logprobs(got, expected)
    assert len({r.text for r in expected}) > 1
    stats = on.prefix_cache_stats()
    shared = len(on.prompts.tokenize(request(on.settings, SYSTEM)).prompt_ids) // 16 * 16  # whole blocks
    assert shared >= 96
    assert stats["hit_tokens"] >= (len(expected) - 1) * shared  # every one after the first reused the prefix
    # Each result says how many of its prompt tokens the cache gave (OpenAI's usage.cached_tokens).
    assert [r.cached_tokens for r in expected] == [0] * len(expected)
    assert got[0].cached_tokens == 0 and min(r.cached_tokens for r in got[1:]) >= shared
    assert sum(r.cached_tokens for r in got) == stats["hit_tokens"]
    assert all(r.cached_tokens <= (r.prompt_tokens - 1) // 16 * 16 for r in got)


def test_texts_are_the_same_with_and_without_the_cache_prefilled_together(make_engine, monkeypatch):
    # Chunks of 512: the eight ~140-token prompts would go three at a time; with the prefix cached, what
    # each has left to prefill (~30 tokens) fits one group.
    off = make_engine(prefix_cache_tokens=0, prefill_chunk_tokens=512, max_batch_size=16)
    on = make_engine(prefix_cache_tokens=1024, prefill_chunk_tokens=512, max_batch_size=16)
    requests = [request(on.settings, **b) for b in bodies()]
    expected = [off.submit(r).result() for r in requests]
    on.submit(request(on.settings, SYSTEM + " Warm up", max_new_tokens=1)).result()  # stores the prefix
    prefills = []
    real_forward = on.model.forward

    def recording(tokens, starts, *args, **kwargs):
        if tokens.shape[1] > 1:
            prefills.append(list(starts))
        return real_forward(tokens, starts, *args, **kwargs)

    monkeypatch.setattr(on.model, "forward", recording)
    with DecodeSteps(on) as steps:
        handles = submit_together(on, steps, requests)
        got = [h.result() for h in handles]
    assert got == expected
    assert max(r.prompt_tokens for r in got) * len(got) > 512  # whole, they could not have gone in one group
    # After the placeholder's (submit_together's), one prefill pass for all eight, each row starting
    # after the reused prefix; then they were decoded together.
    assert len(prefills) == 2 and len(prefills[1]) == len(requests) and min(prefills[1]) >= 96, prefills
    assert steps.rows[0] == len(requests)


def test_a_request_scoring_its_prompt_is_prefilled_whole(make_engine):
    """Prompt log-probabilities need the logits at every prompt position: a request asking for them
    reuses nothing (and its scores equal those without the cache), while its blocks are still stored."""
    off = make_engine(prefix_cache_tokens=0, prefill_chunk_tokens=32)
    on = make_engine(prefix_cache_tokens=1024, prefill_chunk_tokens=32)
    body = dict(prompt=SYSTEM + QUESTIONS[1], max_new_tokens=4, do_sample=False, details=True, decoder_input_details=True)
    expected = off.submit(request(off.settings, **body)).result()
    on.submit(request(on.settings, SYSTEM + QUESTIONS[0], max_new_tokens=1)).result()  # stores the prefix
    hits = on.prefix_cache_stats()["hit_tokens"]
    got = on.submit(request(on.settings, **body)).result()
    assert on.prefix_cache_stats()["hit_tokens"] == hits
    assert got == expected and len(got.prefill) == got.prompt_tokens > 100
    assert [p.id for p in got.prefill] == [p.id for p in expected.prefill]
    assert np.allclose([p.logprob for p in got.prefill[1:]], [p.logprob for p in expected.prefill[1:]], atol=1e-5, rtol=0)
    assert_same_logprobs([got], [expected])
    # The scheduler counts it whole too (rows sharing a chunk with it must not wait on its whole prefill).
    scored, plain = request(on.settings, **body), request(on.settings, SYSTEM + QUESTIONS[1])
    ids = tuple(on.prompts.tokenize(plain).prompt_ids)
    assert on._to_prefill(Entry(Handle(), scored, ids, 0.0)) == len(ids)
    assert on._to_prefill(Entry(Handle(), plain, ids, 0.0)) == len(ids) - (len(ids) - 1) // 16 * 16
    on.submit(plain).result()  # the same prompt, unscored: it reuses the blocks the scored one stored
    assert on.prefix_cache_stats()["hit_tokens"] == hits + (got.prompt_tokens - 1) // 16 * 16


def test_the_setting_and_what_the_service_reports(make_client):
    assert Settings.from_env(environ={}).prefix_cache_tokens == 2048
    assert Settings.from_env(environ={"PREFIX_CACHE_TOKENS": "0"}).prefix_cache_tokens == 0
    with pytest.raises(ValueError, match="PREFIX_CACHE_TOKENS"):
        Settings.from_env(environ={"PREFIX_CACHE_TOKENS": "-16"})
    client, engine = make_client(prefix_cache_tokens=1000)  # rounded down to 62 blocks
    assert client.get("/info").get_json()["prefix_cache_tokens"] == 1000

    def scrape():
        from prometheus_client.parser import text_string_to_metric_families

        text = client.get("/metrics").get_data(as_text=True)
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if "prefix" in s.name}

    assert scrape() == {
        "textgen_prefix_cache_hit_tokens_total": 0,
        "textgen_prefix_cache_lookup_tokens_total": 0,
        "textgen_prefix_cache_tokens": 0,
        "textgen_prefix_cache_capacity_tokens": 992,
    }
    body = {"inputs": SYSTEM + " Q: why?", "parameters": {"max_new_tokens": 2, "details": True}}
    prompt_tokens = client.post("/generate", json=body).get_json()["details"]["prompt_tokens"]
    client.post("/generate", json=body)
    after = scrape()
    whole = prompt_tokens // 16 * 16
    reused = (prompt_tokens - 1) // 16 * 16
    assert after == {
        "textgen_prefix_cache_hit_tokens_total": reused,
        "textgen_prefix_cache_lookup_tokens_total": 2 * prompt_tokens,
        "textgen_prefix_cache_tokens": whole,
        "textgen_prefix_cache_capacity_tokens": 992,
    }
    off_client, _ = make_client(prefix_cache_tokens=0)
    assert off_client.get("/metrics").get_data(as_text=True).count("textgen_prefix_cache_capacity_tokens 0.0") == 1


def test_openai_usage_reports_the_cached_prompt_tokens(make_client):
    """usage.prompt_tokens_details.cached_tokens, as OpenAI and vLLM report it: 0 for a prompt first
    seen, its reused whole blocks the next time (once, whatever `n`), 0 with the cache off."""
    client, _ = make_client(prefix_cache_tokens=1024)
    body = {"model": "m", "prompt": SYSTEM + " Q: why?", "max_tokens": 2, "temperature": 1.0, "seed": 3, "n": 2}
    first = client.post("/v1/completions", json=body).get_json()["usage"]
    again = client.post("/v1/completions", json=body).get_json()["usage"]
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    assert again["prompt_tokens_details"] == {"cached_tokens": (first["prompt_tokens"] - 1) // 16 * 16}
    assert again["prompt_tokens"] == first["prompt_tokens"] and again["completion_tokens"] == 4
    streamed = {"model": "m", "prompt": "Hi. " + SYSTEM, "max_tokens": 2, "stream": True, "stream_options": {"include_usage": True}}
    for attempt in range(2):
        events = client.post("/v1/completions", json=streamed).get_data(as_text=True).split("\n\n")
        usage = json.loads([e for e in events if '"usage"' in e][-1][len("data: "):])["usage"]
        assert (usage["prompt_tokens_details"]["cached_tokens"] > 0) == (attempt == 1), usage
    off_client, _ = make_client(prefix_cache_tokens=0)
    off = off_client.post("/v1/completions", json=body).get_json()["usage"]
    assert off["prompt_tokens_details"] == {"cached_tokens": 0}
