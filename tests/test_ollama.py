"""Ollama's API: the `ollama` package (0.6.3) and LangChain's `ChatOllama` and `OllamaLLM`
(langchain-ollama, on top of it), unchanged, against a live gunicorn server on the tiny model with a chat
template; then the error shapes over plain HTTP (and one error after the stream began, on an in-process
engine made to fail)."""

from __future__ import annotations

import json

import re

import jsonschema
import ollama
import pytest
import requests
from langchain_ollama import ChatOllama, OllamaLLM
from transformers import AutoTokenizer

from devtools.servers import gunicorn_server

MAX_TOKENS = 6


@pytest.fixture(scope="module")
def live_url(chat_model_dir):
    with gunicorn_server(chat_model_dir, wait_for_exit=False) as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(live_url):
    return ollama.Client(host=live_url, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    return client.list().models[0].model


def options(**more):
    return {"num_predict": MAX_TOKENS, "temperature": 0, **more}


def test_list_names_the_served_model_with_its_details(client, live_url):
    models = client.list().models
    assert len(models) == 1
    assert models[0].model == "model:latest"  # the directory's name, tagged as Ollama names models
    assert models[0].size > 0 and len(models[0].digest) == 64
    assert models[0].details.family == "gpt2" and models[0].details.quantization_level
    assert requests.head(live_url + "/api/tags", timeout=10).status_code == 200


def test_version_is_numeric_and_at_least_the_level_clients_require(live_url):
    version = requests.get(live_url + "/api/version", timeout=10).json()["version"]
    assert tuple(int(part) for part in version.split(".")) >= (0, 6, 4)


def test_show_gives_the_architecture_context_template_and_capabilities(client, model, live_url):
    shown = client.show(model)
    architecture = shown.modelinfo["general.architecture"]
    context = requests.get(live_url + "/info", timeout=10).json()["max_total_tokens"]
    assert architecture == "gpt2" and shown.modelinfo[f"{architecture}.context_length"] == context
    assert shown.capabilities == ["completion", "tools"]  # tools: through its chat template
    assert f"num_ctx {context}" in shown.parameters
    assert "<|im_start|>" in shown.template  # the model's own chat template
    assert client.show("model").details.family == "gpt2"  # without ":latest" too


def test_show_lists_the_end_of_text_tokens_as_stop_parameters(client, model, chat_model_dir):
    # Read as Continue reads them: `name value` lines, a quoted value through JSON.parse.
    lines = [re.match(r'^(\S+)\s+((?:".*")|\S+)$', line).groups() for line in client.show(model).parameters.splitlines()]
    stops = [json.loads(value) for name, value in lines if name == "stop"]
    assert stops == [AutoTokenizer.from_pretrained(chat_model_dir).eos_token]


def test_ps_lists_the_loaded_model(client, model):
    running = client.ps().models
    assert [m.model for m in running] == [model]
    assert running[0].size_vram == 0


def test_generate_whole_and_streamed_agree_and_report_counts(client, model, live_url):
    whole = client.generate(model=model, prompt="Hello", options=options())
    assert whole.done and whole.done_reason == "length" and whole.eval_count == MAX_TOKENS
    assert whole.prompt_eval_count > 0 and whole.total_duration >= whole.eval_duration > 0
    parts = list(client.generate(model=model, prompt="Hello", options=options(), stream=True))
    assert "".join(p.response for p in parts) == whole.response
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert parts[-1].eval_count == MAX_TOKENS
    # Rendered with the chat template, as Ollama does; `raw` sends the prompt as it is.
    raw = client.generate(model=model, prompt="Hello", raw=True, options=options())
    body = {"prompt": "Hello", "max_tokens": MAX_TOKENS, "temperature": 0}
    direct = requests.post(live_url + "/v1/completions", json=body, timeout=60).json()
    assert raw.response == direct["choices"][0]["text"]
    assert raw.prompt_eval_count < whole.prompt_eval_count


def test_chat_streamed_is_the_whole_answer_in_pieces(client, model, live_url):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    parts = list(client.chat(model=model, messages=messages, options=options(), stream=True))
    assert parts[-1].done and parts[-1].done_reason == "length" and parts[-1].eval_count == MAX_TOKENS
    streamed = "".join(p.message.content for p in parts)
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}
    direct = requests.post(live_url + "/v1/chat/completions", json=body, timeout=60).json()
    assert streamed == direct["choices"][0]["message"]["content"]
    assert client.chat(model=model, messages=messages, options=options()).message.content == streamed


