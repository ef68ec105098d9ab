"""Overload and faults against real gunicorn servers (issue "Reliability and security, measured").

- Overload: 4x MAX_CONCURRENT_REQUESTS clients for OVERLOAD_SECONDS (60 by default): every request is a
  200 with a complete answer or an immediate 429 with Retry-After; afterwards no slot, thread-held
  request, socket or memory is left behind.
- Faults: SIGTERM with 8 generations in flight, SIGKILL of the worker, an exception inside one decode
  step, 100 clients abandoning their streams, the engine thread dying.

Faults inside the engine need a switch in a real server: `fault_app()` in tests/reliability/fault_app.py is the real app (gunicorn,
gunicorn.conf.py, create_app, create_engine) whose model's forward pass also reads a switch file, armed
by the test. Each test writes its figures to test-artifacts/reliability-<name>.json ($TEST_ARTIFACTS).
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import SimpleNamespace

import psutil
import requests

from devtools.servers import ROOT, free_port, retire, start_module, wait_healthy
from tests.reliability.fault_app import EngineCrash

OVERLOAD_SECONDS = float(os.environ.get("OVERLOAD_SECONDS", "60"))
# A refused client retries after this many seconds, far sooner than the 1 s its Retry-After asks.
# 0 = retry at once: then the 429 storm takes most of the worker's CPU (and GIL) from the engine.
OVERLOAD_BACKOFF = float(os.environ.get("OVERLOAD_BACKOFF", "0.05"))


# -- helpers ---------------------------------------------------------------------------------------------
@contextmanager
def serve(model_dir: str, app: str = "app:app", **env):
    """gunicorn from the project root, as deployed; its log is drained (a full pipe would block the
    server's logging, then the server) and kept for failure messages."""
    port = free_port()
    proc = start_module(
        ["gunicorn", app], {**os.environ, "MODEL_ID": model_dir, "PORT": str(port), "THREADS": "2", **env}
    )
    lines: collections.deque = collections.deque(maxlen=2000)
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
        yield SimpleNamespace(url=url, proc=proc, log=lambda: "".join(lines))
    finally:
        retire(proc)  # SIGTERM; the tests that check a shutdown signal and wait for it themselves


def wait_until(condition, timeout=10.0, interval=0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


def metrics(url: str) -> dict:
    """Unlabelled samples by name, and textgen_requests_total by (route, outcome)."""
    values, requests_total = {}, collections.Counter()
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("textgen_requests_total{"):
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(","))
            requests_total[(labels["route"].strip('"'), labels["outcome"].strip('"'))] += float(value)
        else:
            values[name] = float(value)
    values["requests_total"] = requests_total
    return values


def slots_in_use(url: str) -> float:
    m = metrics(url)
    return m["textgen_queue_size"] + m["textgen_batch_current_size"]


def tree_rss(pid: int) -> int:
    """RSS of the server: gunicorn's master and its worker(s)."""
    master = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [master, *master.children(recursive=True)])


def the_worker(pid: int) -> psutil.Process:
    children = psutil.Process(pid).children()
    assert len(children) == 1, children
    return children[0]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def save(name: str, figures: dict) -> None:
    path = os.environ.get("TEST_ARTIFACTS") or os.path.join(ROOT, "test-artifacts")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, f"reliability-{name}.json"), "w") as f:
        json.dump(figures, f, indent=2)
    print(name, json.dumps(figures))


def greedy(tokens: int, prompt: str = "Hello") -> dict:
    return {"inputs": prompt, "parameters": {"max_new_tokens": tokens, "do_sample": False, "details": True}}


def sse_events(response) -> list:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith(b"data:")]


def complete(details: dict, tokens: int) -> bool:
    return details["finish_reason"] == "eos_token" or (
        details["finish_reason"] == "length" and details["generated_tokens"] == tokens
    )


def call(url: str, path: str, body: dict, session=None, timeout: float = 120):
    """POST a generation; plain or stream, answer read to the end. (status, seconds, what came back)."""
    started = time.monotonic()
    stream = path == "/generate_stream"
    with (session or requests).post(url + path, json=body, stream=stream, timeout=timeout) as response:
        if response.status_code != 200:
            response.content  # read before the connection goes back to the pool
            return response.status_code, time.monotonic() - started, response
        got = sse_events(response) if stream else response.json()
        return 200, time.monotonic() - started, got


