"""The engine: the only code that runs the model. One thread owns it and decodes every request together.

Continuous batching, one loop iteration at a time:
1. admit waiting requests while the batch has room: prefill their prompts together (left-padded, logits
   of the last position only), pick each one's first token, and merge their KV cache into the running
   batch's, left-padded as well;
2. one forward pass over the last token of every running request, reusing the batch's KV cache;
3. per request: its own logits processors and generator pick the next token; stop on EOS, a stop
   sequence, `max_new_tokens` or cancellation; emit a token event;
4. finished and cancelled requests leave the batch at once, with their rows of the KV cache.

Request threads only call `submit` (tokenize, check limits, admit or refuse) and wait on their `Handle`.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Deque, List, Optional

import torch
import torch.nn.functional as F
import transformers

from ..errors import Cancelled, GenerationError, Overloaded, QueueTimeout, ServiceError, Unavailable
from ..settings import Settings
from ..validation import GenerationRequest, check_token_budget
from .detokenize import IncrementalDetokenizer
from .handle import GenerationResult, Handle, TokenEvent
from .kv_cache import new_cache, set_layer
from .sampling import RowSampling, choose_next_tokens

log = logging.getLogger(__name__)

# Most (padded) prompt tokens prefilled in one forward pass: several short prompts arriving together
# cost about one pass, while a burst of long ones cannot make a single pass huge.
PREFILL_TOKENS = 2048


@dataclass(eq=False)
class _Pending:
    handle: Handle
    request: GenerationRequest
    prompt_ids: List[int]
    enqueued_at: float
    request_id: Optional[str]


@dataclass(eq=False)
class _Running:
    pending: _Pending
    sampling: RowSampling
    detokenizer: IncrementalDetokenizer
    seed: Optional[int]
    next_token: int = 0  # last token picked; the next forward pass feeds it (it is not in the KV cache yet)
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
    def __init__(self, model, tokenizer, settings: Settings, model_id: Optional[str] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.model_id = model_id or settings.model_id
        context = _model_context(model.config)
        self.max_total_tokens = min(settings.max_total_tokens or context, context)
        self.max_input_tokens = min(settings.max_input_tokens or self.max_total_tokens - 1, self.max_total_tokens - 1)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.special_token_ids = set(getattr(tokenizer, "all_special_ids", []))

        self._cond = threading.Condition()  # guards _waiting, _admitted, _stopping
        self._waiting: Deque[_Pending] = collections.deque()
        self._admitted = 0  # running + waiting: what MAX_CONCURRENT_REQUESTS bounds
        self._stopping = False
        self._tokenizer_lock = threading.Lock()  # fast tokenizers are not safe to share across threads
        self._thread: Optional[threading.Thread] = None

        # The running batch; touched only by the engine thread.
        self._rows: List[_Running] = []
        self._cache = None  # transformers DynamicCache, [batch, heads, time, head_dim] per layer
        self._mask: Optional[torch.Tensor] = None  # [batch, time]: 0 where a row is left-padded

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
            return {"running": len(self._rows), "waiting": len(self._waiting), "admitted": self._admitted}

    def submit(self, request: GenerationRequest, request_id: Optional[str] = None) -> Handle:
        """Tokenize, check the token limits, then admit the request or refuse it at once (429)."""
        if not self.healthy():
            raise Unavailable("Model is not ready")
        with self._tokenizer_lock:
            prompt_ids = self.tokenizer(request.prompt)["input_ids"]
        kept = check_token_budget(len(prompt_ids), request, self.max_input_tokens, self.max_total_tokens)
        prompt_ids = prompt_ids[len(prompt_ids) - kept :]  # `truncate` keeps the last tokens
        handle = Handle()
        with self._cond:
            if self._admitted >= self.settings.max_concurrent_requests:
                raise Overloaded()
            self._admitted += 1
            self._waiting.append(_Pending(handle, request, prompt_ids, time.monotonic(), request_id))
            self._cond.notify()
        return handle

    def info(self) -> dict:
        return {
            "model_id": self.model_id,
            "model_dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "model_device_type": "cpu",
            "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens,
            "max_batch_size": self.settings.max_batch_size,
            "max_concurrent_requests": self.settings.max_concurrent_requests,
            "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }

    # -- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while not self._stopping and not self._waiting and not self._rows:
                            self._cond.wait()
                        if self._stopping:
                            break
                        admitted = self._take_waiting()
                    if admitted:
                        self._prefill_all(admitted)
                    if self._rows:
                        self._decode_step()
        except BaseException:  # pragma: no cover - a bug in the loop itself; make it visible in /health
            log.exception("engine loop crashed")
        finally:
            with self._cond:
                self._stopping = True
                leftovers = list(self._waiting) + [r.pending for r in self._rows]
                self._waiting.clear()
            self._rows = []
            for pending in leftovers:
                self._release(pending, Unavailable("The server is shutting down"))

    def _take_waiting(self) -> List[_Pending]:
        """(Holding the lock.) Pop what fits in the batch; answer cancelled and overdue requests now."""
        room = self.settings.max_batch_size - len(self._rows)
        now = time.monotonic()
        admitted, still_waiting = [], collections.deque()
        for pending in self._waiting:
            if pending.handle.cancelled:
                self._release_locked(pending, Cancelled("client disconnected"))
            elif len(admitted) < room:
                admitted.append(pending)
            elif now - pending.enqueued_at > self.settings.queue_timeout:
                self._release_locked(
                    pending,
                    QueueTimeout(f"Request waited more than {self.settings.queue_timeout:g} s for a free slot"),
                )
            else:
                still_waiting.append(pending)
        self._waiting = still_waiting
        return admitted

    def _prefill_all(self, admitted: List[_Pending]) -> None:
        """Prefill admitted prompts together, in groups of at most PREFILL_TOKENS (padded) tokens."""
        group: List[_Pending] = []
        width = 0
        for pending in admitted:
            width = max(width, len(pending.prompt_ids))
            if group and width * (len(group) + 1) > PREFILL_TOKENS:
                self._prefill(group)
                group, width = [], len(pending.prompt_ids)
            group.append(pending)
        if group:
            self._prefill(group)

    def _prefill(self, group: List[_Pending]) -> None:
        """One forward pass over the prompts (left-padded to the longest), logits of the last position
        only; each request picks its first token, and those not finished at once join the batch."""
        width = max(len(p.prompt_ids) for p in group)
        padded = [[0] * (width - len(p.prompt_ids)) + p.prompt_ids for p in group]
        mask = torch.tensor([[0] * (width - len(p.prompt_ids)) + [1] * len(p.prompt_ids) for p in group])
        try:
            rows = [self._new_row(p) for p in group]
            out = self.model(
                input_ids=torch.tensor(padded),
                attention_mask=mask,
                position_ids=(mask.cumsum(dim=-1) - 1).clamp(min=0),  # real tokens count from 0
                past_key_values=new_cache(self.model.config),
                use_cache=True,
                logits_to_keep=1,
            )
            tokens, logprobs = choose_next_tokens(out.logits[:, -1, :], [r.sampling for r in rows])
        except Exception:
            log.exception("prefill failed (requests %s)", [p.request_id for p in group])
            for pending in group:
                self._release(pending, GenerationError("Generation failed; see the server log"))
            return
        staying = [i for i, row in enumerate(rows) if not self._accept(row, tokens[i], logprobs[i])]
        if not staying:
            return
        cache = out.past_key_values
        if len(staying) < len(rows):
            cache.batch_select_indices(torch.tensor(staying))
        self._join_batch([rows[i] for i in staying], cache, mask[staying])

    def _new_row(self, pending: _Pending) -> _Running:
        request = pending.request
        seed, generator = request.seed, None
        if request.do_sample:
            seed = secrets.randbits(63) if seed is None else seed
            # A generator per request: its tokens depend on its seed only, never on its neighbours.
            generator = torch.Generator().manual_seed(seed)
        return _Running(
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
        )

    def _join_batch(self, rows: List[_Running], cache, mask: torch.Tensor) -> None:
        """Add prefilled requests to the running batch, left-padding whichever KV cache is shorter."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(rows), cache, mask
        else:
            old_width, new_width = self._mask.shape[1], mask.shape[1]
            pad_old, pad_new = max(new_width - old_width, 0), max(old_width - new_width, 0)
            for old, new in zip(self._cache.layers, cache.layers):
                set_layer(
                    old,
                    torch.cat([_left_pad(old.keys, pad_old), _left_pad(new.keys, pad_new)], dim=0),
                    torch.cat([_left_pad(old.values, pad_old), _left_pad(new.values, pad_new)], dim=0),
                )
            self._mask = torch.cat([F.pad(self._mask, (pad_old, 0)), F.pad(mask, (pad_new, 0))], dim=0)
            self._rows.extend(rows)
        self._trim_left_padding()

    def _decode_step(self) -> None:
        self._leave_batch([r for r in self._rows if r.handle.cancelled], Cancelled("client disconnected"))
        if not self._rows:
            return
        rows = self._rows
        # Each row feeds its last token at its own position; the mask hides every row's left padding.
        input_ids = torch.tensor([[r.next_token] for r in rows])
        positions = torch.tensor([[len(r.pending.prompt_ids) + r.generated - 1] for r in rows])
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        try:
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
            )
            self._mask = mask
            self._cache = out.past_key_values
            tokens, logprobs = choose_next_tokens(out.logits[:, -1, :], [r.sampling for r in rows])
        except Exception:
            log.exception("decode step failed; failing the %d running requests", len(rows))
            self._leave_batch(list(rows), GenerationError("Generation failed; see the server log"))
            return
        done = [row for row, token, logprob in zip(rows, tokens, logprobs) if self._accept(row, token, logprob)]
        self._leave_batch(done)

    def _accept(self, row: _Running, token: int, logprob: float) -> bool:
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
            ),
        )
        row.finished = True
        return True

    def _leave_batch(self, leaving: List[_Running], error: Optional[ServiceError] = None) -> None:
        """Drop rows (and their KV-cache rows); trim padding columns no remaining row needs."""
        if not leaving:
            return
        for row in leaving:
            if not row.finished:
                self._release(row.pending, error or GenerationError("request ended without a result"))
        keep = [i for i, r in enumerate(self._rows) if r not in leaving]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._trim_left_padding()

    def _trim_left_padding(self) -> None:
        """Drop leading KV-cache columns that are padding for every row (e.g. the longest one left)."""
        first_used = int((self._mask.sum(dim=0) > 0).nonzero()[0])
        if first_used > 0:
            self._mask = self._mask[:, first_used:]
            for layer in self._cache.layers:
                set_layer(layer, layer.keys[..., first_used:, :], layer.values[..., first_used:, :])

    def _release(self, pending: _Pending, outcome) -> None:
        with self._cond:
            self._release_locked(pending, outcome)

    def _release_locked(self, pending: _Pending, outcome) -> None:
        self._admitted -= 1
        pending.handle._emit(outcome)


def _left_pad(tensor: torch.Tensor, amount: int) -> torch.Tensor:
    """Pad the time axis (-2) of a [batch, heads, time, dim] tensor on the left with zeros."""
    return F.pad(tensor, (0, 0, amount, 0)) if amount else tensor


def _find_stop(text: str, stops, previous_length: int) -> Optional[int]:
    """Index where the earliest stop sequence starts, looking only where the new text could complete one."""
    cuts = []
    for stop in stops:
        index = text.find(stop, max(0, previous_length - len(stop) + 1))
        if index >= 0:
            cuts.append(index)
    return min(cuts) if cuts else None


def _model_context(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_token_ids(model, tokenizer) -> set:
    ids = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids
