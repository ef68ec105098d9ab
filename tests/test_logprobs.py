"""Log-probabilities: the generated tokens' (with their most likely alternatives) and the prompt's,
checked against a direct `log_softmax` over the same logits, then in every protocol's shape: TGI's
`details` / `top_n_tokens` / `decoder_input_details`, OpenAI's completions `logprobs` (+ `echo`) and
chat `logprobs` / `top_logprobs` through the official SDK."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
import requests
import torch

from devtools.servers import thread_server
from textgen.engine.sampling import RowSampling, choose_next_tokens, log_softmax
from textgen.server import create_app
from textgen.validation import validate_generate


def row(**kw):
    seed = kw.pop("seed", None)
    base = dict(do_sample=seed is not None, temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0,
                repetition_penalty=1.0, frequency_penalty=0.0, seen_ids=[])
    base.update(kw)
    return RowSampling(generator=None if seed is None else np.random.default_rng(seed), **base)


def direct_top(log_probs: np.ndarray, n: int):
    order = np.argsort(-log_probs, kind="stable")[:n]
    return [(int(i), float(log_probs[i])) for i in order if log_probs[i] > -np.inf]


# -- the sampling step ----------------------------------------------------------------------------------
def test_a_greedy_rows_logprobs_are_the_log_softmax_of_its_logits():
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32) * 4
    picks = choose_next_tokens(x, [row()] * 3, top_n=[0, 5, 20])
    for i in range(3):
        direct = log_softmax(x[i].astype(np.float64))
        assert picks.tokens[i] == int(direct.argmax())
        assert picks.logprobs[i] == pytest.approx(direct[picks.tokens[i]], abs=1e-5)
    assert picks.top[0] is None
    for i, n in ((1, 5), (2, 20)):
        got, want = picks.top[i], direct_top(log_softmax(x[i].astype(np.float64)), n)
        assert [t for t, _ in got] == [t for t, _ in want]
        assert np.allclose([lp for _, lp in got], [lp for _, lp in want], atol=1e-5)
        assert got[0] == (picks.tokens[i], pytest.approx(picks.logprobs[i]))


def test_a_sampled_rows_logprobs_are_those_of_the_distribution_it_draws_from():
    """Temperature and top-k change the distribution: its log-probabilities are what is reported, and a
    token top-k cut is no alternative."""
    x = np.random.default_rng(1).standard_normal((1, 500)).astype(np.float32) * 3
    for _ in range(20):
        picks = choose_next_tokens(x, [row(seed=3, temperature=0.7, top_k=8)], top_n=[10])
        kept = np.full(500, -np.inf)
        best8 = np.argsort(-x[0])[:8]
        kept[best8] = x[0, best8] / 0.7
        direct = log_softmax(kept)
        assert picks.tokens[0] in set(best8.tolist())
        assert picks.logprobs[0] == pytest.approx(direct[picks.tokens[0]], abs=1e-5)
        got = picks.top[0]
        assert len(got) == 8  # ten asked for, eight left by top-k
        assert [t for t, _ in got] == [t for t, _ in direct_top(direct, 8)]
        assert np.allclose([lp for _, lp in got], [lp for _, lp in direct_top(direct, 8)], atol=1e-5)


def test_asking_for_alternatives_changes_no_draw():
    x = np.random.default_rng(2).standard_normal((2, 800)).astype(np.float32)
    plain = [row(seed=9, top_p=0.9), row(seed=10)]
    asking = [row(seed=9, top_p=0.9), row(seed=10)]
    for _ in range(30):
        a = choose_next_tokens(x, plain)
        b = choose_next_tokens(x, asking, top_n=[5, 3])
        assert a.tokens == b.tokens and a.logprobs == b.logprobs
        assert [t for t, _ in b.top[0]][0] == int(np.argmax(x[0]))


# -- the engine: generated and prompt tokens against the reference model ------------------------------
def request(settings, prompt="Hello world", stream=False, **parameters):
    return validate_generate({"inputs": prompt, "parameters": parameters}, settings, stream=stream)


def reference_log_probs(reference_model, ids):
    """log_softmax over transformers' own logits at every position of `ids`: [len(ids), vocab]."""
    with torch.no_grad():
        logits = reference_model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def test_generated_and_prompt_logprobs_match_the_reference_model(engine, reference_model):
    tokenizer = engine.tokenizer
    prompt = "Hello world, the quick brown fox"
    result = engine.submit(request(engine.settings, prompt, max_new_tokens=8, do_sample=False, details=True,
                                   decoder_input_details=True, top_n_tokens=3)).result()
    prompt_ids = tokenizer(prompt)["input_ids"]
    generated = [t.id for t in result.tokens]
    assert len(generated) == result.generated_tokens == 8
    direct = reference_log_probs(reference_model, prompt_ids + generated)
    # Prompt: the first token has none; token t is scored by the logits at t - 1.
    assert [p.id for p in result.prefill] == prompt_ids
    assert result.prefill[0].logprob is None
    for t in range(1, len(prompt_ids)):
        assert result.prefill[t].logprob == pytest.approx(direct[t - 1, prompt_ids[t]], abs=1e-4)
    assert result.prefill[1].text == tokenizer.decode([prompt_ids[1]])
    # Each prompt token's three most likely alternatives (the first token has none).
    assert result.prefill[0].top_tokens == ()
    for t in range(1, len(prompt_ids)):
        alternatives = result.prefill[t].top_tokens
        assert [a.id for a in alternatives] == [int(i) for i in np.argsort(-direct[t - 1], kind="stable")[:3]]
        assert [a.logprob for a in alternatives] == pytest.approx([direct[t - 1, a.id] for a in alternatives], abs=1e-4)
    # Generated (greedy: the whole distribution): each token and its three best alternatives.
    for j, token in enumerate(result.tokens):
        row_lp = direct[len(prompt_ids) - 1 + j]
        assert token.id == int(row_lp.argmax())
        assert token.logprob == pytest.approx(row_lp[token.id], abs=1e-4)
        assert [a.id for a in token.top_tokens] == [int(i) for i in np.argsort(-row_lp, kind="stable")[:3]]
        assert [a.logprob for a in token.top_tokens] == pytest.approx([row_lp[a.id] for a in token.top_tokens], abs=1e-4)
    assert "".join(t.text for t in result.tokens) == result.text


