"""The OpenAPI 3.1 document served at /openapi.json. Pure: no Flask, no torch.

Request bodies come from the very pydantic models the routes validate with (`validation.tgi`,
`validation.openai_forms`; Ollama's and Anthropic's, with their answers, in openapi_ollama.py and
openapi_anthropic.py; the embedding routes' in openapi_embeddings.py), so the document cannot drift from
what the server accepts. Answers are described by the small models below; tests/test_openapi.py fuzzes
the live server against all of it.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ... import __version__
from ...validation.detokenize import DetokenizeRequest
from ...validation.openai_forms import ChatCompletionRequest, CompletionRequest
from ...validation.tgi import PromptRequest, TGIRequest
from . import openapi_anthropic, openapi_embeddings, openapi_ollama


# -- answers ---------------------------------------------------------------------------------------
class StreamToken(BaseModel):
    """One generated token (TGI's Token): in each stream event and in a complete answer's details."""

    id: int
    text: str
    logprob: float
    special: bool


class PrefillToken(BaseModel):
    """A prompt token (TGI's PrefillToken): the first has no log-probability (null)."""

    id: int
    text: str
    logprob: Optional[float]


class StreamDetails(BaseModel):
    """The details on a stream's last event (TGI's StreamDetails)."""

    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    prompt_tokens: int
    seed: Optional[int] = Field(description="The sampling seed used (null when decoding greedily).")
    prefill: Optional[List[PrefillToken]] = Field(None, description="With `decoder_input_details`: the prompt's tokens.")


class Details(StreamDetails):
    """The details of a complete answer (TGI's Details): also every generated token."""

    prefill: List[PrefillToken] = Field(description="With `decoder_input_details`, the prompt's tokens; else empty.")
    tokens: List[StreamToken] = Field(description="Every generated token, in order.")
    top_tokens: Optional[List[List[StreamToken]]] = Field(
        None, description="With `top_n_tokens`: each generated token's most likely alternatives."
    )
    best_of_sequences: Optional[List["BestOfSequence"]] = Field(
        None, description="With `best_of`: the other completions (TGI's BestOfSequence)."
    )


class BestOfSequence(StreamDetails):
    """One of the completions `best_of` did not choose."""

    generated_text: str
    prefill: List[PrefillToken]
    tokens: List[StreamToken]
    top_tokens: Optional[List[List[StreamToken]]] = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Optional[Details] = Field(None, description='Present when the request sets `"details": true`.')


class StreamEvent(BaseModel):
    """One Server-Sent Event of /generate_stream: a token; the last one also carries the whole text."""

    index: int
    token: StreamToken
    top_tokens: Optional[List[StreamToken]] = Field(None, description="With `top_n_tokens`: the most likely alternatives.")
    generated_text: Optional[str]
    details: Optional[StreamDetails]


class SimpleToken(BaseModel):
    """One prompt token from /tokenize (TGI's SimpleToken)."""

    id: int
    text: str = Field(description="The prompt between `start` and `stop`.")
    start: int = Field(description="UTF-8 byte offset into the prompt, as TGI's (0 for a token the tokenizer adds).")
    stop: int


class DetokenizeResponse(BaseModel):
    """vLLM's DetokenizeResponse."""

    prompt: str


class ErrorBody(BaseModel):
    error: str = Field(description="What went wrong, naming the field and the limit.")
    error_type: str = Field(description="validation, bad_request, unauthorized, overloaded, ...")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens taken from the prefix cache (PREFIX_CACHE_TOKENS), not computed.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: parallel lists, one entry per token (with `echo`, the prompt's first)."""

    tokens: List[str]
    token_logprobs: List[Optional[float]]
    top_logprobs: List[Optional[Dict[str, float]]]
    text_offset: List[int]


class ChatTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: List[int]


class ChatContentLogprob(ChatTokenLogprob):
    top_logprobs: List[ChatTokenLogprob]


class ChatLogprobs(BaseModel):
    content: List[ChatContentLogprob]
    refusal: None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = Field(description="With `logprobs`; else null.")
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: List[CompletionChoice]
    usage: Usage


class CalledFunction(BaseModel):
    name: str
    arguments: str = Field(description="The arguments' JSON text (an object matching the tool's schema).")


class ToolCallMade(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: Optional[str] = Field(description="The text; null when the answer is only tool calls.")
    tool_calls: Optional[List[ToolCallMade]] = Field(None, description="With `tools`: the calls the answer made.")


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs] = Field(description="With `logprobs`; else null.")
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: List[ChatChoice]
    usage: Usage


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs]
    finish_reason: Optional[Literal["stop", "length"]]


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: None
    choices: List[CompletionChunkChoice]
    usage: Optional[Usage] = Field(None, description="In a last chunk, with stream_options.include_usage.")


class FunctionDelta(BaseModel):
    name: Optional[str] = Field(None, description="In a call's first delta.")
    arguments: str = Field(description="The next piece of the arguments' JSON text.")


class ToolCallDelta(BaseModel):
    index: int = Field(description="The call's place in the answer's calls.")
    id: Optional[str] = Field(None, description="In a call's first delta.")
    type: Optional[Literal["function"]] = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[List[ToolCallDelta]] = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: Optional[ChatLogprobs]
    finish_reason: Optional[Literal["stop", "length", "tool_calls"]]


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: None
    choices: List[ChatChunkChoice]
    usage: Optional[Usage] = Field(None, description="In a last chunk, with stream_options.include_usage.")


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: List[Model]


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class Info(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_id: str
    max_input_tokens: int
    max_total_tokens: int
    max_new_tokens_limit: int
    version: str


# -- the document ------------------------------------------------------------------------------------
_MODELS = [
    TGIRequest, PromptRequest, CompletionRequest, ChatCompletionRequest, GenerateResponse, StreamEvent, ErrorBody,
    OpenAIError, Completion, CompletionChunk, ChatCompletion, ChatCompletionChunk, ModelList, Health, Ready, Info,
    SimpleToken, DetokenizeRequest, DetokenizeResponse, *openapi_ollama.MODELS,
    *openapi_anthropic.MODELS, *openapi_embeddings.MODELS,
]


def _sse(*payloads: str, done: bool = False) -> dict:
    """An event stream (OpenAPI 3.1: the schema describes one event): each event's `data` is JSON,
    one of `payloads`; OpenAI's streams end with the literal `[DONE]`."""
    json_data = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"oneOf": [_ref(p) for p in payloads]},
    }
    data = {"anyOf": [json_data, {"const": "[DONE]"}]} if done else json_data
    event = {"type": "object", "properties": {"data": data, "event": {"type": "string"}}, "required": ["data"]}
    return {"text/event-stream": {"schema": event}}


# Statuses the tokenizer routes may answer besides 200: no engine, so no 429, 500 or 503.
_TOKENIZER_ERRORS = {
    "400": "Not JSON, or not an object",
    "401": "API_KEY is set and the request has no valid bearer key",
    "413": "Body larger than MAX_REQUEST_BYTES",
    "422": "A field breaks a rule (an id outside the vocabulary, too many tokens); the message names it",
}

# Statuses every generation route may answer besides 200 (413: body over MAX_REQUEST_BYTES).
_GENERATION_ERRORS = {
    "400": "Not JSON, or not an object",
    "401": "API_KEY is set and the request has no valid bearer key",
    "413": "Body larger than MAX_REQUEST_BYTES",
    "422": "A field breaks a rule; the message names it and the limit",
    "429": "MAX_CONCURRENT_REQUESTS reached; retry after Retry-After seconds",
    "500": "Generation failed (details in the server log)",
    "503": "Model not ready, or the request waited longer than QUEUE_TIMEOUT",
}


@functools.lru_cache(maxsize=4)  # a server has one set of limits: built once, not per request
def build_openapi(
    max_new_tokens: int,
    max_input_tokens: int,
    title: str = "textgen",
    max_total_tokens: Optional[int] = None,
    vocab_size: Optional[int] = None,
    max_best_of: int = 1,
    embedding_width: Optional[int] = None,
) -> Dict[str, Any]:
    """The document for this server: its own limits (MAX_NEW_TOKENS_LIMIT, the input tokens, and for
    /detokenize the total tokens and the vocabulary; the embeddings' width) are bounds in the schema, so
    a client or a fuzzer knows them before it asks."""
    schemas: Dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, part in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            # Two models of one name (a request's and a response's) would silently share one schema.
            assert schemas.setdefault(name, part) == part, f"two schemas named {name}"
    _drop_ambiguous_discriminators(schemas)
    schemas["TokenizeResponse"] = {"type": "array", "items": _ref("SimpleToken")}
    ids = schemas["DetokenizeRequest"]["properties"]["tokens"]
    if max_total_tokens is not None:
        ids["maxItems"] = max_total_tokens
    if vocab_size is not None:
        ids["items"]["maximum"] = vocab_size - 1
    for name, field in (("Parameters", "max_new_tokens"), ("PromptRequest", "max_new_tokens"),
                        ("CompletionRequest", "max_tokens"), ("ChatCompletionRequest", "max_tokens"),
                        ("ChatCompletionRequest", "max_completion_tokens"), ("MessagesRequest", "max_tokens")):
        _set_maximum(schemas[name]["properties"][field], max_new_tokens)
    _set_maximum(schemas["Options"]["properties"]["num_predict"], max_new_tokens)
    for name in ("Parameters", "PromptRequest"):
        _set_maximum(schemas[name]["properties"]["truncate"], max_input_tokens)
        _set_maximum(schemas[name]["properties"]["best_of"], max_best_of)
        # TGI's rule: several completions only by sampling (a server whose DEFAULT_DO_SAMPLE is false
        # also needs `do_sample` true, which no schema can say).
        schemas[name].setdefault("allOf", []).append({"anyOf": [{"properties": {"do_sample": {"not": {"const": False}}}}, _BEST_OF_ONE]})
    # ... and never when streaming: a stream is one completion.
    schemas["PromptRequest"]["allOf"].append({"anyOf": [{"properties": {"stream": {"const": False}}}, _BEST_OF_ONE]})
    schemas["TGIRequest"]["allOf"] = [{"anyOf": [{"properties": {"stream": {"const": False}}}, {"properties": {"parameters": _BEST_OF_ONE}}]}]
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        schemas[name]["properties"]["n"]["maximum"] = max_best_of
    openapi_embeddings.bound(schemas, max_input_tokens, vocab_size, embedding_width)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": __version__,
            "description": "Text generation with a Hugging Face causal language model: TGI's routes, "
            "OpenAI-compatible routes under /v1, Anthropic's Messages, Ollama's under /api, health, info and metrics.",
        },
        "paths": _paths(),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "Only when API_KEY is set."},
                                "api_key": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                            "description": "Anthropic's header for the same key (/v1/messages)."}},
        },
    }


