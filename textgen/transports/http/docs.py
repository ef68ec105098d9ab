"""GET /openapi.json (the OpenAPI 3.1 document) and GET /docs (a page that renders it, offline)."""

from __future__ import annotations

import functools
import os

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("docs", __name__)
_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "docs.html")


@functools.lru_cache(maxsize=1)
def _page() -> str:
    with open(_PAGE, encoding="utf-8") as f:
        return f.read()


@bp.get("/openapi.json")
def openapi_json():
    # Imported on the first request for it, not at start: the document's 50-odd answer models cost
    # ~0.03 CPU-seconds to define, a third of a second of start-up at Render's tenth of a CPU.
    from .openapi import build_openapi

    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    limits = dict(max_total_tokens=engine.max_total_tokens, vocab_size=engine.prompts.vocab_size, max_best_of=settings.best_of_limit,
                  embedding_width=getattr(getattr(engine, "embeddings", None), "width", None))
    return jsonify(build_openapi(settings.max_new_tokens_limit, engine.max_input_tokens, **limits))


@bp.get("/docs")
def docs():
    return Response(_page(), mimetype="text/html")
