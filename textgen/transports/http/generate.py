"""POST /generate, /generate_stream and TGI's compat route POST /."""

from __future__ import annotations

import json
from typing import Iterator, Optional

from flask import Blueprint, Response, current_app, g, jsonify, request

from ...engine.handle import Handle, TokenEvent
from ...errors import ServiceError
from ..responses import complete_body, details_body, prefill_token_body, result_body, timing_headers, token_body
from ...validation import GenerationRequest, validate_generate
from .access import require_key
from .body import json_body
from .disconnect import watching

bp = Blueprint("generate", __name__)
require_key(bp)


@bp.post("/generate")
def generate():
    gen_request, handle = _submit(stream=False)
    return _complete(gen_request, handle)


@bp.post("/generate_stream")
def generate_stream():
    gen_request, handle = _submit(stream=True)
    return _event_stream(gen_request, handle)


@bp.post("/")
def compat_generate():
    """TGI's compat route: the body's `stream` flag chooses between the two answers. A complete answer
    is a list of one, as TGI's router answers it ("to match api-inference": its Python client reads
    `payload[0]`); a stream and every error are the same as on the other two routes."""
    gen_request, handle = _submit(stream=None)
    if gen_request.stream:
        return _event_stream(gen_request, handle)
    return _complete(gen_request, handle, as_list=True)


def _submit(stream: Optional[bool]):
    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    body = json_body()
    gen_request = validate_generate(body, settings, stream=stream)
    return gen_request, engine.submit(gen_request, request_id=g.request_id)


def _complete(gen_request: GenerationRequest, handle: Handle, as_list: bool = False):
    with watching(request.environ, handle):
        results = handle.results()
    body, result = complete_body(gen_request, results)
    response = jsonify([body] if as_list else body)
    response.headers.update(timing_headers(result))
    return response


def _event_stream(gen_request: GenerationRequest, handle: Handle) -> Response:
    """Server-Sent Events in TGI's format: one event per token; the last one carries the whole text."""
    environ = request.environ  # the generator runs after the view returns, outside the request context

    def events() -> Iterator[str]:
        try:
            pending_last: Optional[TokenEvent] = None
            prefill = ()  # the prompt's tokens (`decoder_input_details`) come on the first event
            with watching(environ, handle):
                for event in handle.events():
                    if isinstance(event, TokenEvent):
                        prefill = prefill or event.prefill
                    if isinstance(event, TokenEvent) and not event.last:
                        yield _sse(_token_payload(event, None, None))
                    elif isinstance(event, TokenEvent):
                        pending_last = event  # its result follows at once; send them as one event
                    else:
                        text = result_body(gen_request, event)["generated_text"]
                        details = details_body(event) if gen_request.details else None
                        if details is not None and gen_request.decoder_input_details:
                            details["prefill"] = [prefill_token_body(info) for info in prefill]
                        yield _sse(_token_payload(pending_last, text, details))
        except ServiceError as error:
            yield _sse(error.to_dict())
        finally:
            # Also reached when the server closes the generator because the client went away.
            handle.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(events(), mimetype="text/event-stream", headers=headers)


def _token_payload(event: TokenEvent, generated_text, details) -> dict:
    payload = {"index": event.index, "token": token_body(event), "generated_text": generated_text, "details": details}
    if event.top_tokens:  # TGI leaves the list out when `top_n_tokens` did not ask for it
        payload["top_tokens"] = [token_body(alt) for alt in event.top_tokens]
    return payload


def _sse(payload: dict) -> str:
    return f"data:{json.dumps(payload, ensure_ascii=False)}\n\n"