def test_stop_sequence_ends_with_reason_stop(client, model):
    whole = client.generate(model=model, prompt="Hello", options=options(num_predict=30))
    stop = whole.response[3:5]
    stopped = client.generate(model=model, prompt="Hello", options=options(num_predict=30, stop=[stop]))
    assert stopped.done_reason == "stop" and stop not in stopped.response


def test_format_schema_gives_json_that_validates(client, model):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    answer = client.chat(model=model, messages=[{"role": "user", "content": "A number"}], format=schema,
                         options={"num_predict": 40, "seed": 1})
    jsonschema.validate(json.loads(answer.message.content), schema)
    plain = client.generate(model=model, prompt="{", format="json", options={"num_predict": 40, "seed": 2})
    assert isinstance(json.loads(plain.response), dict)


def test_unknown_model_is_a_404_response_error(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="llama3:8b", prompt="Hi")
    assert raised.value.status_code == 404 and "llama3:8b" in raised.value.error
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("nope")
    assert raised.value.status_code == 404


def test_langchain_chat_ollama_validates_the_model_then_invokes_and_streams(live_url, model):
    chat = ChatOllama(model=model, base_url=live_url, validate_model_on_init=True, num_predict=MAX_TOKENS, temperature=0)
    whole = chat.invoke("Hi")
    assert whole.usage_metadata["output_tokens"] == MAX_TOKENS and whole.response_metadata["done_reason"] == "length"
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS, "temperature": 0}
    direct = requests.post(live_url + "/v1/chat/completions", json=body, timeout=60).json()
    assert whole.content == direct["choices"][0]["message"]["content"]
    chunks = list(chat.stream("Hi"))
    assert len(chunks) > 1 and "".join(chunk.content for chunk in chunks) == whole.content
    assert [chunk.usage_metadata["output_tokens"] for chunk in chunks if chunk.usage_metadata] == [MAX_TOKENS]
    # The name as the user gives it, without Ollama's ":latest" tag, passes the check too.
    ChatOllama(model=model.removesuffix(":latest"), base_url=live_url, validate_model_on_init=True)


def test_langchain_validate_model_on_init_refuses_an_unknown_model(live_url):
    with pytest.raises(ValueError, match="llama3:8b"):
        ChatOllama(model="llama3:8b", base_url=live_url, validate_model_on_init=True)
    with pytest.raises(ValueError, match="llama3:8b"):
        OllamaLLM(model="llama3:8b", base_url=live_url, validate_model_on_init=True)


def test_langchain_ollama_llm_invokes_the_completion_route(live_url, model):
    llm = OllamaLLM(model=model, base_url=live_url, validate_model_on_init=True, num_predict=MAX_TOKENS, temperature=0)
    body = {"model": model, "prompt": "Hello", "stream": False, "options": options()}
    direct = requests.post(live_url + "/api/generate", json=body, timeout=60).json()
    assert llm.invoke("Hello") == direct["response"] and direct["eval_count"] == MAX_TOKENS


def test_bad_options_are_a_400_naming_the_option(live_url, model):
    for option, message in (({"num_predict": 10**6}, "`num_predict` must be <="), ({"top_p": 2}, "`top_p` must be <= 1"),
                            ({"mirostat": 2}, "`mirostat` is not supported"), ({"bogus": 1}, "Unknown field `bogus`")):
        answer = requests.post(live_url + "/api/generate", json={"model": model, "prompt": "Hi", "options": option}, timeout=30)
        assert answer.status_code == 400, option
        assert set(answer.json()) == {"error"} and message in answer.json()["error"], answer.json()
    answer = requests.post(live_url + "/api/show", json={}, timeout=10)
    assert answer.status_code == 400 and answer.json() == {"error": "`model` is required"}


