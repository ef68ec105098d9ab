"""Anthropic's Messages routes in the OpenAPI document (openapi.py assembles it): their answers' models
and paths.

Request bodies are the forms the routes validate with (`validation.anthropic_forms`). A streamed answer
is server-sent events, each `event: <type>` with a `MessageEvent` (or, after the stream began, an
`AnthropicError`). Statuses are Anthropic's: a broken rule is a 400, a queue timeout or no engine a 529.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ...validation.anthropic_forms import CountTokensRequest, MessagesRequest


class AnthropicText(BaseModel):
    type: Literal["text"]
    text: str


class AnthropicToolUse(BaseModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: Dict[str, Any] = Field(description="The call's input, matching the tool's `input_schema`.")


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class MessageResponse(BaseModel):
    """Anthropic's answer (POST /v1/messages)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: List[Annotated[Union[AnthropicText, AnthropicToolUse], Field(discriminator="type")]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: Optional[str]
    usage: AnthropicUsage


class MessageEvent(BaseModel):
    """One of Anthropic's stream events; its `type` is also the SSE `event:` name."""

    model_config = ConfigDict(extra="allow")

    type: Literal["message_start", "content_block_start", "ping", "content_block_delta", "content_block_stop",
                  "message_delta", "message_stop", "error"]


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


class TokenCount(BaseModel):
    input_tokens: int


MODELS = [MessagesRequest, CountTokensRequest, MessageResponse, MessageEvent, AnthropicError, TokenCount]

_ERRORS = {
    "400": "Not JSON, or a field breaks a rule (the message names it); the model has no chat template",
    "401": "API_KEY is set and the request has no valid key (bearer or x-api-key)",
    "413": "Body larger than MAX_REQUEST_BYTES",
    "429": "MAX_CONCURRENT_REQUESTS reached; retry after Retry-After seconds",
    "500": "Generation failed (details in the server log)",
    "529": "Model not ready, or the request waited longer than QUEUE_TIMEOUT",
}


def _json(name: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _post(summary: str, body: str, ok: dict) -> dict:
    errors = {code: {"description": text, **{"content": _json("AnthropicError")}} for code, text in _ERRORS.items()}
    return {"post": {
        "summary": summary,
        "security": [{}, {"bearer": []}, {"api_key": []}],
        "requestBody": {"required": True, "content": _json(body)},
        "responses": {"200": {"description": "Done", "content": ok}, **errors},
    }}


def _events() -> dict:
    data = {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [{"$ref": "#/components/schemas/MessageEvent"}, {"$ref": "#/components/schemas/AnthropicError"}]}}
    event = {"type": "object", "properties": {"data": data, "event": {"type": "string"}}, "required": ["data"]}
    return {"text/event-stream": {"schema": event}}


def paths() -> dict:
    return {
        "/v1/messages": _post("Anthropic's Messages (the model's chat template; 400 without one)", "MessagesRequest",
                              {**_json("MessageResponse"), **_events()}),
        "/v1/messages/count_tokens": _post("The tokens /v1/messages would prefill for the same conversation",
                                           "CountTokensRequest", _json("TokenCount")),
    }
