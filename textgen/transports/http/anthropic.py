"""Anthropic's Messages API: POST /v1/messages (whole or streamed) and POST /v1/messages/count_tokens.

The `anthropic` SDK and the coding agents built on it talk to the server through these. Bodies are
validated by `validation/anthropic_forms.py` into the same `GenerationRequest` as every route and run by
the same engine; only the answer's shape differs. Errors take Anthropic's shape (http/error_responses.py),
also as a stream's last `error` event.
"""

from __future__ import annotations

import json
from typing import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request

from ...engine.handle import GenerationResult, Handle, TokenEvent
from ...errors import ServiceError
from ...validation.anthropic_forms import count_request, messages_request
from ..responses import timing_headers
from .access import require_key
from .body import json_body
from .disconnect import watching
from .error_responses import anthropic_error

bp = Blueprint("anthropic", __name__, url_prefix="/v1/messages")
require_key(bp)

# Why generation stopped, in Anthropic's words.
STOP_REASONS = {"length": "max_tokens", "eos_token": "end_turn", "stop_sequence": "stop_sequence"}


@bp.post("")
def messages():
    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    _, gen_request = messages_request(json_body(), settings, engine.prompts.chat_prompt)
    # The prompt's tokens, counted as submit counts them: a stream's first event reports them.
    input_tokens = len(engine.prompts.tokenize(gen_request).prompt_ids) if gen_request.stream else 0
    handle = engine.submit(gen_request, request_id=g.request_id)
    message = _message(settings.model_name, g.request_id)
    if gen_request.stream:
        return _stream(message, handle, input_tokens)
    with watching(request.environ, handle):
        result = handle.results()[0]
    body = {**message, "content": [{"type": "text", "text": result.text}], **_ending(result)}
    body["usage"] = {"input_tokens": result.prompt_tokens, "output_tokens": result.generated_tokens}
    response = jsonify(body)
    response.headers.update(timing_headers(result))
    return response


@bp.post("/count_tokens")
def count_tokens():
    settings = current_app.extensions["textgen.settings"]
    prompts = current_app.extensions["textgen.engine"].prompts
    gen_request = count_request(json_body(), settings, prompts.chat_prompt)
    return jsonify({"input_tokens": len(prompts.prompt_tokens(gen_request))})


def _message(model: str, request_id: str) -> dict:
    return {"id": "msg_" + request_id.replace("-", ""), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None}


def _ending(result: GenerationResult) -> dict:
    return {"stop_reason": STOP_REASONS[result.finish_reason], "stop_sequence": result.stop_sequence}


def _stream(message: dict, handle: Handle, input_tokens: int) -> Response:
    """Anthropic's event order: message_start, content_block_start, ping, content_block_delta per piece
    of text, content_block_stop, message_delta (stop_reason, output usage), message_stop."""
    environ = request.environ  # the generator runs after the view returns, outside the request context

    def events() -> Iterator[str]:
        try:
            yield _event("message_start", {"message": {**message, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}})
            yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            yield _event("ping", {})
            with watching(environ, handle):
                for event in handle.events():
                    if isinstance(event, TokenEvent):
                        # Text that could still begin a stop sequence is held back by the engine until it is
                        # known not to be: the deltas join into exactly the whole answer.
                        if event.released:
                            yield _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": event.released}})
                        continue
                    yield _event("content_block_stop", {"index": 0})
                    usage = {"input_tokens": event.prompt_tokens, "output_tokens": event.generated_tokens}
                    yield _event("message_delta", {"delta": _ending(event), "usage": usage})
                    yield _event("message_stop", {})
        except ServiceError as error:
            yield _event("error", anthropic_error(error)[0])
        finally:
            handle.cancel()  # also reached when the client went away mid-stream

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(events(), mimetype="text/event-stream", headers=headers)


def _event(kind: str, payload: dict) -> str:
    data = payload if kind == "error" else {"type": kind, **payload}
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
