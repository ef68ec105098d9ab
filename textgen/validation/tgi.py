"""Request validation: JSON body -> one `GenerationRequest`, or a named error. Pure: no Flask, no torch.

Two body forms are accepted:
- the seed's flat form: ``{"prompt": "...", "max_new_tokens": 20, ...}`` (parameters beside the prompt);
- Text Generation Inference's form: ``{"inputs": "...", "parameters": {...}, "stream": false}``.
Messages use TGI's wording, naming the field and the limit: "`max_new_tokens` must be <= 512. Given: 100000".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, List, Optional

import pydantic
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..errors import BadRequest, ValidationError
from ..settings import Settings
from .grammar import Grammar, GrammarSpec, grammar_spec

MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5  # TGI's default `--max-top-n-tokens`
MAX_SEED = 2**64 - 1


def _whole_number(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer, and so do JSON encoders that write every number as a float;
    # 5.5 and true still fail the strict check after this.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema means it: 5 or 5.0 (or null). The validator wraps the Optional, so that
# bounds given with Field() still reach the JSON Schema as exclusiveMinimum/maximum.
OptionalInteger = Annotated[Optional[int], BeforeValidator(_whole_number)]

# A string that must have something in it (prompts, stop sequences); the schema says so too.
NonEmpty = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True)
class FieldNames:
    """What the client called the prompt and the token budget, so that messages name its own fields."""

    prompt: str = "inputs"
    max_new_tokens: str = "max_new_tokens"
    grammar: str = "grammar"


TGI_FIELDS = FieldNames()


@dataclass(frozen=True)
class GenerationRequest:
    """A request with every default applied and every limit that needs no tokenizer checked."""

    prompt: str
    max_new_tokens: int
    do_sample: bool
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    typical_p: float = 1.0  # 1.0: no typical filtering
    repetition_penalty: float = 1.0  # 1.0: none
    frequency_penalty: float = 0.0  # 0.0: none
    seed: Optional[int] = None  # None: the engine draws one (and reports it in details)
    stop: tuple = ()
    return_full_text: bool = False
    truncate: Optional[int] = None  # keep only the last N prompt tokens
    details: bool = False  # the answer lists every generated token with its log-probability
    stream: bool = False
    grammar: Optional[GrammarSpec] = None  # structured output: the tokens are constrained to it
    top_n_tokens: int = 0  # each generated token's most likely alternatives (with `details` or a stream)
    n: int = 1  # completions of the prompt, each a row of the batch (OpenAI's `n`, TGI's `best_of`)
    pick_best: bool = False  # TGI's `best_of`: answer with the likeliest of the n, the others in details
    decoder_input_details: bool = False  # the prompt's tokens with their log-probabilities (with `details`)

    @property
    def scores_prompt(self) -> bool:
        """The answer lists the prompt's tokens with their log-probabilities (every position's logits
        are computed: no prefix is taken from the prefix cache)."""
        return self.decoder_input_details and self.details


class Parameters(BaseModel):
    """TGI's `parameters` object. Bounds declared here also feed the OpenAPI schema."""

    # NaN and Infinity are valid JSON for Python's parser, but no valid value for any parameter.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: OptionalInteger = Field(None, gt=0)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = Field(None, gt=0)
    top_k: OptionalInteger = Field(None, gt=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    typical_p: Optional[float] = Field(None, gt=0, le=1)
    # Bounded both ways: the penalty divides or multiplies logits, and near 0 (5e-324, found by the
    # schema fuzz) it overflows them to inf and sampling to NaN. 1.0 is off; 1.1-1.3 is typical.
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=100)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: OptionalInteger = Field(None, ge=0, le=MAX_SEED)
    stop: List[NonEmpty] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    return_full_text: Optional[bool] = None
    truncate: OptionalInteger = Field(None, gt=0)
    details: bool = Field(False, description="Return `details`: why generation stopped, the seed, every token with its log-probability.")
    decoder_input_details: bool = Field(
        False, description="With `details`: the prompt's tokens and their log-probabilities in `details.prefill` "
        "(streamed: on the last event's details)."
    )
    top_n_tokens: OptionalInteger = Field(
        None, ge=0, le=MAX_TOP_N_TOKENS, description="The most likely tokens at each generated position, with their log-probabilities."
    )
    best_of: OptionalInteger = Field(
        None, gt=0,
        description="Sample this many completions (the prompt prefilled once) and answer with the one whose tokens' "
        "log-probabilities sum highest; the others in `details.best_of_sequences`. Not when streaming.",
    )
    grammar: Optional[Grammar] = Field(
        None,
        description="Structured output: the text is generated to match a JSON schema "
        '(`{"type": "json", "value": <schema>}`) or a regular expression (`{"type": "regex", "value": "..."}`).',
    )
    # Sent by TGI clients (huggingface_hub's InferenceClient) with these neutral values; anything else is
    # a feature this server does not have, and saying so beats silently ignoring it. The schema shows
    # the one accepted value; the check (with its own message) is `_reject_unsupported`.
    watermark: bool = Field(False, json_schema_extra={"const": False})
    adapter_id: Optional[str] = Field(None, json_schema_extra={"anyOf": [{"type": "null"}]})


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: NonEmpty
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class PromptRequest(Parameters):
    """The seed app's form: `{"prompt": "...", "max_new_tokens": 20}`, parameters beside the prompt."""

    prompt: NonEmpty
    stream: bool = False


