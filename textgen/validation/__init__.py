"""Validation: a request body (TGI's form, the seed's, or OpenAI's) -> one `GenerationRequest`, or a
named error; then its prompt as tokens within the token limits. Pure: no Flask, no torch. `tgi` holds
the rules and the request every transport hands to the engine; `openai_forms` translates OpenAI's
bodies into TGI's parameters and reuses them; `tokens` owns the tokenizer on the request's side."""

from .tgi import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    GenerationRequest,
    Parameters,
    PromptRequest,
    TGI_FIELDS,
    FieldNames,
    TGIRequest,
    parse_json_body,
    parse_model,
    validate_generate,
)
from .tokens import PromptTokens, TokenizedRequest, kept_prompt_tokens

__all__ = [
    "MAX_SEED",
    "MAX_STOP_SEQUENCES",
    "GenerationRequest",
    "Parameters",
    "PromptRequest",
    "TGIRequest",
    "TGI_FIELDS",
    "FieldNames",
    "PromptTokens",
    "TokenizedRequest",
    "kept_prompt_tokens",
    "parse_json_body",
    "parse_model",
    "validate_generate",
]
