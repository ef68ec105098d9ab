"""POST /tokenize (TGI's) and POST /detokenize (vLLM's body and answer): the model's tokenizer, behind
the API key like the generation routes, in the request's own thread (the engine is not involved).

/tokenize takes /generate's body and answers TGI's `[{"id", "text", "start", "stop"}]`: the tokens
/generate would prefill, each with its UTF-8 byte offsets into the prompt (as TGI's router). /detokenize
takes ``{"tokens": [ids]}`` and answers ``{"prompt": text}``.
"""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, jsonify

from ...validation import validate_detokenize, validate_generate
from .access import require_key
from .body import json_body

bp = Blueprint("tokenize", __name__)
require_key(bp)


@bp.post("/tokenize")
def tokenize():
    settings = current_app.extensions["textgen.settings"]
    prompts = current_app.extensions["textgen.engine"].prompts
    request = validate_generate(json_body(), settings)  # the same body, rules and 422s as /generate
    return jsonify([asdict(token) for token in prompts.prompt_tokens(request)])


@bp.post("/detokenize")
def detokenize():
    prompts = current_app.extensions["textgen.engine"].prompts
    return jsonify({"prompt": prompts.detokenize(validate_detokenize(json_body()))})
