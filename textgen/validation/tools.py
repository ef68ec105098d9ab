"""Tool calls, built once for every chat protocol (OpenAI's, Anthropic's, Ollama's): what a request
offers and asks (`ToolUse`), and the grammar that holds the model to it.

Each protocol's form maps its own `tools` and tool choice onto `Tool` and `ToolChoice`; `tool_use`
checks them (pure: no tokenizer) and `tool_grammar` writes the constraint, a Lark grammar compiled by
llguidance like every other structured output:
- `required` (OpenAI; Anthropic's `any`) or one named tool: the answer is one call (several with
  `parallel`), nothing else;
- `auto`: free text without the call tag, or text and then calls: allowed, never forced. A call is
  always whole and its arguments always match the tool's schema;
- `none`: no grammar, and the tools are not shown to the model.

A call is written as Hermes' and Qwen's chat templates teach it (most tool-trained small models):
`<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`; `transports/tool_calls.py` reads it back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import ValidationError
from .grammar import GrammarSpec, JSON_OPTIONS, no_unlisted_properties

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
# OpenAI's rule for a function's name (Anthropic's is the same): letters, digits, `_` and `-`, 1-64.
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_SCHEMA = {"pattern": f"^{NAME.pattern}$"}  # the same rule, in the forms' JSON schemas
MODES = ("none", "auto", "required", "named")


def tools_required_when(forcing_choice: dict) -> dict:
    """The rule "a choice that forces a call needs tools", as a protocol's JSON schema says it (a
    `dependentSchemas` entry for `tool_choice`; `forcing_choice`: the choices that force one)."""
    return {"tool_choice": {"if": {"properties": {"tool_choice": forcing_choice}},
                            "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}}}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str = ""
    parameters: Optional[dict] = None  # the arguments' JSON schema (an object); None: no arguments

    def openai_form(self) -> dict:
        """The tool as chat templates take it (`tools=`: transformers' form is OpenAI's)."""
        function = {"name": self.name, "description": self.description, "parameters": self.schema}
        return {"type": "function", "function": function}

    @property
    def schema(self) -> dict:
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # one of MODES
    name: Optional[str] = None  # the tool, when `mode` is "named"
    parallel: bool = True  # several calls in one answer


@dataclass(frozen=True)
class ToolUse:
    """The tools a request offers and how it asks for them; `field` is the client's name for its
    tools (`tools`), for messages."""

    tools: tuple = ()
    choice: ToolChoice = ToolChoice()
    field: str = "tools"
    grammar: Optional[GrammarSpec] = None  # what holds the answer to the choice (`tool_grammar`); None: inactive

    @property
    def active(self) -> bool:
        """The model sees the tools and may (or must) call them."""
        return bool(self.tools) and self.choice.mode != "none"

    @property
    def shown(self) -> list:
        """The tools the prompt shows the model: none unless active."""
        return list(self.tools) if self.active else []

    @property
    def forced(self) -> bool:
        """The answer must be calls (`required` or a named tool)."""
        return self.active and self.choice.mode in ("required", "named")


def tool_use(tools: Sequence[Tool], choice: ToolChoice, field: str, max_bytes: int, choice_field: str) -> ToolUse:
    """The request's tools checked: names valid and distinct, each schema one llguidance compiles (named
    when not: `tools[2]` (`get_weather`)), within `max_bytes` (MAX_GRAMMAR_BYTES) in all, and a named
    choice one of them. `choice_field`: the client's name for the choice, for messages."""
    seen = set()
    for index, tool in enumerate(tools):
        place = f"`{field}[{index}]` (`{tool.name}`)"
        if not NAME.fullmatch(tool.name):
            raise ValidationError(
                f"`{field}[{index}]` name must be 1-64 letters, digits, `_` or `-`. Given: {json.dumps(tool.name)}", field
            )
        if tool.name in seen:
            raise ValidationError(f"{place}: two tools have this name", field)
        seen.add(tool.name)
        _check_schema(tool.schema, place, field)
    if choice.mode not in MODES:
        raise ValueError(choice.mode)
    if choice.mode in ("required", "named") and not tools:
        raise ValidationError(f"`{choice_field}` asks for a tool call, and `{field}` offers none", choice_field)
    if choice.mode == "named" and choice.name not in seen:
        raise ValidationError(
            f"`{choice_field}` names `{choice.name}`, which is not one of `{field}`: {', '.join(sorted(seen))}", choice_field
        )
    use = ToolUse(tuple(tools), choice, field)
    if not use.active:
        return use
    grammar = tool_grammar(use)
    size = len(grammar.source.encode("utf-8"))
    if size > max_bytes:
        raise ValidationError(f"`{field}` must be at most {max_bytes} bytes of grammar. Given: {size}", field)
    return ToolUse(use.tools, choice, field, grammar)


def _check_schema(schema, place: str, field: str) -> None:
    if not isinstance(schema, dict):
        raise ValidationError(f"{place}: the parameters must be a JSON schema object", field)
    from llguidance import LLMatcher

    try:
        error = LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(schema))
    except (ValueError, RecursionError) as exc:
        error = str(exc)
    if error:
        raise ValidationError(f"{place}: the parameters' schema cannot be compiled: {error.strip()[:300]}", field)


def tool_grammar(use: ToolUse) -> GrammarSpec:
    """The Lark grammar (llguidance's dialect) of an answer under `use.choice`."""
    tools = use.tools if use.choice.mode != "named" else [t for t in use.tools if t.name == use.choice.name]
    call_schema = {"anyOf": [_call_schema(tool) for tool in tools]} if len(tools) > 1 else _call_schema(tools[0])
    body = f'"\\n" %json {json.dumps({"x-guidance": JSON_OPTIONS, **call_schema})} "\\n{CALL_CLOSE}"'
    more = f' ("\\n{CALL_OPEN}" body)*' if use.choice.parallel else ""
    lines = ["%llguidance {}"]
    if use.forced:
        lines.append(f'start: "{CALL_OPEN}" body{more}')
    else:  # text without the tag, or text up to the first tag (a lazy lexeme: it ends there) and calls
        lines += [
            f"start: TEXT | opening body{more}",
            f"TEXT: /(.|\\n)*/ & ~/(.|\\n)*{CALL_OPEN}(.|\\n)*/",
            f'opening[lazy]: /(.|\\n)*/ "{CALL_OPEN}"',
        ]
    lines.append(f"body: {body}")
    return GrammarSpec("lark", "\n".join(lines) + "\n")


def _call_schema(tool: Tool) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": no_unlisted_properties(tool.schema)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def call_text(name: str, arguments: dict) -> str:
    """A call as the model writes it (a past call rendered for a template without tools)."""
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"
