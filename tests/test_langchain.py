"""LangChain's `ChatOpenAI` (langchain-openai), unchanged, against a live server: it sends OpenAI's current
names (`max_completion_tokens` for `max_tokens=`), `stream: false` on every call and `stream_options` when
asked for usage; the length it asks for is what comes back."""

from __future__ import annotations

import pytest
import requests
from langchain_openai import ChatOpenAI

from devtools.servers import serving
from textgen.settings import Settings

MAX_TOKENS = 5


@pytest.fixture(scope="module")
def live_url(chat_model_dir):
    """One server for the module, on the default backend: what is tested here is the protocol."""
    with serving(Settings.from_env(environ={}, model_id=chat_model_dir, threads=2)) as url:
        yield url


def chat(url: str, **options) -> ChatOpenAI:
    return ChatOpenAI(base_url=url + "/v1", api_key="unused", model="tiny", max_tokens=MAX_TOKENS, temperature=0,
                      max_retries=0, timeout=60, **options)


def test_invoke_honours_max_tokens(live_url):
    answer = chat(live_url).invoke("Hi")
    assert answer.usage_metadata["output_tokens"] == MAX_TOKENS
    assert answer.response_metadata["finish_reason"] == "length"
    # The same as the OpenAI route gives for `max_tokens` (the name LangChain no longer sends).
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": MAX_TOKENS, "temperature": 0}
    direct = requests.post(live_url + "/v1/chat/completions", json=body, timeout=60).json()
    assert answer.content == direct["choices"][0]["message"]["content"]


def test_stream_honours_max_tokens(live_url):
    whole = chat(live_url).invoke("Hi")
    chunks = list(chat(live_url, stream_usage=True).stream("Hi"))
    assert "".join(chunk.content for chunk in chunks) == whole.content
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == MAX_TOKENS
    assert [c.response_metadata.get("finish_reason") for c in chunks if c.response_metadata.get("finish_reason")] == ["length"]
