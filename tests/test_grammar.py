"""Structured output: TGI's `grammar` and OpenAI's `response_format`, compiled with llguidance at submit and
applied as a mask to the constrained rows of the batched sampling step.

On the tiny model (random weights: nothing but the mask makes its text JSON) on every backend, then
through the routes, the openai SDK and huggingface_hub's InferenceClient against a live server.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import openai
import pytest
import requests

from devtools.models import make_tiny
from devtools.servers import serving
from tests.batching import DecodeSteps, assert_decoded_together, submit_together
from tests.test_logprobs import reference_log_probs
from tests.models import add_chat_template
from textgen.errors import ValidationError
from textgen.settings import Settings
from textgen.validation import validate_generate
from textgen.validation.grammar import GrammarCompiler, TokenConstraint

# A small object: required properties, an enum, a number; one optional bounded integer.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "score": {"type": "number"},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["name", "kind", "score"],
}
# Every value bounded (enum, maxLength, integer range): a finite language, which the grammar itself ends.
BOUNDED = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "kind": SCHEMA["properties"]["kind"],
                   "legs": SCHEMA["properties"]["legs"]},
    "required": ["name", "kind", "legs"],
}
DATE = r"\d{4}-\d{2}-\d{2}"


def generate(engine, grammar, seed=None, max_new_tokens=200, prompt="Answer in JSON:", **parameters):
    parameters = {"max_new_tokens": max_new_tokens, "grammar": grammar, **parameters}
    if seed is not None:
        parameters["seed"] = seed
    request = validate_generate({"inputs": prompt, "parameters": parameters}, engine.settings)
    return engine.submit(request).result()


def json_grammar(schema=SCHEMA):
    return {"type": "json", "value": schema}


# -- the engine ----------------------------------------------------------------------------------------
def test_twenty_seeds_give_json_valid_for_the_schema(engine):
    for seed in range(20):
        result = generate(engine, json_grammar(), seed=seed)
        assert result.finish_reason == "eos_token", (seed, result)  # complete: ended by the grammar
        jsonschema.validate(json.loads(result.text), SCHEMA)
        assert set(json.loads(result.text)) <= set(SCHEMA["properties"])  # no property nobody asked for


def test_sampled_with_every_warper_stays_valid(engine):
    for parameters in ({"top_p": 0.5, "temperature": 1.5, "seed": 1}, {"typical_p": 0.7, "top_k": 5, "seed": 2},
                       {"repetition_penalty": 1.3, "frequency_penalty": 1.0, "seed": 3}):
        result = generate(engine, json_grammar(), **parameters)
        jsonschema.validate(json.loads(result.text), SCHEMA)


def test_greedy_within_a_schema_of_bounded_length(engine):
    """Greedy decoding of random weights repeats itself: inside a number it writes "1" until
    max_new_tokens (a grammar does not make a text end; docs/api.md says so). With every value bounded
    the grammar itself ends it."""
    for parameters in ({"do_sample": False}, {"do_sample": False, "repetition_penalty": 1.3}):
        result = generate(engine, json_grammar(BOUNDED), **parameters)
        assert result.finish_reason == "eos_token", result
        jsonschema.validate(json.loads(result.text), BOUNDED)


def test_schema_given_as_json_text_and_tgi_s_other_forms(engine):
    as_text = generate(engine, {"type": "json", "value": json.dumps(SCHEMA)}, seed=4)
    as_object = generate(engine, json_grammar(), seed=4)
    assert as_text.text == as_object.text
    alias = generate(engine, {"type": "json_object", "value": SCHEMA}, seed=4)
    tgi3 = generate(engine, {"type": "json_schema", "value": {"name": "pet", "schema": SCHEMA}}, seed=4)
    assert alias.text == tgi3.text == as_object.text


def test_any_json_object(engine):
    """`{"type": "object"}` (OpenAI's json_object): every text the grammar ended is a JSON object. Random
    weights write keys of any length (a string ends only when a quote is drawn): about half the seeds
    here run into max_new_tokens inside a key, cut as docs/api.md says; SmolLM2's test has real weights."""
    results = [generate(engine, json_grammar({"type": "object"}), seed=seed, max_new_tokens=240) for seed in range(20)]
    finished = [r for r in results if r.finish_reason == "eos_token"]
    assert all(isinstance(json.loads(r.text), dict) for r in finished)
    assert all(r.finish_reason == "length" and r.generated_tokens == 240 for r in results if r not in finished)
    assert len(finished) >= 5, [r.text[:40] for r in results]


def test_regex_is_matched_whole(engine):
    for seed in range(10):
        result = generate(engine, {"type": "regex", "value": DATE}, seed=seed, max_new_tokens=30)
        assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", result.text), result  # `\d`: ASCII digits
        assert result.finish_reason == "eos_token"


def test_max_new_tokens_still_cuts_and_the_text_may_be_incomplete(engine):
    result = generate(engine, json_grammar(), seed=1, max_new_tokens=4)
    assert result.finish_reason == "length" and result.generated_tokens == 4
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.text)


