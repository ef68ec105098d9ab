"""Validation: a request body (TGI's form, the seed's, OpenAI's or Ollama's) -> one `GenerationRequest`,
or a named error; then its prompt as tokens within the token limits. Pure: no Flask, no torch.

Files:
- request.py: the protocol-neutral request and its rules (`generation_request`, which every protocol
  calls once); the client's field names travel on it.
- tgi.py, openai_forms.py, ollama_forms.py, anthropic_forms.py: each protocol's own pydantic forms,
  mapped straight into the request.
- embedding_forms.py: OpenAI's and Ollama's embedding bodies, their inputs as token ids within the limits.
- response_format.py: OpenAI's `response_format` forms (and TGI's there) as grammar forms.
- body.py: any protocol's JSON body read into its pydantic model.
- messages.py: every error's wording, in one table.
- tokens.py: the tokenizer on the request's side (prompts within the token limits, /tokenize's tokens
  and offsets, /detokenize's text).
- detokenize.py: /detokenize's body.
- grammar.py: structured output's forms turned into llguidance token constraints.
- tools.py: tool calls for every chat protocol: the tools offered, the choice, and the Lark grammar
  that holds the answer to it.
- tool_prompt.py: tools and past calls put into the prompt (the template's `tools=`, or the
  system-prompt form).
"""

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