def _drop_ambiguous_discriminators(node: Any) -> None:
    """A union's `discriminator` is a hint beside its exact `oneOf`; tools read its mapping as one tag per
    form (schemathesis pins each form's `type` to the tag mapped to it). Where one form takes two tags
    (TGI's `grammar`: `json` and its alias `json_object`), that reading has the document refuse a tag the
    server takes, so the hint goes and the `oneOf` alone says what is accepted."""
    if isinstance(node, dict):
        mapping = node.get("discriminator", {}).get("mapping", {})
        if len(set(mapping.values())) != len(mapping):
            del node["discriminator"]
        for value in node.values():
            _drop_ambiguous_discriminators(value)
    elif isinstance(node, list):
        for value in node:
            _drop_ambiguous_discriminators(value)


# An object whose `best_of`, if any, asks for one completion.
_BEST_OF_ONE = {"properties": {"best_of": {"anyOf": [{"type": "integer", "maximum": 1}, {"type": "null"}]}}}


def _set_maximum(field: dict, maximum: int) -> None:
    for variant in field.get("anyOf", [field]):
        if variant.get("type") == "integer":
            variant["maximum"] = maximum


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict:
    return {"application/json": {"schema": _ref(name)}}


def _errors(error_schema: str, statuses: Dict[str, str]) -> dict:
    return {code: {"description": text, "content": _json(error_schema)} for code, text in statuses.items()}