def test_load_time_options_and_keep_alive_are_accepted(client, model):
    answer = client.generate(model=model, prompt="Hi", keep_alive="5m", options=options(num_gpu=1, use_mmap=True, num_thread=4))
    assert answer.eval_count == MAX_TOKENS


def test_model_managing_routes_are_501(live_url):
    for route in ("pull", "push", "create", "copy", "delete"):
        method = requests.delete if route == "delete" else requests.post
        answer = method(f"{live_url}/api/{route}", json={"model": "x"}, timeout=10)
        assert answer.status_code == 501 and "not supported" in answer.json()["error"], route


def test_empty_prompt_only_loads(live_url, model):
    answer = requests.post(live_url + "/api/generate", json={"model": model}, timeout=10).json()
    assert answer["done"] and answer["done_reason"] == "load" and answer["response"] == ""


def test_ndjson_content_type_and_api_key(live_url, model, chat_model_dir):
    answer = requests.post(live_url + "/api/generate", json={"model": model, "prompt": "Hi", "options": options()}, timeout=30)
    assert answer.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])
    with gunicorn_server(chat_model_dir, wait_for_exit=False, API_KEY="sekret") as (url, _):
        refused = requests.get(url + "/api/tags", timeout=10)
        assert refused.status_code == 401 and set(refused.json()) == {"error"}
        allowed = ollama.Client(host=url, headers={"Authorization": "Bearer sekret"}).list()
        assert allowed.models[0].model == model


def test_an_error_after_the_stream_began_is_the_last_line(make_client, fail_forward_call):
    http, engine = make_client()
    fail_forward_call(engine, 3)  # the prefill and a first decode step pass, then the model fails
    model = http.get("/api/tags").get_json()["models"][0]["model"]
    # Greedy: the two tokens before the failure are then always the same ones, and they make text (sampled,
    # they were sometimes tokens that decode to nothing yet, and no line came before the error).
    options = {"num_predict": 8, "temperature": 0}
    answer = http.post("/api/generate", json={"model": model, "prompt": "Hello", "raw": True, "options": options})
    assert answer.status_code == 200
    lines = [json.loads(line) for line in answer.get_data(as_text=True).splitlines()]
    assert "error" in lines[-1] and not lines[-1].get("done") and len(lines) >= 2


def test_overload_is_a_429_response_error(make_engine, slow_forward):
    """Over MAX_CONCURRENT_REQUESTS: the `ollama` package's ResponseError with status 429."""
    import threading
    import time

    from devtools.servers import thread_server
    from textgen.server import create_app

    engine = make_engine(max_concurrent_requests=1)
    slow_forward(engine, 0.05)
    with thread_server(create_app(engine.settings, engine=engine)) as url:
        sdk = ollama.Client(host=url, timeout=60)
        model = sdk.list().models[0].model
        first = threading.Thread(target=lambda: sdk.generate(model=model, prompt="Hi", raw=True, options={"num_predict": 20}))
        first.start()
        deadline = time.monotonic() + 10
        while engine.stats()["admitted"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ollama.ResponseError) as caught:
            sdk.generate(model=model, prompt="Hi", raw=True, options={"num_predict": 2})
        first.join(30)
    assert caught.value.status_code == 429 and caught.value.error == "Model is overloaded"


def test_parameter_size_counts_the_checkpoints_parameters(client, chat_model_dir):
    from transformers import AutoModelForCausalLM

    count = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(chat_model_dir).parameters())
    assert client.list().models[0].details.parameter_size == f"{count / 1e3:.0f}K"  # the tiny model: ~100K
