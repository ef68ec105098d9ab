"""API keys, CORS, TGI's per-response headers and request ids in the log."""

from __future__ import annotations

import logging
import threading

import pytest
import requests

from devtools.servers import gunicorn_server, wait_until
from textgen.server import create_app

GUARDED = [
    ("post", "/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("post", "/generate_stream", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("post", "/", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}),
    ("post", "/tokenize", {"inputs": "Hi"}),
    ("post", "/detokenize", {"tokens": [1, 2]}),
    ("post", "/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
    ("get", "/v1/models", None),
]
OPEN = ["/health", "/info", "/metrics", "/openapi.json", "/docs", "/"]


@pytest.fixture
def keyed(engine, base_settings):
    return create_app(base_settings.replace(api_key="alpha, beta"), engine=engine).test_client()


@pytest.mark.parametrize("method, path, body", GUARDED)
def test_generation_routes_need_a_key(keyed, method, path, body):
    missing = getattr(keyed, method)(path, json=body)
    wrong = getattr(keyed, method)(path, json=body, headers={"Authorization": "Bearer gamma"})
    not_bearer = getattr(keyed, method)(path, json=body, headers={"Authorization": "Basic alpha"})
    for response in (missing, wrong, not_bearer):
        assert response.status_code == 401
        error = response.json["error"]
        if path.startswith("/v1/"):
            assert error["type"] == "authentication_error"
        else:
            assert response.json["error_type"] == "unauthorized"
    for key in ("alpha", "beta"):  # several keys: each one works (rotation without downtime)
        ok = getattr(keyed, method)(path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200, ok.data


@pytest.mark.parametrize("path", OPEN)
def test_monitoring_docs_and_playground_stay_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_without_api_key_everything_is_open(client):
    assert client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}}).status_code == 200


def test_cors_is_off_by_default(client):
    response = client.get("/info", headers={"Origin": "https://example.org"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_only_listed_origins(engine, base_settings):
    app = create_app(base_settings.replace(cors_allow_origins="https://app.example.org", api_key="k"), engine=engine)
    client = app.test_client()
    allowed = client.post(
        "/generate",
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}},
        headers={"Origin": "https://app.example.org", "Authorization": "Bearer k"},
    )
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.org"
    assert "x-compute-time" in allowed.headers["Access-Control-Expose-Headers"]
    other = client.get("/info", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    # The browser's preflight carries no key: it must not be refused for that.
    preflight = client.options(
        "/generate",
        headers={
            "Origin": "https://app.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()


def test_tgi_timing_headers(client):
    response = client.post("/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 5, "details": True, "do_sample": False}})
    headers, details = response.headers, response.json["details"]
    assert headers["x-generated-tokens"] == "5" == str(details["generated_tokens"])
    assert headers["x-prompt-tokens"] == str(details["prompt_tokens"])
    compute = float(headers["x-compute-time"])
    assert 0 < compute < 60
    assert int(headers["x-queue-time"]) >= 0
    # Time per token in ms: compute time over the tokens generated.
    assert abs(int(headers["x-time-per-token"]) - compute * 1000 / 5) <= 1
    assert headers["X-Request-Id"]


def test_request_id_is_in_every_log_line_of_the_request(engine, base_settings, caplog):
    app = create_app(base_settings, engine=engine)

    @app.get("/log-twice")
    def log_twice():
        logging.getLogger("textgen.test").warning("first")
        logging.getLogger("textgen.test").warning("second")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="textgen.test"):
        app.test_client().get("/log-twice", headers={"X-Request-Id": "req-123"})
    records = [r for r in caplog.records if r.name == "textgen.test"]
    assert [r.request_id for r in records] == ["req-123", "req-123"]


def test_gunicorn_access_log_carries_the_request_id(tiny_model_dir):
    # The log is read as it comes, not to the end: the server's shutdown (a 5 s drain) is not the subject.
    with gunicorn_server(tiny_model_dir, wait_for_exit=False) as (url, proc):
        lines = []
        threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True).start()
        requests.get(url + "/health", headers={"X-Request-Id": "trace-me-42"})

        def logged():
            output = "".join(lines)
            return '"GET /health HTTP/1.1" 200' in output and "rid=trace-me-42" in output

        assert wait_until(logged, timeout=30), "".join(lines)[-3000:]
