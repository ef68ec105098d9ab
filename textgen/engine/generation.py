"""One completion of a request in the batch (`Generation`): its tokens, how it samples, its text, and
when it is done.

`Generation.append` is the whole per-token update: record the token, advance the grammar if the request
has one, stop on end-of-text, a complete grammar, a stop sequence or `max_new_tokens`, and (for a
streaming request only) emit the token's event with the text it releases; a request that asked for
its tokens' details keeps the events for its result instead. When the grammar then leaves only one
way on (llguidance's fast-forward tokens: a JSON schema's keys, quotes, colons and commas), those
tokens are taken at once (`forced`): the next forward pass feeds them with the sampled token as a short
chunk of the row (`feed`), and `take_forced` appends them, each with its log-probability under the
model's own distribution at its position (nothing was sampled there, as for a prompt's tokens). Text is made only where it is needed: a
request that streams, has stop sequences or wants its tokens is detokenized token by token; any other
is decoded once, at its end. `score_prompt` takes the prompt's logits, chunk by chunk, from a request
that asked for its prompt tokens' log-probabilities.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ..errors import ValidationError
from ..validation.request import MAX_SEED
from .detokenize import IncrementalDetokenizer, decode_generated
from .handle import GenerationResult, TokenEvent, TokenInfo
from .queue import Entry
from .sampling import Alternatives, Picks, RowSampling, choose_next_tokens, log_softmax, most_likely
from .stop import StopMatcher

# Forced tokens fed in one forward pass at most: a longer run (a long constant in a schema) goes on in
# the next pass; the chunk's width is what every row of that pass is padded to.
MAX_FORCED = 16


@dataclass(frozen=True)
class Vocabulary:
    """What a generation needs to know of the tokens: their text, and which end it or are special."""

    tokenizer: object
    eos_token_ids: frozenset
    special_token_ids: frozenset

    def info(self, token: int, logprob: Optional[float], top: Tuple[TokenInfo, ...] = ()) -> TokenInfo:
        return TokenInfo(token, self.tokenizer.decode([token]), logprob, token in self.special_token_ids, top)


@dataclass(eq=False)
class Generation:
    """One completion of a request, as it runs in the batch (a row there). Made by `start` (the
    request's first completion) or `fork` (each further one, after the prompt's prefill)."""

    entry: Entry
    vocabulary: Vocabulary
    choice: int  # which of the request's `n` completions
    # Rows of the batch this one stands for: all n while the prompt is prefilled once, then 1 (`fork`).
    rows_held: int
    seed: Optional[int]  # None: greedy
    sampling: RowSampling
    # The request's grammar, compiled at submit (validation.grammar.TokenConstraint), or None; each
    # further completion follows a copy of its own.
    constraint: Optional[object]
    stops: Optional[StopMatcher]
    kept: Optional[List[TokenEvent]]  # a blocking request with `details` keeps its token events for its result
    # Token events (streamed or kept) and TGI's `best_of` (the highest sum wins) need log-probabilities.
    wants_logprobs: bool
    top_n: int  # alternatives per token event
    detokenizer: Optional[IncrementalDetokenizer]  # None: the text is decoded once, at the end
    logprob_sum: Optional[float] = None
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    prefill: List[TokenInfo] = field(default_factory=list)  # the prompt's tokens, with `decoder_input_details`
    next_token: int = 0  # the last token picked: the next decode step feeds it
    forced: List[int] = field(default_factory=list)  # tokens the grammar forces after it, fed with it
    finish_reason: Optional[str] = None
    text: str = ""
    started_at: float = field(default_factory=time.monotonic)  # joined the batch: queue time ends, compute time starts

    @classmethod
    def start(cls, entry: Entry, vocabulary: Vocabulary) -> "Generation":
        """The request's first completion: it holds all of the request's rows until its prefill ends."""
        return cls._make(entry, vocabulary, 0, entry.rows, _first_seed(entry.request), entry.constraint)

    def fork(self, choice: int) -> "Generation":
        """Completion `choice` of the request, from the same prompt (prefilled once, before any token)."""
        constraint = None if self.entry.constraint is None else self.entry.constraint.fork()
        sibling = self._make(self.entry, self.vocabulary, choice, 1, _sibling_seed(self.seed, choice), constraint)
        sibling.prefill = list(self.prefill)
        sibling.cached_tokens = self.cached_tokens
        return sibling

    @classmethod
    def _make(cls, entry: Entry, vocabulary: Vocabulary, choice: int, rows_held: int, seed, constraint) -> "Generation":
        """Completion `choice` of the entry's request, with its seed and its grammar's state: how it samples,
        whether its text is made token by token, which token details it keeps."""
        request = entry.request
        kept = [] if request.details and not request.stream else None
        wants_logprobs = request.stream or kept is not None or request.pick_best
        incremental = request.stream or bool(request.stop) or kept is not None
        return cls(
            entry=entry,
            vocabulary=vocabulary,
            choice=choice,
            rows_held=rows_held,
            seed=seed,
            sampling=_row_sampling(request, entry.prompt_ids, seed),
            constraint=constraint,
            stops=StopMatcher(request.stop) if request.stop else None,
            kept=kept,
            wants_logprobs=wants_logprobs,
            top_n=request.top_n_tokens if wants_logprobs else 0,
            detokenizer=IncrementalDetokenizer(vocabulary.tokenizer, entry.prompt_ids) if incremental else None,
            logprob_sum=0.0 if wants_logprobs else None,
        )

    @property
    def request(self):  # the validated `GenerationRequest`
        return self.entry.request

    @property
    def handle(self):  # the caller's `Handle`
        return self.entry.handle

    @property
    def generated(self) -> List[int]:
        return self.sampling.generated_ids

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
        prompt, info = self.entry.prompt_ids, self.vocabulary.info
        if offset == 0:
            self.prefill.append(info(prompt[0], None))
        targets = prompt[offset + 1 : offset + 1 + len(logits)]  # the last position predicts no prompt token
        for target, (logprob, top) in zip(targets, self._scored(logits[: len(targets)], targets)):
            self.prefill.append(info(target, logprob, tuple(info(t, lp) for t, lp in top or ())))

    def _scored(self, logits: np.ndarray, targets: List[int]) -> list:
        """Each target's log-probability under the model's own distribution at its position ([n, vocab]
        logits, one row per target), with the `top_n` most likely tokens there when asked for."""
        log_probs = log_softmax(logits)
        tops = [None] * len(targets)
        if self.top_n and len(targets):
            ids, values = most_likely(log_probs, self.top_n)
            tops = [[(int(t), float(v)) for t, v in zip(*row)] for row in zip(ids, values)]
        return [(float(log_probs[row, target]), top) for row, (target, top) in enumerate(zip(targets, tops))]

    def append(self, token: int, logprob: Optional[float], top: Optional[Alternatives] = None) -> None:
        """Record one generated token (with its most likely alternatives, when asked for); emit its event
        to a streaming caller or keep it for the result; note when the request ends.
        Raises ValidationError when the request's grammar gave out (a limit of llguidance's)."""
        self._take(token, logprob, top, advance=True)
        if self.constraint is not None and not self.finished:
            self.forced = self.constraint.forced(min(MAX_FORCED, self.request.max_new_tokens - len(self.generated)))
            if self.forced and not self.wants_logprobs and self.constraint.done:
                self.take_forced(None)  # they end the text: no forward pass is needed for them

    def feed(self) -> List[int]:
        """What the next forward pass feeds this row: the token picked, then the tokens forced after it."""
        return [self.next_token, *self.forced]

    def take_forced(self, logits: Optional[np.ndarray]) -> None:
        """Append the forced tokens fed in the last forward pass; `logits`: the model's at the positions
        before each ([k, vocab]: what predicted it), or None where no log-probability is wanted."""
        forced = self.forced
        scored = self._scored(logits, forced) if logits is not None else [(None, None)] * len(forced)
        for i, (token, (logprob, top)) in enumerate(zip(forced, scored)):
            if self.finished:  # a stop sequence ended the text inside them
                break
            self.forced = forced[i + 1 :]  # still to come: the grammar's end is only after the last
            self._take(token, logprob, top, advance=False)
        self.forced = []

    def _take(self, token: int, logprob: Optional[float], top, advance: bool) -> None:
        """Record one token and what follows from it (see `append`); `advance`: the grammar still has to
        take it (forced tokens were taken when they were forced)."""
        self._record(token, logprob)
        if self._ends_text(token, advance):
            self.finish_reason = "eos_token"
        elif len(self.generated) >= self.request.max_new_tokens:
            self.finish_reason = "length"
        if self.detokenizer is None:
            return
        special = token in self.vocabulary.special_token_ids
        piece = self.detokenizer.add(token)
        if special:
            piece = ""  # special tokens (EOS above all) never become part of the text
        if self.finish_reason is not None:
            piece += self.detokenizer.flush()  # release bytes held for an unfinished character
        released = self._release(piece)
        if self.request.stream:
            self.handle.emit(self._event(token, piece, logprob, special, released, top))
        elif self.kept is not None:
            self.kept.append(self._event(token, piece, logprob, special, released, top))

    def _record(self, token: int, logprob: Optional[float]) -> None:
        self.generated.append(token)
        if self.logprob_sum is not None and logprob is not None:
            self.logprob_sum += logprob
        if self.request.repetition_penalty != 1.0:  # only then does the penalty look at what was seen
            self.sampling.seen_ids.append(token)
        self.next_token = token

    def _ends_text(self, token: int, advance: bool = True) -> bool:
        """Whether the text ends at this token: end-of-text, or a grammar with nothing left to follow
        (after the last of the forced tokens: the grammar took them all at once)."""
        is_eos = token in self.vocabulary.eos_token_ids
        if self.constraint is None:
            return is_eos
        if not advance:
            return not self.forced and self.constraint.done
        if not is_eos:
            self.constraint.advance(token)
        if self.constraint.error is not None:
            raise ValidationError(f"`grammar` could not be followed: {self.constraint.error}", "grammar")
        # Nothing but the end of the text can follow: the output is whole, and ends here, as if at
        # end-of-text, without a step spent on the end-of-text token itself.
        return is_eos or self.constraint.done

    def _event(self, token, piece, logprob, special, released, top) -> TokenEvent:
        return TokenEvent(
            index=len(self.generated),
            id=token,
            text=piece,
            logprob=logprob,
            special=special,
            released=released,
            last=self.finished,
            top_tokens=tuple(self.vocabulary.info(i, lp) for i, lp in top) if top else (),
            prefill=tuple(self.prefill) if len(self.generated) == 1 else (),
            choice=self.choice,
        )

    def _release(self, piece: str) -> str:
        """The text this token adds to the answer, and the end of the request at a stop sequence."""
        if self.stops is None:
            self.text += piece
            return piece
        released, stopped = self.stops.push(piece)
        if stopped:
            self.finish_reason = "stop_sequence"
        elif self.finish_reason is not None:
            released += self.stops.flush()
        self.text = self.stops.text
        return released

    def result(self) -> GenerationResult:
        text = self.text
        if self.detokenizer is None:
            vocabulary = self.vocabulary
            text = decode_generated(vocabulary.tokenizer, self.entry.prompt_ids, self.generated, vocabulary.special_token_ids)
        return GenerationResult(
            text=text,
            finish_reason=self.finish_reason,
            generated_tokens=len(self.generated),
            prompt_tokens=len(self.entry.prompt_ids),
            seed=self.seed,
            stop_sequence=self.stops.matched if self.stops is not None else None,
            cached_tokens=self.cached_tokens,
            tokens=tuple(self.kept or ()),
            prefill=tuple(self.prefill),
            choice=self.choice,
            logprob_sum=self.logprob_sum,
            queue_time=self.started_at - self.entry.enqueued_at,
            compute_time=time.monotonic() - self.started_at,
        )


def choose_next_tokens_for(rows: List[Generation], logits: np.ndarray) -> Picks:
    """One sampling call for the rows' next tokens, each with its own parameters, grammar and details."""
    want_logprobs = [g.wants_logprobs for g in rows]  # only token events (streamed or kept) carry them
    # The grammars' masks (compiled at submit; here each is only advanced): None when no row has one.
    allowed = [g.allowed_tokens() for g in rows] if any(g.constraint is not None for g in rows) else None
    return choose_next_tokens(logits, [g.sampling for g in rows], want_logprobs, allowed, [g.top_n for g in rows])


