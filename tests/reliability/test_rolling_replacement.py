"""Rolling replacement behind haproxy, for real (issue 18, item 4).

Three replicas of the real service (`gunicorn app:app`, the tiny model, each on its own loopback port)
behind haproxy running deploy/haproxy/haproxy.cfg itself (its addresses are environment variables;
nothing is copied). Eight clients, half blocking (/generate), half streaming (/generate_stream), send
without pause while every replica is replaced in turn as Kubernetes does with maxSurge 1 and
maxUnavailable 0 (start the new one, wait until the balancer sees it ready, then preStop, SIGTERM,
wait for the exit within the grace period), and then while a fourth replica is added. Nothing may be
lost: every answer is a 200 and complete, every stream ends with its final event. Figures go to
test-artifacts/reliability-rolling-replacement.json ($TEST_ARTIFACTS).
"""

from __future__ import annotations

import collections
import csv
import io
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from devtools.servers import ROOT, free_port, haproxy_path, start_module
from tests.reliability.test_overload_faults import call, complete, greedy, metrics, percentile, save, wait_until
from textgen.settings import Settings

CONFIG = os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")
BACKEND = "textgen"

CLIENTS = 8  # half blocking, half streaming; over 3 replicas of MAX_BATCH_SIZE 2, a queue forms
MAX_BATCH_SIZE = 2
DRAIN_SECONDS = 3.0  # the service's default is 5; the config's checks must see /ready 503 well within 3
GRACEFUL_TIMEOUT = 30  # gunicorn kills the worker this long after SIGTERM
PRESTOP_SECONDS = 1.0  # Kubernetes runs the preStop hook, then sends SIGTERM
GRACE_SECONDS = PRESTOP_SECONDS + GRACEFUL_TIMEOUT + 5  # terminationGracePeriodSeconds: from preStop on
TOKENS = (16, 48)  # greedy generations of this many tokens (random in the range)


def config_directive(name: str) -> list[str]:
    """The arguments of each line of deploy/haproxy/haproxy.cfg that starts with `name` (comments aside)."""
    found = []
    with open(CONFIG) as f:
        for line in f:
            words = line.split("#", 1)[0].split()
            if words[: len(name.split())] == name.split():
                found.append(" ".join(words[len(name.split()) :]))
    return found


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h|d)?", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def server_arguments() -> dict:
    """The config's `default-server` settings that take a value (`check` takes none)."""
    words = config_directive("default-server")[0].split()
    return {k: v for k, v in zip(words, words[1:] + [""]) if k in ("inter", "fastinter", "fall", "rise", "maxconn")}


# -- the config against the service's own settings (no haproxy needed) -----------------------------------
def test_haproxy_config_sizes_match_the_service():
    defaults = Settings()
    check = server_arguments()
    # maxconn per replica = what a replica admits: no 429 through the balancer, the queue in the replicas.
    assert int(check["maxconn"]) == defaults.max_concurrent_requests
    # A draining replica is DOWN (`fall` failed checks: the next one within `inter`, then `fastinter`
    # apart) before its drain ends: with the default drain even if a check takes all of `timeout check`,
    # and within this test's shorter drain (where the measured time is asserted too).
    detect = seconds(check["inter"]) + (int(check["fall"]) - 1) * seconds(check["fastinter"])
    assert detect + seconds(config_directive("timeout check")[0]) < defaults.drain_seconds
    assert detect < DRAIN_SECONDS
    assert config_directive("option httpchk") == ["GET /ready"]
    # A blocking answer comes after its wait in the queue and its last token.
    assert seconds(config_directive("timeout server")[0]) > defaults.queue_timeout
    assert config_directive("timeout client") == config_directive("timeout server")
    # Retries only where nothing was answered; never on a timeout or a status.
    assert set(config_directive("retry-on")[0].split()) <= {"conn-failure", "empty-response"}
    assert config_directive("balance") == ["leastconn"]


