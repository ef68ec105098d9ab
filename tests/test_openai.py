"""The OpenAI-compatible routes, through the official `openai` SDK against a live server."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import requests

from devtools.servers import thread_server
from textgen.server import create_app

def sdk(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture
def live(engine, base_settings):
    with thread_server(create_app(base_settings, engine=engine)) as url:
        yield url


def test_completion_equals_generate(live):
    answer = sdk(live).completions.create(model="any", prompt="Hello world", max_tokens=8, temperature=0)
    tgi = requests.post(
        live + "/generate", json={"inputs": "Hello world", "parameters": {"max_new_tokens": 8, "do_sample": False}}
    ).json()
    choice = answer.choices[0]
    assert choice.text == tgi["generated_text"]
    assert choice.finish_reason == "length"
    assert answer.object == "text_completion"
    assert answer.usage.completion_tokens == 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 8 and answer.usage.prompt_tokens > 0


def test_completion_stream_matches_the_complete_answer(live):
    client = sdk(live)
    whole = client.completions.create(model="m", prompt="Once upon", max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(
            model="m", prompt="Once upon", max_tokens=12, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_stream_ends_with_done(live):
    body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
    with requests.post(live + "/v1/completions", json=body, stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert lines[-1] == b"data: [DONE]"
    assert all(line.startswith(b"data: ") for line in lines)


def test_stop_sequence_is_cut_alike_in_stream_and_whole(live):
    client = sdk(live)
    free = client.completions.create(model="m", prompt="The", max_tokens=16, temperature=0).choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 2]
    assert stop.strip(), "the greedy text must offer a stop sequence"
    whole = client.completions.create(model="m", prompt="The", max_tokens=16, temperature=0, stop=[stop])
    streamed = client.completions.create(model="m", prompt="The", max_tokens=16, temperature=0, stop=stop, stream=True)
    pieces = [c.choices[0] for c in streamed]
    assert whole.choices[0].finish_reason == "stop"
    assert whole.choices[0].text == free[: free.index(stop)]
    assert "".join(p.text for p in pieces) == whole.choices[0].text
    assert pieces[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(live):
    client = sdk(live)
    runs = [client.completions.create(model="m", prompt="A", max_tokens=10, temperature=0.9, seed=7) for _ in range(2)]
    assert runs[0].choices[0].text == runs[1].choices[0].text


def test_echo_prepends_the_prompt(live):
    answer = sdk(live).completions.create(model="m", prompt="Echo me", max_tokens=4, temperature=0, echo=True)
    assert answer.choices[0].text.startswith("Echo me")


def test_models_lists_the_served_model(live, base_settings):
    models = sdk(live).models.list()
    assert [m.id for m in models.data] == [base_settings.model_name]


def test_chat_without_template_is_a_clear_400(live):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live).chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
    assert "no chat template" in caught.value.body["message"]
    assert caught.value.status_code == 400


def test_chat_renders_the_template_and_streams(chat_live):
    url, engine = chat_live
    client = sdk(url)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    whole = client.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0)
    prompt = engine.prompts.chat_prompt(messages)
    assert prompt.endswith("<|im_start|>assistant\n") and "Be brief." in prompt
    tgi = requests.post(url + "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": 6, "do_sample": False}})
    assert whole.choices[0].message.content == tgi.json()["generated_text"]
    assert whole.choices[0].message.role == "assistant" and whole.object == "chat.completion"
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_tokens=6, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_rejects_an_unknown_role(chat_live):
    url, _ = chat_live
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(url).chat.completions.create(model="m", messages=[{"role": "wizard", "content": "Hi"}])
    assert caught.value.body["param"] == "role"


@pytest.mark.parametrize(
    "options, param",
    [
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": 3.0}, "temperature"),
        ({"n": 5}, "n"),  # MAX_BEST_OF is 4
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"extra_body": {"best_of_everything": True}}, "best_of_everything"),
    ],
)
def test_invalid_options_are_openai_400s_naming_the_field(live, options, param):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live).completions.create(model="m", prompt="Hi", **options)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert f"`{param}`" in error["message"]


def test_token_limit_names_openai_fields(live, engine):
    limit = engine.max_total_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(live).completions.create(model="m", prompt="word " * (limit - 5), max_tokens=50)
    assert "`max_tokens`" in caught.value.body["message"] or "`prompt`" in caught.value.body["message"]
    assert "`inputs`" not in caught.value.body["message"]


def test_overload_is_a_rate_limit_error(make_engine, base_settings, slow_forward):
    engine = make_engine(max_concurrent_requests=1)
    slow_forward(engine, 0.05)
    with thread_server(create_app(engine.settings, engine=engine)) as url:
        client = sdk(url)
        first = threading.Thread(
            target=lambda: client.completions.create(model="m", prompt="Hi", max_tokens=20, temperature=0)
        )
        first.start()
        deadline = time.monotonic() + 10
        while engine.stats()["admitted"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model="m", prompt="Hi", max_tokens=2)
        first.join(30)
    assert caught.value.body["type"] == "rate_limit_error"
    assert caught.value.response.headers["Retry-After"] == "1"


def test_api_key_guards_the_v1_routes(engine, base_settings):
    settings = base_settings.replace(api_key="first-key, second-key")
    with thread_server(create_app(settings, engine=engine)) as url:
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(url, key="wrong").completions.create(model="m", prompt="Hi", max_tokens=2)
        assert caught.value.body["type"] == "authentication_error"
        for key in ("first-key", "second-key"):
            answer = sdk(url, key=key).completions.create(model="m", prompt="Hi", max_tokens=2, temperature=0)
            assert answer.usage.completion_tokens == 2
        # The model list is part of the API a key protects, as on OpenAI.
        with pytest.raises(openai.AuthenticationError):
            sdk(url, key="wrong").models.list()


def test_v1_not_found_has_the_openai_shape(live):
    response = requests.get(live + "/v1/engines")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}

