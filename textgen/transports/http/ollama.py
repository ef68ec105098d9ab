"""Ollama's API, generation side: /api/version, /api/tags, /api/ps, /api/show, /api/generate, /api/chat.

Open WebUI, Continue, Copilot's Ollama provider and the `ollama` package talk to these. Bodies are
validated by `validation/ollama_forms.py` into the same `GenerationRequest` as every route and run by the
same engine; answers are NDJSON (`application/x-ndjson`), streamed unless `stream` is false, the last line
with `done: true` and the durations in nanoseconds. Errors take Ollama's shape, {"error": "..."}
(http/error_responses.py); one after the stream began is its last line. The routes that manage models
(pull, push, create, copy, delete) answer 501: this server serves the one model it started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from typing import Iterator, Optional

from flask import Blueprint, Response, current_app, g, jsonify, request

from ...engine.handle import TokenEvent
from ...errors import ServiceError, from_http_status
from ...model.loader import converted_gguf
from ...model.safetensors import parameter_count
from ...validation import ollama_forms
from ..tool_calls import CallAssembler, Text, ToolCallReader, read_answer
from .access import require_key
from .body import json_body
from .disconnect import watching

bp = Blueprint("ollama", __name__, url_prefix="/api")
require_key(bp)

# The Ollama API level these routes implement, as clients compare it (Copilot requires >= 0.6.4).
OLLAMA_VERSION = "0.6.4"
DONE_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
_NDJSON = "application/x-ndjson"


@bp.get("/version")
def version():
    return jsonify({"version": OLLAMA_VERSION})


@bp.route("/tags", methods=["GET", "HEAD"])
def tags():
    return jsonify({"models": [_model_entry()]})


@bp.get("/ps")
def ps():
    entry = _model_entry()
    context = current_app.extensions["textgen.engine"].info()["max_total_tokens"]
    # Loaded for good: never expires, nothing on a GPU.
    running = {**entry, "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0, "context_length": context}
    del running["modified_at"]
    return jsonify({"models": [running]})


@bp.post("/show")
def show():
    _check_model(ollama_forms.show_request(json_body()).model)
    facts = _facts()
    context = current_app.extensions["textgen.engine"].info()["max_total_tokens"]
    return jsonify({
        "modelfile": f"FROM {facts['name']}\n",
        "parameters": _parameters(context, facts["stop"]),
        "template": facts["template"] or "{{ .Prompt }}",
        "details": facts["details"],
        "model_info": {"general.architecture": facts["family"], f"{facts['family']}.context_length": context},
        # Tools go through the chat template (or the system-prompt form): any model with one takes them.
        "capabilities": ["completion"] + (["tools"] if facts["template"] else []),
        "modified_at": facts["modified_at"],
    })


@bp.post("/generate")
def generate():
    engine = current_app.extensions["textgen.engine"]
    parsed = ollama_forms.generate_request(json_body())
    _check_model(parsed.model)
    if not parsed.prompt:  # Ollama's way to load a model: answered at once
        return jsonify({"model": parsed.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"})
    prompt = ollama_forms.generate_prompt(parsed, _render(engine))
    return _answer(parsed, prompt, ollama_forms.OLLAMA_FIELDS, chat=False)


@bp.post("/chat")
def chat():
    engine = current_app.extensions["textgen.engine"]
    parsed = ollama_forms.chat_request(json_body())
    _check_model(parsed.model)
    if not parsed.messages:
        return jsonify({"model": parsed.model, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                        "done": True, "done_reason": "load"})
    tools = ollama_forms.chat_tools(parsed, current_app.extensions["textgen.settings"])
    prompt = engine.prompts.chat_prompt(ollama_forms.chat_messages(parsed.messages), tools=tools.shown)
    fields = ollama_forms.OLLAMA_TOOL_FIELDS if tools.active else ollama_forms.OLLAMA_CHAT_FIELDS
    return _answer(parsed, prompt, fields, chat=True, tools=tools)


@bp.route("/<any(pull, push, create, copy, delete, blobs):action>", methods=["POST", "DELETE", "HEAD"])
@bp.route("/blobs/<path:digest>", methods=["POST", "HEAD"], defaults={"action": "blobs"})
def manage(action: str, digest: Optional[str] = None):
    raise from_http_status(501, f"/api/{action} is not supported: this server serves the one model it started with")


def _answer(parsed, prompt: str, fields, chat: bool, tools=None):
    """`tools` (chat): when active, the answer's calls are read back into `message.tool_calls` (streamed:
    each call in a line of its own when it is whole, as Ollama sends them)."""
    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    gen_request = ollama_forms.generation(parsed, prompt, settings, fields, engine.info()["max_input_tokens"], tools)
    reader = ToolCallReader() if tools is not None and tools.active else None
    assembler = CallAssembler()
    started = time.monotonic_ns()
    handle = engine.submit(gen_request, request_id=g.request_id)
    environ = request.environ  # the generator runs after the view returns, outside the request context

    def piece(text: str, calls=(), **rest) -> dict:
        content = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
        if calls:
            content["message"]["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments_object()}} for c in calls]
        return {"model": parsed.model, "created_at": _now(), **content, **rest}

    def pieces(events: list) -> Iterator[dict]:
        """The lines of the answer's events: text as it comes, each call when it is whole."""
        for part in assembler.take(events):
            yield piece(part.text, done=False) if isinstance(part, Text) else piece("", [part], done=False)

    def lines() -> Iterator[dict]:
        first = None
        with watching(environ, handle):
            for event in handle.events():
                if isinstance(event, TokenEvent):
                    first = first or time.monotonic_ns()
                    if event.released and gen_request.stream:
                        yield from pieces(reader.feed(event.released)) if reader else [piece(event.released, done=False)]
                    continue
                if reader and gen_request.stream:
                    yield from pieces(reader.finish())
                answer = read_answer(event.text) if reader and not gen_request.stream else None
                text = "" if gen_request.stream else (answer.content if answer else event.text)
                yield piece(text, answer.calls if answer else (), done=True, **_final(event, started, first or time.monotonic_ns()))

    if not gen_request.stream:
        try:
            return jsonify(list(lines())[-1])
        finally:
            handle.cancel()

    def ndjson() -> Iterator[str]:
        try:
            for line in lines():
                yield json.dumps(line, ensure_ascii=False) + "\n"
        except ServiceError as error:  # the status line is sent: the error is the last line
            yield json.dumps({"error": error.message}, ensure_ascii=False) + "\n"
        finally:
            handle.cancel()  # also reached when the client went away mid-stream

    return Response(ndjson(), mimetype=_NDJSON, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _final(result, started: int, first: int) -> dict:
    """The last line's counts and durations (ns). Prompt evaluation: from the request's joining the batch
    to its first token; generation: from there on."""
    now = time.monotonic_ns()
    joined = started + int(result.queue_time * 1e9)
    return {
        "done_reason": DONE_REASONS[result.finish_reason],
        "total_duration": now - started,
        "load_duration": 0,  # loaded at start
        "prompt_eval_count": result.prompt_tokens,
        "prompt_eval_duration": max(first - joined, 0),
        "eval_count": result.generated_tokens,
        "eval_duration": max(now - first, 0),
    }


def _parameters(context: int, stops) -> str:
    """Ollama's `parameters` text, one `name value` a line, strings quoted (Continue reads `num_ctx` and
    each `stop` line with JSON.parse)."""
    return "\n".join([f"num_ctx {context}"] + [f"stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops])


def _render(engine):
    """The model's chat template as a renderer, or None when it has none."""
    return engine.prompts.chat_prompt if getattr(engine.prompts.tokenizer, "chat_template", None) else None


def _check_model(name: str) -> None:
    served = current_app.extensions["textgen.settings"].model_name
    if name.removesuffix(":latest") != served.removesuffix(":latest"):
        raise from_http_status(404, f"model '{name}' not found; this server serves '{_tagged(served)}'")


def _tagged(name: str) -> str:
    return name if ":" in name else name + ":latest"


def _model_entry() -> dict:
    facts = _facts()
    return {"name": facts["name"], "model": facts["name"], "modified_at": facts["modified_at"], "size": facts["size"],
            "digest": facts["digest"], "details": facts["details"]}


def _facts() -> dict:
    """What Ollama's listings say of the one model, worked out once per app from its directory."""
    cached = current_app.extensions.get("textgen.ollama_facts")
    if cached is not None:
        return cached
    settings = current_app.extensions["textgen.settings"]
    engine = current_app.extensions["textgen.engine"]
    source = settings.model_id
    files = [os.path.join(source, f) for f in os.listdir(source)] if os.path.isdir(source) else []
    family = "unknown"
    config = os.path.join(source, "config.json")
    if os.path.isfile(config):
        with open(config) as handle:
            family = json.load(handle).get("model_type") or family
    weights = [f for f in files if f.endswith((".safetensors", ".gguf", ".bin", ".onnx"))]
    modified = max((os.path.getmtime(f) for f in weights), default=0.0)
    info = engine.info()
    facts = {
        "name": _tagged(settings.model_name),
        "size": sum(os.path.getsize(f) for f in weights),
        # Names this deployment's model (its source and weights' type), not a hash of the weights' bytes.
        "digest": hashlib.sha256(f"{source}|{info['model_dtype']}".encode()).hexdigest(),
        "modified_at": datetime.fromtimestamp(modified, timezone.utc).isoformat().replace("+00:00", "Z"),
        "family": family,
        "template": getattr(engine.prompts.tokenizer, "chat_template", None),
        # The end-of-text tokens, as Ollama lists them (`stop "<|im_end|>"`): Continue adds them to its stops.
        "stop": [engine.prompts.tokenizer.decode([i]) for i in sorted(engine.eos_token_ids)],
        "details": {
            "parent_model": "",
            "format": "gguf" if any(f.endswith(".gguf") for f in weights) else "safetensors",
            "family": family,
            "families": [family],
            "parameter_size": _parameter_size(settings),
            "quantization_level": info["model_dtype"].upper(),
        },
    }
    current_app.extensions["textgen.ollama_facts"] = facts
    return facts


def _parameter_size(settings) -> str:
    """The parameters as Ollama writes them ("135M", "1.2B"), counted from the checkpoint's headers (a
    GGUF file's: its conversion, once made); "unknown" without one (a graph alone)."""
    source = converted_gguf(settings) if settings.model_gguf_file else settings.model_id
    count = parameter_count(source) if source and os.path.isdir(source) else None
    if count is None:
        return "unknown"
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M" if count >= 1e6 else f"{count / 1e3:.0f}K"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
