"""The Flask application factory: settings + engine (loaded once) + blueprints + JSON errors."""

from __future__ import annotations

import logging
import os
import signal
import uuid
from typing import Any, Mapping, Union

from flask import Flask, g, has_request_context, request
from flask.helpers import get_debug_flag

from .settings import Settings


def create_app(config: Union[Settings, Mapping[str, Any], None] = None, engine=None) -> Flask:
    """Build the app. `config` is a Settings object or field overrides on top of the environment.

    The model loads here, once per process, unless an already running `engine` is passed in (tests
    share one engine between many apps; the Lambda handler reuses its own).
    """
    if get_debug_flag():
        # Werkzeug's debugger runs any Python sent to it from a browser: never on a served port.
        raise RuntimeError("FLASK_DEBUG is set: debug mode is not allowed in this service; unset it")
    settings = config if isinstance(config, Settings) else Settings.from_env(**dict(config or {}))
    _log_request_ids()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"
    )
    if engine is None:
        from .engine import create_engine

        engine = create_engine(settings)
        # If the engine thread dies (a bug in its loop), this process can only answer 503: end it so what
        # supervises it starts a fresh one. SIGTERM is a graceful exit for a gunicorn worker, whose master
        # then forks a new worker; under `python app.py`, Lambda or a bare container the process ends and
        # the platform restarts it. (Apps given an engine, as in tests, keep answering 503.)
        engine.on_crash = lambda: os.kill(os.getpid(), signal.SIGTERM)

    app = Flask(__name__, static_folder=None)  # pages are served by their blueprints, with their headers
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes  # werkzeug answers 413 beyond it
    app.json.sort_keys = False
    app.extensions["textgen.settings"] = settings
    app.extensions["textgen.engine"] = engine

    @app.before_request
    def _request_id():
        # Clients (or a proxy) may bring their own id; it is echoed back and used in server logs.
        g.request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response

    from .transports.http.access import enable_cors
    from .transports.http.anthropic import bp as anthropic_bp
    from .transports.http.docs import bp as docs_bp
    from .transports.http.embeddings import bp as embeddings_bp
    from .transports.http.error_responses import register_error_handlers
    from .transports.http.generate import bp as generate_bp
    from .transports.http.health import bp as health_bp
    from .transports.http.metrics import init_metrics
    from .transports.http.ollama import bp as ollama_bp
    from .transports.http.openai import bp as openai_bp
    from .transports.http.playground import bp as playground_bp
    from .transports.http.tokenize import bp as tokenize_bp

    register_error_handlers(app)
    enable_cors(app, settings.cors_origins)
    app.register_blueprint(health_bp)
    app.register_blueprint(generate_bp)
    app.register_blueprint(tokenize_bp)
    init_metrics(app, engine)  # GET /metrics, its registry, and the engine listener
    app.register_blueprint(openai_bp)
    app.register_blueprint(ollama_bp)
    app.register_blueprint(anthropic_bp)
    app.register_blueprint(embeddings_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(playground_bp)
    return app


def _log_request_ids() -> None:
    """Every log record carries `request_id`: the current request's inside a request, "-" elsewhere
    (the engine thread names the requests it logs about in the message itself)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_textgen", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return record

    factory._textgen = True
    logging.setLogRecordFactory(factory)

