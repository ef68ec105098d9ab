"""Anthropic's `anthropic` SDK, unchanged, against a live gunicorn server on the tiny model with a chat
template: messages.create, messages.stream (its events in order), messages.count_tokens, stop sequences,
the API key (as a bearer token, the SDK's way, and as `x-api-key`), and errors in Anthropic's shape."""

from __future__ import annotations

import json

import anthropic
import pytest
import requests
from transformers import AutoTokenizer

from devtools.servers import gunicorn_server

KEY = "sk-test-anthropic"
HI = [{"role": "user", "content": "Hi"}]
# SDK 2.17.0 dropped `temperature`, `top_p` and `top_k` from its signatures; clients that set them send
# them in the body, as here (the server reads them).
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture(scope="module")
def live(chat_model_dir):
    """gunicorn on the tiny chat model, with an API key configured."""
    with gunicorn_server(chat_model_dir, wait_for_exit=False, API_KEY=KEY) as (url, _):
        yield url


@pytest.fixture(scope="module")
def tokenizer(chat_model_dir):
    return AutoTokenizer.from_pretrained(chat_model_dir)


def client(url: str, **options) -> anthropic.Anthropic:
    options.setdefault("api_key", KEY)
    return anthropic.Anthropic(base_url=url, max_retries=0, timeout=60, **options)


def prompt_ids(tokenizer, messages, system=None) -> list:
    turns = ([{"role": "system", "content": system}] if system else []) + messages
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return tokenizer(text)["input_ids"]


