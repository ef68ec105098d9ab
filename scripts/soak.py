"""Soak test: mixed traffic against a running server for a while, watching its memory.

    python scripts/soak.py --url http://127.0.0.1:5000 --pid <gunicorn master pid> --duration 600
    python scripts/soak.py --model-dir /tmp/tiny-gpt2 --duration 600      # starts its own gunicorn

`--clients` threads send, back to back, a mix of: plain generations (/generate, POST /, /v1/completions),
streams read to the end (/generate_stream, POST / with stream, /v1/completions with stream), streams the
client abandons after a couple of events, and invalid requests (expected 400/422); every `--burst-every`
seconds a burst of MAX_CONCURRENT_REQUESTS + 8 requests at once provokes 429s. The server's RSS (its
process and children: gunicorn's master and worker) is sampled every second when its pid is known.

Prints a JSON summary: requests by kind and status, 5xx, transport errors, statuses a kind should never
get, broken streams, RSS after warm-up and at the end and its growth, worker restarts, slots still in use
after the traffic. Exits 1 on any 5xx, transport error, unexpected status, broken stream, slot left in
use, worker restart, RSS growth above --max-growth percent, or (own server) an unclean exit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Statuses each kind of request may get; anything else is counted as unexpected.
EXPECTED = {
    "plain": {200, 429},
    "stream": {200, 429},
    "cancelled": {200, 429},
    "burst": {200, 429},
    "invalid": {400, 422},
}

PROMPTS = ["Hello", "Once upon a time", "The future of AI is", "Tecnologia e finanças", "Numbers 1 2 3"]

INVALID = [  # (path, raw body) -> 400 or 422
    ("/generate", b'{"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}'),
    ("/generate", b'{"inputs": "Hi", "parameters": {"temperature": -1}}'),
    ("/generate", b'{"inputs": "Hi", "parameters": {"top_p": 2}}'),
    ("/generate", b'{"inputs": "Hi", "unknown_field": 1}'),
    ("/generate", b'{"inputs": "Hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}'),
    ("/generate_stream", b'{"parameters": {"max_new_tokens": 5}}'),
    ("/generate", b"{not json"),
    ("/v1/completions", b'{"prompt": "Hi", "max_tokens": -3}'),
]


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_kind: dict = collections.defaultdict(collections.Counter)
        self.transport_errors: collections.Counter = collections.Counter()
        self.broken_streams = 0
        self.examples: list = []  # a few unexpected answers, for the report

    def add(self, kind: str, status, note: str = "") -> None:
        with self.lock:
            self.by_kind[kind][status] += 1
            if status not in EXPECTED[kind] and len(self.examples) < 10:
                self.examples.append({"kind": kind, "status": status, "note": note[:300]})

    def error(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.transport_errors[f"{kind}: {type(exc).__name__}"] += 1
            if len(self.examples) < 10:
                self.examples.append({"kind": kind, "error": repr(exc)[:300]})


def tree_rss(pid: int):
    """(RSS in bytes of the process and its children, their pids), or (None, []) once it is gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs), [p.pid for p in procs[1:]]
    except psutil.Error:
        return None, []


def generation_body(rng: random.Random, tokens: int) -> dict:
    parameters = {"max_new_tokens": tokens, "details": rng.random() < 0.5}
    if rng.random() < 0.3:
        parameters["do_sample"] = False
    else:
        parameters.update(seed=rng.randrange(1000), temperature=rng.choice([0.7, 1.0, 1.3]), top_k=40)
    if rng.random() < 0.2:
        parameters["stop"] = ["\n", "."]
    return {"inputs": rng.choice(PROMPTS), "parameters": parameters}


def read_stream(response) -> bool:
    """Read an SSE answer to its end; True if it ended as a complete answer (no error event)."""
    last = None
    for line in response.iter_lines():
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return last is not None and "error" not in last
            last = json.loads(payload)
            if "error" in last:
                return False
    return last is not None and last.get("generated_text") is not None


def plain(session, url: str, rng: random.Random, tally: Tally) -> int:
    tokens = rng.randint(4, 48)
    route = rng.choice(["/generate", "/", "/v1/completions"])
    if route == "/v1/completions":
        body = {"prompt": rng.choice(PROMPTS), "max_tokens": tokens, "seed": rng.randrange(1000)}
    else:
        body = generation_body(rng, tokens)
    r = session.post(url + route, json=body, timeout=120)
    if r.status_code == 200:
        answer = r.json()
        if route == "/":  # TGI's compat route answers a list of one
            answer = answer[0] if isinstance(answer, list) and len(answer) == 1 else {}
        ok = isinstance(answer.get("generated_text"), str) or isinstance(answer.get("choices"), list)
        if not ok:
            tally.add("plain", "malformed", r.text)
            return r.status_code
    tally.add("plain", r.status_code, r.text)
    return r.status_code