# -- overload --------------------------------------------------------------------------------------------
def test_overload_gets_200_or_fast_429_and_leaves_nothing_behind(tiny_model_dir):
    limit = 4
    with serve(tiny_model_dir, MAX_CONCURRENT_REQUESTS=str(limit)) as server:
        url, pid = server.url, server.proc.pid
        worker = the_worker(pid)
        rss_cold = tree_rss(pid)
        # Warm-up at full admission: the first batches size the runtime's allocator, the KV cache and the
        # thread pools; "before" is the server as it stands once it has served.
        with ThreadPoolExecutor(limit) as pool:
            warm = list(pool.map(lambda i: call(url, "/generate", greedy(64))[0], range(2 * limit)))
        assert warm == [200] * (2 * limit)
        time.sleep(1)
        rss_before, fds_before = tree_rss(pid), worker.num_fds()
        served_before = metrics(url)["requests_total"]

        outcomes = []  # (kind, status, seconds, complete)
        errors = []
        deadline = time.monotonic() + OVERLOAD_SECONDS

        def client(index: int) -> None:
            rng = random.Random(index)
            with requests.Session() as session:
                i = 0
                while time.monotonic() < deadline:
                    path = "/generate_stream" if (i + index) % 2 else "/generate"
                    tokens = rng.randint(32, 64)
                    i += 1
                    try:
                        status, seconds, got = call(url, path, greedy(tokens), session=session, timeout=60)
                    except requests.RequestException as exc:
                        errors.append(repr(exc))
                        continue
                    if status == 429:
                        ok = got.headers.get("Retry-After", "").isdigit() and got.json()["error_type"] == "overloaded"
                        time.sleep(OVERLOAD_BACKOFF)
                    elif status != 200:
                        ok = False
                    elif path == "/generate_stream":
                        ok = (
                            not any("error" in event for event in got)
                            and got[-1]["generated_text"] is not None
                            and complete(got[-1]["details"], tokens)
                            and len(got) == got[-1]["details"]["generated_tokens"]
                        )
                    else:
                        ok = complete(got["details"], tokens)
                    outcomes.append((path, status, seconds, ok))

        load_started = time.monotonic()
        peak_rss = 0
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4 * limit)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak_rss = max(peak_rss, tree_rss(pid))
            time.sleep(0.5)
        load_seconds = time.monotonic() - load_started

        # Nothing left behind: no slot in use, every admitted request released (`limit` at once are all
        # admitted again), sockets closed, memory back.
        assert wait_until(lambda: slots_in_use(url) == 0, timeout=5)
        with ThreadPoolExecutor(limit) as pool:
            again = list(pool.map(lambda i: call(url, "/generate", greedy(8))[0], range(limit)))
        assert again == [200] * limit
        assert wait_until(lambda: worker.num_fds() <= fds_before + 2, timeout=10), (fds_before, worker.num_fds())
        time.sleep(2)
        rss_after = tree_rss(pid)
        info = requests.get(url + "/info", timeout=5)
        health = requests.get(url + "/health", timeout=5)
        served = metrics(url)["requests_total"]

    by_status = collections.Counter(status for _, status, _, _ in outcomes)
    fast = [s for _, status, s, _ in outcomes if status == 429]
    slow = [s for _, status, s, _ in outcomes if status == 200]
    figures = {
        "max_concurrent_requests": limit,
        "clients": 4 * limit,
        "retry_after_429_seconds": OVERLOAD_BACKOFF,
        "seconds": round(load_seconds, 1),
        "requests": len(outcomes) + len(errors),
        "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "transport_errors": len(errors),
        "incomplete_or_malformed": sum(1 for *_, ok in outcomes if not ok),
        "429_seconds": {"p50": percentile(fast, 0.5), "p95": percentile(fast, 0.95), "max": max(fast, default=None)},
        "200_seconds": {"p50": percentile(slow, 0.5), "p95": percentile(slow, 0.95), "max": max(slow, default=None)},
        "rss_mb": {
            "cold": round(rss_cold / 2**20, 1),
            "before": round(rss_before / 2**20, 1),
            "peak": round(peak_rss / 2**20, 1),
            "after": round(rss_after / 2**20, 1),
        },
        "rss_change_percent": round(100 * (rss_after - rss_before) / rss_before, 2),
    }
    save("overload", figures)

    assert not errors, errors[:5]
    assert set(by_status) == {200, 429}, by_status
    assert figures["incomplete_or_malformed"] == 0, [o for o in outcomes if not o[3]][:5]
    assert figures["429_seconds"]["p95"] < 0.5, figures
    # The server counted exactly what the clients saw: nothing lost, nothing answered twice.
    for route in ("/generate", "/generate_stream"):
        success = served[(route, "success")] - served_before[(route, "success")]
        assert success == sum(1 for p, s, *_ in outcomes if p == route and s == 200) + (limit if route == "/generate" else 0)
    overloaded = sum(v for (route, outcome), v in served.items() if outcome == "overloaded")
    assert overloaded == by_status[429]
    assert abs(rss_after - rss_before) <= 0.10 * rss_before, figures
    assert health.status_code == 200 and info.status_code == 200
    assert info.json()["max_concurrent_requests"] == limit


