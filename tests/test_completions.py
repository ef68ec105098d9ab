"""Several completions of one prompt: OpenAI's `n` and TGI's `best_of`. The prompt is prefilled once and
its keys and values copied to the other rows; completion c draws with the request's seed + c, so each
is what that seed gives alone; each completion is a row counted by admission."""

from __future__ import annotations

import json
import re

import numpy as np
import openai
import pytest
import requests

from devtools.servers import thread_server, wait_until
from textgen.errors import Overloaded
from textgen.server import create_app
from textgen.validation import validate_generate

PROMPT = "The quick brown fox jumps over the lazy dog"


def request(settings, prompt=PROMPT, stream=False, **parameters):
    return validate_generate({"inputs": prompt, "parameters": parameters}, settings, stream=stream)


def with_n(req, n):
    from dataclasses import replace

    return replace(req, n=n)


def test_each_completion_is_what_its_seed_gives_alone(engine):
    results = engine.submit(with_n(request(engine.settings, max_new_tokens=12, seed=40), 3)).results()
    assert [r.choice for r in results] == [0, 1, 2]
    assert [r.seed for r in results] == [40, 41, 42]
    alone = [engine.submit(request(engine.settings, max_new_tokens=12, seed=s)).result() for s in (40, 41, 42)]
    assert [r.text for r in results] == [a.text for a in alone]
    assert len({r.text for r in results}) > 1  # different seeds, different completions


def test_the_prompt_is_prefilled_once_and_copied(make_engine, monkeypatch):
    engine = make_engine()
    calls = []
    real_forward = engine.model.forward

    def counting(tokens, starts, counts, *args, **kwargs):
        calls.append((tokens.shape, np.array(counts).copy()))
        return real_forward(tokens, starts, counts, *args, **kwargs)

    monkeypatch.setattr(engine.model, "forward", counting)
    prompt_len = len(engine.tokenizer(PROMPT)["input_ids"])
    results = engine.submit(with_n(request(engine.settings, max_new_tokens=6, do_sample=False), 4)).results()
    prefill = [c for shape, c in calls if shape[1] > 1]
    assert sum(int(c.sum()) for c in prefill) == prompt_len  # one row's prompt, not four
    decode_rows = [len(c) for shape, c in calls if shape[1] == 1]
    assert decode_rows and max(decode_rows) == 4  # then four rows decode together
    # Greedy completions from copied keys and values are the single greedy completion, four times.
    single = engine.submit(request(engine.settings, max_new_tokens=6, do_sample=False)).result()
    assert [r.text for r in results] == [single.text] * 4


def test_every_completion_follows_the_grammar(engine):
    req = with_n(request(engine.settings, max_new_tokens=12, seed=3, grammar={"type": "regex", "value": "[ab]{3}-[0-9]{2}"}), 3)
    results = engine.submit(req).results()
    assert all(re.fullmatch(r"[ab]{3}-[0-9]{2}", r.text) for r in results), [r.text for r in results]


def test_completions_count_as_rows_for_admission(make_engine, slow_forward):
    engine = make_engine(max_concurrent_requests=4, max_batch_size=4)
    slow_forward(engine, 0.05)
    running = engine.submit(with_n(request(engine.settings, max_new_tokens=30, seed=1), 3))
    with pytest.raises(Overloaded):
        engine.submit(with_n(request(engine.settings, max_new_tokens=3, seed=2), 2))  # 3 + 2 > 4
    one_more = engine.submit(request(engine.settings, max_new_tokens=3, seed=2))  # 3 + 1 fits
    running.cancel()
    one_more.result()
    wait_until(lambda: engine.stats()["admitted"] == 0, timeout=10)  # every row's place given back


def test_tgi_best_of_answers_the_likeliest_and_lists_the_others(client, engine):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, "best_of": 3, "seed": 7, "details": True}}
    answer = client.post("/generate", json=body)
    assert answer.status_code == 200, answer.get_json()
    answer = answer.get_json()
    alone = [engine.submit(request(engine.settings, max_new_tokens=8, seed=s, details=True)).result() for s in (7, 8, 9)]
    sums = [sum(t.logprob for t in a.tokens) for a in alone]
    best = alone[int(np.argmax(sums))]
    assert answer["generated_text"] == best.text and answer["details"]["seed"] == best.seed
    others = answer["details"]["best_of_sequences"]
    assert sorted(o["seed"] for o in others) == sorted(a.seed for a in alone if a is not best)
    for other in others:
        same = next(a for a in alone if a.seed == other["seed"])
        assert other["generated_text"] == same.text and len(other["tokens"]) == other["generated_tokens"]


def test_openai_n_through_the_sdk(engine, base_settings):
    with thread_server(create_app(base_settings, engine=engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        whole = client.completions.create(model="m", prompt=PROMPT, max_tokens=6, n=3, seed=20, logprobs=1)
        assert [c.index for c in whole.choices] == [0, 1, 2]
        assert whole.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in whole.choices)
        alone = [client.completions.create(model="m", prompt=PROMPT, max_tokens=6, seed=s).choices[0].text for s in (20, 21, 22)]
        assert [c.text for c in whole.choices] == alone
        chunks = list(client.completions.create(model="m", prompt=PROMPT, max_tokens=6, n=3, seed=20, stream=True))
        joined = ["".join(ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].index == i) for i in range(3)]
        assert joined == alone
        finished = [ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert sorted(finished) == [0, 1, 2]


def test_n_and_best_of_reach_the_documented_limits(client):
    too_many = client.post("/v1/completions", json={"prompt": "Hi", "n": 5})
    assert too_many.status_code == 400 and too_many.get_json()["error"]["message"] == "`n` must be <= 4. Given: 5"
    info = client.get("/info").get_json()
    assert info["max_best_of"] == 4
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert schema["CompletionRequest"]["properties"]["n"]["maximum"] == 4


def test_inference_client_best_of(engine, base_settings):
    """huggingface_hub's InferenceClient: `best_of` with `details` (its documented shape)."""
    from huggingface_hub import InferenceClient

    with thread_server(create_app(base_settings, engine=engine)) as url:
        client = InferenceClient(base_url=url)
        out = client.text_generation(PROMPT, max_new_tokens=5, best_of=2, do_sample=True, seed=5, details=True)
        assert out.details.best_of_sequences is not None and len(out.details.best_of_sequences) == 1
        other = out.details.best_of_sequences[0]
        assert {out.details.seed, other.seed} == {5, 6}
        assert other.generated_tokens == len(other.tokens)
        raw = requests.post(url + "/generate_stream", json={"inputs": "Hi", "parameters": {"best_of": 2}})
        assert raw.status_code == 422 and "streaming" in json.loads(raw.text)["error"]


def test_completions_of_a_prompt_found_in_the_prefix_cache(make_engine):
    """The prompt's first blocks come from the prefix cache, the rest is prefilled, then copied n times."""
    engine = make_engine(prefix_cache_tokens=256)
    long_prompt = " ".join(["alpha beta gamma delta"] * 12)
    first = engine.submit(request(engine.settings, long_prompt, max_new_tokens=5, seed=60)).result()
    assert engine.prefix_cache_stats()["tokens"] >= 32  # its blocks are stored
    results = engine.submit(with_n(request(engine.settings, long_prompt, max_new_tokens=5, seed=60), 3)).results()
    assert engine.prefix_cache_stats()["hit_tokens"] >= 32
    alone = [engine.submit(request(engine.settings, long_prompt, max_new_tokens=5, seed=s)).result() for s in (61, 62)]
    assert [r.text for r in results] == [first.text] + [a.text for a in alone]
