"""Validation: a request body (TGI's form, the seed's, or OpenAI's) -> one `GenerationRequest`, or a
named error; then its prompt as tokens within the token limits. Pure: no Flask, no torch.

`request` holds the protocol-neutral request and its rules (`generation_request`, which every protocol
calls once); `body` reads any protocol's JSON into its pydantic model; `messages` is every error's
wording; `tgi` and `openai_forms` map their own parsed bodies into the request; `tokens` owns the
tokenizer on the request's side (prompts, /tokenize's tokens and offsets, /detokenize's text);
`detokenize` is /detokenize's body; `grammar` turns structured-output forms into token constraints."""

from .body import parse_json_body, parse_model
from .request import (
    MAX_SEED,
    MAX_STOP_SEQUENCES,
    MAX_TOP_N,
    TGI_FIELDS,
    FieldNames,
    GenerationRequest,
    generation_request,
)
from .tgi import Parameters, PromptRequest, TGIRequest, validate_generate
from .tokens import PromptToken, PromptTokens, TokenizedRequest, kept_input_tokens, kept_prompt_tokens
from .detokenize import DetokenizeRequest, validate_detokenize

__all__ = [
    "MAX_SEED",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_N",
    "GenerationRequest",
    "generation_request",
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