def test_prompt_logprobs_survive_a_chunked_prefill_beside_other_rows(make_engine, reference_model):
    """A prompt longer than one prefill chunk, prefilled in a group with another: every position scored once."""
    engine = make_engine(prefill_chunk_tokens=16)
    prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    ids = engine.tokenizer(prompt)["input_ids"]
    assert len(ids) > 16
    neighbour = engine.submit(request(engine.settings, "Hi", max_new_tokens=3, do_sample=False))
    scored = engine.submit(request(engine.settings, prompt, max_new_tokens=2, do_sample=False, details=True,
                                   decoder_input_details=True)).result()
    neighbour.result()
    direct = reference_log_probs(reference_model, ids)
    assert [p.id for p in scored.prefill] == ids
    assert np.allclose([p.logprob for p in scored.prefill[1:]], [direct[t - 1, ids[t]] for t in range(1, len(ids))], atol=1e-4)


def test_blocking_details_equal_the_streamed_events(engine):
    """The same seeded request: the tokens a complete answer lists are the events a stream delivered."""
    params = dict(max_new_tokens=10, seed=11, temperature=0.9, top_k=20, details=True, top_n_tokens=4)
    whole = engine.submit(request(engine.settings, **params)).result()
    events = [e for e in engine.submit(request(engine.settings, stream=True, **params)).events() if hasattr(e, "top_tokens")]
    assert [(t.id, t.logprob, t.top_tokens) for t in whole.tokens] == [(e.id, e.logprob, e.top_tokens) for e in events]
    assert all(len(t.top_tokens) == 4 and t.top_tokens[0].logprob >= t.top_tokens[-1].logprob for t in whole.tokens)


def test_no_details_no_token_records(engine):
    result = engine.submit(request(engine.settings, max_new_tokens=4, top_n_tokens=5)).result()
    assert result.tokens == () and result.prefill == ()


# -- TGI's shapes ---------------------------------------------------------------------------------------
def test_tgi_details_carry_prefill_tokens_and_top_tokens(client):
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 5, "do_sample": False, "details": True,
                                                    "decoder_input_details": True, "top_n_tokens": 2}}
    details = client.post("/generate", json=body).get_json()["details"]
    assert len(details["tokens"]) == len(details["top_tokens"]) == 5
    assert details["prefill"][0]["logprob"] is None and all(isinstance(p["logprob"], float) for p in details["prefill"][1:])
    for token, top in zip(details["tokens"], details["top_tokens"]):
        assert len(top) == 2 and top[0]["id"] == token["id"] and top[0]["logprob"] == pytest.approx(token["logprob"])
        assert set(top[0]) == {"id", "text", "logprob", "special"}


