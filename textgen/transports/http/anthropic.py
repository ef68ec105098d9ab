"""Anthropic's Messages API: POST /v1/messages (whole or streamed) and POST /v1/messages/count_tokens.

The `anthropic` SDK and the coding agents built on it talk to the server through these. Bodies are
validated by `validation/anthropic_forms.py` into the same `GenerationRequest` as every route and run by
the same engine; only the answer's shape differs. Errors take Anthropic's shape (http/error_responses.py),
also as a stream's last `error` event.
"""

from __future__ import annotations

import json
from typing import Iterator, Optional

from flask import Blueprint, Response, current_app, g, jsonify, request

from ...engine.handle import GenerationResult, Handle, TokenEvent
from ...errors import ServiceError
from ...validation.anthropic_forms import count_request, messages_request
from ..responses import timing_headers
from ..tool_calls import Arguments, CallEnd, CallStart, Text, ToolCallReader, new_id, read_answer
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
    _, gen_request, tools = messages_request(json_body(), settings, engine.prompts.chat_prompt)
    handle = engine.submit(gen_request, request_id=g.request_id)
    message = _message(settings.model_name, g.request_id)
    if gen_request.stream:
        return _stream(message, handle, handle.prompt_tokens, tools.active)  # a stream's first event reports them
    with watching(request.environ, handle):
        result = handle.results()[0]
    content, called = [{"type": "text", "text": result.text}], False
    if tools.active:
        answer = read_answer(result.text)
        text = [{"type": "text", "text": answer.content}] if answer.content.strip() or not answer.calls else []
        content = text + [{"type": "tool_use", "id": "toolu_" + c.id, "name": c.name, "input": c.arguments_object()}
                          for c in answer.calls]
        called = bool(answer.calls)
    body = {**message, "content": content, **_ending(result, called)}
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


def _ending(result: GenerationResult, called: bool = False) -> dict:
    """Why the answer ended: "tool_use" when it called tools and was not cut short."""
    reason = "tool_use" if called and result.finish_reason != "length" else STOP_REASONS[result.finish_reason]
    return {"stop_reason": reason, "stop_sequence": result.stop_sequence}


def _stream(message: dict, handle: Handle, input_tokens: int, tools: bool) -> Response:
    """Anthropic's event order: message_start, then each content block (content_block_start, ping after
    the first, its deltas, content_block_stop), message_delta (stop_reason, output usage), message_stop.
    Text is one `text` block; with tools, each call is a `tool_use` block whose input comes as
    `input_json_delta` pieces."""
    environ = request.environ  # the generator runs after the view returns, outside the request context

    def events() -> Iterator[str]:
        blocks = _Blocks()
        reader = ToolCallReader() if tools else None
        try:
            yield _event("message_start", {"message": {**message, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}})
            if not tools:  # the text block opens at once, as Anthropic's own stream does
                yield from blocks.text("")
            with watching(environ, handle):
                for event in handle.events():
                    if isinstance(event, TokenEvent):
                        # Text that could still begin a stop sequence is held back by the engine until it is
                        # known not to be: the deltas join into exactly the whole answer.
                        if event.released:
                            yield from blocks.feed(reader.feed(event.released) if reader else [Text(event.released)])
                        continue
                    yield from blocks.feed(reader.finish() if reader else [])
                    yield from blocks.close(empty_text=True)
                    usage = {"input_tokens": event.prompt_tokens, "output_tokens": event.generated_tokens}
                    yield _event("message_delta", {"delta": _ending(event, blocks.called), "usage": usage})
                    yield _event("message_stop", {})
        except ServiceError as error:
            yield _event("error", anthropic_error(error)[0])
        finally:
            handle.cancel()  # also reached when the client went away mid-stream

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(events(), mimetype="text/event-stream", headers=headers)


class _Blocks:
    """The stream's content blocks, opened and closed in order as the answer's events come."""

    def __init__(self):
        self.index = -1
        self.open: Optional[str] = None  # the kind of the block open now
        self.called = False

    def feed(self, events: list) -> Iterator[str]:
        for event in events:
            if isinstance(event, Text):
                yield from self.text(event.text)
            elif isinstance(event, CallStart):
                self.called = True
                block = {"type": "tool_use", "id": "toolu_" + new_id(), "name": event.name, "input": {}}
                yield from self._start("tool_use", block)
            elif isinstance(event, Arguments):
                yield _event("content_block_delta", {"index": self.index, "delta": {"type": "input_json_delta", "partial_json": event.text}})
            elif isinstance(event, CallEnd):
                yield from self.close()

    def text(self, text: str) -> Iterator[str]:
        if self.open != "text":
            yield from self._start("text", {"type": "text", "text": ""})
        if text:
            yield _event("content_block_delta", {"index": self.index, "delta": {"type": "text_delta", "text": text}})

    def _start(self, kind: str, block: dict) -> Iterator[str]:
        yield from self.close()
        self.index += 1
        self.open = kind
        yield _event("content_block_start", {"index": self.index, "content_block": block})
        if self.index == 0:
            yield _event("ping", {})

    def close(self, empty_text: bool = False) -> Iterator[str]:
        """Close the open block; `empty_text`: an answer with no block at all gets an empty text block."""
        if self.open is None and empty_text and self.index < 0:
            yield from self.text("")
        if self.open is not None:
            yield _event("content_block_stop", {"index": self.index})
            self.open = None


def _event(kind: str, payload: dict) -> str:
    data = payload if kind == "error" else {"type": kind, **payload}
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
