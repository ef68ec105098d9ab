"""Real HTTP: gunicorn with gunicorn.conf.py, disconnects on a real socket (TGI's clients: test_tgi_clients.py)."""

import json
import os
import socket
import threading
import time

import pytest
import requests

from devtools.servers import free_port, retire, start_module, thread_server, wait_healthy, wait_until
from textgen.server import create_app


def test_seed_curl_example(gunicorn_url):
    # curl -X POST $URL/generate -H "Content-Type: application/json" -d '{"prompt": "Once upon a time"}'
    response = requests.post(gunicorn_url + "/generate", json={"prompt": "Once upon a time"}, timeout=60)
    assert response.status_code == 200
    assert isinstance(response.json()["generated_text"], str)


def test_errors_are_json_through_gunicorn(gunicorn_url):
    bad = requests.post(gunicorn_url + "/generate", data="{oops", timeout=10)
    assert bad.status_code == 400 and bad.json()["error_type"] == "bad_request"
    missing = requests.get(gunicorn_url + "/missing", timeout=10)
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"
    big = requests.post(gunicorn_url + "/generate", data="x" * 1_100_000, timeout=10)
    assert big.status_code == 413 and big.json()["error_type"] == "payload_too_large"


def test_health_answers_during_a_long_generation(tiny_model_dir, tmp_path):
    """/health answers at once while the engine is busy: the generation is checked to be running (in the
    batch, not finished) both before and after /health answered. Each forward pass is slowed to 20 ms
    (the fault app's pause) so that 250 tokens take 5 s."""
    port = free_port()
    env = {**os.environ, "MODEL_ID": tiny_model_dir, "PORT": str(port), "THREADS": "2",
           "FAULT_SWITCH": str(tmp_path / "unused"), "FAULT_STEP_SECONDS": "0.02"}
    proc = start_module(["gunicorn", "tests.reliability.fault_app:fault_app()"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
        done = threading.Event()

        def long_request():
            requests.post(url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 250}}, timeout=120)
            done.set()

        threading.Thread(target=long_request, daemon=True).start()
        assert wait_until(lambda: running(url) == 1, timeout=10)
        started = time.monotonic()
        assert requests.get(url + "/health", timeout=5).status_code == 200
        took = time.monotonic() - started
        assert running(url) == 1 and not done.is_set()  # still generating after /health answered
        assert took < 1.0
        assert done.wait(60)
    finally:
        retire(proc)


def running(url: str) -> float:
    """Requests in the batch now, from /metrics."""
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("textgen_batch_current_size "):
            return float(line.split()[1])
    raise AssertionError("textgen_batch_current_size missing from /metrics")


def raw_post(url: str, path: str, body: dict) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode() + data
    )
    return sock


# A blocking request's hang-up (/generate, /v1/completions), the same way: tests/test_disconnect.py.
@pytest.mark.parametrize("path", ["/generate_stream"])
def test_a_client_that_hangs_up_frees_its_slot(make_engine, slow_forward, path):
    engine = make_engine()
    slow_forward(engine)  # 250 tokens now take over 5 s: only a cancellation frees the slot sooner
    app = create_app(engine.settings, engine=engine)
    with thread_server(app) as url:
        sock = raw_post(url, path, {"inputs": "Hi", "parameters": {"max_new_tokens": 250, "do_sample": False}})
        assert wait_until(lambda: engine.stats()["running"] == 1)
        time.sleep(0.3)  # tokens are flowing
        sock.close()
        closed = time.monotonic()
        assert wait_until(lambda: engine.stats()["admitted"] == 0, timeout=5)
        assert time.monotonic() - closed < 2.0
