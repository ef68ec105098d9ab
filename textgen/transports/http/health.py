"""GET /health (liveness: model + engine thread), GET /ready (readiness: also not draining) and GET /info.

Liveness and readiness are apart, as Kubernetes probes want them: a draining worker (SIGTERM received)
is alive, must not be restarted, and still serves, but should get no new traffic (/ready 503).
"""

from __future__ import annotations

import platform

from flask import Blueprint, current_app, jsonify

from ... import __version__
from ...errors import Unavailable
from ...validation import MAX_STOP_SEQUENCES

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    # Never touches the engine's queue: answers at once, even while a long generation runs.
    engine = current_app.extensions["textgen.engine"]
    if not engine.healthy():
        raise Unavailable("The model engine is not running")
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready():
    engine = current_app.extensions["textgen.engine"]
    if not engine.healthy():
        raise Unavailable("Not ready: the model engine is not running")
    if getattr(engine, "draining", False):
        raise Unavailable("Not ready: draining before shutdown; requests in flight are still served")
    return jsonify({"status": "ready"})


@bp.get("/info")
def info():
    engine = current_app.extensions["textgen.engine"]
    settings = current_app.extensions["textgen.settings"]
    engine_info = engine.info()
    body = {
        # TGI's /info field names where they apply.
        "model_id": settings.model_id,
        "model_sha": None,
        "model_dtype": engine_info["model_dtype"],
        "model_device_type": engine_info["model_device_type"],
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_best_of": settings.best_of_limit,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": engine_info["max_input_tokens"],
        "max_total_tokens": engine_info["max_total_tokens"],
        "max_batch_total_tokens": engine_info["max_batch_total_tokens"],  # the KV-cache budget, set or derived
        "max_client_batch_size": 1,
        "router": "textgen",
        "version": __version__,
        "sha": None,
        "docker_label": None,
        # This server's own limits and defaults.
        "max_new_tokens_limit": settings.max_new_tokens_limit,
        "default_max_new_tokens": settings.default_max_new_tokens,
        "max_batch_size": settings.max_batch_size,
        "prefix_cache_tokens": settings.prefix_cache_tokens,
        "model_backend": engine_info["model_backend"],
        "quantize": settings.quantize,
        "threads": engine_info["threads"],
        "versions": {
            "python": platform.python_version(),
            **engine_info["versions"],
            "textgen": __version__,
        },
    }
    return jsonify(body)
