"""Validation: a request body (TGI's form, the seed's, or OpenAI's) -> one `GenerationRequest`, or a
named error. Pure: no Flask, no torch. `tgi` holds the rules and the request every transport hands to
the engine; `openai_forms` translates OpenAI's bodies into TGI's parameters and reuses them."""

from .tgi import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    GenerationRequest,
    Parameters,
    PromptRequest,
    TGIRequest,
    kept_prompt_tokens,
    parse_json_body,
    parse_model,
    validate_generate,
)

__all__ = [
    "MAX_SEED",
    "MAX_STOP_SEQUENCES",
    "GenerationRequest",
    "Parameters",
    "PromptRequest",
    "TGIRequest",
    "kept_prompt_tokens",
    "parse_json_body",
    "parse_model",
    "validate_generate",
]