def stream(session, url: str, rng: random.Random, tally: Tally) -> int:
    tokens = rng.randint(4, 48)
    route = rng.choice(["/generate_stream", "/", "/v1/completions"])
    if route == "/v1/completions":
        body = {"prompt": rng.choice(PROMPTS), "max_tokens": tokens, "stream": True}
    else:
        body = generation_body(rng, tokens)
        if route == "/":
            body["stream"] = True
    with session.post(url + route, json=body, stream=True, timeout=120) as r:
        if r.status_code == 200 and not read_stream(r):
            with tally.lock:
                tally.broken_streams += 1
        tally.add("stream", r.status_code, "" if r.status_code == 200 else r.text)
        return r.status_code


def cancelled(url: str, rng: random.Random, tally: Tally) -> int:
    """A stream the client hangs up on after 1-3 events (its own connection, closed mid-stream)."""
    host, port = url.split("://", 1)[1].split(":")
    body = json.dumps(generation_body(rng, rng.randint(100, 200))).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST /generate_stream HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        wanted, seen = rng.randint(1, 3), b""
        while b"\r\n\r\n" not in seen or (seen.startswith(b"HTTP/1.1 200") and seen.count(b"data:") < wanted):
            chunk = sock.recv(4096)
            if not chunk:
                break
            seen += chunk
    try:
        status = int(seen.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = "no_answer"
    tally.add("cancelled", status, seen[:300].decode("utf-8", "replace"))
    return status


def invalid(session, url: str, rng: random.Random, tally: Tally) -> int:
    path, raw = rng.choice(INVALID)
    r = session.post(url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    tally.add("invalid", r.status_code, r.text)
    return r.status_code


def client(index: int, url: str, stop: threading.Event, seed: int, tally: Tally) -> None:
    rng = random.Random(seed * 1000 + index)
    kinds = ["plain", "stream", "cancelled", "invalid"]
    weights = [0.35, 0.30, 0.15, 0.20]
    with requests.Session() as session:
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            try:
                if kind == "plain":
                    status = plain(session, url, rng, tally)
                elif kind == "stream":
                    status = stream(session, url, rng, tally)
                elif kind == "cancelled":
                    status = cancelled(url, rng, tally)
                else:
                    status = invalid(session, url, rng, tally)
            except (requests.RequestException, OSError, ValueError) as exc:
                tally.error(kind, exc)
                time.sleep(0.5)
                continue
            if status == 429:
                time.sleep(0.1)


def bursts(url: str, size: int, every: float, stop: threading.Event, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)

    def one(_):
        try:
            r = requests.post(url + "/generate", json=generation_body(rng, 16), timeout=120)
            tally.add("burst", r.status_code, r.text)
        except requests.RequestException as exc:
            tally.error("burst", exc)

    with ThreadPoolExecutor(size) as pool:
        while not stop.wait(every):
            list(pool.map(one, range(size)))


def slots_in_use(url: str) -> float:
    values = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(("textgen_queue_size ", "textgen_batch_current_size ")):
            name, value = line.split()
            values[name] = float(value)
    return sum(values.values())


def start_server(model_dir: str, max_concurrent: int, log_path: str):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MODEL_ID": model_dir, "PORT": str(port), "MAX_CONCURRENT_REQUESTS": str(max_concurrent)}
    log = open(log_path, "w")  # a file, never a pipe nobody reads: a full pipe would block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "app:app"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}; log: {log_path}")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server not healthy after 120 s; log: {log_path}")


def median_between(samples, start: float, end: float):
    values = [rss for t, rss in samples if start <= t <= end]
    return statistics.median(values) if values else None


def slope_mb_per_minute(samples):
    """Least-squares slope of RSS over time (MB per minute)."""
    if len(samples) < 3:
        return None
    ts = [t for t, _ in samples]
    ys = [rss / 2**20 for _, rss in samples]
    mean_t, mean_y = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mean_t) ** 2 for t in ts)
    return 60 * sum((t - mean_t) * (y - mean_y) for t, y in zip(ts, ys)) / var if var else None


