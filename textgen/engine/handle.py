"""What a transport holds while the engine works on its request: a stream of events ending in a result.

Streaming callers iterate over token events and the result; blocking callers call `result()`, and the
engine sends them nothing else (their thread wakes once). Either may `cancel()`; the engine drops the
request from its batch at the next step. A request for several completions of its prompt (`n`) gets
one result per completion (`results()`), its events told apart by `choice`. Nothing here touches torch.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple, Union

from ..errors import ServiceError


@dataclass(frozen=True)
class TokenInfo:
    """A token with its log-probability: a prompt token (`decoder_input_details`, `echo`; the first has
    none) or one of a generated token's most likely alternatives (`top_n_tokens`, `top_logprobs`)."""

    id: int
    text: str  # the token decoded on its own
    logprob: Optional[float]
    special: bool = False
    # A prompt token's most likely alternatives at its position, when the request asked for them
    # (OpenAI's `echo` with `logprobs`: the model's own distribution; the first prompt token has none).
    top_tokens: Tuple["TokenInfo", ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    index: int  # 1-based position of the token among the generated ones (TGI's numbering)
    id: int
    text: str  # the token's own text (may be "" while a multi-byte character is incomplete)
    logprob: Optional[float]
    special: bool
    # The text this token adds to the answer: held back while it could still begin a stop sequence, never
    # the stop sequence itself. Joined, the events' `released` texts are exactly the result's text.
    released: str = ""
    last: bool = False  # the completion's result follows at once (lets SSE put it on this token's event)
    top_tokens: Tuple[TokenInfo, ...] = ()  # the most likely tokens at this position, when asked for
    prefill: Tuple[TokenInfo, ...] = ()  # a stream's first token: the prompt's tokens, when asked for
    choice: int = 0  # which of the request's `n` completions


@dataclass(frozen=True)
class GenerationResult:
    text: str  # generated text, cut before a stop sequence; without the prompt
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    generated_tokens: int
    prompt_tokens: int
    seed: Optional[int]
    stop_sequence: Optional[str] = None  # the one that ended it (finish_reason "stop_sequence")
    # Asked for with `details` (or OpenAI's `logprobs`) by a request that does not stream: every generated
    # token as its event would have been; with `decoder_input_details` (or `echo` and `logprobs`): the
    # prompt's tokens. A stream delivers the same as its events, and its result has neither.
    tokens: Tuple[TokenEvent, ...] = field(default=(), compare=False)
    prefill: Tuple[TokenInfo, ...] = field(default=(), compare=False)
    choice: int = 0  # which of the request's `n` completions
    # The sum of the generated tokens' log-probabilities, where they were computed (TGI's `best_of`
    # answers with the completion whose sum is highest); None otherwise.
    logprob_sum: Optional[float] = field(default=None, compare=False)
    # Prompt tokens whose keys and values the prefix cache gave instead of the prefill computing them
    # (how much work it saved; the text is the same either way).
    cached_tokens: int = field(default=0, compare=False)
    # Timings (not part of what was generated: two equal generations compare equal whatever they took).
    queue_time: float = field(default=0.0, compare=False)  # admission -> joined the batch, seconds
    compute_time: float = field(default=0.0, compare=False)  # joined the batch (prefill included) -> last token

    @property
    def time_per_token(self) -> float:
        return self.compute_time / self.generated_tokens if self.generated_tokens else 0.0


Event = Union[TokenEvent, GenerationResult, ServiceError]


class Handle:
    def __init__(self, completions: int = 1) -> None:
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._cancelled = threading.Event()
        self._pending = completions  # results still to come
        self._results: List[GenerationResult] = []
        self._error: Optional[ServiceError] = None
        self.prompt_tokens: Optional[int] = None  # the prompt's tokens to prefill, set at submit

    # -- engine side -------------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Send the caller a token event, a completion's result or the request's error (the engine only)."""
        self._events.put(event)

    # -- caller side -------------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop working on this request; safe to call any time, from any thread."""
        self._cancelled.set()

    def events(self) -> Iterator[Union[TokenEvent, GenerationResult]]:
        """Yield token events (streaming requests only) and each completion's result as it ends; raise the
        error if the request failed (the first error ends it). Once consumed, yields the results again.
        Blocks without a timeout: the engine always answers every completion, and a caller whose client
        hangs up has it cancelled (transports/http/disconnect.py), which the engine answers."""
        if not self._pending and self._error is None:
            yield from self._results
            return
        while self._pending and self._error is None:
            event = self._events.get()
            if isinstance(event, ServiceError):
                self._error = event
                break
            if isinstance(event, GenerationResult):
                self._results.append(event)
                self._pending -= 1
            yield event
        if self._error is not None:
            raise self._error

    def results(self) -> List[GenerationResult]:
        """Wait for every completion's result; in the order of their `choice`."""
        for _ in self.events():
            pass
        return sorted(self._results, key=lambda result: result.choice)

    def result(self) -> GenerationResult:
        """Wait for the result (the first completion's, when there are several)."""
        return self.results()[0]
