"""Every message a broken request rule answers with, in one table, in TGI's style: the field, the limit,
what was given ("`max_new_tokens` must be <= 512. Given: 100000").

Two kinds of entries share it: pydantic's error `type`s (what a body's shape breaks, `describe`), and
the request's own rules (`invalid`), which reuse the same words where they say the same thing.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..errors import ValidationError

# {name}: the field as the client named it; {given}: its value as JSON; {limit}: the bound broken.
MESSAGES = {
    # -- pydantic's error types --------------------------------------------------------------------
    "missing": "`{name}` is required",
    "extra_forbidden": "Unknown field `{field}` in {where}",
    # a tagged form's tag (`type`, a message's `role`): `name` ends with it
    "union_tag_invalid": "`{name}` must be one of {expected_tags}. Given: {tag}",
    "union_tag_not_found": "`{name}` is required",
    "string_too_short": "`{name}` cannot be empty",
    # pydantic's own words; also the request's rule for a prompt no field checked (a rendered chat)
    "string_unicode": "`{name}`: Input should be a valid string, unable to parse raw data as a unicode string",
    "greater_than": "`{name}` must be > {limit}. Given: {given}",
    "greater_than_equal": "`{name}` must be >= {limit}. Given: {given}",
    "less_than": "`{name}` must be < {limit}. Given: {given}",
    "less_than_equal": "`{name}` must be <= {limit}. Given: {given}",
    "too_short": "`{name}` must hold at least {limit} item(s). Given: {count}",
    "too_long": "`{name}` must hold at most {limit} item(s). Given: {count}",
    "finite_number": "`{name}` must be a finite number. Given: {given}",
    "int_type": "`{name}` must be an integer. Given: {given}",
    "float_type": "`{name}` must be a number. Given: {given}",  # also every other int_*/float_* type
    "bool_type": "`{name}` must be a boolean. Given: {given}",
    "string_type": "`{name}` must be a string. Given: {given}",
    "list_type": "`{name}` must be a list of strings. Given: {given}",
    "model_type": "`{name}` must be an object. Given: {given}",
    "model_attributes_type": "`{name}` must be an object. Given: {given}",
    "dict_type": "`{name}` must be an object. Given: {given}",
    "other": "`{name}`: {msg}",  # a type not listed here: pydantic's own words
    # ... said in a field's own words (TGI's), or for one bound: looked up before the type alone.
    "greater_than:0": "`{name}` must be strictly positive. Given: {given}",
    "string_too_short:stop": "`stop` sequences cannot be empty strings",
    "too_long:stop": "`stop` supports up to {limit} stop sequences. Given: {count}",
    "list_type:tokens": "`tokens` must be a list of token ids. Given: {given}",  # /detokenize's ids
    # -- the request's own rules -----------------------------------------------------------------------
    "not_an_object": "Request body must be a JSON object, not {kind}",
    "inputs_and_prompt": "Give either `inputs` (TGI form) or `prompt`, not both",
    "unsupported": "`{name}` is not supported by this server",
    "unsupported_value": "`{name}` is not supported by this server: only {neutral} is accepted. Given: {given}",
    "same_or_one": "Give `{name}` or `{other}` (the same limit under two names), not two different values. "
    "Given: {given} and {other_given}",
    "best_of_limit": "`best_of` must be > 0 and <= {limit}. Given: {given}",  # TGI's words
    "best_of_stream": "`best_of` != 1 is not supported when streaming tokens",
    "best_of_greedy": "you must use sampling when `best_of` is > 1",
    "requires_true": "`{name}` requires `{other}` to be true",
    "unsupported_feature": "`{name}` is not supported by this server ({what} is not implemented yet)",
    "unsupported_block": "`{name}`: `{kind}` content blocks are not supported by this server (text and tools only)",
    "one_constraint": "Give `{name}` or `{other}`, not both: each holds the answer to its own form",
    "json_object_text": "`{name}` must be the JSON text of an object",
    "one_form_of_two": "Give `{name}.json_schema` (OpenAI's form) or `value` (TGI's), not both",
}


# Where pydantic's error context keeps the bound a type of error broke.
_BOUNDS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le",
           "too_short": "min_length", "too_long": "max_length"}


def message(key: str, **values: Any) -> str:
    return MESSAGES[key].format(**values)


def invalid(key: str, param: Optional[str] = None, **values: Any) -> ValidationError:
    """The rule `key` broken by field `param` (None: no one field), as the error to raise."""
    return ValidationError(message(key, **values), param)


def given(value: Any) -> Any:
    """A value as a message shows it: strings, booleans and null as JSON, the rest as Python writes it."""
    return json.dumps(value) if isinstance(value, (str, bool)) or value is None else value


def describe(error: dict, name: str, where: str) -> str:
    """One pydantic error -> its sentence. `name`: the field as messages name it; `where`: the object an
    unknown field was found in (for `extra_forbidden`)."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    value = error.get("input")
    limit = ctx.get(_BOUNDS.get(kind, ""))
    values = dict(
        name=name,
        field=name.rpartition(".")[2],
        where=where,
        given=given(value),
        limit=limit,
        count=len(value) if isinstance(value, (list, str, dict)) else value,
        expected_tags=ctx.get("expected_tags", ""),
        tag=json.dumps(ctx.get("tag")),
        msg=error.get("msg", ""),
    )
    bound = 0 if limit == 0 else limit  # gt=0 on a float field is 0.0
    for key in (f"{kind}:{name}", f"{kind}:{bound}", kind):
        if key in MESSAGES and (kind not in ("too_short", "too_long") or isinstance(value, list)):
            return message(key, **values)
    if kind.startswith(("int_", "float_")):
        return message("float_type", **values)
    return message("other", **values)
