"""The engine: the only code that runs the model. One thread owns it and decodes every request together.

Continuous batching, one loop iteration at a time:
1. schedule: drop cancelled rows; when no prompt is being prefilled, take the next group of waiting
   requests that fit (queue.next_group: short prompts together, a long one alone);
2. step: one prefill chunk of that group (at most PREFILL_CHUNK_TOKENS prompt tokens), then one decode
   step for every running request, each followed by one sampling call for all its rows; a long prompt
   thus costs the running streams one chunk per token, never its whole prefill (on a model that packs
   tokens, the ONNX backend, the chunk rides in the decode step's pass: joins cost no pass of their own);
3. update: each row's `Generation` takes its token (stop on EOS, a stop sequence, `max_new_tokens`;
   streaming callers get the token's event); finished rows are answered and leave the batch at once.

Request threads only call `submit` (validation turns the prompt into ids within the token limits, then
the queue admits or refuses at once) and wait on their `Handle`. The batch's rows, cache and
positions are `batch.Batch`; a row is a `generation.Generation` (one completion of a request); embedding
jobs (`engine.embeddings.submit`) get one pass of their own per iteration (embeddings.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, List, Optional

import numpy as np

from ..errors import Cancelled, GenerationError, ServiceError, Unavailable
from ..model.contract import CausalLM
from ..model.memory import batch_total_tokens
from ..settings import Settings
from ..validation import GenerationRequest, PromptTokens
from .batch import Batch, Joined
from .embeddings import Embedder
from .handle import Handle
from .listeners import Listeners
from .prefix_cache import PrefixCache
from .queue import Entry, Queue
from .runtime import runtime_versions
from .sampling import Picks
from .generation import Generation, Vocabulary, choose_next_tokens_for, take_forced

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, model: CausalLM, tokenizer, settings: Settings):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        prefix_cache = PrefixCache.for_model(model, settings.prefix_cache_tokens)
        self._batch = Batch(model, settings.prefill_chunk_tokens, prefix_cache)  # engine thread only
        self._together = getattr(model, "packs_tokens", False)  # a prefill chunk rides in the decode pass
        prefix_tokens = 0 if prefix_cache is None else prefix_cache.capacity_tokens  # memory set aside, not in the budget
        self.batch_total_tokens = batch_total_tokens(settings.max_batch_total_tokens, self._batch.cache.bytes_per_token, prefix_tokens)
        self._batch.cache.budget_tokens = self.batch_total_tokens
        self.prompts = PromptTokens.for_model(
            tokenizer, model.context, settings.max_total_tokens, settings.max_input_tokens, vocab_size=model.vocab_size,
            eos_token_ids=model.eos_token_ids, max_batch_total_tokens=self.batch_total_tokens,
        )
        self.eos_token_ids, self.special_token_ids = frozenset(model.eos_token_ids), frozenset(getattr(tokenizer, "all_special_ids", []))
        self._queue = Queue(settings.max_concurrent_requests)
        self.embeddings = Embedder(model, settings.prefill_chunk_tokens, self._queue.wake, settings.max_concurrent_requests)
        self._thread: Optional[threading.Thread] = None
        self._listeners = Listeners()
        self.draining = False  # the process is about to stop: still serving, no longer advertised ready
        # Called (on the engine thread, once its requests are answered) if the loop itself dies: the
        # server sets it to end the process, which can only answer 503 from then on (server.py).
        self.on_crash: Optional[Callable[[], None]] = None

    # -- public surface (any thread) ---------------------------------------------------------------
    # The limits belong to validation; the engine only reports them.
    max_total_tokens = property(lambda self: self.prompts.max_total_tokens)
    max_input_tokens = property(lambda self: self.prompts.max_input_tokens)

    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="textgen-engine", daemon=True)
        self._thread.start()
        return self

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._queue.closed

    def drain(self) -> None:
        """The process will stop soon: /ready turns 503 (balancers send elsewhere); requests still served."""
        self.draining = True

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        return {"running": len(self._batch.rows) + len(self._batch.group), **self._queue.stats()}

    def submit(self, request: GenerationRequest, request_id: Optional[str] = None) -> Handle:
        """Tokenize and check the token limits, compile the grammar if any (in the caller's thread; errors
        name the client's fields, `request.fields`), then admit the request or refuse it at once (429)."""
        if not self.healthy():
            raise Unavailable("Model is not ready")
        tokenized = self.prompts.tokenize(request)
        entry = Entry(Handle(completions=request.n), request, tokenized.prompt_ids, time.monotonic(), request_id, tokenized.constraint)
        entry.handle.prompt_tokens = len(tokenized.prompt_ids)
        self._queue.admit(entry)
        return entry.handle

    def prefix_cache_stats(self) -> Optional[dict]:
        """`PrefixCache.stats` (None when it is off); any thread: plain numbers the engine thread replaces."""
        cache = self._batch.prefix_cache
        return None if cache is None else cache.stats()

    def add_listener(self, listener) -> None:
        """Observe the engine (metrics): see `Listeners`."""
        self._listeners.add(listener)

    def remove_listener(self, listener) -> None:
        self._listeners.remove(listener)

    def info(self) -> dict:
        return {
            "model_dtype": self.model.dtype_name,
            "model_backend": self.model.backend,
            "model_device_type": "cpu",
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "max_batch_total_tokens": self.batch_total_tokens,
            "threads": self.model.threads,
            "versions": runtime_versions(self.model.backend),
        }

    # -- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        crashed = False
        try:
            while self._schedule():
                batch = self._batch
                together = self._together and batch.prefilling and len(batch) > 0
                if batch.prefilling and not together:
                    self._step(decode=False, prefill=True)
                if len(batch):  # (the group may just have joined)
                    self._step(decode=True, prefill=together)
                self.embeddings.step()  # at most one chunk of embedding work: nothing when none waits
        except BaseException:  # a bug in the loop itself; make it visible in /health
            crashed = True
            log.exception("engine loop crashed")
        finally:
            shutting_down = Unavailable("The server is shutting down")
            self.embeddings.close(shutting_down)
            for entry in self._queue.drain():
                self._answer(entry, shutting_down, entry.rows)
            for generation in self._batch.rows + self._batch.group:
                self._answer(generation.entry, shutting_down, generation.rows_held)
            if crashed and self.on_crash is not None:
                self.on_crash()

    def _schedule(self) -> bool:
        """Wait for work; drop cancelled rows; start prefilling the next group. False: the engine stops."""
        batch = self._batch
        if not self._queue.wait_for_work(busy=lambda: not batch.empty or self.embeddings.pending):
            return False
        self._leave([g for g in batch.rows + batch.group if g.handle.cancelled])
        if not batch.prefilling:
            room = self.settings.max_batch_size - len(batch)
            # A prompt whose prefix is cached counts only the tokens it has left to prefill: several rows
            # sharing a system prompt then join in one prefill pass instead of one each.
            to_prefill = None if batch.prefix_cache is None else self._to_prefill
            token_room = self.batch_total_tokens - sum(g.rows_held * g.entry.row_tokens for g in batch.rows)
            grouping = self._queue.take(room, self.settings.prefill_chunk_tokens, self.settings.queue_timeout, to_prefill, token_room)
            for entry, error in grouping.refused:
                self._answer(entry, error, entry.rows)
            if grouping.group:
                vocabulary = Vocabulary(self.tokenizer, self.eos_token_ids, self.special_token_ids)
                rows = [Generation.start(entry, vocabulary) for entry in grouping.group]
                scorers = [g.score_prompt if g.wants_prompt_logprobs else None for g in rows]
                batch.add(rows, [e.prompt_ids for e in grouping.group], scorers)
        return True

    def _to_prefill(self, entry: Entry) -> int:
        """Prompt tokens the entry's prefill will compute: those after its cached prefix, or all of them
        when it scores its prompt (Batch then prefills it whole)."""
        if entry.request.scores_prompt:
            return len(entry.prompt_ids)
        return self._batch.prefix_cache.to_prefill(entry.prompt_ids)

    def _step(self, decode: bool, prefill: bool) -> None:
        """One pass (Batch.run_pass) over the running rows and/or the group's next chunk; a sampling call
        for the rows, one for the group if it joined; their updates. A failed pass fails what it carried."""
        batch = self._batch
        rows, group = list(batch.rows) if decode else [], list(batch.group) if prefill else []
        try:
            stepped, joined = batch.run_pass([g.feed() for g in rows], [g.wants_logprobs for g in rows], prefill)
            parts = [(rows, take_forced(rows, stepped))] if stepped is not None else []
            parts += [self._join(group, joined)] if joined is not None else []
            picks = [choose_next_tokens_for(part_rows, logits) for part_rows, logits in parts]
        except Exception:
            log.exception("forward pass failed; failing the requests it carried: %s", [g.entry.request_id for g in rows + group])
            self._leave(rows + group, GenerationError("Generation failed; see the server log"))
            return
        if stepped is not None:
            self._listeners.notify("on_decode_step", len(rows))
        for (part_rows, _), part_picks in zip(parts, picks):
            self._update(part_rows, part_picks)

    def _join(self, rows: List[Generation], joined: Joined):
        """Rows that just joined learn what their prompts took from the prefix cache; those that asked for
        `n` completions become n rows: the prompt's keys and values copied to n - 1 new slots, each with its
        own seed (derived from the request's) and the same next-token logits. Returns every row and logits."""
        for generation, cached in zip(rows, joined.cached_tokens):
            generation.cached_tokens = cached
        if all(g.rows_held == 1 for g in rows):
            return rows, joined.logits
        every, repeats = [], []
        for generation in rows:
            siblings = [generation.fork(choice) for choice in range(1, generation.rows_held)]
            generation.rows_held = 1
            if siblings:
                self._batch.fork(generation, siblings)
            every += [generation] + siblings
            repeats.append(1 + len(siblings))
        return every, np.repeat(joined.logits, repeats, axis=0)

    def _update(self, rows: List[Generation], picks: Picks) -> None:
        """Each row takes its token; the finished are answered and leave. A row whose update fails (its
        text cannot be decoded, say) fails alone; one whose grammar gave out fails saying so."""
        finished, failed, refused = [], [], []
        for generation, token, logprob, top in zip(rows, *picks):
            try:
                if not generation.finished:  # (its forced tokens may have ended it)
                    generation.append(token, logprob, top)
                if generation.finished:
                    result = generation.result()
                    self._answer(generation.entry, result, generation.rows_held)
                    finished.append(generation)
            except ServiceError as error:  # the request's own (its grammar hit a limit of llguidance's)
                log.warning("request %s failed: %s", generation.entry.request_id, error.message)
                refused.append((generation, error))
            except Exception:
                log.exception("update failed (request %s)", generation.entry.request_id)
                failed.append(generation)
        self._batch.remove(finished)
        self._leave(failed, GenerationError("Generation failed; see the server log"))
        for generation, error in refused:
            self._leave([generation], error)

    def _leave(self, rows: List[Generation], error: Optional[ServiceError] = None) -> None:
        """Rows leave the batch unfinished: cancelled ones get Cancelled, the others `error`."""
        if not rows:
            return
        for generation in rows:
            cancelled = generation.handle.cancelled
            self._answer(generation.entry, Cancelled("client disconnected") if cancelled else error, generation.rows_held)
        self._batch.remove(rows)

    def _answer(self, entry: Entry, outcome, rows: int = 1) -> None:
        """The last event of `rows` of the request's rows (a completion's result, or an error): listeners
        first, so metrics are current by the time its caller sees it; then their places in the queue are
        free. An error ends a request of several completions: the others are cancelled."""
        self._listeners.notify("on_outcome", outcome)
        self._queue.done(rows)
        if isinstance(outcome, ServiceError) and entry.rows > 1:
            entry.handle.cancel()
        entry.handle.emit(outcome)
