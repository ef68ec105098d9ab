"""Structured output: a request's grammar (a JSON schema or a regular expression), checked, then compiled
into a token constraint with llguidance (the library behind llama.cpp's and vLLM's JSON-schema support).

Two halves, like the prompt's:
- `grammar_spec` (pure, no tokenizer): the protocol's form -> a `GrammarSpec`, within MAX_GRAMMAR_BYTES.
  TGI's `parameters.grammar` (`{"type": "json" | "json_object", "value": <schema or its JSON text>}`,
  `{"type": "regex", "value": "..."}`, `{"type": "json_schema", "value": {"name", "schema"}}`) and
  OpenAI's `response_format` (translated to TGI's form by `openai_forms`) both end here.
- `GrammarCompiler` (owns llguidance's view of the vocabulary, built once per engine): a `GrammarSpec`
  -> a `TokenConstraint`, in the request's own thread at submit (`PromptTokens.tokenize`), bounded by
  llguidance's fuel and size limits (`LIMITS`); a grammar that cannot be compiled is a ValidationError
  naming the problem. The constraint's first mask is computed there too, so the engine thread only ever
  advances a compiled matcher by one token and asks for the next mask.

The engine sees only `TokenConstraint`: `mask()` (the allowed tokens as packed bits), `advance(token)`,
`done`. Nothing here imports llguidance until a grammar is compiled.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import Annotated, Any, Dict, Iterable, List, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ..errors import ValidationError

# llguidance's JSON options: JSON written one way, with Python's `json.dumps` separators (", " between
# items, ": " after keys) and no other whitespace. llguidance's default lets whitespace run on without
# end, and small models (random weights above all) spend their whole budget on it; and with one way to
# write the text, a schema's keys, quotes, colons and commas are forced (llguidance's fast-forward
# tokens), which the engine takes in one step (`TokenConstraint.forced`).
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# llguidance's resource limits (its defaults, written out so that docs/api.md and the code say the same):
# fuel for building the lexer at compile time (~50k units a millisecond: ~20 ms), fuel and Earley items
# for each token's mask on the engine thread (~14 ms and ~2.5 ms at most), lexer states (memory,
# 1-2 kB each) and grammar symbols. Past one, the grammar is refused (compile) or the request fails
# saying so (a token's mask).
LIMITS = dict(
    initial_lexer_fuel=1_000_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    max_lexer_states=250_000,
    max_grammar_size=500_000,
    verbose_errors=False,  # the error names the problem, not the parser's internal state
)


# -- the protocol's forms (pydantic: they also feed the OpenAPI document) ------------------------------
# A JSON schema: an object, or (as TGI takes it) the object's JSON text. The OpenAPI document states the
# object alone: what a string must hold (JSON text of an object) is beyond what a schema can say, and a
# fuzzer reading "any string" there would send strings that are no JSON.
SchemaValue = Annotated[
    Union[Dict[str, Any], str],
    WithJsonSchema({"type": "object", "description": "A JSON schema (its JSON text, a string, is taken too)."}),
]


class JsonGrammar(BaseModel):
    """TGI: `{"type": "json", "value": <JSON schema>}`; the schema may also be given as its JSON text.
    `json_object` is TGI's alias of `json`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json", "json_object"]
    value: SchemaValue


class RegexGrammar(BaseModel):
    """TGI: `{"type": "regex", "value": "<regular expression>"}`; the whole output matches it (`\\d` is
    an ASCII digit)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["regex"]
    value: str = Field(
        description="A regular expression the whole generated text must match (Rust's regex syntax).",
        json_schema_extra={"format": "regex"},
    )


class JsonSchemaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Dict[str, Any] = Field(alias="schema", description="The JSON schema.")
    strict: Optional[bool] = Field(None, description="Accepted; the schema is always enforced.")


class JsonSchemaGrammar(BaseModel):
    """TGI 3: `{"type": "json_schema", "value": {"name": ..., "schema": <JSON schema>}}`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["json_schema"]
    value: JsonSchemaConfig


GrammarForm = Union[JsonGrammar, RegexGrammar, JsonSchemaGrammar]  # a grammar in the protocols' words
Grammar = Annotated[GrammarForm, Field(discriminator="type")]  # ... told apart by its `type`