def soak(args) -> dict:
    proc = None
    url, pid = args.url, args.pid
    if url is None:
        log_path = args.server_log
        if log_path is None:
            with tempfile.NamedTemporaryFile(prefix="soak-server-", suffix=".log", delete=False) as f:
                log_path = f.name
        proc, url = start_server(args.model_dir, args.max_concurrent, log_path)
        pid = proc.pid
    url = url.rstrip("/")
    info = requests.get(url + "/info", timeout=10).json()
    burst_size = info["max_concurrent_requests"] + 8
    warmup = args.warmup if args.warmup is not None else min(15.0, args.duration / 4)
    window = min(5.0, max(1.0, (args.duration - warmup) / 4))  # RSS is a median over this many seconds

    tally, stop, samples, pids = Tally(), threading.Event(), [], set()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            rss, children = tree_rss(pid)
            if rss is not None:
                samples.append((time.monotonic() - started, rss))
                pids.update(children)

    threads = [threading.Thread(target=client, args=(i, url, stop, args.seed, tally)) for i in range(args.clients)]
    threads.append(threading.Thread(target=bursts, args=(url, burst_size, args.burst_every, stop, args.seed, tally)))
    if pid is not None:
        threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    time.sleep(args.duration)
    stop.set()
    for t in threads:
        t.join()
    traffic_seconds = time.monotonic() - started

    # Every abandoned stream and refused request must have given its slot back.
    deadline, in_use = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        in_use = slots_in_use(url)
        if in_use == 0:
            break
        time.sleep(0.2)
    time.sleep(2)
    idle_rss = tree_rss(pid)[0] if pid is not None else None
    server_exit = None
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            server_exit = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            server_exit = "killed after 60 s"

    by_status = collections.Counter()
    for counts in tally.by_kind.values():
        by_status.update(counts)
    fivexx = sum(n for status, n in by_status.items() if isinstance(status, int) and status >= 500)
    unexpected = sum(n for kind, counts in tally.by_kind.items() for s, n in counts.items() if s not in EXPECTED[kind])
    mb = lambda v: None if v is None else round(v / 2**20, 1)  # noqa: E731
    after_warmup = median_between(samples, warmup, warmup + window)
    end = median_between(samples, args.duration - window, args.duration)
    growth = round(100 * (end - after_warmup) / after_warmup, 2) if after_warmup and end else None
    summary = {
        "url": url,
        "duration_seconds": round(traffic_seconds, 1),
        "clients": args.clients,
        "burst_size": burst_size,
        "warmup_seconds": warmup,
        "requests": sum(by_status.values()) + sum(tally.transport_errors.values()),
        "by_kind": {k: {str(s): n for s, n in sorted(c.items(), key=str)} for k, c in sorted(tally.by_kind.items())},
        "by_status": {str(s): n for s, n in sorted(by_status.items(), key=str)},
        "5xx": fivexx,
        "transport_errors": dict(tally.transport_errors),
        "unexpected": unexpected,
        "broken_streams": tally.broken_streams,
        "slots_in_use_after": in_use,
        "rss_mb": {
            "after_warmup": mb(after_warmup),
            "end": mb(end),
            "idle_after": mb(idle_rss),
            "peak": mb(max((r for _, r in samples), default=None)),
            "samples": len(samples),
        },
        "rss_growth_percent": growth,
        "rss_slope_mb_per_minute_after_warmup": (
            None if not samples else round(slope_mb_per_minute([s for s in samples if s[0] >= warmup]) or 0, 3)
        ),
        "worker_pids": sorted(pids),
        "server_exit_code": server_exit,
        "examples": tally.examples,
    }
    failures = []
    if fivexx:
        failures.append(f"{fivexx} answers were 5xx")
    if tally.transport_errors:
        failures.append(f"transport errors: {dict(tally.transport_errors)}")
    if unexpected:
        failures.append(f"{unexpected} unexpected statuses")
    if tally.broken_streams:
        failures.append(f"{tally.broken_streams} streams ended without a complete answer")
    if in_use != 0:
        failures.append(f"{in_use} slots still in use after the traffic")
    if pid is not None and len(pids) > 1:
        failures.append(f"the worker was replaced (pids {sorted(pids)})")
    if growth is None and pid is not None:
        failures.append("not enough RSS samples after warm-up")
    elif growth is not None and growth > args.max_growth:
        failures.append(f"RSS grew {growth}% after warm-up (limit {args.max_growth}%)")
    if proc is not None and server_exit != 0:
        failures.append(f"server exit code {server_exit}")
    summary["failures"] = failures
    summary["ok"] = not failures
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server")
    target.add_argument("--model-dir", help="start `gunicorn app:app` on this model (MODEL_ID) and stop it after")
    parser.add_argument("--pid", type=int, help="with --url: the server's pid (gunicorn's master), to sample RSS")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS reference (default min(15, duration/4))")
    parser.add_argument("--burst-every", type=float, default=5.0, help="seconds between 429 bursts (default 5)")
    parser.add_argument("--max-growth", type=float, default=5.0, help="RSS growth allowed after warm-up, percent")
    parser.add_argument("--max-concurrent", type=int, default=8, help="own server's MAX_CONCURRENT_REQUESTS")
    parser.add_argument("--server-log", help="own server's log file (default: a new file in the temp directory)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="also write the summary here")
    args = parser.parse_args(argv)

    summary = soak(args)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
