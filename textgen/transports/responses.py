"""The JSON answer for a finished generation, shared by every transport (HTTP, SSE, Lambda)."""

from __future__ import annotations

from ..engine.handle import GenerationResult
from ..validation import GenerationRequest


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


def timing_headers(result: GenerationResult) -> dict:
    """TGI's per-response headers: where the time went and how many tokens (milliseconds, as TGI)."""
    return {
        "x-compute-time": f"{result.compute_time:.3f}",
        "x-queue-time": str(round(result.queue_time * 1000)),
        "x-time-per-token": str(round(result.time_per_token * 1000)),
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
    }
