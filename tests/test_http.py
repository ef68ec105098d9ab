"""The Flask routes over the real engine: shapes, statuses and the one error body."""

import json
import time

import pytest

from devtools.servers import wait_until
from textgen.server import create_app


def sse_events(response):
    text = response.get_data(as_text=True)
    chunks = [c for c in text.split("\n\n") if c.strip()]
    assert all(c.startswith("data:") for c in chunks), text
    return [json.loads(c[len("data:") :]) for c in chunks]


def assert_error(response, status, error_type, contains=""):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert contains in body["error"]
    return body


def test_seed_example(client):
    response = client.post("/generate", json={"prompt": "Once upon a time"})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"generated_text"}
    assert isinstance(body["generated_text"], str) and body["generated_text"]
    assert response.headers["X-Request-Id"]


def test_tgi_form_with_details(client):
    response = client.post(
        "/generate",
        json={"inputs": "Hello", "parameters": {"max_new_tokens": 5, "details": True, "seed": 3}},
    )
    body = response.get_json()
    details = body["details"]
    assert details == {
        "finish_reason": "length",
        "generated_tokens": 5,
        "prompt_tokens": details["prompt_tokens"],
        "seed": 3,
        "prefill": [],  # TGI's: the prompt's tokens, only with decoder_input_details
        "tokens": details["tokens"],
    }
    assert details["prompt_tokens"] >= 1
    # TGI's `details.tokens`: every generated token, as the stream's events show them.
    assert len(details["tokens"]) == 5
    assert all(set(token) == {"id", "text", "logprob", "special"} for token in details["tokens"])
    assert "".join(token["text"] for token in details["tokens"]) == body["generated_text"]
    stream = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "seed": 3}}
    assert [e["token"] for e in sse_events(client.post("/generate_stream", json=stream))] == details["tokens"]


def test_seeded_requests_repeat(client):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 12, "seed": 11}}
    first = client.post("/generate", json=body).get_json()
    assert client.post("/generate", json=body).get_json() == first


def test_return_full_text_prepends_the_prompt(client):
    params = {"max_new_tokens": 6, "do_sample": False}
    short = client.post("/generate", json={"inputs": "Hello", "parameters": params}).get_json()
    full = client.post(
        "/generate", json={"inputs": "Hello", "parameters": {**params, "return_full_text": True}}
    ).get_json()
    assert full["generated_text"] == "Hello" + short["generated_text"]


@pytest.mark.parametrize("details", [False, True])
def test_compat_route_answers_a_list_of_one(client, details):
    """TGI's `compat_generate` wraps the complete answer in a list "to match api-inference" (TGI's own
    Python client reads `payload[0]`); its headers are /generate's."""
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "do_sample": False, "details": details}}
    compat = client.post("/", json=body)
    assert compat.get_json() == [client.post("/generate", json=body).get_json()]
    assert compat.headers["x-generated-tokens"] == "6" and compat.headers["x-compute-time"]


def test_compat_route_errors_are_the_plain_error_body(client):
    assert_error(client.post("/", json={"inputs": "Hi", "parameters": {"max_new_tokens": 0}}), 422, "validation")
    assert_error(client.post("/", data="{oops"), 400, "bad_request")


def test_body_without_json_content_type_is_still_read(client):
    response = client.post("/generate", data='{"prompt": "Hi", "max_new_tokens": 2}')
    assert response.status_code == 200