# -- faults ----------------------------------------------------------------------------------------------
def test_sigterm_lets_eight_running_generations_finish_then_exits_0(tiny_model_dir, tmp_path):
    # The real app, its decode steps slowed to 10 ms+ (the switch is never armed): 200 tokens take
    # 2 s or more, whatever the machine's speed (2-3 s on an idle 2-core box, about 9 s on a busy one).
    tokens = 200
    env = dict(FAULT_SWITCH=str(tmp_path / "switch"), FAULT_STEP_SECONDS="0.01", MAX_CONCURRENT_REQUESTS="8")
    with serve(tiny_model_dir, app="tests.reliability.fault_app:fault_app()", **env) as server:
        url, proc = server.url, server.proc
        ended = {}

        def one(i):
            path = "/generate_stream" if i % 2 else "/generate"
            status, _, got = call(url, path, greedy(tokens))
            ended[i] = time.monotonic()
            return path, status, got

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(one, i) for i in range(8)]
            assert wait_until(lambda: metrics(url)["textgen_batch_current_size"] == 8, timeout=20)
            time.sleep(0.3)  # tokens are flowing
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        code = proc.wait(timeout=45)
        exited = time.monotonic()

    figures = {
        "in_flight": 8,
        "tokens_each": tokens,
        "finished_after_sigterm_seconds": sorted(round(t - signalled, 2) for t in ended.values()),
        "exit_code": code,
        "exit_after_sigterm_seconds": round(exited - signalled, 2),
    }
    save("sigterm", figures)
    for path, status, got in results:
        assert status == 200, (path, got.text if hasattr(got, "text") else got)
        if path == "/generate":
            assert got["details"] == {**got["details"], "finish_reason": "length", "generated_tokens": tokens}
        else:
            assert len(got) == tokens and not any("error" in e for e in got)
            assert got[-1]["generated_text"] is not None and got[-1]["details"]["finish_reason"] == "length"
    assert all(t > signalled for t in ended.values())  # all eight really were in flight
    assert code == 0, server.log()[-3000:]
    assert exited - signalled < 30  # within gunicorn's graceful_timeout, not killed at its end


def test_sigterm_drains_first_ready_503_while_everything_is_still_served(tiny_model_dir, tmp_path):
    """SIGTERM: /ready turns 503 at once while /health stays 200; for DRAIN_SECONDS the worker still
    takes new requests (a balancer may not have seen /ready yet) and answers them in full, then it
    stops accepting, lets what runs finish and exits 0."""
    tokens, drain = 120, 2.0
    env = dict(FAULT_SWITCH=str(tmp_path / "switch"), FAULT_STEP_SECONDS="0.01", DRAIN_SECONDS=str(drain))
    with serve(tiny_model_dir, app="tests.reliability.fault_app:fault_app()", **env) as server:
        url, proc = server.url, server.proc
        assert requests.get(url + "/ready", timeout=5).json() == {"status": "ready"}
        with ThreadPoolExecutor(4) as pool:
            running = [pool.submit(call, url, path, greedy(tokens)) for path in ("/generate", "/generate_stream")]
            assert wait_until(lambda: metrics(url)["textgen_batch_current_size"] == 2, timeout=20)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: requests.get(url + "/ready", timeout=5).status_code == 503, timeout=1)
            ready = requests.get(url + "/ready", timeout=5).json()
            health = requests.get(url + "/health", timeout=5).status_code
            arrived = [pool.submit(call, url, path, greedy(16)) for path in ("/generate", "/generate_stream")]
            late_sent = time.monotonic()
            results = [f.result(timeout=60) for f in running + arrived]
        code = proc.wait(timeout=45)
        exited = time.monotonic()

    save("drain", {"drain_seconds": drain, "exit_after_sigterm_seconds": round(exited - signalled, 2)})
    assert ready["error_type"] == "unavailable" and "draining" in ready["error"] and health == 200
    assert late_sent - signalled < drain  # the late ones really arrived during the drain
    for (status, _, got), asked in zip(results, (tokens, tokens, 16, 16)):
        assert status == 200
        if isinstance(got, dict):
            assert complete(got["details"], asked)
        else:
            assert got[-1]["details"]["finish_reason"] in ("length", "eos_token") and not any("error" in e for e in got)
    assert code == 0, server.log()[-3000:]
    assert drain <= exited - signalled < 30  # waited out the drain, then exited once idle


