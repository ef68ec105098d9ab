"""TGI's own clients, unchanged, against a live gunicorn server: `text-generation` (TGI's Python client,
in a virtual environment of its own: it pins huggingface-hub < 1.0, which conflicts with ours) and
huggingface_hub's `InferenceClient`. Both post to TGI's compat route `POST /`, whose complete answer is
a list of one, as TGI's router answers it; a stream and errors are as on /generate_stream and /generate."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

# The latest release of TGI's Python client on PyPI (0.7.0, March 2024).
TGI_CLIENT = "text-generation==0.7.0"
TGI_CLIENT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "textgen", "tgi-client-" + TGI_CLIENT.split("==")[1])

# Run by the client's venv's Python with the server's URL; prints what the client returned, as JSON.
CLIENT_SCRIPT = r"""
import json, sys
from text_generation import Client
from text_generation.errors import ValidationError

client = Client(sys.argv[1], timeout=60)
out = {}
out["generate"] = client.generate("Hello", max_new_tokens=6).model_dump(mode="json")
out["sampled"] = client.generate("Hello", max_new_tokens=5, do_sample=True, seed=3).model_dump(mode="json")
out["stopped"] = client.generate("Hello", max_new_tokens=20, stop_sequences=["l"]).model_dump(mode="json")
out["stream"] = [event.model_dump(mode="json") for event in client.generate_stream("Hello", max_new_tokens=6)]
out["logprobs"] = client.generate("Hello", max_new_tokens=3, decoder_input_details=True, top_n_tokens=2).model_dump(mode="json")
out["stream_top"] = [e.model_dump(mode="json") for e in client.generate_stream("Hello", max_new_tokens=3, top_n_tokens=2)]
for name, call in (("generate_error", client.generate), ("stream_error", lambda *a, **k: list(client.generate_stream(*a, **k)))):
    try:
        call("Hello", max_new_tokens=100000)
        out[name] = None
    except ValidationError as error:
        out[name] = ["ValidationError", str(error)]
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def tgi_client_python():
    """The Python of a venv holding TGI's client, made once and kept under ~/.cache/textgen (a marker
    file says it was completed). Where it cannot be installed the tests are skipped, naming why (under
    CI they fail)."""
    python = os.path.join(TGI_CLIENT_VENV, "bin", "python")
    marker = os.path.join(TGI_CLIENT_VENV, "installed")
    if not os.path.exists(marker):
        subprocess.run([sys.executable, "-m", "venv", "--clear", TGI_CLIENT_VENV], check=True, timeout=300)
        install = subprocess.run(
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", TGI_CLIENT],
            capture_output=True, text=True, timeout=600,
        )
        if install.returncode != 0:
            problem = f"pip install {TGI_CLIENT} failed: {install.stderr[-2000:]}"
            if os.environ.get("CI"):
                pytest.fail(problem)
            pytest.skip(problem)
        with open(marker, "w") as f:
            f.write(TGI_CLIENT + "\n")
    return python


