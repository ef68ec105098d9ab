"""The JSON answer for a finished generation, shared by every transport (HTTP, SSE, Lambda)."""

from __future__ import annotations

from .engine.handle import GenerationResult
from .validation import GenerationRequest


def result_body(gen_request: GenerationRequest, result: GenerationResult) -> dict:
    """The JSON answer for one finished generation (shared by every transport)."""
    text = gen_request.prompt + result.text if gen_request.return_full_text else result.text
    body = {"generated_text": text}
    if gen_request.details:
        body["details"] = details_body(result)
    return body


def details_body(result: GenerationResult) -> dict:
    return {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "seed": result.seed,
    }
