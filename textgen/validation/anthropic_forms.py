"""Anthropic's Messages form (POST /v1/messages, /v1/messages/count_tokens) -> the one `GenerationRequest`.

Pure like `validation`: the body is checked against its pydantic model (unknown fields refused, bounds
declared: Anthropic's `temperature` is 0..1, `max_tokens` required), its messages rendered with the
model's chat template (`system` first, as a system turn), and mapped field by field into
`request.generation_request`, so the server's defaults and limits apply as on every other route.

Text only: `tools` and any content block other than `text` (images, documents, `tool_use`,
`tool_result`) are refused with a message naming them, not silently dropped. A last `assistant` turn is
Anthropic's prefill: the answer continues it.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..settings import Settings
from .body import NonEmpty, OptionalInteger, json_object, parse_model, whole_number
from .messages import invalid
from .request import MAX_STOP_SEQUENCES, FieldNames, GenerationRequest, generation_request

ANTHROPIC_FIELDS = FieldNames(prompt="messages", max_new_tokens="max_tokens", grammar="grammar", n="n", top_n="top_n")


class AnthropicTextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str
    # Labels that ask nothing of a local model: accepted, whatever they say.
    cache_control: Optional[Dict[str, Any]] = None
    citations: Optional[List[Any]] = None


Content = Union[str, List[AnthropicTextBlock]]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "assistant"]
    content: Content


class _Prompt(BaseModel):
    """What both routes read: the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # One model per server: any name is accepted (GET /v1/models says which it is).
    model: str
    messages: List[AnthropicMessage] = Field(min_length=1)
    system: Optional[Content] = None
    # The schema says "none" (maxItems 0); the check says why (`_parse`), not pydantic's "at most 0 items".
    tools: Optional[List[Any]] = Field(None, description="Not supported yet: refused unless empty.", json_schema_extra={"maxItems": 0})
    tool_choice: Optional[Dict[str, Any]] = Field(None, description="Accepted only without tools.")


class MessagesRequest(_Prompt):
    max_tokens: Annotated[int, BeforeValidator(whole_number)] = Field(gt=0, description="Tokens to generate at most (required).")
    temperature: Optional[float] = Field(None, ge=0, le=1, description="0 = greedy.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: OptionalInteger = Field(None, gt=0)
    stop_sequences: Optional[List[NonEmpty]] = Field(None, max_length=MAX_STOP_SEQUENCES)
    stream: bool = False
    # Labels for the caller's records or Anthropic's own service, asking nothing of the generation here:
    # accepted, whatever they say.
    metadata: Optional[Dict[str, Any]] = None
    cache_control: Optional[Dict[str, Any]] = Field(None, description="Accepted: the prefix cache needs no marks.")
    service_tier: Optional[str] = None


class CountTokensRequest(_Prompt):
    pass


def messages_request(body: Any, settings: Settings, render: Callable[[list], str]) -> tuple[MessagesRequest, GenerationRequest]:
    """`render` turns chat messages into the prompt with the model's chat template (the engine owns the
    tokenizer); it raises BadRequest when the model has none."""
    parsed = _parse(MessagesRequest, body)
    greedy = parsed.temperature == 0
    sampled = dict(temperature=parsed.temperature, top_p=parsed.top_p, top_k=parsed.top_k) if not greedy else {}
    generation = generation_request(
        settings,
        ANTHROPIC_FIELDS,
        prompt=prompt_text(parsed, render),
        stream=parsed.stream,
        max_new_tokens=parsed.max_tokens,
        do_sample=False if greedy else None,
        stop=parsed.stop_sequences or [],
        **sampled,
    )
    return parsed, generation


def count_request(body: Any, settings: Settings, render: Callable[[list], str]) -> GenerationRequest:
    """/v1/messages/count_tokens: the prompt /v1/messages would prefill for the same conversation."""
    parsed = _parse(CountTokensRequest, body)
    return generation_request(settings, ANTHROPIC_FIELDS, prompt=prompt_text(parsed, render), stream=False, max_new_tokens=1)


def prompt_text(parsed: _Prompt, render: Callable[[list], str]) -> str:
    turns = [{"role": m.role, "content": _text(m.content)} for m in parsed.messages]
    if parsed.system is not None:
        turns.insert(0, {"role": "system", "content": _text(parsed.system)})
    if turns[-1]["role"] == "assistant" and len(turns) > 1:  # prefill: the answer continues this text
        return render(turns[:-1]) + turns[-1]["content"]
    return render(turns)


def _parse(model: type, body: Any):
    _refuse_what_is_not_text(json_object(body))
    parsed = parse_model(model, body)
    if parsed.tools:
        raise invalid("unsupported_feature", "tools", name="tools", what="tool use")
    return parsed


def _refuse_what_is_not_text(body: dict) -> None:
    """Content blocks other than text, named with their place, before pydantic says only "not text"."""
    places = [("system", body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        places += [(f"messages[{i}].content", m.get("content")) for i, m in enumerate(messages) if isinstance(m, dict)]
    for place, content in places:
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise invalid("unsupported_block", place, name=f"{place}[{j}]", kind=kind)


def _text(content: Content) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)