def test_streamed_text_is_the_whole_text(engine):
    request = validate_generate(
        {"inputs": "JSON:", "parameters": {"max_new_tokens": 200, "seed": 8, "grammar": json_grammar()}},
        engine.settings,
        stream=True,
    )
    events = list(engine.submit(request).events())
    result = events[-1]
    assert "".join(e.released for e in events[:-1]) == result.text
    jsonschema.validate(json.loads(result.text), SCHEMA)
    assert events[-2].last and result.generated_tokens == len(events) - 1


def test_constrained_and_free_rows_share_decode_steps_and_keep_their_texts(engine):
    """A constrained and an unconstrained request decoded in the same steps (counted by the engine's
    listener) give what each gives alone: the mask touches its own row only, and each row's draw
    depends on its seed only."""
    constrained = validate_generate(
        {"inputs": "JSON:", "parameters": {"max_new_tokens": 200, "seed": 11, "grammar": json_grammar()}}, engine.settings
    )
    free = validate_generate({"inputs": "Once upon a time", "parameters": {"max_new_tokens": 40, "seed": 11}}, engine.settings)
    greedy_json = validate_generate(
        {"inputs": "Hi", "parameters": {"max_new_tokens": 100, "do_sample": False, "grammar": json_grammar(BOUNDED)}},
        engine.settings,
    )
    requests_ = [constrained, free, greedy_json]
    with DecodeSteps(engine) as steps:
        alone = [engine.submit(r).result() for r in requests_]
        assert set(steps.rows) == {1}
        together = [h.result() for h in submit_together(engine, steps, requests_)]
    assert [r.text for r in together] == [r.text for r in alone]
    assert steps.rows[0] == 3  # all three in the first decode step after they joined
    # The free row took a step per token; the JSON rows took the tokens their grammar forced (keys,
    # quotes, colons, commas) several in one step: fewer steps than tokens in all.
    assert len(steps.rows) >= together[1].generated_tokens - 1 and min(steps.rows[:39]) >= 1
    assert sum(steps.rows) < sum(r.generated_tokens - 1 for r in together)
    assert together[1].finish_reason == "length" and together[1].generated_tokens == 40  # never cut by a grammar
    jsonschema.validate(json.loads(together[0].text), SCHEMA)
    jsonschema.validate(json.loads(together[2].text), BOUNDED)


