"""/openapi.json and /docs, and a schema-driven fuzz of the live server with schemathesis: no 5xx,
every answer matches the document, invalid input is refused with a 4xx."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devtools.models import make_tiny
from tests.models import add_chat_template
from devtools.servers import serving
from textgen.validation.anthropic_forms import MessagesRequest
from textgen.validation.openai_forms import ChatCompletionRequest, CompletionRequest
from textgen.settings import Settings
from textgen.validation import TGIRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def live_url(tmp_path_factory):
    """One live server for the module (the default backend, ONNX Runtime; the fuzz needs one, not all
    three), on a tiny model with a chat template, so /v1/chat/completions generates too, and
    DistilGPT2's 1024-token context: the prompt-tokens + max_new_tokens budget depends on the
    tokenizer, so no JSON Schema can state it, and with 1024 tokens the fuzzer's prompts stay inside
    it, as a real client's do."""
    model_dir = add_chat_template(make_tiny(str(tmp_path_factory.mktemp("tiny-fuzz")), n_positions=1024))
    with serving(Settings.from_env(environ={}, model_id=model_dir, threads=2, max_new_tokens_limit=64)) as url:
        yield url


@pytest.fixture(scope="module")
def document(live_url):
    response = requests.get(live_url + "/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_document_is_openapi_31_built_from_the_route_models(document):
    assert document["openapi"] == "3.1.0"
    schemas = document["components"]["schemas"]
    for model in (TGIRequest, CompletionRequest, ChatCompletionRequest, MessagesRequest):
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)
        served = json.loads(json.dumps(schemas[model.__name__]))
        # This server's rules between fields (best_of: sampled, not streamed) and its MAX_BEST_OF.
        served.pop("allOf", None)
        served["properties"].get("n", {}).pop("maximum", None)
        for field in served["properties"].values():  # this server's own limit, added to the models' bounds
            for variant in field.get("anyOf", [field]):
                variant.pop("maximum", None) if variant.get("type") == "integer" else None
        for field in expected["properties"].values():
            for variant in field.get("anyOf", [field]):
                variant.pop("maximum", None) if variant.get("type") == "integer" else None
        assert served == expected
    # best_of and n: at most MAX_BEST_OF (4); best_of > 1 neither greedy nor streamed, which the
    # document says with JSON Schema's own words (a fuzzer then never expects such a body to pass).
    assert schemas["CompletionRequest"]["properties"]["n"]["maximum"] == 4
    assert next(v for v in schemas["Parameters"]["properties"]["best_of"]["anyOf"] if v.get("type") == "integer")["maximum"] == 4
    assert len(schemas["PromptRequest"]["allOf"]) == 2 and len(schemas["TGIRequest"]["allOf"]) == 1
    # The server's MAX_NEW_TOKENS_LIMIT (64 here) is the documented maximum on both forms.
    assert schemas["MessagesRequest"]["properties"]["max_tokens"]["maximum"] == 64  # Anthropic's: required, no null
    for name, field in (("Parameters", "max_new_tokens"), ("CompletionRequest", "max_tokens")):
        variants = schemas[name]["properties"][field]["anyOf"]
        assert next(v for v in variants if v.get("type") == "integer")["maximum"] == 64
    # Bounds the routes enforce are in the document, e.g. top_p in (0, 1] and at most 4 stop sequences.
    parameters = schemas["Parameters"]["properties"]
    top_p = next(s for s in parameters["top_p"]["anyOf"] if s.get("type") == "number")
    assert top_p["exclusiveMinimum"] == 0 and top_p["maximum"] == 1
    assert parameters["stop"]["maxItems"] == 4
    assert schemas["TGIRequest"]["additionalProperties"] is False
    expected_paths = {"/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions", "/v1/models",
                      "/tokenize", "/detokenize", "/health", "/info", "/metrics", "/openapi.json", "/docs",
                      "/api/generate", "/api/chat", "/api/show", "/api/tags", "/api/ps", "/api/version",
                      "/v1/messages", "/v1/messages/count_tokens", "/v1/embeddings", "/api/embed", "/api/embeddings"}
    assert expected_paths <= set(document["paths"])
    # /detokenize's bounds are this server's: its longest sequence (1024) and its vocabulary.
    ids = schemas["DetokenizeRequest"]["properties"]["tokens"]
    assert ids["maxItems"] == 1024 and ids["minItems"] == 1
    assert ids["items"]["minimum"] == 0 and ids["items"]["maximum"] == 399  # the tiny model: 400 tokens
    # Embeddings: `dimensions` only the model's width (the tiny model's 64), ids within the vocabulary and
    # at most MAX_INPUT_TOKENS (1023) of them an input.
    for name in ("OpenAIEmbeddingRequest", "OllamaEmbedRequest"):
        width = next(v for v in schemas[name]["properties"]["dimensions"]["anyOf"] if v.get("type") == "integer")
        assert width["minimum"] == width["maximum"] == 64
    id_lists = [f for f in schemas["OpenAIEmbeddingRequest"]["properties"]["input"]["anyOf"] if f.get("type") == "array"]
    flat, nested = (f for f in id_lists if f["items"].get("type") != "string")
    for ids in (flat, nested["items"]):
        assert ids["maxItems"] == 1023 and ids["items"]["maximum"] == 399