def take_forced(rows: List[Generation], stepped) -> np.ndarray:
    """After a decode step (`Batch.decode`'s `Stepped`): each row appends the forced tokens it fed;
    returns the logits after each row's last token, to pick the next from."""
    for generation, logits in zip(rows, stepped.forced_logits):
        if generation.forced:
            generation.take_forced(logits)
    return stepped.logits


def _first_seed(request) -> Optional[int]:
    """The seed of a sampling request's first completion: its own, or a fresh one it is told (None: greedy)."""
    if not request.do_sample:
        return None
    return secrets.randbits(63) if request.seed is None else request.seed


def _sibling_seed(first_seed: Optional[int], choice: int) -> Optional[int]:
    """Completion c of n draws with the first's seed + c: each is what that seed gives alone."""
    return None if first_seed is None else (first_seed + choice) % (MAX_SEED + 1)


def _row_sampling(request, prompt_ids, seed: Optional[int]) -> RowSampling:
    return RowSampling(
        do_sample=request.do_sample,
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        typical_p=request.typical_p,
        repetition_penalty=request.repetition_penalty,
        frequency_penalty=request.frequency_penalty,
        # A generator per row: its tokens depend on its seed only, never on its neighbours.
        generator=None if seed is None else np.random.default_rng(seed),
        # What the repetition penalty looks at: prompt and generated tokens (kept only when it applies).
        seen_ids=list(prompt_ids) if request.repetition_penalty != 1.0 else [],
    )
