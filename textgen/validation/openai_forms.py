"""OpenAI's request forms (/v1/completions, /v1/chat/completions) -> the same `GenerationRequest`.

Pure like `validation`: each OpenAI body is checked against its own pydantic model (unknown fields are
rejected, bounds declared), then translated into TGI's parameters and handed to `validate_generate`,
so the server's defaults and limits apply exactly as on /generate. Messages name OpenAI's fields:
`max_tokens`, not the `max_new_tokens` it becomes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from ..errors import BadRequest, ValidationError
from ..settings import Settings
from .grammar import JsonSchemaConfig, RegexGrammar, SchemaValue
from .tgi import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    FieldNames,
    GenerationRequest,
    NonEmpty,
    OptionalInteger,
    _whole_number,
    parse_model,
    validate_generate,
)

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool = False


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json_object"]
    value: Annotated[
        Optional[SchemaValue],
        WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "null"}]}),
    ] = Field(None, description="TGI's form (huggingface_hub sends it): a JSON schema. Without: any JSON object.")


class JsonFormat(BaseModel):
    """TGI's `{"type": "json", "value": <schema>}`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json"]
    value: SchemaValue


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(description="The format's name (OpenAI requires one; not used here).")
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(None, alias="schema", description="The JSON schema; none: any JSON object.")
    strict: Optional[bool] = Field(None, description="Accepted; the schema is always enforced.")


class JsonSchemaFormat(BaseModel):
    """OpenAI's form (`json_schema`) or TGI's (`value`): one of them."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"oneOf": [{"required": ["json_schema"]}, {"required": ["value"]}]}
    )

    type: Literal["json_schema"]
    # Either may be left out, neither may be null: the defaults are None only to tell which was given.
    json_schema: JsonSchema = Field(None, description="OpenAI's form.")
    value: JsonSchemaConfig = Field(None, description="TGI's form.")


# OpenAI's three forms, and TGI's (its chat route takes `grammar`'s forms here: `json`, `regex`, and
# `json_object` / `json_schema` with a `value`), so that clients of either work unchanged.
ResponseFormat = Annotated[
    Union[TextFormat, JsonObjectFormat, JsonFormat, RegexGrammar, JsonSchemaFormat], Field(discriminator="type")
]

# `json_object`, and `json_schema` without a schema: any JSON object.
ANY_OBJECT = {"type": "object"}

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limits: completions' `logprobs`, chat's `top_logprobs`
MAX_TOP_LOGPROBS = 20


class _OpenAIOptions(BaseModel):
    """What both OpenAI routes share. Bounds are OpenAI's own (temperature 0-2, penalties -2..2)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    # One model per server: any name is accepted, as TGI does (GET /v1/models says which it is).
    model: Optional[str] = None
    max_tokens: OptionalInteger = Field(None, gt=0, description="Tokens to generate at most.")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0 = greedy.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    top_k: OptionalInteger = Field(None, gt=0, description="Not in OpenAI's API; vLLM's extension.")
    n: Annotated[int, Field(ge=1), BeforeValidator(_whole_number)] = Field(
        1, description="Completions of the prompt (prefilled once); at most MAX_BEST_OF (GET /info: `max_best_of`)."
    )
    stop: Union[NonEmpty, Annotated[List[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)], None] = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} sequences."
    )
    seed: OptionalInteger = Field(None, ge=0, le=MAX_SEED)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    presence_penalty: Optional[float] = Field(None, ge=0, le=0, description="Not supported: 0 only.")
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None  # an end-user id for the caller's own records; accepted and ignored
    response_format: Optional[ResponseFormat] = Field(
        None,
        description='Structured output: `{"type": "json_object"}` (any JSON object), `{"type": "json_schema", '
        '"json_schema": {"name", "schema"}}` (JSON matching the schema) or `{"type": "text"}` (no constraint).',
    )


class CompletionRequest(_OpenAIOptions):
    prompt: Union[NonEmpty, Annotated[List[NonEmpty], Field(min_length=1, max_length=1)]] = Field(
        description="The text to continue (or a list of exactly one)."
    )
    echo: bool = Field(False, description="Prepend the prompt to the completion (with `logprobs`: its tokens' too).")
    logprobs: OptionalInteger = Field(
        None, ge=0, le=MAX_COMPLETION_LOGPROBS,
        description="Each token's log-probability and this many most likely alternatives.",
    )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionRequest(_OpenAIOptions):
    # OpenAI's rule: `top_logprobs` only with `logprobs` true (the schema says so, as the check does).
    model_config = ConfigDict(
        json_schema_extra={"dependentSchemas": {"top_logprobs": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]}}}
    )

    messages: List[ChatMessage] = Field(min_length=1)
    logprobs: Optional[bool] = Field(None, description="Each generated token's log-probability.")
    top_logprobs: OptionalInteger = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="With `logprobs`: this many most likely alternatives per token."
    )


