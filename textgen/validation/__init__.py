"""Validation: a request body (TGI's form, the seed's, or OpenAI's) -> one `GenerationRequest`, or a
named error; then its prompt as tokens within the token limits. Pure: no Flask, no torch. `tgi` holds
the rules and the request every transport hands to the engine; `openai_forms` translates OpenAI's
bodies into TGI's parameters and reuses them; `tokens` owns the tokenizer on the request's side
(prompts, /tokenize's tokens and offsets, /detokenize's text); `detokenize` is /detokenize's body."""

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
from .tokens import PromptToken, PromptTokens, TokenizedRequest, kept_input_tokens, kept_prompt_tokens
from .detokenize import DetokenizeRequest, validate_detokenize

__all__ = [
    "MAX_SEED",
    "MAX_STOP_SEQUENCES",
    "GenerationRequest",
    "Parameters",
    "PromptRequest",
    "TGIRequest",
    "TGI_FIELDS",
    "FieldNames",
    "PromptToken",
    "PromptTokens",
    "DetokenizeRequest",
    "validate_detokenize",
    "kept_input_tokens",
    "TokenizedRequest",
    "kept_prompt_tokens",
    "parse_json_body",
    "parse_model",
    "validate_generate",
]