def test_grammars_are_compiled_in_the_request_thread(engine, monkeypatch):
    """Compiling (and the first mask) happens in `submit`'s caller; the engine thread only advances."""
    threads = []
    compile_ = GrammarCompiler.compile

    def recording(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return compile_(self, *args, **kwargs)

    monkeypatch.setattr(GrammarCompiler, "compile", recording)
    generate(engine, json_grammar(), seed=2)
    assert threads == [threading.current_thread().name]


def test_a_schema_that_cannot_be_compiled_is_refused_at_submit(engine):
    for grammar, problem in (
        (json_grammar({"type": "object", "properties": {"a": {"type": "strin"}}}), "Invalid type: strin"),
        (json_grammar({"type": "integer", "minimum": 5, "maximum": 2}), "minimum (5) is greater than maximum (2)"),
        (json_grammar({"not": {"type": "string"}}), 'Unimplemented keys: ["not"]'),
        ({"type": "regex", "value": "(abc"}, "unclosed group"),
    ):
        with pytest.raises(ValidationError, match=r"^`grammar` cannot be compiled: .*" + re.escape(problem)):
            generate(engine, grammar)


def test_a_grammar_that_gives_out_midway_fails_its_request_alone(engine, monkeypatch):
    """llguidance hitting a limit while computing a mask (its step fuel) fails that request, saying so;
    the engine goes on."""
    advance = TokenConstraint.advance

    def flaky(self, token):
        advance(self, token)
        self.error = "step fuel exhausted (simulated)"

    monkeypatch.setattr(TokenConstraint, "advance", flaky)
    with pytest.raises(ValidationError, match="`grammar` could not be followed: step fuel exhausted"):
        generate(engine, json_grammar(), seed=1)
    monkeypatch.undo()
    assert generate(engine, None, seed=1, max_new_tokens=3).generated_tokens == 3


# -- the routes -------------------------------------------------------------------------------------
def test_generate_route_with_grammar(client):
    body = {"inputs": "JSON:", "parameters": {"max_new_tokens": 200, "seed": 5, "grammar": json_grammar(), "details": True}}
    answer = client.post("/generate", json=body)
    assert answer.status_code == 200
    jsonschema.validate(json.loads(answer.json["generated_text"]), SCHEMA)
    assert answer.json["details"]["finish_reason"] == "eos_token"


@pytest.mark.parametrize(
    "grammar, message",
    [
        (json_grammar({"type": "object", "properties": {"a": {"$ref": "#/defs/x"}}}), "`grammar` cannot be compiled: "),
        ({"type": "regex", "value": "x" * 40_000}, "`grammar` must be at most 32768 bytes. Given: 40000"),
        ({"type": "json", "value": "{not json"}, "`grammar` value is not valid JSON"),
        ({"type": "json", "value": "[1, 2]"}, "`grammar` value must be a JSON schema object. Given: list"),
        ({"type": "xml", "value": "<a/>"}, "`grammar.type` must be one of 'json', 'json_object', 'regex', 'json_schema'"),
    ],
)
def test_tgi_routes_refuse_a_bad_grammar_with_422(client, grammar, message):
    answer = client.post("/generate", json={"inputs": "Hi", "parameters": {"grammar": grammar}})
    assert answer.status_code == 422, answer.json
    assert answer.json["error_type"] == "validation" and answer.json["error"].startswith(message)


def test_a_schema_nested_too_deeply_for_the_parser_is_a_422(client):
    schema: dict = {"type": "integer"}
    for _ in range(300):
        schema = {"type": "array", "items": schema}
    answer = client.post("/generate", json={"inputs": "Hi", "parameters": {"grammar": json_grammar(schema)}})
    assert answer.status_code == 422 and "`grammar`" in answer.json["error"]


def test_openai_routes_refuse_a_bad_schema_with_400_naming_response_format(client):
    body = {"prompt": "Hi", "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}}
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 400
    error = answer.json["error"]
    assert error["message"] == "`response_format` cannot be compiled: Invalid type: strin"
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    missing = client.post("/v1/completions", json={"prompt": "Hi", "response_format": {"type": "json_schema"}})
    assert missing.status_code == 400 and missing.json["error"]["message"] == "`response_format.json_schema` is required"


def test_the_grammar_size_limit_is_a_setting(make_client):
    small, _ = make_client(max_grammar_bytes=100)
    answer = small.post("/generate", json={"inputs": "Hi", "parameters": {"grammar": json_grammar()}})
    assert answer.status_code == 422 and answer.json["error"].startswith("`grammar` must be at most 100 bytes. Given: ")


# -- real clients against a live server ----------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """A live server (ONNX Runtime, the default) on the tiny model with a chat template and 1024
    positions: room for a chat prompt and 200 new tokens."""
    model_dir = add_chat_template(make_tiny(str(tmp_path_factory.mktemp("tiny-grammar")), n_positions=1024))
    with serving(Settings.from_env(environ={}, model_id=model_dir, threads=2)) as url:
        yield url


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_openai_sdk_response_format_json_schema_and_json_object(chat_server):
    client = sdk(chat_server)
    messages = [{"role": "user", "content": "Describe a pet as JSON."}]
    schema_format = {"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA, "strict": True}}
    for seed in range(3):
        chat = client.chat.completions.create(model="m", messages=messages, max_tokens=200, seed=seed, response_format=schema_format)
        assert chat.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(chat.choices[0].message.content), SCHEMA)
    anything = client.chat.completions.create(
        model="m", messages=messages, max_tokens=200, seed=1, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(anything.choices[0].message.content), dict)
    text = client.chat.completions.create(model="m", messages=messages, max_tokens=5, seed=1, response_format={"type": "text"})
    plain = client.chat.completions.create(model="m", messages=messages, max_tokens=5, seed=1)
    assert text.choices[0].message.content == plain.choices[0].message.content
    # The completions route takes it too (not in the SDK's signature there: vLLM's extension).
    completion = client.completions.create(
        model="m", prompt="JSON:", max_tokens=200, seed=2, extra_body={"response_format": schema_format}
    )
    jsonschema.validate(json.loads(completion.choices[0].text), SCHEMA)


def test_openai_sdk_parse_with_a_pydantic_model_streamed_too(chat_server):
    """The SDK's own structured-output helper: it sends the model's strict schema and parses the answer."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Pet(BaseModel):
        name: str = Field(max_length=12)
        kind: Literal["cat", "dog"]
        age: int

    client = sdk(chat_server)
    messages = [{"role": "user", "content": "A pet, please."}]
    parsed = client.chat.completions.parse(model="m", messages=messages, max_tokens=200, seed=3, response_format=Pet)
    pet = parsed.choices[0].message.parsed
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog")
    with client.chat.completions.stream(model="m", messages=messages, max_tokens=200, seed=3, response_format=Pet) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == pet


def test_openai_sdk_bad_schema_is_a_bad_request_error(chat_server):
    with pytest.raises(openai.BadRequestError, match="cannot be compiled"):
        sdk(chat_server).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": 3, "maxProperties": 1}}},
        )


def test_huggingface_hub_inference_client_grammar(chat_server):
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError as HubValidationError

    client = InferenceClient(base_url=chat_server)
    text = client.text_generation("JSON:", max_new_tokens=200, seed=6, grammar={"type": "json", "value": SCHEMA})
    jsonschema.validate(json.loads(text), SCHEMA)
    date = client.text_generation("Date:", max_new_tokens=20, seed=6, grammar={"type": "regex", "value": DATE}, details=True)
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.generated_text) and date.details.finish_reason == "eos_token"
    streamed = "".join(client.text_generation("JSON:", max_new_tokens=200, seed=6, grammar={"type": "json", "value": SCHEMA}, stream=True))
    assert streamed == text
    chat = client.chat_completion(
        [{"role": "user", "content": "A pet?"}], max_tokens=200, seed=6,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": SCHEMA}},
    )
    jsonschema.validate(json.loads(chat.choices[0].message.content), SCHEMA)
    # TGI's error body (`error_type` "validation") becomes the client's own ValidationError.
    with pytest.raises(HubValidationError, match=r"`grammar` cannot be compiled: Invalid type: strin"):
        client.text_generation("x", grammar={"type": "json", "value": {"type": "strin"}})