@pytest.mark.haproxy
def test_haproxy_accepts_the_config(tmp_path):
    checked = subprocess.run(
        [haproxy_path(), "-c", "-f", CONFIG], capture_output=True, text=True, cwd=tmp_path, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- helpers ---------------------------------------------------------------------------------------------
class Replica:
    """`gunicorn app:app` on a port of its own; its log drained (a full pipe would block it) and kept."""

    def __init__(self, name: str, model_dir: str, app: str = "app:app", **env):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "MODEL_ID": model_dir,
            "PORT": str(self.port),
            "THREADS": "1",
            "MAX_BATCH_SIZE": str(MAX_BATCH_SIZE),
            "DRAIN_SECONDS": str(DRAIN_SECONDS),
            "GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT),
            **env,
        }
        self.proc = start_module(["gunicorn", app], env)
        self.lines: collections.deque = collections.deque(maxlen=500)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Haproxy:
    """haproxy running deploy/haproxy/haproxy.cfg in the foreground, its addresses from the environment."""

    def __init__(self, replicas: list, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = str(tmp_path / "haproxy.sock")
        self.log_path = tmp_path / "haproxy.log"
        env = {
            **os.environ,
            "TEXTGEN_BIND": f"127.0.0.1:{self.port}",
            "HAPROXY_STATS_SOCKET": self.socket,
            "HAPROXY_STATS_BIND": f"127.0.0.1:{free_port()}",
            **{f"TEXTGEN_REPLICA{i}": f"127.0.0.1:{r.port}" for i, r in enumerate(replicas, 1)},
        }
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [haproxy_path(), "-W", "-db", "-f", CONFIG], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
            )
        assert wait_until(self.answers, timeout=10), self.log()

    def answers(self) -> bool:
        try:
            return "Name: HAProxy" in self.cli("show info")
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text()[-4000:]

    def cli(self, command: str) -> str:
        """One runtime-API command line (several commands separated by `;`)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.socket)
            sock.sendall(command.encode() + b"\n")
            out = b""
            while chunk := sock.recv(65536):
                out += chunk
        return out.decode().strip()

    def stats(self) -> dict:
        """`show stat` of the backend's servers, by name."""
        rows = csv.DictReader(io.StringIO(self.cli("show stat").lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == BACKEND}

    def status(self, server: str) -> str:
        return self.stats().get(server, {}).get("status", "absent")

    def add(self, replica: Replica) -> None:
        """As the config's comment says: added in maintenance, then out of it as DOWN (not UP before its
        first check), so it takes traffic only after `rise` good checks of /ready."""
        name = f"{BACKEND}/{replica.name}"
        # `add server` reuses nothing from default-server: its arguments, as they stand in the config.
        answer = self.cli(f"add server {name} 127.0.0.1:{replica.port} {config_directive('default-server')[0]}")
        assert "New server registered" in answer, answer
        self.cli(f"enable health {name}; enable server {name}; set server {name} health down")

    def remove(self, server: str) -> bool:
        """Out of the backend once its replica has exited (haproxy refuses while it holds connections)."""
        self.cli(f"disable server {BACKEND}/{server}")
        return wait_until(lambda: "Server deleted" in self.cli(f"del server {BACKEND}/{server}"), timeout=10, interval=0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Load:
    """CLIENTS threads sending without pause through the balancer, each answer checked in full."""

    def __init__(self, url: str):
        self.url, self.stop = url, threading.Event()
        self.outcomes = []  # (path, seconds, problem or None, finished at)
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def client(self, index: int) -> None:
        rng = random.Random(index)
        path = "/generate_stream" if index % 2 else "/generate"
        with requests.Session() as session:
            while not self.stop.is_set():
                tokens = rng.randint(*TOKENS)
                try:
                    status, spent, got = call(self.url, path, greedy(tokens), session=session, timeout=60)
                    problem = check_answer(path, status, got, tokens)
                except requests.RequestException as exc:
                    spent, problem = None, repr(exc)
                self.outcomes.append((path, spent, problem, time.monotonic()))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)
        assert not any(t.is_alive() for t in self.threads)


def check_answer(path: str, status: int, got, tokens: int):
    """None when the answer is complete, else what is wrong with it."""
    if status != 200:
        return f"{status}: {got.text[:200]}"
    if path == "/generate":
        return None if complete(got["details"], tokens) else f"incomplete: {got['details']}"
    if not got:
        return "empty stream"
    errors = [e for e in got if "error" in e]
    if errors:
        return f"error event: {errors[0]}"
    last = got[-1]
    if last.get("generated_text") is None or not complete(last["details"], tokens):
        return f"stream without its final event: {last}"
    if len(got) != last["details"]["generated_tokens"]:
        return f"{len(got)} events for {last['details']['generated_tokens']} tokens"
    return None


class QueueWatch:
    """Samples every live replica's queue gauge (directly, not through the balancer)."""

    def __init__(self):
        self.replicas, self.peak, self.stop = [], collections.Counter(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for replica in list(self.replicas):
                try:
                    queued = metrics(replica.url)["textgen_queue_size"]
                except (requests.RequestException, KeyError):
                    continue
                self.peak[replica.name] = max(self.peak[replica.name], queued)
            time.sleep(0.2)


# -- the tests -------------------------------------------------------------------------------------------
@pytest.mark.haproxy
def test_a_stream_passes_the_balancer_event_by_event(tiny_model_dir, tmp_path):
    """Each token's event reaches the client when the replica sends it, not held back with the next ones
    (without `option http-no-delay` a 40-token stream arrived in one piece at its end)."""
    tokens = 40
    # The real app with every decode step slowed to 10 ms or more (its switch is never armed).
    fault = dict(FAULT_SWITCH=str(tmp_path / "switch"), FAULT_STEP_SECONDS="0.01")
    replica = Replica("replica1", tiny_model_dir, app="tests.reliability.fault_app:fault_app()", **fault)
    balancer = Haproxy([replica] * 3, tmp_path)  # the config's three servers, all this replica
    try:
        assert wait_until(lambda: balancer.status("replica1") == "UP", timeout=60), balancer.log()
        started, arrivals = time.monotonic(), []
        with requests.post(balancer.url + "/generate_stream", json=greedy(tokens), stream=True, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith(b"data:"):
                    arrivals.append(time.monotonic() - started)
    finally:
        replica.stop()
        balancer.stop()
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    apart = sum(1 for gap in gaps if gap >= 0.003)  # decode steps are >= 10 ms apart
    save(
        "haproxy-stream",
        {
            "events": len(arrivals),
            "arrived_apart": apart,
            "first_event_seconds": round(arrivals[0], 3),
            "last_event_seconds": round(arrivals[-1], 3),
        },
    )
    assert len(arrivals) == tokens
    assert apart >= len(gaps) // 2, [round(g, 4) for g in gaps]


@pytest.mark.haproxy
def test_rolling_replacement_and_scale_out_under_load_lose_nothing(tiny_model_dir, tmp_path):
    started = time.monotonic()
    replicas = [Replica(f"replica{i}", tiny_model_dir) for i in (1, 2, 3)]
    everyone = list(replicas)
    balancer = Haproxy(replicas, tmp_path)
    watch = QueueWatch()
    load = None
    served = {}  # replica -> haproxy's count of 2xx answers from it, read before it leaves the backend
    rolls = []

    def failure(note=""):
        return f"{note}\nhaproxy:\n{balancer.log()}\n" + "\n".join(f"{r.name}:\n{r.log()[-1500:]}" for r in everyone)

    def wait_up(replica, timeout=60.0):
        assert wait_until(lambda: balancer.status(replica.name) == "UP", timeout=timeout, interval=0.1), failure(
            f"{replica.name} not UP in haproxy"
        )

    try:
        for replica in replicas:
            wait_up(replica)
        watch.replicas = list(replicas)
        watch.thread.start()
        load = Load(balancer.url).start()
        time.sleep(3)

        # Rolling replacement, maxSurge 1 / maxUnavailable 0: one new replica ready, then one old one out.
        for number, old in enumerate(list(replicas), start=4):
            new = Replica(f"replica{number}", tiny_model_dir)
            everyone.append(new)
            balancer.add(new)
            created = time.monotonic()
            wait_up(new)
            ready = time.monotonic()
            replicas.append(new)
            watch.replicas = list(replicas)

            time.sleep(PRESTOP_SECONDS)  # preStop
            at_sigterm = balancer.stats()[old.name]
            signalled = time.monotonic()
            old.proc.send_signal(signal.SIGTERM)
            down = None
            while old.proc.poll() is None and time.monotonic() - signalled < GRACE_SECONDS - PRESTOP_SECONDS:
                if down is None and balancer.status(old.name).startswith("DOWN"):
                    down = time.monotonic() - signalled
                time.sleep(0.05)
            code = old.proc.poll()
            exited = time.monotonic() - signalled
            assert code == 0, failure(f"{old.name} did not exit 0 within the grace period: {code}")
            served[old.name] = int(balancer.stats()[old.name]["hrsp_2xx"])
            replicas.remove(old)
            watch.replicas = list(replicas)
            assert balancer.remove(old.name), failure(f"{old.name} not deleted")
            rolls.append(
                {
                    "old": old.name,
                    "new": new.name,
                    "new_ready_in_haproxy_seconds": round(ready - created, 2),
                    "old_in_flight_at_sigterm": int(at_sigterm["scur"]),
                    "old_answered_after_sigterm": served[old.name] - int(at_sigterm["hrsp_2xx"]),
                    "old_down_in_haproxy_after_sigterm_seconds": None if down is None else round(down, 2),
                    "old_exit_after_sigterm_seconds": round(exited, 2),
                }
            )

        # Scale out under load: a fourth replica.
        fourth = Replica("replica7", tiny_model_dir)
        everyone.append(fourth)
        balancer.add(fourth)
        created = time.monotonic()
        wait_up(fourth)
        scale_out_ready = time.monotonic() - created
        replicas.append(fourth)
        watch.replicas = list(replicas)
        time.sleep(5)

        load.finish()
        load_seconds = time.monotonic() - started
        # The queues fall back: nothing waits, nothing runs, on any replica.
        assert wait_until(
            lambda: all(
                (m := metrics(r.url))["textgen_queue_size"] == 0 and m["textgen_batch_current_size"] == 0
                for r in replicas
            ),
            timeout=15,
        ), failure("queues not empty after the load")
        watch.stop.set()
        watch.thread.join(5)
        stats = balancer.stats()
        for replica in replicas:
            served[replica.name] = int(stats[replica.name]["hrsp_2xx"])
        own = {r.name: metrics(r.url)["requests_total"] for r in replicas}
    finally:
        if load is not None:
            load.stop.set()
        watch.stop.set()
        for replica in everyone:
            replica.stop()
        balancer.stop()

    outcomes = load.outcomes
    problems = [(path, problem) for path, _, problem, _ in outcomes if problem]
    times = {
        path: [s for p, s, problem, _ in outcomes if p == path and not problem] for path in ("/generate", "/generate_stream")
    }
    backend = stats["BACKEND"]
    figures = {
        "replicas": 3,
        "clients": CLIENTS,
        "max_batch_size": MAX_BATCH_SIZE,
        "drain_seconds": DRAIN_SECONDS,
        "prestop_seconds": PRESTOP_SECONDS,
        "seconds": round(load_seconds, 1),
        "requests": len(outcomes),
        "by_route": {path: len(t) for path, t in times.items()},
        "lost": len(problems),
        "latency_seconds": {
            path: {"p50": round(percentile(t, 0.5), 3), "p95": round(percentile(t, 0.95), 3), "max": round(max(t), 3)}
            for path, t in times.items()
            if t
        },
        "rolls": rolls,
        "fourth_ready_in_haproxy_seconds": round(scale_out_ready, 2),
        "served_by_replica_haproxy_2xx": served,
        "haproxy_retries": int(backend["wretr"]),
        "haproxy_redispatches": int(backend["wredis"]),
        "haproxy_5xx": int(backend["hrsp_5xx"]),
        "queue_size_peak_by_replica": dict(watch.peak),
    }
    save("rolling-replacement", figures)

    assert not problems, problems[:5]
    assert int(backend["hrsp_5xx"]) == 0
    # Every replica took traffic, the three new ones and the fourth included (haproxy's count and their own).
    assert all(served.get(f"replica{i}", 0) > 0 for i in range(1, 8)), served
    for name, counts in own.items():
        assert counts[("/generate", "success")] + counts[("/generate_stream", "success")] > 0, (name, counts)
    # The balancer saw every draining replica's /ready 503 while it still served (before the drain ended).
    for roll in rolls:
        down = roll["old_down_in_haproxy_after_sigterm_seconds"]
        assert down is not None and down < DRAIN_SECONDS, rolls
        assert roll["old_exit_after_sigterm_seconds"] >= DRAIN_SECONDS
    # The queue gauge rose under load (and fell back to 0, asserted above).
    assert max(watch.peak.values(), default=0) > 0, figures