def test_tgi_stream_events_carry_top_tokens_and_the_last_the_prefill(client):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 4, "top_n_tokens": 3, "details": True,
                                              "decoder_input_details": True, "do_sample": False}}
    raw = client.post("/generate_stream", json=body).get_data(as_text=True)
    events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    assert len(events) == 4 and all(len(e["top_tokens"]) == 3 for e in events)
    assert [p["id"] for p in events[-1]["details"]["prefill"]] == [p["id"] for p in
        client.post("/generate", json={**body, "stream": False}).get_json()["details"]["prefill"]]
    plain = client.post("/generate_stream", json={"inputs": "Hello", "parameters": {"max_new_tokens": 2}}).get_data(as_text=True)
    assert "top_tokens" not in plain  # left out unless asked for, as TGI does


# -- OpenAI's shapes, through the SDK -------------------------------------------------------------------
@pytest.fixture
def live(engine, base_settings):
    with thread_server(create_app(base_settings, engine=engine)) as url:
        yield url


def sdk(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completions_logprobs_have_openais_shape(live):
    answer = sdk(live).completions.create(model="m", prompt="Hello world", max_tokens=6, temperature=0, logprobs=3)
    choice = answer.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    assert all(len(top) <= 3 and max(top.values()) == pytest.approx(logprob) for top, logprob in zip(lp.top_logprobs, lp.token_logprobs))
    tgi = requests.post(live + "/generate", json={"inputs": "Hello world", "parameters": {
        "max_new_tokens": 6, "do_sample": False, "details": True}}).json()["details"]["tokens"]
    assert lp.token_logprobs == pytest.approx([t["logprob"] for t in tgi])


def test_echo_with_logprobs_lists_the_prompt_first(live):
    answer = sdk(live).completions.create(model="m", prompt="Hello world", max_tokens=3, temperature=0, logprobs=0, echo=True)
    lp = answer.choices[0].logprobs
    assert answer.choices[0].text.startswith("Hello world")
    prompt_tokens = requests.post(live + "/tokenize", json={"inputs": "Hello world"}).json()
    assert lp.tokens[: len(prompt_tokens)] == [t["text"] for t in prompt_tokens]  # the prompt's, then the generated
    assert len(lp.tokens) == len(prompt_tokens) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    streamed = list(sdk(live).completions.create(model="m", prompt="Hello world", max_tokens=3, temperature=0, logprobs=0,
                                                 echo=True, stream=True))
    listed = [t for chunk in streamed if chunk.choices and chunk.choices[0].logprobs for t in chunk.choices[0].logprobs.token_logprobs]
    assert listed[0] is None and listed[1:] == pytest.approx(lp.token_logprobs[1:])
    assert "".join(c.choices[0].text for c in streamed if c.choices) == answer.choices[0].text
    # With alternatives asked for, the prompt's tokens list theirs too (the first none), as OpenAI does.
    top = sdk(live).completions.create(model="m", prompt="Hello world", max_tokens=1, temperature=0, logprobs=2, echo=True)
    listed = top.choices[0].logprobs
    assert listed.top_logprobs[0] is None and listed.token_logprobs[1:len(prompt_tokens)] == pytest.approx(lp.token_logprobs[1:len(prompt_tokens)])
    for alternatives, logprob in zip(listed.top_logprobs[1:], listed.token_logprobs[1:]):
        assert 1 <= len(alternatives) <= 2 and max(alternatives.values()) >= logprob - 1e-6


def test_chat_logprobs_and_top_logprobs(chat_live):
    url, _ = chat_live
    messages = [{"role": "user", "content": "Hi"}]
    answer = sdk(url).chat.completions.create(model="m", messages=messages, max_tokens=5, temperature=0, logprobs=True, top_logprobs=20)
    content = answer.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 20 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.bytes == list(entry.token.encode("utf-8"))
    streamed = list(sdk(url).chat.completions.create(model="m", messages=messages, max_tokens=5, temperature=0,
                                                     logprobs=True, top_logprobs=2, stream=True))
    per_token = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.logprob for e in per_token] == pytest.approx([e.logprob for e in content])
    plain = sdk(url).chat.completions.create(model="m", messages=messages, max_tokens=2, temperature=0)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    "route, body, message",
    [
        ("/v1/completions", {"prompt": "Hi", "logprobs": 6}, "`logprobs` must be <= 5. Given: 6"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 21},
         "`top_logprobs` must be <= 20. Given: 21"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2},
         "`top_logprobs` requires `logprobs` to be true"),
    ],
)
def test_out_of_bounds_logprobs_are_openai_400s(live, route, body, message):
    answer = requests.post(live + route, json={"model": "m", **body})
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == message
