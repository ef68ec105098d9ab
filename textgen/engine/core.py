"""The engine: the only code that runs the model. One thread owns it and decodes every request together.

Continuous batching, one loop iteration at a time (schedule -> step -> update):
1. schedule: when no prompt is being prefilled, take waiting requests that fit in the batch as one
   prefill group (short prompts together, a long one alone);
2. step: one prefill chunk of that group (at most PREFILL_CHUNK_TOKENS prompt tokens), then one decode
   step for every running request; a long prompt thus costs the running streams one chunk per token,
   never its whole prefill;
3. update: per request, its own logits processors and generator pick the next token; stop on EOS, a
   stop sequence, `max_new_tokens` or cancellation; emit a token event; finished and cancelled
   requests leave the batch at once.

The batch itself (rows, KV cache, positions) is `batch.Batch`. Request threads only call `submit`
(tokenize, check limits, admit or refuse) and wait on their `Handle`.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional

import numpy as np

from ..errors import (
    BadRequest,
    Cancelled,
    GenerationError,
    Overloaded,
    QueueTimeout,
    ServiceError,
    Unavailable,
    ValidationError,
)
from ..settings import Settings
from ..validation import GenerationRequest, kept_prompt_tokens
from .batch import Batch
from .detokenize import IncrementalDetokenizer
from .handle import GenerationResult, Handle, TokenEvent
from .sampling import RowSampling, choose_next_tokens

log = logging.getLogger(__name__)

# The packages each backend runs on: whose versions /info reports.
RUNTIME_PACKAGES = {"onnx": ("onnxruntime",), "torch": ("torch",), "transformers": ("torch", "transformers")}


@dataclass(eq=False)
class _Pending:
    handle: Handle
    request: GenerationRequest
    prompt_ids: List[int]
    enqueued_at: float
    request_id: Optional[str]


@dataclass(eq=False)
class Row:
    """A request in the batch: its sampling state and the text so far."""

    pending: _Pending
    sampling: RowSampling
    detokenizer: IncrementalDetokenizer
    seed: Optional[int]
    started_at: float = 0.0  # when it joined the batch (monotonic): queue time ends, compute time starts
    next_token: int = 0  # last token picked; the next decode step feeds it (it is not in the KV cache yet)
    generated: int = 0
    text: str = ""
    finished: bool = field(default=False)

    @property
    def handle(self) -> Handle:
        return self.pending.handle

    @property
    def request(self) -> GenerationRequest:
        return self.pending.request


class Engine:
    def __init__(self, model, tokenizer, settings: Settings):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        context = model.context
        self.max_total_tokens = min(settings.max_total_tokens or context, context)
        self.max_input_tokens = min(settings.max_input_tokens or self.max_total_tokens - 1, self.max_total_tokens - 1)
        self.eos_token_ids = set(model.eos_token_ids)
        self.special_token_ids = set(getattr(tokenizer, "all_special_ids", []))

        self._cond = threading.Condition()  # guards _waiting, _admitted, _stopping
        self._waiting: Deque[_Pending] = collections.deque()
        self._admitted = 0  # running + waiting: what MAX_CONCURRENT_REQUESTS bounds
        self._stopping = False
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._thread: Optional[threading.Thread] = None
        self._batch = Batch(model, settings.prefill_chunk_tokens)  # touched only by the engine thread
        self._listeners: tuple = ()  # weak references (see add_listener); replaced, never mutated
        # Called (on the engine thread, once its requests are answered) if the loop itself dies: the
        # server sets it to end the process, which can only answer 503 from then on (server.py).
        self.on_crash: Optional[Callable[[], None]] = None

    # -- public surface (any thread) ---------------------------------------------------------------
    def start(self) -> "Engine":
        self._thread = threading.Thread(target=self._run, name="textgen-engine", daemon=True)
        self._thread.start()
        return self

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict:
        with self._cond:
            running = len(self._batch.rows) + len(self._batch.group)
            return {"running": running, "waiting": len(self._waiting), "admitted": self._admitted}

    def submit(self, request: GenerationRequest, request_id: Optional[str] = None) -> Handle:
        """Tokenize, check the token limits, then admit the request or refuse it at once (429)."""
        if not self.healthy():
            raise Unavailable("Model is not ready")
        with self._tokenizer_lock:
            prompt_ids = self.tokenizer(request.prompt)["input_ids"]
        kept = kept_prompt_tokens(len(prompt_ids), request, self.max_input_tokens, self.max_total_tokens)
        prompt_ids = prompt_ids[len(prompt_ids) - kept :]  # `truncate` keeps the last tokens
        handle = Handle()
        with self._cond:
            if self._admitted >= self.settings.max_concurrent_requests:
                raise Overloaded()
            self._admitted += 1
            self._waiting.append(_Pending(handle, request, prompt_ids, time.monotonic(), request_id))
            self._cond.notify()
        return handle

    def chat_prompt(self, messages: list) -> str:
        """The messages rendered with the model's chat template, ready to generate the assistant's turn."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest("This model has no chat template; send a plain prompt to /v1/completions instead")
        try:
            with self._tokenizer_lock:
                return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # the template's own checks (e.g. roles must alternate) raise here
            raise ValidationError(f"`messages` cannot be rendered with the model's chat template: {exc}", "messages")

    def add_listener(self, listener) -> None:
        """Observe the engine (metrics): `listener.on_outcome(result_or_error)` as each request ends and
        `listener.on_decode_step(rows)` per decode step, both optional, called on the engine thread before
        the caller sees the event, so they must be quick. Held weakly: it lives as long as its owner keeps
        it. An exception in a listener is logged and ignored."""
        with self._cond:
            alive = tuple(ref for ref in self._listeners if ref() is not None)
            self._listeners = alive + (weakref.ref(listener),)

    def remove_listener(self, listener) -> None:
        with self._cond:
            self._listeners = tuple(ref for ref in self._listeners if ref() is not None and ref() is not listener)

    def info(self) -> dict:
        return {
            "model_dtype": self.model.dtype_name,
            "model_backend": self.model.backend,
            "model_device_type": "cpu",
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "threads": self.model.threads,
            "versions": _runtime_versions(RUNTIME_PACKAGES.get(self.model.backend, ())),
        }

    # -- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        batch = self._batch
        crashed = False
        try:
            while True:
                group: List[_Pending] = []
                with self._cond:
                    while not self._stopping and not self._waiting and batch.empty:
                        self._cond.wait()
                    if self._stopping:
                        break
                    if not batch.prefilling:
                        group = self._take_group()
                if group:
                    batch.add([self._new_row(p) for p in group], [p.prompt_ids for p in group])
                if batch.prefilling:
                    self._prefill_chunk()
                if len(batch):
                    self._decode_step()
        except BaseException:  # a bug in the loop itself; make it visible in /health
            crashed = True
            log.exception("engine loop crashed")
        finally:
            with self._cond:
                self._stopping = True
                leftovers = list(self._waiting) + [r.pending for r in batch.rows + batch.group]
                self._waiting.clear()
            for pending in leftovers:
                self._release(pending, Unavailable("The server is shutting down"))
            if crashed and self.on_crash is not None:
                self.on_crash()

    def _take_group(self) -> List[_Pending]:
        """(Holding the lock.) Pop the next prefill group: waiting requests in order while they fit in
        the batch and, together, in one prefill chunk (a longer prompt goes alone, chunk by chunk).
        Cancelled and overdue requests are answered now."""
        room = self.settings.max_batch_size - len(self._batch)
        chunk = self.settings.prefill_chunk_tokens
        now = time.monotonic()
        group, still_waiting, width = [], collections.deque(), 0
        closed = False
        for pending in self._waiting:
            wider = max(width, len(pending.prompt_ids))
            if pending.handle.cancelled:
                self._release_locked(pending, Cancelled("client disconnected"))
            elif not closed and len(group) < room and (not group or wider * (len(group) + 1) <= chunk):
                group.append(pending)
                width = wider
            elif now - pending.enqueued_at > self.settings.queue_timeout:
                self._release_locked(
                    pending,
                    QueueTimeout(f"Request waited more than {self.settings.queue_timeout:g} s for a free slot"),
                )
            else:
                closed = True  # first come, first served: nothing overtakes a request left waiting
                still_waiting.append(pending)
        self._waiting = still_waiting
        return group

    def _prefill_chunk(self) -> None:
        """One chunk of the prefill group; when the group is done, each row picks its first token."""
        batch = self._batch
        self._drop(list(batch.group), only_cancelled=True)
        if not batch.prefilling:
            return
        rows = list(batch.group)  # the same rows, in the same order, as those that join when it is done
        try:
            joined = batch.prefill_step()
            if joined is None:
                return
            tokens, logprobs = choose_next_tokens(joined[1], [r.sampling for r in rows])
        except Exception:
            log.exception("prefill failed (requests %s)", [r.pending.request_id for r in rows])
            self._drop(rows, GenerationError("Generation failed; see the server log"))
            return
        self._drop([row for row, token, lp in zip(rows, tokens, logprobs) if self._accept(row, token, lp)])

    def _decode_step(self) -> None:
        batch = self._batch
        self._drop(list(batch.rows), only_cancelled=True)
        if not len(batch):
            return
        rows = list(batch.rows)
        try:
            logits = batch.step([r.next_token for r in rows])
            tokens, logprobs = choose_next_tokens(logits, [r.sampling for r in rows])
        except Exception:
            log.exception("decode step failed; failing the %d running requests", len(rows))
            self._drop(rows, GenerationError("Generation failed; see the server log"))
            return
        self._notify("on_decode_step", len(rows))
        self._drop([row for row, token, lp in zip(rows, tokens, logprobs) if self._accept(row, token, lp)])

    def _new_row(self, pending: _Pending) -> Row:
        request = pending.request
        seed, generator = request.seed, None
        if request.do_sample:
            seed = secrets.randbits(63) if seed is None else seed
            # A generator per request: its tokens depend on its seed only, never on its neighbours.
            generator = np.random.default_rng(seed)
        return Row(
            pending=pending,
            sampling=RowSampling(
                do_sample=request.do_sample,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                typical_p=request.typical_p,
                repetition_penalty=request.repetition_penalty,
                frequency_penalty=request.frequency_penalty,
                generator=generator,
                seen_ids=list(pending.prompt_ids),
            ),
            detokenizer=IncrementalDetokenizer(self.tokenizer, pending.prompt_ids),
            seed=seed if request.do_sample else None,
            started_at=time.monotonic(),
        )

    def _accept(self, row: Row, token: int, logprob: float) -> bool:
        """Record one generated token, emit its event, and answer whether the request is finished."""
        row.generated += 1
        row.next_token = token
        row.sampling.seen_ids.append(token)
        row.sampling.generated_ids.append(token)
        special = token in self.special_token_ids
        is_eos = token in self.eos_token_ids
        piece = row.detokenizer.add(token)
        if special:
            piece = ""  # special tokens (EOS above all) never become part of the text
        if not is_eos and row.generated >= row.request.max_new_tokens:
            piece += row.detokenizer.flush()  # the last token: release bytes held for an unfinished character
        previous_length = len(row.text)
        row.text += piece
        reason = None
        if is_eos:
            reason = "eos_token"
        else:
            cut = _find_stop(row.text, row.request.stop, previous_length)
            if cut is not None:
                row.text, reason = row.text[:cut], "stop_sequence"
            elif row.generated >= row.request.max_new_tokens:
                reason = "length"
        row.handle._emit(
            TokenEvent(
                index=row.generated, id=token, text=piece, logprob=logprob, special=special, last=reason is not None
            )
        )
        if reason is None:
            return False
        self._release(
            row.pending,
            GenerationResult(
                text=row.text,
                finish_reason=reason,
                generated_tokens=row.generated,
                prompt_tokens=len(row.pending.prompt_ids),
                seed=row.seed,
                queue_time=row.started_at - row.pending.enqueued_at,
                compute_time=time.monotonic() - row.started_at,
            ),
        )
        row.finished = True
        return True

    def _drop(self, rows: List[Row], error: Optional[ServiceError] = None, only_cancelled: bool = False) -> None:
        """Rows leave the batch; those without a result get `error` (cancelled ones: Cancelled)."""
        if only_cancelled:
            rows = [r for r in rows if r.handle.cancelled]
        if not rows:
            return
        for row in rows:
            if not row.finished:
                if row.handle.cancelled:
                    self._release(row.pending, Cancelled("client disconnected"))
                else:
                    self._release(row.pending, error or GenerationError("request ended without a result"))
        self._batch.remove(rows)

    def _release(self, pending: _Pending, outcome) -> None:
        with self._cond:
            self._release_locked(pending, outcome)

    def _release_locked(self, pending: _Pending, outcome) -> None:
        self._admitted -= 1
        self._notify("on_outcome", outcome)  # before the caller can see it: metrics are current by then
        pending.handle._emit(outcome)

    def _notify(self, method: str, *args) -> None:
        for ref in self._listeners:
            listener = ref()
            callback = getattr(listener, method, None)
            if callback is not None:
                try:
                    callback(*args)
                except Exception:  # an observer must never break the engine loop
                    log.exception("engine listener %r failed in %s", listener, method)


def _runtime_versions(packages) -> dict:
    """Versions of the packages the model runs on (those absent are left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def _find_stop(text: str, stops, previous_length: int) -> Optional[int]:
    """Index where the earliest stop sequence starts, looking only where the new text could complete one."""
    cuts = []
    for stop in stops:
        index = text.find(stop, max(0, previous_length - len(stop) + 1))
        if index >= 0:
            cuts.append(index)
    return min(cuts) if cuts else None
