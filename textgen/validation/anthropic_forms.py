"""Anthropic's Messages form (POST /v1/messages, /v1/messages/count_tokens) -> the one `GenerationRequest`.

Pure like `validation`: the body is checked against its pydantic model (unknown fields refused, bounds
declared: Anthropic's `temperature` is 0..1, `max_tokens` required), its messages rendered with the
model's chat template (`system` first, as a system turn), and mapped field by field into
`request.generation_request`, so the server's defaults and limits apply as on every other route.

Text and tools: `text`, `tool_use` and `tool_result` blocks; any other (images, documents, thinking) is
refused with a message naming it, not silently dropped, as are Anthropic's server tools (web search,
code execution...). `tools` and `tool_choice` become the one `ToolUse` of every protocol
(`validation/tools.py`). A last `assistant` turn is Anthropic's prefill: the answer continues it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..settings import Settings
from .body import NonEmpty, OptionalInteger, json_object, parse_model, whole_number
from .messages import invalid
from .request import MAX_STOP_SEQUENCES, FieldNames, GenerationRequest, generation_request
from .tools import NAME_SCHEMA, Tool, ToolChoice, ToolUse, tool_use, tools_required_when

ANTHROPIC_FIELDS = FieldNames(prompt="messages", max_new_tokens="max_tokens", grammar="grammar", n="n", top_n="top_n")
ANTHROPIC_TOOL_FIELDS = FieldNames(prompt="messages", max_new_tokens="max_tokens", grammar="tools", n="n", top_n="top_n")


class AnthropicTextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str
    # Labels that ask nothing of a local model: accepted, whatever they say.
    cache_control: Optional[Dict[str, Any]] = None
    citations: Optional[List[Any]] = None


class ToolUseBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["tool_use"]
    id: str
    name: str
    input: Dict[str, Any]
    cache_control: Optional[Dict[str, Any]] = None


class ToolResultBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, List[AnthropicTextBlock], None] = None
    is_error: Optional[bool] = Field(None, description="Shown to the model as the result's text says it.")
    cache_control: Optional[Dict[str, Any]] = None


Block = Annotated[Union[AnthropicTextBlock, ToolUseBlock, ToolResultBlock], Field(discriminator="type")]
Content = Union[str, List[Block]]
SystemContent = Union[str, List[AnthropicTextBlock]]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "assistant"]
    content: Content


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Optional[Literal["custom"]] = Field(None, description="Client tools only (Anthropic's server tools are not served).")
    name: str = Field(json_schema_extra=NAME_SCHEMA)
    description: Optional[str] = None
    input_schema: Dict[str, Any] = Field(description="The input's JSON schema (an object).")
    cache_control: Optional[Dict[str, Any]] = None


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={
        "if": {"properties": {"type": {"const": "tool"}}}, "then": {"required": ["name"], "properties": {"name": {"type": "string"}}}})

    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = Field(None, description="The tool, with `tool`.")
    disable_parallel_tool_use: Optional[bool] = None


class _Prompt(BaseModel):
    """What both routes read: the conversation and its tools."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra={"dependentSchemas": tools_required_when(
        {"type": "object", "properties": {"type": {"enum": ["any", "tool"]}}, "required": ["type"]})})

    # One model per server: any name is accepted (GET /v1/models says which it is).
    model: str
    messages: List[AnthropicMessage] = Field(min_length=1)
    system: Optional[SystemContent] = None
    tools: Optional[List[AnthropicTool]] = None
    tool_choice: Optional[AnthropicToolChoice] = Field(None, description='Default `{"type": "auto"}` with tools.')


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


def messages_request(
    body: Any, settings: Settings, render: Callable[..., str]
) -> tuple[MessagesRequest, GenerationRequest, ToolUse]:
    """`render(messages, tools=)` turns chat messages into the prompt with the model's chat template (the
    engine owns the tokenizer); it raises BadRequest when the model has none."""
    parsed = _parse(MessagesRequest, body)
    tools = anthropic_tools(parsed, settings)
    greedy = parsed.temperature == 0
    sampled = dict(temperature=parsed.temperature, top_p=parsed.top_p, top_k=parsed.top_k) if not greedy else {}
    generation = generation_request(
        settings,
        ANTHROPIC_TOOL_FIELDS if tools.active else ANTHROPIC_FIELDS,
        prompt=prompt_text(parsed, render, tools),
        stream=parsed.stream,
        max_new_tokens=parsed.max_tokens,
        do_sample=False if greedy else None,
        stop=parsed.stop_sequences or [],
        grammar=tools.grammar,
        **sampled,
    )
    return parsed, generation, tools


