"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models.

The `openai` SDK and every tool built on it talk to the server through these. Bodies are validated by
`validation/openai_forms.py` into the same `GenerationRequest` as /generate and run by the same engine;
only the answer's shape differs. Errors here take OpenAI's shape (http/error_responses.py).
"""

from __future__ import annotations

import json
import time
from typing import Iterator, List, Optional

from flask import Blueprint, Response, current_app, g, jsonify, request

from ...engine.handle import GenerationResult, Handle, TokenEvent
from ..logprobs import chat_logprobs, completion_logprobs
from ...errors import ServiceError
from ...validation.openai_forms import chat_request, completion_request
from ..responses import result_body, timing_headers
from ..tool_calls import Answer, Arguments, CallStart, Text, ToolCallReader, new_id, read_answer
from .access import require_key
from .body import json_body
from .disconnect import watching
from .error_responses import openai_error_body

bp = Blueprint("openai", __name__, url_prefix="/v1")
require_key(bp)

# Why generation stopped, in OpenAI's words: a stop sequence and end-of-text are both "stop".
FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_STARTED = int(time.time())


@bp.get("/models")
def models():
    settings = current_app.extensions["textgen.settings"]
    model = {"id": settings.model_name, "object": "model", "created": _STARTED, "owned_by": "textgen"}
    return jsonify({"object": "list", "data": [model]})


@bp.post("/completions")
def completions():
    settings = current_app.extensions["textgen.settings"]
    options, gen_request = completion_request(json_body(), settings)
    return _answer(options, gen_request, chat=False)


@bp.post("/chat/completions")
def chat_completions():
    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    body = json_body()
    options, gen_request, tools = chat_request(body, settings, engine.prompts.chat_prompt)
    return _answer(options, gen_request, chat=True, tools=tools.active)


def _answer(options, gen_request, chat: bool, tools: bool = False):
    """`tools`: the answer may hold tool calls (read back into `tool_calls`)."""
    engine = current_app.extensions["textgen.engine"]
    handle = engine.submit(gen_request, request_id=g.request_id)
    shape = _Shape(chat, current_app.extensions["textgen.settings"].model_name, g.request_id)
    if gen_request.stream:
        include_usage = bool(options.stream_options and options.stream_options.include_usage)
        if tools:
            return _stream_tool_calls(shape, handle, gen_request.n, include_usage, gen_request.details)
        return _stream(shape, gen_request, handle, include_usage)
    with watching(request.environ, handle):
        results = handle.results()
    choices = []
    for result in results:
        text = result_body(gen_request, result)["generated_text"]
        logprobs = None
        if gen_request.details:  # OpenAI's `logprobs` asked for them
            logprobs = chat_logprobs(result.tokens) if chat else completion_logprobs(result.prefill, result.tokens)
        if tools:
            choices.append(shape.tool_choice(result.choice, read_answer(text), result, logprobs))
            continue
        choices.append(shape.choice(result.choice, text, result, logprobs))
    response = jsonify(shape.complete(choices, results))
    response.headers.update(timing_headers(results[0]))
    return response


def _stream(shape: "_Shape", gen_request, handle: Handle, include_usage: bool) -> Response:
    """OpenAI's streaming: one chunk per token, a last chunk with finish_reason per choice, then
    `data: [DONE]`. With `n`, the choices' chunks interleave, each naming its `index`."""
    environ = request.environ  # the generator runs after the view returns, outside the request context

    with_logprobs = gen_request.details  # OpenAI's `logprobs`: each token's chunk carries its own
    echo = not shape.chat and gen_request.return_full_text
    choices = range(gen_request.n)

    def events() -> Iterator[str]:
        try:
            for index in choices:
                if shape.chat:
                    yield _sse(shape.chunk(index, {"role": "assistant", "content": ""}, None))
                elif echo and not with_logprobs:  # echo: the prompt comes first
                    yield _sse(shape.chunk(index, gen_request.prompt, None))
            offsets = [len(gen_request.prompt) if echo else 0 for _ in choices]  # where each next token's text starts
            results = []
            with watching(environ, handle):
                for event in handle.events():
                    if isinstance(event, TokenEvent):
                        index = event.choice
                        if echo and with_logprobs and event.index == 1:  # the prompt's, computed in its prefill
                            yield _sse(shape.chunk(index, gen_request.prompt, None, completion_logprobs(event.prefill, ())))
                        # Text that could still begin a stop sequence is held back by the engine until
                        # it is known not to be: the streamed pieces join into exactly the whole answer.
                        if event.released or with_logprobs:
                            piece = {"content": event.released} if shape.chat else event.released
                            logprobs = None
                            if with_logprobs:
                                logprobs = chat_logprobs([event]) if shape.chat else completion_logprobs((), [event], offsets[index])
                            offsets[index] += len(event.text)
                            yield _sse(shape.chunk(index, piece, None, logprobs))
                        continue
                    results.append(event)
                    yield _sse(shape.chunk(event.choice, {} if shape.chat else "", FINISH_REASONS[event.finish_reason]))
            if include_usage:
                yield _sse({**shape.chunk(0, {} if shape.chat else "", None), "choices": [], "usage": _usage(results)})
            yield "data: [DONE]\n\n"
        except ServiceError as error:
            yield _sse(openai_error_body(error))
        finally:
            handle.cancel()  # also reached when the client went away mid-stream

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(events(), mimetype="text/event-stream", headers=headers)