def completion_request(body: Any, settings: Settings) -> tuple[CompletionRequest, GenerationRequest]:
    parsed = _parse(CompletionRequest, body)
    prompt = parsed.prompt
    if isinstance(prompt, list):  # OpenAI's batch form, with the one prompt this route takes
        prompt = prompt[0]
    generation = _generation(prompt, parsed, settings, return_full_text=parsed.echo, chat=False)
    if parsed.logprobs is not None:
        generation = replace(
            generation, details=True, top_n_tokens=parsed.logprobs, decoder_input_details=parsed.echo
        )
    return parsed, generation


def chat_request(
    body: Any, settings: Settings, render: Callable[[list], str]
) -> tuple[ChatCompletionRequest, GenerationRequest]:
    """`render` turns the messages into the prompt with the model's chat template (the engine owns the
    tokenizer); it raises BadRequest when the model has none."""
    parsed = _parse(ChatCompletionRequest, body)
    if parsed.top_logprobs is not None and not parsed.logprobs:
        raise ValidationError("`top_logprobs` requires `logprobs` to be true", "top_logprobs")
    prompt = render([m.model_dump() for m in parsed.messages])
    generation = _generation(prompt, parsed, settings, return_full_text=False, chat=True)
    if parsed.logprobs:
        generation = replace(generation, details=True, top_n_tokens=parsed.top_logprobs or 0)
    return parsed, generation


def openai_fields(chat: bool) -> FieldNames:
    """OpenAI's names for the prompt and the token budget: what its clients sent, in every message."""
    return FieldNames(prompt="messages" if chat else "prompt", max_new_tokens="max_tokens", grammar="response_format")


def _parse(model: type[BaseModel], body: Any):
    if not isinstance(body, dict):
        raise BadRequest(f"Request body must be a JSON object, not {type(body).__name__}")
    return parse_model(model, body)


def _generation(prompt: str, o: _OpenAIOptions, settings: Settings, return_full_text: bool, chat: bool):
    if o.temperature == 0:  # OpenAI's greedy: no sampling parameters at all
        sampling: dict = {"do_sample": False}
    else:
        sampling = {"temperature": o.temperature, "top_p": o.top_p, "top_k": o.top_k}
        if any(v is not None for v in sampling.values()) or settings.default_do_sample:
            sampling["do_sample"] = True
    parameters = {
        "max_new_tokens": o.max_tokens,
        "stop": [o.stop] if isinstance(o.stop, str) else (o.stop or []),
        "seed": o.seed,
        "frequency_penalty": o.frequency_penalty,
        "return_full_text": return_full_text,
        **sampling,
    }
    parameters["grammar"] = _grammar(o.response_format)
    parameters = {k: v for k, v in parameters.items() if v is not None}
    body = {"inputs": prompt, "parameters": parameters}
    generation = validate_generate(body, settings, stream=o.stream, fields=openai_fields(chat))
    if o.n > settings.best_of_limit:
        raise ValidationError(f"`n` must be <= {settings.best_of_limit}. Given: {o.n}", "n")
    return replace(generation, n=o.n)



def _grammar(response_format) -> Optional[dict]:
    """`response_format` as TGI's `grammar` (None: no constraint)."""
    if response_format is None or isinstance(response_format, TextFormat):
        return None
    if isinstance(response_format, JsonObjectFormat):
        return {"type": "json", "value": ANY_OBJECT if response_format.value is None else response_format.value}
    if isinstance(response_format, (JsonFormat, RegexGrammar)):
        return response_format.model_dump()
    if response_format.json_schema is not None and response_format.value is not None:
        raise ValidationError("Give `response_format.json_schema` (OpenAI's form) or `value` (TGI's), not both", "response_format")
    if response_format.json_schema is not None:
        schema = response_format.json_schema.schema_
        return {"type": "json", "value": ANY_OBJECT if schema is None else schema}
    if response_format.value is not None:
        return {"type": "json_schema", "value": response_format.value.model_dump(by_alias=True, exclude_none=True)}
    raise ValidationError("`response_format.json_schema` is required", "response_format.json_schema")