@pytest.mark.parametrize(
    "data, contains",
    [
        ("{not json", "Malformed JSON"),
        ("", "Request body is empty"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_json_is_400(client, data, contains):
    assert_error(client.post("/generate", data=data, content_type="application/json"), 400, "bad_request", contains)


@pytest.mark.parametrize(
    "body, contains",
    [
        ({"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}, "`max_new_tokens` must be <= 512. Given: 100000"),
        ({"inputs": "Hi", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
        ({"inputs": "Hi", "parameters": {"top_p": 2}}, "`top_p` must be <= 1.0"),
        ({"inputs": "Hi", "parameters": {"stop": ["a"] * 5}}, "up to 4 stop sequences"),
        ({"inputs": "Hi", "parameters": {"nope": 1}}, "Unknown field `nope`"),
        ({"prompt": "Hi", "nope": 1}, "Unknown field `nope`"),
        ({"inputs": ""}, "`inputs` cannot be empty"),
        ({"inputs": "word " * 400}, "`inputs` must have less than 255 tokens"),
        ({"inputs": "Hi", "parameters": {"max_new_tokens": 255}}, "must be <= 256"),
    ],
)
def test_validation_errors_are_422(client, body, contains):
    assert_error(client.post("/generate", json=body), 422, "validation", contains)


@pytest.mark.parametrize(
    "parameters",
    [
        {"temperature": 1e-30, "max_new_tokens": 3},
        {"temperature": 1e6, "top_p": 0.5, "max_new_tokens": 3},
        {"repetition_penalty": 100, "frequency_penalty": -2, "max_new_tokens": 3},
        {"repetition_penalty": 0.01, "frequency_penalty": 2, "max_new_tokens": 3},
        {"seed": 2**64 - 1, "typical_p": 1e-9, "max_new_tokens": 3},
        {"stop": ["\u0000", "\ud7ff"], "max_new_tokens": 3},
    ],
)
def test_extreme_but_valid_parameters_still_generate(client, parameters):
    response = client.post("/generate", json={"inputs": "Hi \u0000 \U0001F600", "parameters": parameters})
    assert response.status_code == 200, response.get_json()
    assert isinstance(response.get_json()["generated_text"], str)


def test_truncate_accepts_a_long_prompt(client):
    response = client.post(
        "/generate", json={"inputs": "word " * 400, "parameters": {"truncate": 20, "max_new_tokens": 3, "details": True}}
    )
    assert response.status_code == 200
    assert response.get_json()["details"]["prompt_tokens"] == 20


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/nope"), 404, "not_found")


def test_wrong_method_is_json_405(client):
    response = client.get("/generate")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_json_413(make_client):
    client, _ = make_client(max_request_bytes=1000)
    response = client.post("/generate", json={"prompt": "x" * 5000})
    assert_error(response, 413, "payload_too_large")


def test_overload_is_429_with_retry_after(make_client):
    client, engine = make_client(max_concurrent_requests=1, max_batch_size=1)
    from textgen.validation import validate_generate

    busy = engine.submit(validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 250}}, engine.settings))
    response = client.post("/generate", json={"prompt": "Hi"})
    body = assert_error(response, 429, "overloaded")
    assert body["error"] == "Model is overloaded"
    assert int(response.headers["Retry-After"]) >= 1
    busy.cancel()


def test_unexpected_exception_is_json_500_without_trace(base_settings, engine, caplog):
    class Broken:
        settings = base_settings

        def healthy(self):
            return True

        def submit(self, request, request_id=None):
            raise RuntimeError("secret internals")

    client = create_app(base_settings, engine=Broken()).test_client()
    response = client.post("/generate", json={"prompt": "Hi"}, headers={"X-Request-Id": "abc123"})
    body = assert_error(response, 500, "internal", "abc123")
    assert "secret" not in body["error"]
    assert "secret internals" in caplog.text and "abc123" in caplog.text


def test_health_and_info(client):
    assert client.get("/health").get_json() == {"status": "ok"}
    info = client.get("/info").get_json()
    assert info["max_input_tokens"] == 255 and info["max_total_tokens"] == 256
    assert info["max_stop_sequences"] == 4 and info["model_pipeline_tag"] == "text-generation"
    assert info["model_dtype"] == "float32" and info["model_device_type"] == "cpu"
    assert info["threads"] == 2  # THREADS=2 in the tests
    runtime = {"onnx": {"onnxruntime"}, "torch": {"torch"}, "transformers": {"torch", "transformers"}}
    assert set(info["versions"]) == {"python", "textgen"} | runtime[info["model_backend"]]


def test_health_is_503_when_the_engine_is_down(make_client):
    client, engine = make_client()
    engine.stop()
    assert_error(client.get("/health"), 503, "unavailable")
    assert_error(client.post("/generate", json={"prompt": "Hi"}), 503, "unavailable")


class TestStreaming:
    def test_tgi_event_format(self, client):
        response = client.post(
            "/generate_stream",
            json={"inputs": "Hello", "parameters": {"max_new_tokens": 5, "do_sample": False, "details": True}},
        )
        assert response.status_code == 200
        assert response.mimetype == "text/event-stream"
        assert response.headers["X-Accel-Buffering"] == "no"
        events = sse_events(response)
        assert [e["index"] for e in events] == [1, 2, 3, 4, 5]
        for event in events:
            assert set(event) == {"index", "token", "generated_text", "details"}
            assert set(event["token"]) == {"id", "text", "logprob", "special"}
        assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
        last = events[-1]
        assert last["generated_text"] == "".join(e["token"]["text"] for e in events)
        assert last["details"]["finish_reason"] == "length" and last["details"]["generated_tokens"] == 5

    def test_stream_text_equals_the_blocking_text(self, client):
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 12, "seed": 4}}
        blocking = client.post("/generate", json=body).get_json()["generated_text"]
        streamed = sse_events(client.post("/generate_stream", json=body))[-1]["generated_text"]
        assert streamed == blocking

    def test_compat_route_streams_when_asked(self, client):
        response = client.post("/", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}, "stream": True})
        assert response.mimetype == "text/event-stream"
        assert len(sse_events(response)) == 3

    def test_errors_before_the_stream_are_plain_json(self, client):
        assert_error(client.post("/generate_stream", json={"inputs": ""}), 422, "validation")

    def test_error_after_the_stream_began_is_a_final_event(self, make_client, fail_forward_call):
        client, engine = make_client()
        fail_forward_call(engine, 4)
        events = sse_events(client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 20}}))
        assert events[-1] == {"error": "Generation failed; see the server log", "error_type": "generation"}
        assert len(events) == 4  # prefill + 2 decode steps produced tokens, the 3rd step failed

    def test_closing_the_stream_cancels_the_request(self, make_client, slow_forward):
        client, engine = make_client()
        slow_forward(engine)  # 250 tokens take over 5 s
        response = client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 250}})
        chunks = response.response  # the WSGI iterator, read lazily
        first = next(iter(chunks))
        assert b"data:" in (first if isinstance(first, bytes) else first.encode())
        response.close()  # what the server does when the client goes away
        closed = time.monotonic()
        assert wait_until(lambda: engine.stats()["admitted"] == 0)
        assert time.monotonic() - closed < 2.0