def _stream_tool_calls(shape: "_Shape", handle: Handle, n: int, include_usage: bool, with_logprobs: bool) -> Response:
    """A chat stream whose answers may hold tool calls: each choice's text read as it comes
    (`ToolCallReader`); text goes out as `delta.content`, a call as `delta.tool_calls` (its id and
    name first, then its arguments' JSON in pieces), and a choice that called ends with "tool_calls".
    With `logprobs`, each token's come in a chunk of their own (an empty delta): a token's text may
    be held back, or be part of a call."""
    environ = request.environ

    def deltas(index: int, events: list, called: list) -> Iterator[str]:
        for event in events:
            if isinstance(event, Text):
                yield _sse(shape.chunk(index, {"content": event.text}, None))
            elif isinstance(event, CallStart):
                called.append(event.name)
                call = {"index": event.index, "id": "call_" + new_id(), "type": "function",
                        "function": {"name": event.name, "arguments": ""}}
                yield _sse(shape.chunk(index, {"tool_calls": [call]}, None))
            elif isinstance(event, Arguments):
                yield _sse(shape.chunk(index, {"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}, None))

    def events() -> Iterator[str]:
        readers = [ToolCallReader() for _ in range(n)]
        called = [[] for _ in range(n)]
        try:
            for index in range(n):
                yield _sse(shape.chunk(index, {"role": "assistant", "content": ""}, None))
            results = []
            with watching(environ, handle):
                for event in handle.events():
                    if isinstance(event, TokenEvent):
                        if with_logprobs:
                            yield _sse(shape.chunk(event.choice, {}, None, chat_logprobs([event])))
                        yield from deltas(event.choice, readers[event.choice].feed(event.released), called[event.choice])
                        continue
                    results.append(event)
                    yield from deltas(event.choice, readers[event.choice].finish(), called[event.choice])
                    yield _sse(shape.chunk(event.choice, {}, _finish_reason(event, bool(called[event.choice]))))
            if include_usage:
                yield _sse({**shape.chunk(0, {}, None), "choices": [], "usage": _usage(results)})
            yield "data: [DONE]\n\n"
        except ServiceError as error:
            yield _sse(openai_error_body(error))
        finally:
            handle.cancel()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(events(), mimetype="text/event-stream", headers=headers)


def _finish_reason(result: GenerationResult, called: bool) -> str:
    """"tool_calls" when the answer called tools and was not cut short."""
    return "tool_calls" if called and result.finish_reason != "length" else FINISH_REASONS[result.finish_reason]


class _Shape:
    """The envelope of one answer: completion or chat, whole or chunked."""

    def __init__(self, chat: bool, model: str, request_id: str):
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())

    def _envelope(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}

    def choice(self, index: int, text: str, result: GenerationResult, logprobs: Optional[dict] = None) -> dict:
        if self.chat:
            choice = {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs}
        return {**choice, "finish_reason": FINISH_REASONS[result.finish_reason]}

    def tool_choice(self, index: int, answer: Answer, result: GenerationResult, logprobs: Optional[dict]) -> dict:
        message = {"role": "assistant", "content": answer.content if answer.content.strip() or not answer.calls else None}
        if answer.calls:
            message["tool_calls"] = [
                {"id": "call_" + call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
                for call in answer.calls
            ]
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": _finish_reason(result, bool(answer.calls))}

    def complete(self, choices: List[dict], results: List[GenerationResult]) -> dict:
        body = self._envelope("chat.completion" if self.chat else "text_completion")
        return {**body, "choices": choices, "usage": _usage(results)}

    def chunk(self, index: int, piece, finish_reason: Optional[str], logprobs: Optional[dict] = None) -> dict:
        if self.chat:
            choice = {"index": index, "delta": piece, "logprobs": logprobs, "finish_reason": finish_reason}
            return {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": piece, "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._envelope("text_completion"), "choices": [choice]}


def _usage(results: List[GenerationResult]) -> dict:
    """The prompt counts once (it was prefilled once); every completion's tokens count. Its tokens the
    prefix cache gave are `prompt_tokens_details.cached_tokens`, as OpenAI and vLLM report them."""
    prompt = results[0].prompt_tokens if results else 0
    cached = results[0].cached_tokens if results else 0
    completion = sum(result.generated_tokens for result in results)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