@dataclass(frozen=True)
class GrammarSpec:
    """A grammar that passed the checks needing no tokenizer: `kind` "json" (`source` is the schema's
    JSON text), "regex" (`source` is the expression) or "lark" (llguidance's Lark: tool calls)."""

    kind: str
    source: str


def grammar_spec(grammar: GrammarForm, max_bytes: int, field: str) -> GrammarSpec:
    """The protocol's grammar -> a `GrammarSpec`, or a ValidationError naming `field` (the client's name
    for it: `grammar`, or `response_format` under /v1)."""
    if isinstance(grammar, RegexGrammar):
        _check_size(len(grammar.value.encode("utf-8", "surrogatepass")), max_bytes, field)
        return GrammarSpec("regex", grammar.value)
    schema: Any = grammar.value.schema_ if isinstance(grammar, JsonSchemaGrammar) else grammar.value
    if isinstance(schema, str):
        _check_size(len(schema.encode("utf-8", "surrogatepass")), max_bytes, field)
        try:
            schema = json.loads(schema)
        except (json.JSONDecodeError, RecursionError, ValueError) as exc:
            raise ValidationError(f"`{field}` value is not valid JSON: {exc}", field) from None
        if not isinstance(schema, dict):
            raise ValidationError(f"`{field}` value must be a JSON schema object. Given: {type(schema).__name__}", field)
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
        _check_size(len(text.encode("utf-8", "surrogatepass")), max_bytes, field)
        closed = no_unlisted_properties(schema)
        return GrammarSpec("json", json.dumps(closed, separators=(",", ":"), ensure_ascii=False))
    except RecursionError:
        raise ValidationError(f"`{field}` schema is nested too deeply", field) from None


def _check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise ValidationError(f"`{field}` must be at most {max_bytes} bytes. Given: {size}", field)


