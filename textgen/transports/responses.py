"""The JSON answer for a finished generation, shared by every transport (HTTP, SSE, Lambda, CLI)."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, List, Optional, Tuple, Union

from ..engine.handle import GenerationResult, TokenEvent
from ..validation import GenerationRequest


def engine_request(gen_request: GenerationRequest) -> GenerationRequest:
    """The request as the engine should get it. A complete answer with `details` lists every generated
    token (TGI's `details.tokens`), and the engine sends token events (with their log-probabilities)
    to streaming requests only: such a request is submitted as a streaming one, its events gathered by
    `gather` and its answer shaped from the original request."""
    return replace(gen_request, stream=True) if gen_request.details and not gen_request.stream else gen_request


def gather(events: Iterable[Union[TokenEvent, GenerationResult]]) -> Tuple[GenerationResult, List[TokenEvent]]:
    """Wait for the result of a handle's `events()`, keeping its token events (none unless streamed)."""
    tokens: List[TokenEvent] = []
    for event in events:
        if isinstance(event, GenerationResult):
            return event, tokens
        tokens.append(event)
    raise AssertionError("event stream ended without a result")  # pragma: no cover - events() always ends so


def result_body(
    gen_request: GenerationRequest, result: GenerationResult, tokens: Optional[List[TokenEvent]] = None
) -> dict:
    """The JSON answer for one finished generation (shared by every transport). With `tokens` (the
    request's token events), `details` takes TGI's complete form: `prefill` and `tokens` too."""
    text = gen_request.prompt + result.text if gen_request.return_full_text else result.text
    body = {"generated_text": text}
    if gen_request.details:
        body["details"] = details_body(result, tokens)
    return body


def details_body(result: GenerationResult, tokens: Optional[List[TokenEvent]] = None) -> dict:
    """TGI's `details`; a stream's last event carries it without `prefill` and `tokens` (TGI's
    StreamDetails), a complete answer with them (TGI's Details, which its Python client requires)."""
    body = {
        "finish_reason": result.finish_reason,
        "generated_tokens": result.generated_tokens,
        "prompt_tokens": result.prompt_tokens,
        "seed": result.seed,
    }
    if tokens is not None:
        body["prefill"] = []  # the prompt's tokens, with `decoder_input_details` (not supported yet)
        body["tokens"] = [token_body(event) for event in tokens]
    return body


def token_body(event: TokenEvent) -> dict:
    """One generated token as TGI shows it (in `details.tokens` and in each stream event)."""
    return {"id": event.id, "text": event.text, "logprob": event.logprob, "special": event.special}


def timing_headers(result: GenerationResult) -> dict:
    """TGI's per-response headers: where the time went and how many tokens (milliseconds, as TGI)."""
    return {
        "x-compute-time": f"{result.compute_time:.3f}",
        "x-queue-time": str(round(result.queue_time * 1000)),
        "x-time-per-token": str(round(result.time_per_token * 1000)),
        "x-prompt-tokens": str(result.prompt_tokens),
        "x-generated-tokens": str(result.generated_tokens),
    }
