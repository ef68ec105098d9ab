"""OpenAI's request forms (/v1/completions, /v1/chat/completions) -> the one `GenerationRequest`.

Pure like `validation`: each OpenAI body is checked against its own pydantic model (unknown fields are
rejected, bounds declared), then mapped field by field into `request.generation_request`, so the
server's defaults and limits apply exactly as on /generate. Messages name OpenAI's fields: `max_tokens`
(or `max_completion_tokens`), not the `max_new_tokens` it becomes.

OpenAI's API has fields that mean nothing here (audio, service tiers...). Its clients send some
with their neutral values (LangChain's structured output sends `parallel_tool_calls: false`), so each is
accepted with those values (`_neutral`: the OpenAPI document lists them too) and refused otherwise,
with a message naming the field: silently ignoring a feature asked for would answer something else.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..settings import Settings
from .body import NonEmpty, OptionalInteger, parse_model, whole_number
from .messages import given, invalid
from .request import MAX_SEED, MAX_STOP_SEQUENCES, MAX_TOP_N, FieldNames, GenerationRequest, generation_request
from .response_format import ResponseFormat, TextFormat, grammar_form
from .tools import NAME_SCHEMA, Tool, ToolChoice, ToolUse, tool_use, tools_required_when


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


# OpenAI's published bounds on the alternatives per token, within what the engine lists (MAX_TOP_N).
MAX_COMPLETION_LOGPROBS = min(5, MAX_TOP_N)  # completions' `logprobs`
MAX_TOP_LOGPROBS = min(20, MAX_TOP_N)  # chat's `top_logprobs`


def _neutral(*values: Any) -> Any:
    """A field of OpenAI's that means nothing here: accepted with `values` only (its neutral ones; the
    schema lists them), refused otherwise by `_reject_non_neutral`, naming the field."""
    return Field(
        None, description=f"Not supported here: accepted as {_shown(values)} only.",
        json_schema_extra={"enum": list(values), "x-neutral": True},
    )


def _shown(values) -> str:
    return " or ".join(json.dumps(v) for v in values)


class _OpenAIOptions(BaseModel):
    """What both OpenAI routes share. Bounds are OpenAI's own (temperature 0-2, penalties -2..2)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # One model per server: any name is accepted, as TGI does (GET /v1/models says which it is).
    model: Optional[str] = None
    max_tokens: OptionalInteger = Field(None, gt=0, description="Tokens to generate at most.")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: OptionalInteger = Field(None, gt=0, description="Not in OpenAI's API; vLLM's extension.")
    n: Annotated[int, Field(ge=1), BeforeValidator(whole_number)] = Field(
        1, description="Completions of the prompt (prefilled once); at most MAX_BEST_OF (GET /info: `max_best_of`)."
    )
    stop: Union[NonEmpty, Annotated[List[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)], None] = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} sequences."
    )
    seed: OptionalInteger = Field(None, ge=0, le=MAX_SEED)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # an end-user id for the caller's own records; accepted and ignored
    response_format: Optional[ResponseFormat] = Field(
        None,
        description='Structured output: `{"type": "json_object"}` (any JSON object), `{"type": "json_schema", '
        '"json_schema": {"name", "schema"}}` (JSON matching the schema) or `{"type": "text"}` (no constraint).',
    )
    presence_penalty: Optional[float] = _neutral(None, 0)
    logit_bias: Optional[Dict[str, Any]] = _neutral(None, {})


class CompletionRequest(_OpenAIOptions):
    prompt: Union[NonEmpty, Annotated[List[NonEmpty], Field(min_length=1, max_length=1)]] = Field(
        description="The text to continue (or a list of exactly one)."
    )
    echo: bool = Field(False, description="Prepend the prompt to the completion (with `logprobs`: its tokens' too).")
    logprobs: OptionalInteger = Field(
        None, ge=0, le=MAX_COMPLETION_LOGPROBS,
        description="Each token's log-probability and this many most likely alternatives.",
    )
    best_of: OptionalInteger = _neutral(None, 1)
    suffix: Optional[str] = _neutral(None, "")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]
    text: str


Content = Union[str, List[TextPart]]  # a string, or text parts (joined)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    arguments: str = Field(description="The arguments' JSON text (an object).")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatSystemMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system"]
    content: Content
    name: Optional[str] = None


class ChatDeveloperMessage(ChatSystemMessage):
    role: Literal["developer"]  # OpenAI's newer name for the system turn (one tag per form: see openapi.py)


class ChatUserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user"]
    content: Content
    name: Optional[str] = None


class ChatAssistantMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["assistant"]
    content: Optional[Content] = Field(None, description="None when the turn only called tools.")
    tool_calls: Optional[List[ToolCall]] = None
    name: Optional[str] = None
    refusal: Optional[str] = None


class ChatToolMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["tool"]
    content: Content
    tool_call_id: str = Field(description="The call this answers (an assistant turn's `tool_calls[].id`).")


ChatMessage = Annotated[
    Union[ChatSystemMessage, ChatDeveloperMessage, ChatUserMessage, ChatAssistantMessage, ChatToolMessage], Field(discriminator="role")
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(json_schema_extra=NAME_SCHEMA)
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = Field(None, description="The arguments' JSON schema (an object).")
    strict: Optional[bool] = Field(None, description="Accepted; the schema is always enforced.")


class ChatTool(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: FunctionTool

    def tool(self) -> Tool:
        return Tool(self.function.name, self.function.description or "", self.function.parameters)


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_OpenAIOptions):
    # OpenAI's rule: `top_logprobs` only with `logprobs` true (the schema says so, as the check does).
    model_config = ConfigDict(
        json_schema_extra={"dependentSchemas": {
            "top_logprobs": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]},
            **tools_required_when({"anyOf": [{"const": "required"}, {"type": "object"}]}),
        }}
    )

    messages: List[ChatMessage] = Field(min_length=1)
    max_completion_tokens: OptionalInteger = Field(
        None, gt=0, description="Tokens to generate at most: OpenAI's current name of `max_tokens` (if both, the same)."
    )
    logprobs: Optional[bool] = Field(None, description="Each generated token's log-probability.")
    top_logprobs: OptionalInteger = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With `logprobs`: this many most likely alternatives per token."
    )
    # Labels for the caller's records, asking nothing of the generation: accepted, whatever they say.
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = Field(None, description="Accepted: the prefix cache needs no key.")
    metadata: Optional[Dict[str, str]] = None
    tools: Optional[List[ChatTool]] = Field(None, description="Functions the model may call.")
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = Field(
        None, description='"auto" (the default with tools), "none", "required" (at least one call) or a named function.'
    )
    parallel_tool_calls: Optional[bool] = Field(None, description="Several calls in one answer (default true).")
    functions: Optional[List[Any]] = _neutral(None, [])
    function_call: Optional[Union[str, Dict[str, Any]]] = _neutral(None, "none", "auto")
    # Text in, text out, nothing kept, one service level, no reasoning model.
    modalities: Optional[List[str]] = _neutral(None, ["text"])
    audio: Optional[Dict[str, Any]] = _neutral(None)
    prediction: Optional[Dict[str, Any]] = _neutral(None)
    store: Optional[bool] = _neutral(None, False)
    service_tier: Optional[str] = _neutral(None, "auto", "default")
    reasoning_effort: Optional[str] = _neutral(None, "none")
    verbosity: Optional[str] = _neutral(None, "medium")
    web_search_options: Optional[Dict[str, Any]] = _neutral(None)
    prompt_cache_retention: Optional[str] = _neutral(None, "in_memory")


def completion_request(body: Any, settings: Settings) -> tuple[CompletionRequest, GenerationRequest]:
    parsed = parse_model(CompletionRequest, body)
    _reject_non_neutral(parsed)
    prompt = parsed.prompt
    if isinstance(prompt, list):  # OpenAI's batch form, with the one prompt this route takes
        prompt = prompt[0]
    logprobs = parsed.logprobs is not None
    generation = _generation(
        prompt, parsed, settings, openai_fields(chat=False), parsed.max_tokens,
        return_full_text=parsed.echo, logprobs=logprobs, top_n=parsed.logprobs or 0,
        decoder_input_details=logprobs and parsed.echo,
    )
    return parsed, generation


def chat_request(
    body: Any, settings: Settings, render: Callable[..., str]
) -> tuple[ChatCompletionRequest, GenerationRequest, ToolUse]:
    """`render(messages, tools=)` turns the messages into the prompt with the model's chat template (the
    engine owns the tokenizer); it raises BadRequest when the model has none."""
    parsed = parse_model(ChatCompletionRequest, body)
    _reject_non_neutral(parsed)
    if parsed.top_logprobs is not None and not parsed.logprobs:
        raise invalid("requires_true", "top_logprobs", name="top_logprobs", other="logprobs")
    budget, max_new_tokens = _token_budget(parsed)
    tools = chat_tools(parsed, settings)
    if tools.active and parsed.response_format is not None and not isinstance(parsed.response_format, TextFormat):
        raise invalid("one_constraint", "response_format", name="response_format", other="tools")
    prompt = render(chat_messages(parsed.messages), tools=tools.shown)
    generation = _generation(
        prompt, parsed, settings, openai_fields(chat=True, budget=budget, tools=tools.active), max_new_tokens,
        return_full_text=False, logprobs=bool(parsed.logprobs), top_n=parsed.top_logprobs or 0,
        grammar=tools.grammar,
    )
    return parsed, generation, tools