# Keywords whose value is a schema, a list of schemas, or a map of names to schemas (JSON Schema 2020-12
# and draft 7): the places `no_unlisted_properties` looks into. `const`, `enum`, `default` and
# `examples` hold data, not schemas, and are left as they are.
_SCHEMA = ("additionalProperties", "items", "additionalItems", "contains", "not", "if", "then", "else",
           "propertyNames", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
_SCHEMA_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def no_unlisted_properties(schema: Any) -> Any:
    """A copy of `schema` in which every object schema that lists `properties` and says nothing of other
    properties allows no others, as TGI (outlines' schema compiler) and OpenAI's strict mode generate
    it. Any output valid for the copy is valid for the original; without it a small model fills objects
    with keys nobody asked for."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = no_unlisted_properties(out[key])
    for key in _SCHEMA_LIST:
        if isinstance(out.get(key), list):
            out[key] = [no_unlisted_properties(s) for s in out[key]]
    for key in _SCHEMA_MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: no_unlisted_properties(s) for name, s in out[key].items()}
    if isinstance(out.get("properties"), dict) and not any(
        k in out for k in ("additionalProperties", "patternProperties", "unevaluatedProperties")
    ):
        out["additionalProperties"] = False
    return out


# -- compiling, with the model's vocabulary -----------------------------------------------------------
class GrammarCompiler:
    """Compiles grammars for one model: llguidance's tokenizer (its view of the vocabulary, with a token
    trie; ~0.45 s and ~20 MB for GPT-2's 50,257 tokens) is built from the `tokenizers` JSON on the first
    grammar and kept."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Iterable[int]):
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._eos_token_ids = sorted(eos_token_ids)
        self._lock = threading.Lock()
        self._ll_tokenizer = None

    def ll_tokenizer(self):
        with self._lock:
            if self._ll_tokenizer is None:
                import llguidance

                self._ll_tokenizer = llguidance.LLTokenizer(
                    tokenizer_json(self._tokenizer), n_vocab=self.vocab_size, eos_token=self._eos_token_ids
                )
            return self._ll_tokenizer

    def compile(self, spec: GrammarSpec, field: str = "grammar") -> "TokenConstraint":
        """A fresh constraint for one request (the state of its own generation), its first mask computed."""
        import llguidance

        try:
            if spec.kind == "json":
                source = llguidance.LLMatcher.grammar_from_json_schema(spec.source, overrides=JSON_OPTIONS)
            elif spec.kind == "lark":  # written here (tool calls), not by the client
                source = llguidance.LLMatcher.grammar_from_lark(spec.source)
            else:  # `\d` is an ASCII digit, as in JSON Schema's patterns; the rest is Rust's regex syntax
                regex = llguidance.regex_to_lark(spec.source, "d")
                source = llguidance.LLMatcher.grammar_from_lark(f"start: /{regex}/")
            matcher = llguidance.LLMatcher(
                self.ll_tokenizer(), source, log_level=0, limits=llguidance.LLParserLimits(**LIMITS)
            )
        except ValueError as exc:  # llguidance's own refusal of an argument (the matcher reports the rest)
            raise ValidationError(f"`{field}` cannot be compiled: {exc}", field) from None
        if matcher.is_error():
            raise ValidationError(f"`{field}` cannot be compiled: {_first_line(matcher.get_error())}", field)
        constraint = TokenConstraint(matcher, self.vocab_size)
        if constraint.mask() is None:  # the first mask hit a limit: refuse now rather than fail later
            raise ValidationError(f"`{field}` cannot be compiled: {constraint.error}", field)
        return constraint


def tokenizer_json(tokenizer) -> str:
    """The `tokenizers` JSON of the service's tokenizer: `LeanTokenizer` holds the `tokenizers` object;
    transformers' fast tokenizers hold it as `backend_tokenizer` (serialised as llguidance.hf does:
    a copy, without padding or truncation)."""
    inner = getattr(tokenizer, "_tokenizer", None)
    if inner is not None and hasattr(inner, "to_str"):
        return inner.to_str()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValidationError("`grammar` needs a fast (tokenizers) tokenizer, and this model's is not one")
    from copy import copy

    backend = copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return backend.to_str()


def _first_line(message: str) -> str:
    """llguidance's message on one line, without the lines that point into its own wrapper grammar
    (`1 | start: /.../` and the carets under it) and without their position prefix."""
    lines = [line.strip() for line in message.strip().splitlines()]
    kept = [line for line in lines if line and not re.fullmatch(r"\^+|\d+ \|.*", line)]
    text = re.sub(r"^at \d+\(\d+\): ", "", " ".join(kept)).replace(" <non-verbose/>", "")
    if text in ("NoExtension", "NoExtensionBias"):  # the grammar's first step allows no token at all
        text = "no text can match it"
    return text[:500]


class TokenConstraint:
    """One request's grammar state: which tokens may come next (a mask of packed bits, bit i of word
    i // 32 = token i, as llguidance writes it), advanced by each token generated. Used by the engine
    thread only once compiled; `error` is set when llguidance gives up (a limit hit while computing a
    mask), and the request then fails saying so."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._buffer = np.full((vocab_size + 31) // 32, -1, dtype=np.int32)
        self._pending: Optional[np.ndarray] = None  # the mask computed and not yet used
        self.error: Optional[str] = None

    def mask(self) -> Optional[np.ndarray]:
        """The tokens allowed next (a view of this constraint's own buffer, valid until the next call),
        or None when llguidance failed (`error` says why)."""
        if self._pending is None:
            self._matcher.unsafe_compute_mask_ptr(self._buffer.ctypes.data, self._buffer.nbytes)
            if self._matcher.is_error() or not self._buffer.any():
                self.error = _first_line(self._matcher.get_error()) or "no token is allowed"
                return None
            self._pending = self._buffer
        return self._pending

    def fork(self) -> "TokenConstraint":
        """A copy in the same state, to be advanced on its own (another completion of the same prompt)."""
        return TokenConstraint(self._matcher.deep_copy(), self._buffer.size * 32)

    def forced(self, limit: int) -> List[int]:
        """The tokens the grammar forces next (at most `limit`), taken: the only way on, token for token
        as the tokenizer writes that text. Empty when a choice comes first, or after an error."""
        if self.error is not None or limit <= 0:
            return []
        tokens = self._matcher.compute_ff_tokens()[:limit]
        for token in tokens:
            self.advance(token)
        return tokens

    def advance(self, token: int) -> None:
        """Take the token generated (one `mask()` allowed)."""
        self._pending = None
        if self.error is None and not self._matcher.consume_token(token):
            self.error = _first_line(self._matcher.get_error()) or f"token {token} was not allowed"

    @property
    def done(self) -> bool:
        """Nothing but the end of the text can follow: the output is complete."""
        return self._matcher.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._matcher.is_accepting()
