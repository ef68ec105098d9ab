"""Embeddings: OpenAI's POST /v1/embeddings, Ollama's POST /api/embed and its legacy POST /api/embeddings.

The vectors are the served model's own (engine/embeddings.py: its final-normed hidden states, mean-pooled
over each input's tokens, L2-normalised), computed by the engine thread between its generation steps.
Bodies are checked by `validation/embedding_forms.py`; errors take each protocol's shape as on its other
routes (OpenAI's under /v1/, Ollama's under /api/: http/error_responses.py), an unknown model name on
Ollama's routes a 404 as there.
"""

from __future__ import annotations

import base64
import time
from typing import List

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from ...errors import Unavailable
from ...validation import embedding_forms as forms
from .access import require_key
from .body import json_body
from .disconnect import watching
from .ollama import _check_model

bp = Blueprint("embeddings", __name__)
require_key(bp)


@bp.post("/v1/embeddings")
def openai_embeddings():
    engine = current_app.extensions["textgen.engine"]
    parsed = forms.openai_request(json_body())
    forms.check_dimensions(parsed.dimensions, engine.embeddings.width)
    ids = forms.input_ids(engine.prompts, forms.as_list(parsed.input), engine.max_input_tokens, truncate=False)
    vectors = _embed(ids)
    data = [{"object": "embedding", "index": i, "embedding": _encoded(v, parsed.encoding_format)} for i, v in enumerate(vectors)]
    tokens = sum(len(x) for x in ids)
    model = parsed.model or current_app.extensions["textgen.settings"].model_name
    return jsonify({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@bp.post("/api/embed")
def ollama_embed():
    started = time.monotonic_ns()
    engine = current_app.extensions["textgen.engine"]
    parsed = forms.ollama_embed_request(json_body())
    _check_model(parsed.model)
    forms.check_dimensions(parsed.dimensions, engine.embeddings.width)
    limit = engine.max_input_tokens
    if parsed.options is not None and parsed.options.num_ctx is not None:
        limit = min(limit, parsed.options.num_ctx)
    texts = forms.as_list(parsed.input) if parsed.input else []  # "" or []: Ollama's way to load a model
    ids = forms.input_ids(engine.prompts, texts, limit, parsed.truncate)
    vectors = _embed(ids) if ids else []
    return jsonify({
        "model": parsed.model,
        "embeddings": [v.tolist() for v in vectors],
        "total_duration": time.monotonic_ns() - started,
        "load_duration": 0,  # loaded at start
        "prompt_eval_count": sum(len(x) for x in ids),
    })


@bp.post("/api/embeddings")
def ollama_embeddings():
    engine = current_app.extensions["textgen.engine"]
    parsed = forms.ollama_embeddings_request(json_body())
    _check_model(parsed.model)
    if not parsed.prompt:  # Ollama answers an empty prompt with an empty vector
        return jsonify({"embedding": []})
    ids = forms.input_ids(engine.prompts, [parsed.prompt], engine.max_input_tokens, truncate=True, field="prompt")
    return jsonify({"embedding": _embed(ids)[0].tolist()})


def _embed(ids: List[List[int]]) -> np.ndarray:
    """The engine's vectors for these inputs, float32 [inputs, width]; a client that hangs up cancels
    what is not yet started."""
    engine = current_app.extensions["textgen.engine"]
    if not engine.healthy():
        raise Unavailable("Model is not ready")
    handle = engine.embeddings.submit(ids)
    with watching(request.environ, handle):
        return handle.result()


def _encoded(vector: np.ndarray, encoding_format: str):
    """A list of floats, or OpenAI's base64: the float32 values' little-endian bytes."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