def count_request(body: Any, settings: Settings, render: Callable[..., str]) -> GenerationRequest:
    """/v1/messages/count_tokens: the prompt /v1/messages would prefill for the same conversation."""
    parsed = _parse(CountTokensRequest, body)
    prompt = prompt_text(parsed, render, anthropic_tools(parsed, settings))
    return generation_request(settings, ANTHROPIC_FIELDS, prompt=prompt, stream=False, max_new_tokens=1)


def anthropic_tools(parsed: _Prompt, settings: Settings) -> ToolUse:
    tools = [Tool(t.name, t.description or "", t.input_schema) for t in parsed.tools or ()]
    choice = parsed.tool_choice or AnthropicToolChoice(type="auto" if tools else "none")
    mode = {"any": "required", "tool": "named"}.get(choice.type, choice.type)
    if mode == "named" and not choice.name:
        raise invalid("missing", "tool_choice.name", name="tool_choice.name")
    parallel = not choice.disable_parallel_tool_use
    return tool_use(tools, ToolChoice(mode, choice.name, parallel), "tools", settings.max_grammar_bytes, "tool_choice")


def prompt_text(parsed: _Prompt, render: Callable[..., str], tools: ToolUse) -> str:
    turns = [turn for m in parsed.messages for turn in _turns(m)]
    if parsed.system is not None:
        turns.insert(0, {"role": "system", "content": _text(parsed.system)})
    last = turns[-1]
    if last["role"] == "assistant" and not last.get("tool_calls") and len(turns) > 1:  # prefill: the answer continues it
        return render(turns[:-1], tools=tools.shown) + last["content"]
    return render(turns, tools=tools.shown)


def _turns(message: AnthropicMessage) -> List[dict]:
    """One Anthropic message as the turns of the one chat form (`tool_prompt`): an assistant's `tool_use`
    blocks are its calls; a user's `tool_result` blocks are `tool` turns, before the text it holds."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    text = "".join(b.text for b in message.content if isinstance(b, AnthropicTextBlock))
    if message.role == "assistant":
        calls = [{"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}}
                 for b in message.content if isinstance(b, ToolUseBlock)]
        return [{"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}]
    results = [{"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b)}
               for b in message.content if isinstance(b, ToolResultBlock)]
    return results + ([{"role": "user", "content": text}] if text or not results else [])


def _result_text(block: ToolResultBlock) -> str:
    text = _text(block.content or "")
    return f"Error: {text}" if block.is_error else text


def _parse(model: type, body: Any):
    _refuse_unsupported_blocks(json_object(body))
    return parse_model(model, body)


SUPPORTED_BLOCKS = {"text", "tool_use", "tool_result"}


def _refuse_unsupported_blocks(body: dict) -> None:
    """Content blocks this server does not take (images, documents, thinking...) and server tools,
    named with their place, before pydantic says only "not one of the kinds"."""
    places = [("system", body.get("system"))]
    messages = body.get("messages")
    if isinstance(messages, list):
        places += [(f"messages[{i}].content", m.get("content")) for i, m in enumerate(messages) if isinstance(m, dict)]
    for place, content in places:
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            kind = block.get("type") if isinstance(block, dict) else None
            if isinstance(kind, str) and kind not in (SUPPORTED_BLOCKS if place != "system" else {"text"}):
                raise invalid("unsupported_block", place, name=f"{place}[{j}]", kind=kind)
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind not in (None, "custom"):
            raise invalid("unsupported_feature", f"tools[{i}]", name=f"tools[{i}]", what=f"the server tool {json.dumps(kind)}")


def _text(content) -> str:
    return content if isinstance(content, str) else "".join(block.text for block in content)