def generate(url: str, tokenizer, messages, **parameters) -> dict:
    """The same prompt on TGI's route: what the Anthropic answers must equal."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    body = {"inputs": text, "parameters": {"do_sample": False, "details": True, **parameters}}
    response = requests.post(url + "/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_answers_the_greedy_text_with_usage(live, tokenizer):
    message = client(live).messages.create(model="tiny", max_tokens=6, messages=HI, **GREEDY)
    expected = generate(live, tokenizer, HI, max_new_tokens=6)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == expected["generated_text"]
    assert message.usage.input_tokens == len(prompt_ids(tokenizer, HI))
    assert message.usage.output_tokens == expected["details"]["generated_tokens"]
    if expected["details"]["finish_reason"] == "length":
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
    else:
        assert message.stop_reason == "end_turn"


def test_system_and_text_blocks_are_rendered_by_the_template(live, tokenizer):
    blocks = [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]
    message = client(live).messages.create(model="tiny", max_tokens=4, **GREEDY, messages=blocks,
                                           system=[{"type": "text", "text": "Be brief."}])
    expected = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert message.usage.input_tokens == len(prompt_ids(tokenizer, expected[1:], system="Be brief."))
    assert message.content[0].text == generate(live, tokenizer, expected, max_new_tokens=4)["generated_text"]


def test_a_last_assistant_turn_is_continued(live, tokenizer):
    turns = HI + [{"role": "assistant", "content": "Hel"}]
    message = client(live).messages.create(model="tiny", max_tokens=3, messages=turns, **GREEDY)
    assert message.usage.input_tokens == len(tokenizer(tokenizer.apply_chat_template(
        HI, tokenize=False, add_generation_prompt=True) + "Hel")["input_ids"])


def test_stream_events_in_order_and_text_equals_create(live):
    sdk = client(live)
    whole = sdk.messages.create(model="tiny", max_tokens=8, messages=HI, **GREEDY)
    with sdk.messages.stream(model="tiny", max_tokens=8, messages=HI, **GREEDY) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    # The SDK adds its own `text` events (one per delta) beside the raw ones, and drops `ping`.
    raw = [kind for kind in kinds if kind != "text"]
    deltas = raw.count("content_block_delta")
    assert deltas >= 1 and kinds.count("text") == deltas
    assert raw == ["message_start", "content_block_start"] + ["content_block_delta"] * deltas + [
        "content_block_stop", "message_delta", "message_stop"]
    assert final.content[0].text == whole.content[0].text
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == whole.stop_reason


def test_stream_on_the_wire_names_each_event(live):
    body = {"model": "tiny", "max_tokens": 3, "messages": HI, "stream": True, "temperature": 0}
    response = requests.post(live + "/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    events = [block.split("\n") for block in response.text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    payloads = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"] and names[-1] == "message_stop"
    assert [p["type"] for p in payloads] == names  # each data's `type` is its event's name
    assert payloads[-2]["delta"]["stop_reason"] == "max_tokens" and payloads[-2]["usage"]["output_tokens"] == 3


def test_count_tokens_is_the_prompt_create_prefills(live, tokenizer):
    sdk = client(live)
    counted = sdk.messages.count_tokens(model="tiny", messages=HI, system="Be brief.")
    assert counted.input_tokens == len(prompt_ids(tokenizer, HI, system="Be brief."))
    created = sdk.messages.create(model="tiny", max_tokens=1, messages=HI, system="Be brief.", **GREEDY)
    assert created.usage.input_tokens == counted.input_tokens


def test_stop_sequence_ends_the_answer_and_is_named(live):
    sdk = client(live)
    free = sdk.messages.create(model="tiny", max_tokens=20, messages=HI, **GREEDY).content[0].text
    assert len(free) >= 4, free
    stop = free[2:4]  # text the greedy answer is known to reach
    message = sdk.messages.create(model="tiny", max_tokens=20, messages=HI, stop_sequences=["\x00never", stop], **GREEDY)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == free[: free.index(stop)]


def test_x_api_key_is_accepted_and_a_wrong_key_refused(live):
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    body = {"model": "tiny", "max_tokens": 2, "messages": HI}
    response = requests.post(live + "/v1/messages", json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"
    sdk = anthropic.Anthropic(base_url=live, api_key=None, default_headers={"x-api-key": KEY}, max_retries=0, timeout=60)
    assert sdk.messages.count_tokens(model="tiny", messages=HI).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as raised:
        client(live, api_key="wrong").messages.create(model="tiny", max_tokens=2, messages=HI)
    assert raised.value.status_code == 401
    assert raised.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "Invalid API key"}}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"max_tokens": 0}, "`max_tokens` must be strictly positive"),
        ({"extra_body": {"temperature": 1.5}}, "`temperature` must be <= 1"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "`tools[0]` is not supported"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"x": {"$ref": "#/nope"}}}}]},
         "`tools[0]` (`f`): the parameters' schema cannot be compiled"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "g"}},
         "`tool_choice` names `g`, which is not one of `tools`: f"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "`image` content blocks"),
    ],
)
def test_a_bad_request_is_a_bad_request_error_in_anthropic_shape(live, change, words):
    body = {"model": "tiny", "max_tokens": 4, "messages": HI, **change}
    with pytest.raises(anthropic.BadRequestError) as raised:
        client(live).messages.create(**body)
    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    assert words in raised.value.body["error"]["message"]


def test_an_error_after_the_stream_began_is_an_error_event(chat_live, fail_forward_call):
    url, engine = chat_live
    fail_forward_call(engine, 3)  # prefill and one decode step run, the next step fails
    received = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client(url, api_key="unused").messages.stream(model="tiny", max_tokens=20, messages=HI) as stream:
            for event in stream:
                received.append(event.type)
    # Begun (the 200 and its first events were sent), never finished: the failure came as an event.
    assert received[:2] == ["message_start", "content_block_start"]
    assert "content_block_stop" not in received and "message_stop" not in received
    assert raised.value.body == {"type": "error", "error": {"type": "api_error", "message": "Generation failed; see the server log"}}


def test_overload_is_a_rate_limit_error_and_a_stopped_engine_overloaded(chat_model_dir, base_settings, slow_forward):
    """Over MAX_CONCURRENT_REQUESTS: 429 `rate_limit_error` with Retry-After (the SDK's RateLimitError);
    the engine not running: 529 `overloaded_error` (its OverloadedError, which it would retry)."""
    import threading
    import time

    from devtools.servers import thread_server
    from textgen.engine.core import Engine
    from textgen.model.loader import load_model
    from textgen.server import create_app

    settings = base_settings.replace(model_id=chat_model_dir, max_concurrent_requests=1)
    model, tokenizer = load_model(settings)
    engine = Engine(model, tokenizer, settings).start()
    slow_forward(engine, 0.05)
    try:
        with thread_server(create_app(settings, engine=engine)) as url:
            sdk = client(url, api_key="unused")
            first = threading.Thread(target=lambda: sdk.messages.create(model="m", max_tokens=20, messages=HI))
            first.start()
            deadline = time.monotonic() + 10
            while engine.stats()["admitted"] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(anthropic.RateLimitError) as limited:
                sdk.messages.create(model="m", max_tokens=2, messages=HI)
            first.join(30)
            engine.stop()
            with pytest.raises(anthropic.OverloadedError) as overloaded:
                sdk.messages.create(model="m", max_tokens=2, messages=HI)
    finally:
        engine.stop()
    assert limited.value.status_code == 429 and limited.value.response.headers["Retry-After"] == "1"
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"
