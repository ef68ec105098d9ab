"""Real servers for the tests and the benchmark: gunicorn running app.py as users run it, a werkzeug server
in a thread, free ports, waiting for a condition or for /health."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import requests
from werkzeug.serving import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def chromium_path() -> str:
    """The Chromium the browser tests drive: $CHROMIUM_PATH, or Debian's `chromium`."""
    import shutil

    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"


def haproxy_path() -> str:
    """The haproxy the rolling-replacement test runs: $HAPROXY_PATH, or Debian's `haproxy` (in /usr/sbin,
    which a non-root PATH may leave out)."""
    import shutil

    return os.environ.get("HAPROXY_PATH") or shutil.which("haproxy") or "/usr/sbin/haproxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 60.0, proc=None, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


@contextmanager
def gunicorn_server(model_dir: str, *, wait_for_exit: bool = True, **env_overrides):
    """`gunicorn app:app` from the project root with MODEL_ID pointing at a local model directory.
    Stopped with SIGTERM at the end; `wait_for_exit=False` does not wait out its drain (`retire`)."""
    port = free_port()
    env = {**os.environ, "MODEL_ID": model_dir, "PORT": str(port), "THREADS": "2", **env_overrides}
    proc = start_module(["gunicorn", "app:app"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
        yield url, proc
    finally:
        (stop_process if wait_for_exit else retire)(proc)


def start_module(args, env):
    """`python -m <args>` from the project root, as a deployment runs it; output kept for failures."""
    return subprocess.Popen(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop_process(proc, timeout: float = 30.0) -> None:
    """SIGTERM, as a platform stops a service; SIGKILL if it has not exited in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_retired: list = []


def retire(proc) -> None:
    """SIGTERM, as `stop_process`, without waiting for the exit: for a server whose shutdown nothing
    checks (gunicorn drains DRAIN_SECONDS, 5 s by default, before it exits, idle or not). `reap_retired`
    waits for them all (tests/conftest.py: at the end of the session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        _retired.append(proc)


def reap_retired(timeout: float = 30.0) -> None:
    """Wait for every retired process to exit; SIGKILL one that is still running after `timeout` s."""
    deadline = time.monotonic() + timeout
    while _retired:
        proc = _retired.pop()
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serving(settings):
    """The model of `settings` loaded, its engine started and the app served by `thread_server`: the URL."""
    from textgen.engine import Engine
    from textgen.model.loader import load_model
    from textgen.server import create_app

    model, tokenizer = load_model(settings)
    engine = Engine(model, tokenizer, settings).start()
    try:
        with thread_server(create_app(settings, engine=engine)) as url:
            yield url
    finally:
        engine.stop()


@contextmanager
def thread_server(app):
    """The app behind werkzeug's threaded server in this process (the engine stays inspectable)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    # serve_forever looks for shutdown() every poll_interval: 0.5 s by default, paid at every stop.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
