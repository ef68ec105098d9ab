"""POST /tokenize (TGI's answer: `[{"id", "text", "start", "stop"}]`, UTF-8 byte offsets) and POST
/detokenize (vLLM's: `{"tokens": [ids]}` -> `{"prompt": text}`), on every backend's tokenizer (the
lean `tokenizers` one for onnx and torch, transformers' AutoTokenizer for transformers); their limits and
errors; and PromptTokens' offsets for tokenizers that add a BOS or give no offsets at all."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from textgen.errors import ValidationError
from textgen.model.tokenizer import LeanTokenizer
from textgen.validation import GenerationRequest, PromptTokens

from tests.test_http import assert_error

MULTI_BYTE = "héllo wörld, 日本語 😀 naïve café"


def tokenize(client, inputs, **parameters) -> list:
    body = {"inputs": inputs, "parameters": parameters} if parameters else {"inputs": inputs}
    response = client.post("/tokenize", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def detokenize(client, ids) -> str:
    response = client.post("/detokenize", json={"tokens": ids})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert set(response.get_json()) == {"prompt"}
    return response.get_json()["prompt"]


def tokenizer_of(client):
    return client.application.extensions["textgen.engine"].prompts.tokenizer


# -- /tokenize ------------------------------------------------------------------------------------------
def test_tokenize_answers_tgi_shape_with_the_ids_generate_prefills(client):
    inputs = "Hello world, once upon a time"
    tokens = tokenize(client, inputs)
    assert all(set(token) == {"id", "text", "start", "stop"} for token in tokens)
    assert [token["id"] for token in tokens] == list(tokenizer_of(client)(inputs)["input_ids"])
    generated = client.post("/generate", json={"inputs": inputs, "parameters": {"max_new_tokens": 1, "details": True}})
    assert generated.get_json()["details"]["prompt_tokens"] == len(tokens)


def test_offsets_of_ascii_text_are_slices_of_the_input(client):
    inputs = "The quick brown fox, jumped over 12 lazy dogs!"
    tokens = tokenize(client, inputs)
    for token in tokens:
        assert token["text"] == inputs[token["start"] : token["stop"]]
    assert "".join(token["text"] for token in tokens) == inputs  # contiguous and complete
    assert [t["start"] for t in tokens[1:]] == [t["stop"] for t in tokens[:-1]]


def test_offsets_of_multi_byte_text_are_utf8_byte_offsets(client):
    """As TGI's router: the Rust tokenizer's offsets count UTF-8 bytes, and `text` is the input's bytes
    between them. A byte-level token that holds part of a character covers that whole character."""
    tokens = tokenize(client, MULTI_BYTE)
    data = MULTI_BYTE.encode("utf-8")
    for token in tokens:
        assert token["text"] == data[token["start"] : token["stop"]].decode("utf-8")
        assert token["text"]  # never a split character
    # Every byte is covered, in order; tokens sharing a character share its span.
    covered = []
    for token in tokens:
        if not covered or covered[-1] != (token["start"], token["stop"]):
            covered.append((token["start"], token["stop"]))
    assert covered[0][0] == 0 and covered[-1][1] == len(data)
    assert all(previous[1] == following[0] for previous, following in zip(covered, covered[1:]))
    # Byte, not character, offsets: the emoji (4 bytes) starts at its byte position.
    emoji = next(token for token in tokens if token["text"] == "😀")
    assert emoji["start"] == len(MULTI_BYTE[: MULTI_BYTE.index("😀")].encode()) and emoji["stop"] == emoji["start"] + 4
    assert emoji["start"] != MULTI_BYTE.index("😀")


def test_a_special_token_in_the_text_is_one_token(client):
    tokenizer = tokenizer_of(client)
    eos = tokenizer.eos_token
    inputs = f"Hello{eos} again"
    tokens = tokenize(client, inputs)
    special = [token for token in tokens if token["id"] == tokenizer.eos_token_id]
    assert len(special) == 1 and special[0]["text"] == eos
    assert inputs[special[0]["start"] : special[0]["stop"]] == eos


def test_truncate_keeps_the_last_tokens_as_generate_does(client):
    inputs = "hello world " * 20
    whole = tokenize(client, inputs)
    kept = tokenize(client, inputs, truncate=5, max_new_tokens=3)
    assert kept == whole[-5:]
    generated = client.post("/generate", json={"inputs": inputs, "parameters": {"truncate": 5, "details": True, "max_new_tokens": 1}})
    assert generated.get_json()["details"]["prompt_tokens"] == 5


def test_tokenize_takes_exactly_the_grammar_forms_its_schema_names(client):
    """Each `grammar.type` the OpenAPI document names is taken; any other is the 422 /generate answers (and
    the document states the forms without a hint that tools would read otherwise: tests/test_openapi.py)."""
    for grammar in ({"type": "json", "value": {}}, {"type": "json_object", "value": {}}, {"type": "regex", "value": "a+"},
                    {"type": "json_schema", "value": {"schema": {}}}):
        assert tokenize(client, "Hi", grammar=grammar) == tokenize(client, "Hi")
    message = "`grammar.type` must be one of 'json', 'json_object', 'regex', 'json_schema'. Given: \"xml\""
    for route in ("/tokenize", "/generate"):
        body = {"prompt": "Hi", "grammar": {"type": "xml", "value": {}}}
        assert_error(client.post(route, json=body), 422, "validation", message)
        body = {"inputs": "Hi", "parameters": {"grammar": {"type": None, "value": "a"}}}
        assert_error(client.post(route, json=body), 422, "validation", "`grammar.type` must be one of")


def test_the_seed_form_is_accepted_too(client):
    assert client.post("/tokenize", json={"prompt": "Hi there"}).get_json() == tokenize(client, "Hi there")


def test_tokenize_is_limited_like_a_prompt(client, make_client):
    engine = client.application.extensions["textgen.engine"]
    limit = engine.max_input_tokens
    long = "hello " * (limit + 10)
    message = f"`inputs` must have less than {limit} tokens. Given: "
    assert_error(client.post("/tokenize", json={"inputs": long}), 422, "validation", message)
    assert_error(client.post("/generate", json={"inputs": long}), 422, "validation", message)  # the same rule
    assert_error(client.post("/tokenize", json={"inputs": ""}), 422, "validation", "`inputs` cannot be empty")
    assert_error(
        client.post("/tokenize", json={"inputs": "Hi", "parameters": {"truncate": limit + 1}}),
        422, "validation", f"`truncate` must be strictly positive and less than {limit}",
    )
    assert_error(client.post("/tokenize", json={"inputs": "Hi", "parameters": {"tmperature": 1}}), 422, "validation",
                 "Unknown field `tmperature`")
    assert_error(client.post("/tokenize", json={"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}), 422,
                 "validation", "`max_new_tokens` must be <= 512")
    assert_error(client.post("/tokenize", data="{oops"), 400, "bad_request")
    small, _ = make_client(max_request_bytes=1000)
    assert_error(small.post("/tokenize", json={"inputs": "x" * 2000}), 413, "payload_too_large")
    assert_error(small.post("/detokenize", json={"tokens": [1] * 1000}), 413, "payload_too_large")


# -- /detokenize ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["Hello world, once upon a time", MULTI_BYTE])
def test_detokenize_inverts_tokenize(client, text):
    assert detokenize(client, [token["id"] for token in tokenize(client, text)]) == text


def test_detokenize_keeps_special_tokens(client):
    tokenizer = tokenizer_of(client)
    ids = tokenizer("Hi")["input_ids"] + [tokenizer.eos_token_id]
    assert detokenize(client, ids) == "Hi" + tokenizer.eos_token
    assert client.post("/detokenize", json={"tokens": ids, "model": "anything"}).status_code == 200  # vLLM's field
    assert detokenize(client, [float(i) for i in ids]) == "Hi" + tokenizer.eos_token  # 5.0 is an integer


def test_detokenize_names_a_bad_id(client):
    vocab = client.application.extensions["textgen.engine"].prompts.vocab_size
    response = client.post("/detokenize", json={"tokens": [1, 2, vocab + 7]})
    assert_error(response, 422, "validation", f"`tokens` must be < {vocab} (the vocabulary size). Given: {vocab + 7} at index 2")
    assert_error(client.post("/detokenize", json={"tokens": [vocab]}), 422, "validation", f"Given: {vocab} at index 0")
    assert_error(client.post("/detokenize", json={"tokens": [3, -1]}), 422, "validation", "`tokens` must be >= 0. Given: -1")
    assert_error(client.post("/detokenize", json={"tokens": [True]}), 422, "validation", "`tokens` must be an integer")
    assert_error(client.post("/detokenize", json={"tokens": [1.5]}), 422, "validation", "`tokens` must be an integer")
    assert_error(client.post("/detokenize", json={"tokens": "12"}), 422, "validation", "`tokens` must be a list of token ids")
    assert_error(client.post("/detokenize", json={"tokens": []}), 422, "validation", "`tokens` must hold at least 1 item(s)")
    assert_error(client.post("/detokenize", json={}), 422, "validation", "`tokens` is required")
    assert_error(client.post("/detokenize", json={"tokens": [1], "skip": 1}), 422, "validation", "Unknown field `skip`")
    assert_error(client.post("/detokenize", json=[1, 2]), 400, "bad_request")


def test_detokenize_is_limited_to_the_longest_sequence(client):
    total = client.application.extensions["textgen.engine"].max_total_tokens
    assert detokenize(client, [1] * total)
    assert_error(client.post("/detokenize", json={"tokens": [1] * (total + 1)}), 422, "validation",
                 f"`tokens` must hold at most {total} item(s). Given: {total + 1}")


def test_tokenizer_routes_leave_the_engine_and_its_metrics_alone(client):
    engine = client.application.extensions["textgen.engine"]
    before = engine.stats()
    tokenize(client, "Hello")
    detokenize(client, [1, 2])
    assert engine.stats() == before
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'textgen_requests_total{outcome="success",route="/tokenize"} 1.0' in metrics
    assert 'textgen_requests_total{outcome="success",route="/detokenize"} 1.0' in metrics
    assert "textgen_request_input_length_count 0.0" in metrics


# -- PromptTokens with other tokenizers -----------------------------------------------------------------
@pytest.fixture(scope="module")
def bos_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's tokenizer with a post-processor that adds a BOS, as Llama's tokenizer.json does."""
    target = tmp_path_factory.mktemp("bos") / "model"
    shutil.copytree(tiny_model_dir, target)
    path = os.path.join(target, "tokenizer.json")
    with open(path) as f:
        config = json.load(f)
    bos = "<|endoftext|>"
    bos_id = config["added_tokens"][0]["id"]
    config["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    with open(path, "w") as f:
        json.dump(config, f)
    return str(target), bos_id


def request(prompt: str, **fields) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_new_tokens=1, do_sample=False, **fields)