def compat_requests(url: str) -> float:
    """Requests answered on TGI's compat route `POST /` so far, from /metrics."""
    total = 0.0
    for family in text_string_to_metric_families(requests.get(url + "/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "textgen_requests_total" and sample.labels["route"] == "/":
                total += sample.value
    return total


def generate(url: str, **parameters) -> dict:
    response = requests.post(url + "/generate", json={"inputs": "Hello", "parameters": parameters}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_text_generation_client(gunicorn_url, tgi_client_python):
    """TGI's Python client: `Client.generate` reads `payload[0]` and requires TGI's complete `details`
    (`prefill`, `tokens`); `generate_stream` and a validation error come back as its own types."""
    before = compat_requests(gunicorn_url)
    run = subprocess.run([tgi_client_python, "-c", CLIENT_SCRIPT, gunicorn_url], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert compat_requests(gunicorn_url) - before == 8  # every call went to POST /

    greedy = generate(gunicorn_url, max_new_tokens=6, do_sample=False)["generated_text"]
    answer = out["generate"]  # the client sends do_sample=false and details=true
    assert answer["generated_text"] == greedy
    details = answer["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 6 and details["seed"] is None
    assert details["prefill"] == [] and len(details["tokens"]) == 6
    assert "".join(token["text"] for token in details["tokens"]) == greedy

    sampled = out["sampled"]
    assert sampled["generated_text"] == generate(gunicorn_url, max_new_tokens=5, seed=3)["generated_text"]
    assert sampled["details"]["seed"] == 3
    assert all(isinstance(token["logprob"], float) and token["logprob"] <= 0 for token in sampled["details"]["tokens"])

    stopped = out["stopped"]["details"]
    expected = generate(gunicorn_url, max_new_tokens=20, do_sample=False, stop=["l"], details=True)["details"]
    assert stopped["finish_reason"] == expected["finish_reason"]
    assert len(stopped["tokens"]) == stopped["generated_tokens"] == expected["generated_tokens"]

    events = out["stream"]
    assert len(events) == 6 and all(event["generated_text"] is None for event in events[:-1])
    assert events[-1]["generated_text"] == greedy
    assert events[-1]["details"]["finish_reason"] == "length" and events[-1]["details"]["generated_tokens"] == 6
    assert [event["token"] for event in events] == details["tokens"]

    with_logprobs = out["logprobs"]["details"]
    prompt_ids = [t["id"] for t in requests.post(gunicorn_url + "/tokenize", json={"inputs": "Hello"}, timeout=60).json()]
    assert [t["id"] for t in with_logprobs["prefill"]] == prompt_ids and with_logprobs["prefill"][0]["logprob"] is None
    assert all(t["logprob"] < 0 for t in with_logprobs["prefill"][1:])
    assert [len(top) for top in with_logprobs["top_tokens"]] == [2, 2, 2]
    assert [top[0]["id"] for top in with_logprobs["top_tokens"]] == [t["id"] for t in with_logprobs["tokens"]]
    assert [len(event["top_tokens"]) for event in out["stream_top"]] == [2, 2, 2]

    message = "`max_new_tokens` must be <= 512. Given: 100000"
    assert out["generate_error"] == ["ValidationError", message]
    assert out["stream_error"] == ["ValidationError", message]


def test_inference_client(gunicorn_url):
    """huggingface_hub's InferenceClient posts text_generation to `POST /` too (it takes the first
    element of a list, or an object) and reads the stream's events."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import TextGenerationError

    client = InferenceClient(base_url=gunicorn_url)
    before = compat_requests(gunicorn_url)
    text = client.text_generation("Hello", max_new_tokens=5, do_sample=False)
    expected = generate(gunicorn_url, max_new_tokens=5, do_sample=False)["generated_text"]
    assert text == expected
    detailed = client.text_generation("Hello", max_new_tokens=4, details=True, seed=9)
    assert detailed.details.finish_reason == "length" and detailed.details.generated_tokens == 4
    assert detailed.details.seed == 9 and len(detailed.details.tokens) == 4 and detailed.details.prefill == []
    assert "".join(token.text for token in detailed.details.tokens) == detailed.generated_text
    streamed = list(client.text_generation("Hello", max_new_tokens=5, do_sample=False, stream=True))
    assert "".join(streamed) == expected
    scored = client.text_generation("Hello", max_new_tokens=3, details=True, decoder_input_details=True, top_n_tokens=3, do_sample=False)
    assert scored.details.prefill[0].logprob is None and all(t.logprob < 0 for t in scored.details.prefill[1:])
    assert [len(top) for top in scored.details.top_tokens] == [3, 3, 3]
    # (huggingface_hub's parser leaves the tokens of these nested lists as dicts)
    assert [top[0]["id"] for top in scored.details.top_tokens] == [t.id for t in scored.details.tokens]
    events = list(client.text_generation("Hello", max_new_tokens=3, top_n_tokens=2, details=True, stream=True))
    assert [len(event.top_tokens) for event in events] == [2, 2, 2]
    with pytest.raises(TextGenerationError, match="must be <= 512"):
        client.text_generation("Hello", max_new_tokens=100000)
    assert compat_requests(gunicorn_url) - before == 6
