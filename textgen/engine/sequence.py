"""One request in the batch: its tokens, how it samples, its text, and when it is done.

`Sequence.append` is the whole per-token update: record the token, advance the grammar if the request
has one, stop on end-of-text, a complete grammar, a stop sequence or `max_new_tokens`, and (for a
streaming request only) emit the token's event with the text it releases; a request that asked for
its tokens' details keeps the events for its result instead. Text is made only where it is needed: a
request that streams, has stop sequences or wants its tokens is detokenized token by token; any other
is decoded once, at its end. `score_prompt` takes the prompt's logits, chunk by chunk, from a request
that asked for its prompt tokens' log-probabilities.
"""

from __future__ import annotations

import secrets
import time
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ValidationError
from ..validation.request import MAX_SEED
from .detokenize import IncrementalDetokenizer, decode_generated
from .handle import GenerationResult, TokenEvent, TokenInfo
from .queue import Entry
from .sampling import Alternatives, RowSampling, log_softmax, most_likely
from .stop import StopMatcher


class Sequence:
    def __init__(
        self,
        entry: Entry,
        tokenizer,
        eos_token_ids: frozenset,
        special_token_ids: frozenset,
        choice: int = 0,
        first_seed: Optional[int] = None,
    ):
        request = entry.request
        self.entry = entry
        self.handle = entry.handle
        self.request = request
        self.choice = choice  # which of the request's `n` completions
        # Rows of the batch this one stands for: all n while the prompt is prefilled once, then 1 (`fork`).
        self.rows_held = entry.rows if choice == 0 else 1
        self.cached_tokens = 0  # prompt tokens whose keys and values came from the prefix cache
        self._tokenizer = tokenizer
        self._eos_token_ids = eos_token_ids
        self._special_token_ids = special_token_ids
        seed, generator = None, None
        if request.do_sample:
            if choice == 0:
                seed = secrets.randbits(63) if request.seed is None else request.seed
            else:  # completion c of n draws with the first's seed + c: each is what that seed gives alone
                seed = (first_seed + choice) % (MAX_SEED + 1)
            # A generator per row: its tokens depend on its seed only, never on its neighbours.
            generator = np.random.default_rng(seed)
        self.seed = seed
        self.sampling = RowSampling(
            do_sample=request.do_sample,
            temperature=request.temperature,
            top_k=request.top_k,
            top_p=request.top_p,
            typical_p=request.typical_p,
            repetition_penalty=request.repetition_penalty,
            frequency_penalty=request.frequency_penalty,
            generator=generator,
            # What the repetition penalty looks at: prompt and generated tokens (kept only when it applies).
            seen_ids=list(entry.prompt_ids) if request.repetition_penalty != 1.0 else [],
        )
        self.generated: List[int] = self.sampling.generated_ids
        # The request's grammar, compiled at submit (validation.grammar.TokenConstraint), or None; each
        # further completion follows a copy of its own.
        self.constraint = entry.constraint if choice == 0 or entry.constraint is None else entry.constraint.fork()
        self._track_seen = request.repetition_penalty != 1.0
        self._stops = StopMatcher(request.stop) if request.stop else None
        # A blocking request with `details` keeps its token events for its result.
        self._kept: Optional[List[TokenEvent]] = [] if request.details and not request.stream else None
        # TGI's `best_of` picks the completion whose tokens' log-probabilities sum highest.
        self.wants_logprobs = request.stream or self._kept is not None or request.pick_best
        self.logprob_sum: Optional[float] = 0.0 if self.wants_logprobs else None
        self.top_n = request.top_n_tokens if self.wants_logprobs else 0
        self.prefill: List[TokenInfo] = []  # the prompt's tokens, with `decoder_input_details`
        incremental = request.stream or self._stops is not None or self._kept is not None
        self._detokenizer = IncrementalDetokenizer(tokenizer, entry.prompt_ids) if incremental else None
        self.started_at = time.monotonic()  # joined the batch: queue time ends, compute time starts
        self.next_token = 0  # the last token picked: the next decode step feeds it
        self.finish_reason: Optional[str] = None
        self.text = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def allowed_tokens(self) -> Optional[np.ndarray]:
        """The tokens the grammar allows next (packed bits, see sampling.choose_next_tokens), or None:
        no grammar, or it gave out (then `append` fails the request, saying why)."""
        return None if self.constraint is None else self.constraint.mask()

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.request.scores_prompt

    def score_prompt(self, offset: int, logits: np.ndarray) -> None:
        """The logits at prompt positions offset.. (one prefill chunk, [n, vocab]): each predicts the next
        prompt token, whose log-probability (under the model's own distribution: nothing was sampled
        here) is recorded, with its `top_n` most likely alternatives when asked for. The first prompt
        token has none."""
        prompt = self.entry.prompt_ids
        if offset == 0:
            self.prefill.append(self._info(prompt[0], None))
        targets = prompt[offset + 1 : offset + 1 + len(logits)]  # the last position predicts no prompt token
        log_probs = log_softmax(logits[: len(targets)])
        tops = [()] * len(targets)
        if self.top_n and len(targets):
            ids, values = most_likely(log_probs, self.top_n)
            tops = [tuple(self._info(int(t), float(v)) for t, v in zip(*row)) for row in zip(ids, values)]
        for row, (target, top) in enumerate(zip(targets, tops)):
            self.prefill.append(self._info(target, float(log_probs[row, target]), top))

    def _info(self, token: int, logprob: Optional[float], top: Tuple[TokenInfo, ...] = ()) -> TokenInfo:
        return TokenInfo(token, self._tokenizer.decode([token]), logprob, token in self._special_token_ids, top)

    def fork(self, choice: int) -> "Sequence":
        """Completion `choice` of the request, from the same prompt (prefilled once, before any token)."""
        sibling = Sequence(self.entry, self._tokenizer, self._eos_token_ids, self._special_token_ids, choice, self.seed)
        sibling.prefill = list(self.prefill)
        sibling.cached_tokens = self.cached_tokens
        return sibling

    def append(self, token: int, logprob: Optional[float], top: Optional[Alternatives] = None) -> None:
        """Record one generated token (with its most likely alternatives, when asked for); emit its event
        to a streaming caller or keep it for the result; note when the request ends.
        Raises ValidationError when the request's grammar gave out (a limit of llguidance's)."""
        self.generated.append(token)
        if self.logprob_sum is not None and logprob is not None:
            self.logprob_sum += logprob
        if self._track_seen:
            self.sampling.seen_ids.append(token)
        self.next_token = token
        is_eos = token in self._eos_token_ids
        complete = False
        if self.constraint is not None:
            if not is_eos:
                self.constraint.advance(token)
            if self.constraint.error is not None:
                raise ValidationError(f"`grammar` could not be followed: {self.constraint.error}", "grammar")
            # Nothing but the end of the text can follow: the output is whole, and ends here, as if at
            # end-of-text, without a step spent on the end-of-text token itself.
            complete = self.constraint.done
        if is_eos or complete:
            self.finish_reason = "eos_token"
        elif len(self.generated) >= self.request.max_new_tokens:
            self.finish_reason = "length"
        if self._detokenizer is None:
            return
        special = token in self._special_token_ids
        piece = self._detokenizer.add(token)
        if special:
            piece = ""  # special tokens (EOS above all) never become part of the text
        if self.finish_reason is not None:
            piece += self._detokenizer.flush()  # release bytes held for an unfinished character
        released = self._release(piece)
        if not self.request.stream and self._kept is None:
            return
        event = TokenEvent(
            index=len(self.generated),
            id=token,
            text=piece,
            logprob=logprob,
            special=special,
            released=released,
            last=self.finished,
            top_tokens=tuple(self._info(i, lp) for i, lp in top) if top else (),
            prefill=tuple(self.prefill) if len(self.generated) == 1 else (),
            choice=self.choice,
        )
        if self.request.stream:
            self.handle._emit(event)
        else:
            self._kept.append(event)

    def _release(self, piece: str) -> str:
        """The text this token adds to the answer, and the end of the request at a stop sequence."""
        if self._stops is None:
            self.text += piece
            return piece
        released, stopped = self._stops.push(piece)
        if stopped:
            self.finish_reason = "stop_sequence"
        elif self.finish_reason is not None:
            released += self._stops.flush()
        self.text = self._stops.text
        return released

    def result(self) -> GenerationResult:
        text = self.text
        if self._detokenizer is None:
            text = decode_generated(self._tokenizer, self.entry.prompt_ids, self.generated, self._special_token_ids)
        return GenerationResult(
            text=text,
            finish_reason=self.finish_reason,
            generated_tokens=len(self.generated),
            prompt_tokens=len(self.entry.prompt_ids),
            seed=self.seed,
            cached_tokens=self.cached_tokens,
            tokens=tuple(self._kept or ()),
            prefill=tuple(self.prefill),
            choice=self.choice,
            logprob_sum=self.logprob_sum,
            queue_time=self.started_at - self.entry.enqueued_at,
            compute_time=time.monotonic() - self.started_at,
        )