def test_live_error_body_names_the_problem(chat_server):
    answer = requests.post(chat_server + "/generate", json={"inputs": "x", "parameters": {"grammar": {"type": "regex", "value": "(a"}}})
    assert answer.status_code == 422 and answer.json()["error"].startswith("`grammar` cannot be compiled:")


# -- real weights --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    from tests.real_weights import smollm2_engine

    with smollm2_engine() as engine:
        yield engine


@pytest.mark.slow
def test_smollm2_writes_json_valid_for_the_schema(smollm2):
    """SmolLM2-135M-Instruct, asked through its chat template, 20 seeds decoded together: every answer
    is complete (ended by the grammar) and valid. With `{"type": "object"}` (json_object) the syntax
    is all that is constrained: most answers close their object, some ramble on in it until
    max_new_tokens (measured here: 7-10 of 12 complete within 200 tokens); a regex is matched whole."""
    prompt = smollm2.prompts.chat_prompt(
        [{"role": "user", "content": "Describe a pet as JSON with its name, kind (cat, dog or bird) and a score."}]
    )
    requests_ = [
        validate_generate(
            {"inputs": prompt, "parameters": {"max_new_tokens": 120, "seed": seed, "temperature": 0.7, "grammar": json_grammar()}},
            smollm2.settings,
        )
        for seed in range(20)
    ]
    handles = [smollm2.submit(r) for r in requests_]
    for handle in handles:
        result = handle.result()
        assert result.finish_reason == "eos_token", result
        jsonschema.validate(json.loads(result.text), SCHEMA)
    objects = [
        smollm2.submit(validate_generate(
            {"inputs": prompt, "parameters": {"max_new_tokens": 200, "seed": seed, "grammar": json_grammar({"type": "object"})}},
            smollm2.settings,
        ))
        for seed in range(12)
    ]
    complete = [r for r in (h.result() for h in objects) if r.finish_reason == "eos_token"]
    assert len(complete) >= 6 and all(isinstance(json.loads(r.text), dict) for r in complete)
    date = generate(smollm2, {"type": "regex", "value": DATE}, do_sample=False, max_new_tokens=20,
                    prompt=smollm2.prompts.chat_prompt([{"role": "user", "content": "When did the Berlin Wall fall?"}]))
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", date.text), date


