"""A request body, whatever its protocol: bytes -> JSON -> the protocol's pydantic model, or one named
error (its wording: `messages`). Also the field types the protocols' models share."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import pydantic
from pydantic import BaseModel, BeforeValidator, Field

from ..errors import BadRequest, ValidationError
from .messages import describe, message


def whole_number(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer, and so do JSON encoders that write every number as a float;
    # 5.5 and true still fail the strict check after this.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer as JSON Schema means it: 5 or 5.0 (or null). The validator wraps the Optional, so that
# bounds given with Field() still reach the JSON Schema as exclusiveMinimum/maximum.
OptionalInteger = Annotated[Optional[int], BeforeValidator(whole_number)]

# A string that must have something in it (prompts, stop sequences); the schema says so too.
NonEmpty = Annotated[str, Field(min_length=1)]


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


def json_object(body: Any) -> dict:
    """The body, if it is a JSON object; else 400."""
    if not isinstance(body, dict):
        raise BadRequest(message("not_an_object", kind=type(body).__name__))
    return body


def parse_model(model: type[BaseModel], body: Any) -> Any:
    """Validate `body` (a JSON object, else 400) against `model`; the first problem becomes one named
    ValidationError."""
    try:
        return model.model_validate(json_object(body))
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A field with several accepted forms (str or list) fails once per form: the form whose type
        # matched says what is really wrong ("too short" beats "must be a string").
        same_field = [e for e in errors if _field_names(e)[:1] == _field_names(errors[0])[:1]]
        first = next((e for e in same_field if not e["type"].endswith("_type")), errors[0])
        names = _field_names(first)
        name = _name(names) if names else "body"
        raise ValidationError(describe(first, name, _where(names, name)), param=name if names else None) from None


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
    if error["type"].startswith("union_tag_"):  # the tag itself is wrong: it is the field named
        names.append(error.get("ctx", {}).get("discriminator", "'type'").strip("'"))
    return names


def _name(names: list) -> str:
    """How a message names the field: its own name, or its path inside a tagged field."""
    tagged = next((i for i, name in enumerate(names) if name in _TAGGED), None)
    return ".".join(names[tagged:]) if tagged is not None else names[-1]


def _where(names: list, name: str) -> str:
    """The object a field sits in, as a message names it: a tagged field's path, TGI's `parameters`
    (or any object inside the body), or the body itself."""
    if "." in name:
        return f"`{name.rpartition('.')[0]}`"
    return "parameters" if len(names) > 1 else "request body"
