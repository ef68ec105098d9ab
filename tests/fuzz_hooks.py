"""schemathesis hooks for the fuzz of tests/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

Some of the server's rules join fields in ways no JSON Schema can state: `max_tokens` and
`max_completion_tokens` the same when both are given, tool names distinct, a named tool choice one of
the tools, a tool's parameters a schema llguidance compiles, a past call's arguments (a string) the
JSON text of an object, and the prompt's length in tokens (the
tokenizer's count of a rendered chat, with its tools). A body the document allows may break
one, and is then refused with that rule's own message: such a refusal is the server keeping its word,
not a failure. Every other failure stays one."""

from __future__ import annotations

import schemathesis

# The messages of those rules, as the server words them (textgen/validation/{messages,tools}.py).
UNSTATABLE_RULES = (
    "(the same limit under two names), not two different values",
    ": two tools have this name",
    "which is not one of `tools`",
    ": the parameters' schema cannot be compiled",
    "must be the JSON text of an object",
    " tokens. Given: ",  # "`messages` must have less than 1023 tokens. Given: 4485"
    " tokens + `",  # "`messages` tokens + `max_tokens` must be <= 1024"
)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    """Keep the failure unless it is a valid body refused (400) by one of UNSTATABLE_RULES."""
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return True
    return not any(rule in response.text for rule in UNSTATABLE_RULES)