@pytest.mark.parametrize("kind", ["lean", "transformers"])
def test_a_bos_the_tokenizer_adds_covers_nothing(bos_model_dir, kind):
    model_dir, bos_id = bos_model_dir
    if kind == "lean":
        tokenizer = LeanTokenizer(model_dir)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = PromptTokens(tokenizer, max_input_tokens=100, max_total_tokens=101)
    tokens = prompts.prompt_tokens(request("Hé there"))
    assert [t.id for t in tokens] == list(tokenizer("Hé there")["input_ids"]) and tokens[0].id == bos_id
    assert (tokens[0].text, tokens[0].start, tokens[0].stop) == ("", 0, 0)  # TGI's Rust tokenizer says the same
    data = "Hé there".encode()
    assert all(t.text and t.text == data[t.start : t.stop].decode() for t in tokens[1:])
    assert tokens[-1].stop == len(data)
    assert prompts.detokenize([t.id for t in tokens]) == "<|endoftext|>Hé there"


class NoOffsets:
    """A tokenizer with no Rust core: transformers' Python tokenizers cannot give offsets."""

    def __call__(self, text, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("return_offset_mapping is not available when using Python tokenizers")
        return {"input_ids": [ord(c) for c in text]}

    def __len__(self):
        return 0x110000


def test_a_tokenizer_without_offsets_gives_ids_only_as_tgi_does():
    prompts = PromptTokens(NoOffsets(), max_input_tokens=10, max_total_tokens=11)
    tokens = prompts.prompt_tokens(request("abc"))
    assert [(t.id, t.text, t.start, t.stop) for t in tokens] == [(97, "", 0, 0), (98, "", 0, 0), (99, "", 0, 0)]
    with pytest.raises(ValidationError, match="must have less than 10 tokens. Given: 11"):
        prompts.prompt_tokens(request("a" * 11))