def _generation(summary: str, body: dict, ok: dict, error_schema: str = "ErrorBody", validation_status: str = "422"):
    statuses = dict(_GENERATION_ERRORS)
    if validation_status != "422":  # OpenAI's routes answer validation errors 400
        statuses.pop("422")
        statuses["400"] = "Not JSON, or a field breaks a rule; the message names it and the limit"
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "Generated", "content": ok}, **_errors(error_schema, statuses)},
        }
    }


def _paths() -> dict:
    tgi_body = {"oneOf": [_ref("TGIRequest"), _ref("PromptRequest")]}
    # /generate_stream streams whatever the body's `stream` says: one completion only.
    stream_body = {"oneOf": [{"allOf": [_ref("TGIRequest"), {"properties": {"parameters": _BEST_OF_ONE}}]},
                             {"allOf": [_ref("PromptRequest"), _BEST_OF_ONE]}]}
    tgi_stream = _sse("StreamEvent", "ErrorBody")
    paths = {
        "/generate": _generation("Generate text (TGI's form, or {\"prompt\": ...})", tgi_body, _json("GenerateResponse")),
        "/generate_stream": _generation("Generate, one Server-Sent Event per token", stream_body, tgi_stream),
        "/": _generation(
            "TGI's compat route: `stream` chooses the answer; a complete one is a list of one (as TGI's)",
            tgi_body,
            {"application/json": {"schema": {"type": "array", "items": _ref("GenerateResponse"), "minItems": 1, "maxItems": 1}},
             **tgi_stream},
        ),
        "/v1/completions": _generation(
            "OpenAI completions", _ref("CompletionRequest"), {**_json("Completion"), **_sse("CompletionChunk", "OpenAIError", done=True)}, "OpenAIError", "400"
        ),
        "/v1/chat/completions": _generation(
            "OpenAI chat completions (the model's chat template; 400 without one)",
            _ref("ChatCompletionRequest"),
            {**_json("ChatCompletion"), **_sse("ChatCompletionChunk", "OpenAIError", done=True)},
            "OpenAIError",
            "400",
        ),
        "/tokenize": _tokenizer(
            "The prompt's tokens as /generate would prefill them, with their UTF-8 byte offsets (TGI's)",
            tgi_body,
            "TokenizeResponse",
        ),
        "/detokenize": _tokenizer(
            "The text of token ids (vLLM's body and answer)", _ref("DetokenizeRequest"), "DetokenizeResponse"
        ),
        "/v1/models": {
            "get": {
                "summary": "The served model",
                "security": [{}, {"bearer": []}],
                "responses": {"200": {"description": "One model", "content": _json("ModelList")},
                              **_errors("OpenAIError", {"401": _GENERATION_ERRORS["401"]})},
            }
        },
        "/health": {
            "get": {
                "summary": "Liveness: model loaded and engine running",
                "responses": {"200": {"description": "Alive", "content": _json("Health")},
                              **_errors("ErrorBody", {"503": "The engine is not running"})},
            }
        },
        "/ready": {
            "get": {
                "summary": "Readiness: alive and not draining before shutdown (send traffic here)",
                "responses": {"200": {"description": "Ready", "content": _json("Ready")},
                              **_errors("ErrorBody", {"503": "Not ready; the error says why"})},
            }
        },
        "/info": {"get": {"summary": "Model, limits and versions", "responses": {"200": {"description": "Info", "content": _json("Info")}}}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "Text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/docs": _page("This document, readable (no external resources)"),
    }
    paths["/"]["get"] = _page("The playground: try the model in a browser")["get"]
    return {**paths, **openapi_ollama.paths(), **openapi_anthropic.paths(), **openapi_embeddings.paths()}


def _tokenizer(summary: str, body: dict, ok: str) -> dict:
    return {
        "post": {
            "summary": summary,
            "security": [{}, {"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "Done", "content": _json(ok)}, **_errors("ErrorBody", _TOKENIZER_ERRORS)},
        }
    }


def _page(summary: str) -> dict:
    html = {"text/html": {"schema": {"type": "string"}}}
    return {"get": {"summary": summary, "responses": {"200": {"description": "An HTML page", "content": html}}}}
