"""The JSON answer for a finished generation, shared by every transport (HTTP, SSE, Lambda, CLI)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

from ..engine.handle import GenerationResult, TokenEvent, TokenInfo
from ..validation import GenerationRequest


def complete_body(gen_request: GenerationRequest, results: List[GenerationResult]) -> Tuple[dict, GenerationResult]:
    """The answer to a request that did not stream, and the result it shows. With TGI's `best_of`, the
    completion whose tokens' log-probabilities sum highest (TGI's rule); with `details`, the others
    follow in `details.best_of_sequences`, as TGI's BestOfSequence."""
    if not gen_request.pick_best:
        return result_body(gen_request, results[0]), results[0]
    best = max(results, key=lambda result: result.logprob_sum)
    body = result_body(gen_request, best)
    if gen_request.details:
        body["details"]["best_of_sequences"] = [
            {"generated_text": result_body(gen_request, other)["generated_text"], **details_body(other, other.tokens, gen_request.top_n_tokens > 0)}
            for other in results
            if other is not best
        ]
    return body, best


def result_body(gen_request: GenerationRequest, result: GenerationResult, streamed: Sequence[TokenEvent] = ()) -> dict:
    """The JSON answer for one finished generation (shared by every transport). `details` takes TGI's
    complete form, its tokens from the result (or from `streamed`, the events of a request that streamed)."""
    text = gen_request.prompt + result.text if gen_request.return_full_text else result.text
    body = {"generated_text": text}
    if gen_request.details:
        body["details"] = details_body(result, tuple(streamed) or result.tokens, gen_request.top_n_tokens > 0)
    return body


def details_body(result: GenerationResult, tokens: Optional[Sequence[TokenEvent]] = None, top: bool = False) -> dict:
    """TGI's `details`; a stream's last event carries it without `prefill` and `tokens` (TGI's
    StreamDetails: `tokens` None), a complete answer with them (TGI's Details, which its Python client
    requires), and with `top_tokens` when `top_n_tokens` asked for them."""
    body = {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "seed": result.seed,
    }
    if tokens is not None:
        body["prefill"] = [prefill_token_body(info) for info in result.prefill]
        body["tokens"] = [token_body(event) for event in tokens]
        if top:
            body["top_tokens"] = [[token_body(alt) for alt in event.top_tokens] for event in tokens]
    return body


def token_body(token: Union[TokenEvent, TokenInfo]) -> dict:
    """One token as TGI shows it (in `details.tokens`, `top_tokens` and in each stream event)."""
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def prefill_token_body(token: TokenInfo) -> dict:
    """A prompt token as TGI shows it in `details.prefill` (the first has no log-probability: null)."""
    return {"id": token.id, "text": token.text, "logprob": token.logprob}


def timing_headers(result: GenerationResult) -> dict:
    """TGI's per-response headers: where the time went and how many tokens (milliseconds, as TGI)."""
    return {
        "x-compute-time": f"{result.compute_time:.3f}",
        "x-queue-time": str(round(result.queue_time * 1000)),
        "x-time-per-token": str(round(result.time_per_token * 1000)),
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
    }