# -- forced tokens: what the grammar leaves one way to write, taken in one step -------------------------
FIXED_KEYS = {
    "type": "object",
    "properties": {"animal": {"enum": ["cat", "dog"]}, "legs": {"type": "integer", "minimum": 0, "maximum": 8},
                   "domesticated": {"type": "boolean"}},
    "required": ["animal", "legs", "domesticated"],
}


def test_forced_tokens_are_taken_in_one_step_and_listed_as_generated(engine, reference_model):
    """A schema's keys, quotes, colons and commas (and its enum's rest once its first letter is drawn)
    cost no step of their own: the greedy answer of a fixed-key schema takes far fewer decode steps
    than tokens. Each forced token is still a generated token in `details`, with the model's own
    log-probability at its position (transformers' on the same weights, as for a prompt's tokens)."""
    request = validate_generate({"inputs": "JSON:", "parameters": {
        "max_new_tokens": 60, "do_sample": False, "details": True, "grammar": json_grammar(FIXED_KEYS)}}, engine.settings)
    with DecodeSteps(engine) as steps:
        result = engine.submit(request).result()
    jsonschema.validate(json.loads(result.text), FIXED_KEYS)
    assert result.text.startswith('{"animal": "') and ', "legs": ' in result.text  # json.dumps' separators
    assert len(result.tokens) == result.generated_tokens and "".join(t.text for t in result.tokens) == result.text
    assert len(steps.rows) <= result.generated_tokens // 2, (len(steps.rows), result.generated_tokens)
    forced = forced_positions(engine, request, [t.id for t in result.tokens])
    assert len(forced) >= result.generated_tokens // 2  # most of a fixed-key object is forced
    prompt_ids = engine.tokenizer("JSON:")["input_ids"]
    direct = reference_log_probs(reference_model, prompt_ids + [t.id for t in result.tokens])
    for j in forced:  # the logits at the position before predicted it
        assert result.tokens[j].logprob == pytest.approx(direct[len(prompt_ids) - 1 + j, result.tokens[j].id], abs=1e-3)


def forced_positions(engine, request, tokens) -> list:
    """The places of the tokens the grammar forced, replayed: after each drawn token, the tokens
    llguidance forces next must be the ones that follow (they were taken, not drawn)."""
    constraint = engine.prompts.grammars.compile(request.grammar)
    forced, j = [], 0
    while j < len(tokens):
        constraint.advance(tokens[j])  # drawn
        j += 1
        run = constraint.forced(len(tokens) - j)
        assert tokens[j : j + len(run)] == run
        forced += range(j, j + len(run))
        j += len(run)
    return forced


def test_a_stop_sequence_inside_forced_tokens_ends_the_text_there(engine):
    parameters = {"max_new_tokens": 60, "do_sample": False, "grammar": json_grammar(FIXED_KEYS)}
    whole = engine.submit(validate_generate({"inputs": "JSON:", "parameters": parameters}, engine.settings)).result()
    assert ', "legs": ' in whole.text  # a forced run: the comma, the key, the colon
    stopped = engine.submit(validate_generate(
        {"inputs": "JSON:", "parameters": {**parameters, "stop": ['"legs"'], "details": True}}, engine.settings)).result()
    assert stopped.finish_reason == "stop_sequence"
    assert stopped.text == whole.text[: whole.text.index('"legs"')]
    assert stopped.generated_tokens == len(stopped.tokens) < whole.generated_tokens