def test_killed_worker_is_replaced_and_health_returns(tiny_model_dir):
    with serve(tiny_model_dir) as server:
        url, pid = server.url, server.proc.pid
        old = the_worker(pid)
        killed = time.monotonic()
        old.send_signal(signal.SIGKILL)
        assert wait_until(
            lambda: [c.pid for c in psutil.Process(pid).children()] not in ([], [old.pid]), timeout=30
        ), server.log()[-3000:]
        respawned = time.monotonic()
        assert wait_until(lambda: requests.get(url + "/health", timeout=2).status_code == 200, timeout=60)
        healthy = time.monotonic()
        status, _, got = call(url, "/generate", greedy(16))
        new = the_worker(pid)

    figures = {
        "new_worker_after_seconds": round(respawned - killed, 2),
        "health_200_after_seconds": round(healthy - killed, 2),
    }
    save("sigkill", figures)
    assert new.pid != old.pid
    assert status == 200 and complete(got["details"], 16)


def test_a_failing_decode_step_fails_only_its_requests(tiny_model_dir, tmp_path):
    """Precisely: with MAX_BATCH_SIZE=2, A (plain) and B (stream) run while C and D wait in the queue;
    the next forward pass raises. A gets a 500 {"error", "error_type": "generation"}, B's stream ends
    with that error as its last event; C and D, admitted but not in that step, and E, sent after,
    complete with 200; the engine keeps serving."""
    switch = tmp_path / "switch"
    tokens = 200  # at 10 ms a step: over 2 s
    env = dict(FAULT_SWITCH=str(switch), FAULT_STEP_SECONDS="0.01", MAX_BATCH_SIZE="2", MAX_CONCURRENT_REQUESTS="8")
    with serve(tiny_model_dir, app="tests.reliability.fault_app:fault_app()", **env) as server:
        url = server.url
        b_events = []

        def stream_b():
            with requests.post(url + "/generate_stream", json=greedy(tokens), stream=True, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith(b"data:"):
                        b_events.append(json.loads(line[5:]))
                return r.status_code

        def gauges():
            m = metrics(url)
            return m["textgen_batch_current_size"], m["textgen_queue_size"]

        with ThreadPoolExecutor(4) as pool:
            a = pool.submit(call, url, "/generate", greedy(tokens))
            assert wait_until(lambda: gauges() == (1, 0))
            b = pool.submit(stream_b)
            assert wait_until(lambda: gauges() == (2, 0) and len(b_events) >= 3)
            c = pool.submit(call, url, "/generate", greedy(tokens))
            d = pool.submit(call, url, "/generate_stream", greedy(tokens))
            assert wait_until(lambda: gauges() == (2, 2))
            switch.write_text("raise")
            a_status, _, a_response = a.result(timeout=60)
            b_status = b.result(timeout=60)
            c_status, _, c_body = c.result(timeout=60)
            d_status, _, d_events = d.result(timeout=60)
        assert not switch.exists()  # it fired
        e_status, _, e_body = call(url, "/generate", greedy(16))
        health = requests.get(url + "/health", timeout=5).status_code
        assert wait_until(lambda: slots_in_use(url) == 0, timeout=5)
        log = server.log()

    assert a_status == 500 and a_response.json() == {
        "error": "Generation failed; see the server log",
        "error_type": "generation",
    }
    assert b_status == 200 and b_events[-1] == {
        "error": "Generation failed; see the server log",
        "error_type": "generation",
    }
    assert 3 <= len(b_events) - 1 < tokens
    assert c_status == 200 and c_body["details"]["generated_tokens"] == tokens
    assert d_status == 200 and len(d_events) == tokens and not any("error" in e for e in d_events)
    assert e_status == 200 and complete(e_body["details"], 16)
    assert health == 200
    assert "forward pass failed; failing the requests it carried" in log
    save("decode-fault", {"failed": ["A (plain): 500", "B (stream): error event"], "then_200": ["C", "D", "E"]})


def test_abandoned_streams_free_their_slots(tiny_model_dir):
    clients = 100
    with serve(tiny_model_dir, MAX_CONCURRENT_REQUESTS=str(clients)) as server:
        url = server.url
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(greedy(200)).encode()
        read_events = []

        def abandon(_):
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(
                    f"POST /generate_stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
                seen = b""
                while seen.count(b"data:") < 2:  # a couple of events, then hang up mid-stream
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    seen += chunk
                read_events.append(seen.count(b"data:"))
                return seen.split(b"\r\n", 1)[0]

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            status_lines = list(pool.map(abandon, range(clients)))
        all_closed = time.monotonic()
        assert wait_until(lambda: slots_in_use(url) == 0, timeout=5), metrics(url)
        freed = time.monotonic()
        plain = call(url, "/generate", greedy(32))
        stream = call(url, "/generate_stream", greedy(32))
        health = requests.get(url + "/health", timeout=5).status_code

    figures = {
        "clients": clients,
        "all_abandoned_after_seconds": round(all_closed - started, 2),
        "slots_free_after_last_close_seconds": round(freed - all_closed, 2),
    }
    save("abandoned-streams", figures)
    assert status_lines == [b"HTTP/1.1 200 OK"] * clients
    assert min(read_events) >= 2
    assert plain[0] == 200 and complete(plain[2]["details"], 32)
    assert stream[0] == 200 and len(stream[2]) == 32 and stream[2][-1]["generated_text"] is not None
    assert health == 200


def test_engine_death_turns_health_503_in_process(make_engine, monkeypatch):
    """In-process (an engine of its own, no process to end): the engine loop dies, /health says 503, the
    request it was running gets a 503, and new ones are refused with 503."""
    from textgen.server import create_app

    engine = make_engine()
    client = create_app(engine.settings, engine=engine).test_client()
    assert client.get("/health").status_code == 200

    def crash(*args, **kwargs):
        raise EngineCrash("injected")

    monkeypatch.setattr(engine.model, "forward", crash)
    running = client.post("/generate", json=greedy(8))
    assert running.status_code == 503 and running.json["error_type"] == "unavailable"
    health = client.get("/health")
    assert health.status_code == 503 and health.json == {
        "error": "The model engine is not running",
        "error_type": "unavailable",
    }
    assert client.post("/generate", json=greedy(8)).status_code == 503


def test_engine_death_ends_the_worker_and_gunicorn_replaces_it(tiny_model_dir, tmp_path):
    switch = tmp_path / "switch"
    env = dict(FAULT_SWITCH=str(switch), FAULT_STEP_SECONDS="0.01")
    with serve(tiny_model_dir, app="tests.reliability.fault_app:fault_app()", **env) as server:
        url, pid = server.url, server.proc.pid
        old = the_worker(pid)
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(call, url, "/generate", greedy(200))
            assert wait_until(lambda: metrics(url)["textgen_batch_current_size"] == 1)
            crashed = time.monotonic()
            switch.write_text("crash")
            status, _, response = running.result(timeout=60)
        assert wait_until(
            lambda: [c.pid for c in psutil.Process(pid).children()] not in ([], [old.pid]), timeout=30
        ), server.log()[-3000:]
        replaced = time.monotonic()
        assert wait_until(lambda: requests.get(url + "/health", timeout=2).status_code == 200, timeout=60)
        healthy = time.monotonic()
        after = call(url, "/generate", greedy(16))
        log = server.log()

    save(
        "engine-death",
        {"new_worker_after_seconds": round(replaced - crashed, 2), "health_200_after_seconds": round(healthy - crashed, 2)},
    )
    assert status == 503 and response.json()["error_type"] == "unavailable"
    assert "engine loop crashed" in log
    assert after[0] == 200 and complete(after[2]["details"], 16)