def chat_tools(parsed: ChatCompletionRequest, settings: Settings) -> ToolUse:
    """`tools`, `tool_choice` and `parallel_tool_calls` as the one `ToolUse` of every protocol."""
    tools = [t.tool() for t in parsed.tools or ()]
    choice = parsed.tool_choice or ("auto" if tools else "none")
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    mode = "named" if named is not None else choice
    parallel = parsed.parallel_tool_calls is not False
    return tool_use(tools, ToolChoice(mode, named, parallel), "tools", settings.max_grammar_bytes, "tool_choice")


def chat_messages(messages: List[ChatMessage]) -> List[dict]:
    """OpenAI's turns in the one form the chat template takes (`tool_prompt`): text parts joined, a
    call's arguments as an object, a tool turn named after the call it answers."""
    names = {}
    turns = []
    for i, message in enumerate(messages):
        turn = {"role": "system" if message.role == "developer" else message.role, "content": _text(message.content)}
        if isinstance(message, ChatAssistantMessage) and message.tool_calls:
            turn["tool_calls"] = [_past_call(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(message.tool_calls)]
            names.update((call.id, call.function.name) for call in message.tool_calls)
        if isinstance(message, ChatToolMessage):
            turn.update(tool_call_id=message.tool_call_id, name=names.get(message.tool_call_id, ""))
        turns.append(turn)
    return turns


def _past_call(call: ToolCall, place: str) -> dict:
    try:
        arguments = json.loads(call.function.arguments or "{}")
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise invalid("json_object_text", f"{place}.function.arguments", name=f"{place}.function.arguments")
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _text(content: Optional[Content]) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(part.text for part in content)


def openai_fields(chat: bool, budget: str = "max_tokens", tools: bool = False) -> FieldNames:
    """OpenAI's names for the request's fields: what its clients sent, in every message. `budget`: the
    token budget's, `max_tokens` or (chat) `max_completion_tokens`; `tools`: the tools' grammar holds
    the answer (not `response_format`)."""
    return FieldNames(
        prompt="messages" if chat else "prompt",
        max_new_tokens=budget,
        grammar="tools" if tools else "response_format",
        n="n",
        top_n="top_logprobs" if chat else "logprobs",
    )


def _token_budget(parsed: ChatCompletionRequest) -> tuple[str, Optional[int]]:
    """Chat's token budget under either of its names, and the name the client used."""
    old, new = parsed.max_tokens, parsed.max_completion_tokens
    if old is not None and new is not None and old != new:
        raise invalid("same_or_one", "max_completion_tokens", name="max_completion_tokens", other="max_tokens",
                      given=new, other_given=old)
    return ("max_completion_tokens", new) if new is not None else ("max_tokens", old)


def _reject_non_neutral(parsed: _OpenAIOptions) -> None:
    for name, info in type(parsed).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("x-neutral"):
            value, neutral = getattr(parsed, name), extra["enum"]
            # Compared with their types (True == 1 in Python), but 0.0 is 0 as JSON has it.
            if not any((value == v and type(value) is type(v)) or value == v == 0 for v in neutral):
                raise invalid("unsupported_value", name, name=name, neutral=_shown(neutral), given=given(value))


def _generation(
    prompt: str, o: _OpenAIOptions, settings: Settings, fields: FieldNames, max_new_tokens: Optional[int],
    return_full_text: bool, logprobs: bool, top_n: int, decoder_input_details: bool = False, grammar=None,
) -> GenerationRequest:
    greedy = o.temperature == 0  # OpenAI's greedy: no sampling parameters at all
    sampled = dict(temperature=o.temperature, top_p=o.top_p, top_k=o.top_k) if not greedy else {}
    return generation_request(
        settings,
        fields,
        prompt=prompt,
        stream=o.stream,
        max_new_tokens=max_new_tokens,
        do_sample=False if greedy else None,
        seed=o.seed,
        frequency_penalty=o.frequency_penalty,
        stop=[o.stop] if isinstance(o.stop, str) else (o.stop or []),
        return_full_text=return_full_text,
        details=logprobs,  # OpenAI's `logprobs` asked for them: the engine's `details`
        decoder_input_details=decoder_input_details,
        top_n_tokens=top_n if logprobs else 0,
        grammar=grammar or grammar_form(o.response_format),
        n=o.n,
        **sampled,
    )
