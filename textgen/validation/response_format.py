"""OpenAI's `response_format` (and the TGI forms its chat route takes there) -> the grammar forms of
structured output (`grammar.py` compiles them).

OpenAI's three forms: `{"type": "text"}` (no constraint), `{"type": "json_object"}` (any JSON object),
`{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`; and TGI's, which huggingface_hub's
`chat_completion` sends: `json` / `regex` with a `value`, `json_object` / `json_schema` with a `value`.
"""

from __future__ import annotations

from typing import Annotated, Any, Dict, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from .grammar import GrammarForm, JsonGrammar, JsonSchemaConfig, JsonSchemaGrammar, RegexGrammar, SchemaValue
from .messages import invalid


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


def grammar_form(response_format: Optional[ResponseFormat]) -> Optional[GrammarForm]:
    """`response_format` as the grammar forms the request takes (None: no constraint)."""
    if response_format is None or isinstance(response_format, TextFormat):
        return None
    if isinstance(response_format, JsonObjectFormat):
        return JsonGrammar(type="json", value=ANY_OBJECT if response_format.value is None else response_format.value)
    if isinstance(response_format, JsonFormat):
        return JsonGrammar(type="json", value=response_format.value)
    if isinstance(response_format, RegexGrammar):
        return response_format
    if response_format.json_schema is not None and response_format.value is not None:
        raise invalid("one_form_of_two", "response_format", name="response_format")
    if response_format.json_schema is not None:
        schema = response_format.json_schema.schema_
        return JsonGrammar(type="json", value=ANY_OBJECT if schema is None else schema)
    if response_format.value is not None:
        return JsonSchemaGrammar(type="json_schema", value=response_format.value)
    raise invalid("missing", "response_format.json_schema", name="response_format.json_schema")