def test_a_discriminator_in_the_document_names_one_form_per_tag_that_allows_that_tag_alone():
    """A discriminator's mapping, read as tools read it (schemathesis pins each form to the tag that maps
    to it): one tag per form, and the form's own `type` allows exactly it. TGI's `grammar` (one form for
    `json` and its alias `json_object`) is stated by its `oneOf` alone: with the hint, a fuzzer took
    `{"type": "json"}`, which /tokenize rightly accepts, for a body that breaks the document."""
    from textgen.transports.http.openapi import build_openapi

    schemas = build_openapi(64, 100)["components"]["schemas"]
    unions = []

    def walk(node):
        if isinstance(node, dict):
            if "oneOf" in node and all("$ref" in form for form in node["oneOf"]):
                unions.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schemas)
    tagged = [union for union in unions if "discriminator" in union]
    assert tagged  # OpenAI's `response_format` keeps its hint: one form per tag
    for union in tagged:
        mapping = union["discriminator"]["mapping"]
        assert len(set(mapping.values())) == len(mapping), mapping
        field = union["discriminator"]["propertyName"]  # `type`, or a chat message's `role`
        for tag, ref in mapping.items():
            form = schemas[ref.rsplit("/", 1)[1]]
            tags = form["properties"][field].get("enum") or [form["properties"][field]["const"]]
            assert tags == [tag], (ref, tags)
    grammar = schemas["Parameters"]["properties"]["grammar"]["anyOf"][0]
    assert "discriminator" not in grammar
    assert [form["$ref"].rsplit("/", 1)[1] for form in grammar["oneOf"]] == ["JsonGrammar", "RegexGrammar", "JsonSchemaGrammar"]
    assert schemas["JsonGrammar"]["properties"]["type"]["enum"] == ["json", "json_object"]


def test_docs_page_is_self_contained(live_url):
    response = requests.get(live_url + "/docs")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    # Works offline: no script, style or font from another origin.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", response.text)
    assert 'fetch("/openapi.json")' in response.text


def test_fuzz_against_the_document(live_url, tmp_path):
    """schemathesis' CLI over every operation, with valid and invalid bodies, all its checks: no 5xx,
    each answer (status, content type, headers, body) one the document declares, invalid input refused
    with a 4xx. (Its CLI rather than its pytest plugin, which does not run under pytest 9.)"""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", live_url + "/openapi.json",
        "--checks", "all", "--max-examples", "25", "--seed", "1", "--generation-deterministic",
        "--request-timeout", "60", "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml"),
    ]
    # The rules no schema can state (tests/fuzz_hooks.py): refusals by them are not failures.
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)  # its files stay there
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    report = (tmp_path / "junit.xml").read_text()
    # Every documented operation was exercised.
    for operation in ("POST /generate", "POST /v1/completions", "POST /v1/chat/completions", "GET /health",
                      "POST /tokenize", "POST /detokenize", "POST /api/generate", "POST /api/chat", "GET /api/tags",
                      "POST /v1/embeddings", "POST /api/embed", "POST /api/embeddings"):
        assert operation in report