def test_transports_validation_and_engine_do_not_import_torch():
    """The layers as docs/architecture.md draws them: only the torch and transformers backends touch torch; the
    transports, the validation they call and the engine (numpy) load without it (a Lambda cold start or
    a CLI --help pays nothing for torch, and neither will an ONNX Runtime backend)."""
    import subprocess
    import sys

    from devtools.servers import ROOT

    modules = [
        "textgen.transports.http.generate", "textgen.transports.http.openai", "textgen.transports.http.health",
        "textgen.transports.http.metrics", "textgen.transports.http.docs", "textgen.transports.http.playground",
        "textgen.transports.http.access", "textgen.transports.http.error_responses", "textgen.transports.aws_lambda",
        "textgen.transports.cli", "textgen.transports.responses", "textgen.validation", "textgen.validation.openai_forms",
        "textgen.engine.core", "textgen.engine.batch", "textgen.engine.sampling", "textgen.model.contract",
        "textgen.model.kv_cache", "textgen.model.loader", "textgen.model.threads",
    ]
    script = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print('torch' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_ready_is_200_then_503_with_the_reason_while_draining_and_serving(make_client):
    client, engine = make_client()
    assert client.get("/ready").get_json() == {"status": "ready"}
    engine.drain()
    answer = client.get("/ready")
    assert answer.status_code == 503 and answer.get_json()["error_type"] == "unavailable"
    assert "draining" in answer.get_json()["error"]
    assert client.get("/health").status_code == 200  # alive: a liveness probe must not restart it
    generated = client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3, "do_sample": False}})
    assert generated.status_code == 200  # still served while the balancers catch up


def test_ready_is_503_while_the_engine_is_not_running(make_client):
    client, engine = make_client()
    engine.stop()
    answer = client.get("/ready")
    assert answer.status_code == 503 and "not running" in answer.get_json()["error"]