def parse_json_body(raw: bytes) -> Any:
    """Bytes -> JSON value; 400 with the parser's reason when it is not JSON."""
    if not raw or not raw.strip():
        raise BadRequest("Request body is empty; send a JSON object such as {\"prompt\": \"Hello\"}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("Malformed JSON: nested too deeply") from None
    except ValueError as exc:
        # An integer of more than 4300 digits (Python's int_max_str_digits) is valid JSON that Python's
        # parser refuses with a plain ValueError: it was a 500 (found by tests/reliability). The part
        # after ";" tells the reader to call sys.set_int_max_str_digits(), which is for us, not clients.
        raise BadRequest(f"Malformed JSON: {str(exc).split(';')[0]}") from None


def validate_generate(
    body: Any, settings: Settings, stream: Optional[bool] = None, fields: Optional[FieldNames] = None
) -> GenerationRequest:
    """Turn a decoded JSON body into a `GenerationRequest` (defaults applied), or raise a named error.

    `stream` forces streaming on (the /generate_stream route) regardless of the body's own flag;
    `fields` names the prompt and token budget as the client's protocol does (OpenAI's forms).
    """
    if not isinstance(body, dict):
        raise BadRequest(f"Request body must be a JSON object, not {type(body).__name__}")
    if "inputs" in body and "prompt" in body:
        raise ValidationError("Give either `inputs` (TGI form) or `prompt`, not both")
    if "prompt" in body:
        parsed = parse_model(PromptRequest, body)
        prompt, params, body_stream = parsed.prompt, parsed, parsed.stream
    else:
        parsed = parse_model(TGIRequest, body)
        prompt, params, body_stream = parsed.inputs, parsed.parameters, parsed.stream
    if fields is None:
        fields = FieldNames(prompt="prompt" if "prompt" in body else "inputs")
    return _apply_defaults(prompt, params, settings, body_stream if stream is None else stream, fields)


def _apply_defaults(
    prompt: str, p: Parameters, settings: Settings, stream: bool, fields: FieldNames
) -> GenerationRequest:
    if not prompt:
        raise ValidationError(f"`{fields.prompt}` cannot be empty", fields.prompt)
    _reject_unsupported(p)
    max_new_tokens = settings.default_max_new_tokens if p.max_new_tokens is None else p.max_new_tokens
    if max_new_tokens > settings.max_new_tokens_limit:
        name = fields.max_new_tokens
        raise ValidationError(f"`{name}` must be <= {settings.max_new_tokens_limit}. Given: {max_new_tokens}", name)
    if any(s == "" for s in p.stop):
        raise ValidationError("`stop` sequences cannot be empty strings", "stop")
    grammar = None if p.grammar is None else grammar_spec(p.grammar, settings.max_grammar_bytes, fields.grammar)

    best_of = p.best_of or 1
    if best_of > settings.best_of_limit:  # TGI's message
        raise ValidationError(f"`best_of` must be > 0 and <= {settings.best_of_limit}. Given: {best_of}", "best_of")
    if best_of > 1 and stream:
        raise ValidationError("`best_of` != 1 is not supported when streaming tokens", "best_of")

    # TGI's rule: asking for a sampling parameter means sampling, unless do_sample is explicitly false.
    warpers_given = any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
    do_sample = p.do_sample if p.do_sample is not None else (warpers_given or settings.default_do_sample)
    if best_of > 1 and not do_sample:  # TGI's rule and words: greedy completions would all be the same
        raise ValidationError("you must use sampling when `best_of` is > 1", "best_of")
    if do_sample:
        sampling = dict(
            temperature=_default(p.temperature, settings.default_temperature),
            top_k=_default(p.top_k, settings.default_top_k),
            top_p=_default(p.top_p, settings.default_top_p),
            typical_p=_default(p.typical_p, 1.0),
        )
    else:
        sampling = {}
    return GenerationRequest(
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        repetition_penalty=_default(p.repetition_penalty, settings.default_repetition_penalty),
        frequency_penalty=_default(p.frequency_penalty, 0.0),
        seed=p.seed,
        stop=tuple(p.stop),
        return_full_text=bool(p.return_full_text),
        truncate=p.truncate,
        details=p.details,
        stream=stream,
        grammar=grammar,
        top_n_tokens=p.top_n_tokens or 0,
        decoder_input_details=p.decoder_input_details,
        n=best_of,
        pick_best=best_of > 1,
        **sampling,
    )


def _default(value, default):
    return default if value is None else value


def _reject_unsupported(p: Parameters) -> None:
    if p.watermark:
        raise ValidationError("`watermark` is not supported by this server")
    if p.adapter_id is not None:
        raise ValidationError("`adapter_id` is not supported by this server")


def parse_model(model: type[BaseModel], body: dict) -> Any:
    """Validate `body` against `model`; the first problem becomes one named ValidationError."""
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A field with several accepted forms (str or list) fails once per form: the form whose type
        # matched says what is really wrong ("too short" beats "must be a string").
        same_field = [e for e in errors if _field_names(e)[:1] == _field_names(errors[0])[:1]]
        first = next((e for e in same_field if not e["type"].endswith("_type")), errors[0])
        names = _field_names(first)
        raise ValidationError(_describe(first), param=_name(names) if names else None) from None


# Fields holding one of several object forms told apart by their `type` (pydantic's discriminated
# unions): an error's path there carries the form's tag, which is no field, and the field inside is
# named with its path (`grammar.value`, `response_format.json_schema.name`).
_TAGGED = ("grammar", "response_format")


def _field_names(error: dict) -> list:
    """The field path of an error, without list indexes and pydantic's union branch tags."""
    names, after_tagged = [], False
    for part in error["loc"]:
        if not after_tagged and isinstance(part, str) and part.isidentifier():
            names.append(part)
        after_tagged = part in _TAGGED and not after_tagged
    return names


def _name(names: list) -> str:
    """How a message names the field: its own name, or its path inside a tagged field."""
    tagged = next((i for i, name in enumerate(names) if name in _TAGGED), None)
    return ".".join(names[tagged:]) if tagged is not None else names[-1]


def _describe(error: dict) -> str:
    """One pydantic error -> one sentence in TGI's style, naming the field and the limit."""
    loc = _field_names(error)
    name = _name(loc) if loc else "body"
    given = error.get("input")
    given_text = json.dumps(given) if isinstance(given, (str, bool)) or given is None else given
    ctx = error.get("ctx", {})
    kind = error["type"]
    if kind == "extra_forbidden":
        if "." in name:
            parent, _, field = name.rpartition(".")
            return f"Unknown field `{field}` in `{parent}`"
        where = "parameters" if len(loc) > 1 else "request body"
        return f"Unknown field `{name}` in {where}"
    if kind == "union_tag_invalid":  # a tagged field's `type` names no form it has
        expected = ctx.get("expected_tags", "")
        return f"`{name}.type` must be one of {expected}. Given: {json.dumps(ctx.get('tag'))}"
    if kind == "union_tag_not_found":
        return f"`{name}.type` is required"
    if kind == "string_too_short":
        return "`stop` sequences cannot be empty strings" if name == "stop" else f"`{name}` cannot be empty"
    if kind == "missing":
        return f"`{name}` is required"
    if kind == "greater_than" and ctx.get("gt") == 0:
        return f"`{name}` must be strictly positive. Given: {given_text}"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"`{name}` must be {bounds[kind]} {limit}. Given: {given_text}"
    if kind == "too_long" and name == "stop":
        return f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(given)}"
    if kind in ("too_short", "too_long") and isinstance(given, list):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"`{name}` must hold {bound} {limit} item(s). Given: {len(given)}"
    expected = {
        "int_type": "an integer",
        "float_type": "a number",
        "bool_type": "a boolean",
        "string_type": "a string",
        "list_type": "a list of strings",
        "model_type": "an object",
        "model_attributes_type": "an object",
        "dict_type": "an object",
    }
    if kind == "list_type" and name == "tokens":  # /detokenize's ids
        return f"`tokens` must be a list of token ids. Given: {given_text}"
    if kind == "finite_number":
        return f"`{name}` must be a finite number. Given: {given_text}"
    if kind in expected or kind.startswith(("int_", "float_")):
        what = expected.get(kind, "a number")
        return f"`{name}` must be {what}. Given: {given_text}"
    return f"`{name}`: {error['msg']}"
