"""gunicorn settings, loaded automatically by `gunicorn app:app` from the working directory."""

import os
import sys

from textgen.transports.http.gunicorn_worker import ThreadWorker
from textgen.settings import Settings

_settings = Settings.from_env()

# Render and most platforms choose the port through $PORT; 0.0.0.0 so the container's port is reachable.
bind = f"0.0.0.0:{_settings.port}"
# One worker: each worker holds its own copy of the model, and one engine already uses every CPU.
workers = 1
# Threads only wait on the engine (they never run the model), so there are enough for every admitted
# request plus room to answer /health and 429s at once when the engine is full, plus 64 for slow clients.
# gthread, with a deadline on receiving each request (textgen/transports/http/gunicorn_worker.py): plain gthread let
# a client that sends a byte per second keep its thread for as long as it liked, and 50 such connections
# starved all 40 threads it had then (/health timed out after 10 s; tests/reliability/test_hostile_input.py). Now the
# request line, headers and body must arrive within REQUEST_READ_TIMEOUT seconds of the first byte (a late
# body is answered 408, late headers closed), so a slow client holds a thread that long at most, and 50
# of them at once leave /health answering in milliseconds. A proxy that buffers requests (nginx) in front
# remains the full answer to many more slow clients than threads.
worker_class = "textgen.transports.http.gunicorn_worker.ThreadWorker"
ThreadWorker.read_timeout = float(os.environ.get("REQUEST_READ_TIMEOUT", "10"))
threads = _settings.max_concurrent_requests + 8 + 64
# gthread workers heartbeat from their main loop, not per request, so this does not cut generations;
# it covers the model load at startup and a wedged worker. The longest generation fits well inside.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
# On SIGTERM the worker drains (DRAIN_SECONDS of /ready 503 while still serving), then finishes what is
# in flight and exits; GRACEFUL_TIMEOUT seconds after the signal it is killed whatever runs.
graceful_timeout = _settings.graceful_timeout
ThreadWorker.drain_seconds = _settings.drain_seconds
# Keep-alive for clients that reuse connections (TGI clients, the README bot).
keepalive = 5
# No preload_app: the model runtime's thread pools (ONNX Runtime's, or torch's) do not survive a fork;
# the worker loads the model itself.
preload_app = False
# No control socket (gunicorn >= 25's `gunicornc` interface): nothing in a container uses it, and its
# default place, $HOME/.gunicorn, is not writable by the image's user (it logged an error at every boot).
control_socket_disable = True
# Access log to stdout, error log to stderr: what containers and Render collect.
accesslog = "-"
# gunicorn's default line plus the request id the app echoes back (the same id its own log lines carry).
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
errorlog = "-"
loglevel = _settings.log_level.lower()


def on_starting(server):
    """In the master, before any worker boots: a model this install cannot serve (a family with no ONNX
    graph builder and no torch, a MODEL_ID that names nothing) ends gunicorn with one line and exit
    status 1, instead of a worker's traceback and "Worker failed to boot" (textgen/model/preflight.py)."""
    from textgen.model.preflight import NotServable, check_servable

    try:
        check_servable(_settings)
    except NotServable as exc:
        print(f"textgen: cannot serve this model: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
