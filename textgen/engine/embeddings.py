"""Embeddings: the model's final hidden states, mean-pooled over an input's tokens and L2-normalised,
computed on the engine thread between its generation steps.

Why on the engine thread: the model's runtime state is the engine thread's (ONNX Runtime's IO bindings,
torch's thread pool sized for one caller), and a second session would hold a second copy of the
weights (ONNX Runtime prepacks each session's own). So a request thread only queues a job (`submit`)
and waits on its `EmbeddingHandle`; the engine's loop calls `step` once per iteration while jobs wait:
one forward pass of at most PREFILL_CHUNK_TOKENS tokens, like one prefill chunk, so running streams
wait at most one chunk's time per step for it. The pass is the generation's own (`hidden_states`: the
same graph or module, asked for the final-normed hidden states instead of logits) over a KV cache of
the embedder's own: no slot of the batch is touched and the batch's bookkeeping knows nothing of it.
Its memory is given back whenever no input is half done.

Passes: inputs are taken in order; those of at most `chunk_tokens` tokens go together while the
padded group (longest x count) fits in a chunk; a longer one runs alone, `chunk_tokens` at a time, its
earlier tokens' keys and values kept in the cache. How an input is cut depends on its own length only,
so the same text takes the same passes alone or in a batch (only the rows beside it differ, and no
row's numbers depend on its neighbours'). Pooling: the mean over every token of the input (any token
the tokenizer adds, a BOS, included), summed in float64, then divided by its L2 norm (Ollama's
/api/embed answers unit vectors; so do OpenAI's).
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable, Deque, List, Optional, Sequence

import numpy as np

from ..errors import Cancelled, GenerationError, Overloaded, ServiceError, Unavailable, from_http_status
from ..model.kv_cache import KVCache

log = logging.getLogger(__name__)


class EmbeddingHandle:
    """What a request thread waits on: every input's vector, or the job's error."""

    def __init__(self, inputs: int):
        self.vectors: List[Optional[np.ndarray]] = [None] * inputs
        self.error: Optional[ServiceError] = None
        self._left = inputs
        self._done = threading.Event()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """The client went away: the engine drops what it has not started."""
        self._cancelled.set()

    def result(self) -> np.ndarray:
        """Wait for the vectors, float32 [inputs, width]; raises the job's error."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return np.stack(self.vectors)

    # -- engine thread ------------------------------------------------------------------------------
    def _set(self, index: int, vector: np.ndarray) -> bool:
        self.vectors[index] = vector
        self._left -= 1
        if not self._left:
            self._done.set()
        return not self._left

    def _fail(self, error: ServiceError) -> None:
        self.error = error
        self._done.set()


@dataclass(eq=False)
class _Input:
    handle: EmbeddingHandle
    index: int  # its place among the job's inputs
    ids: Sequence[int]
    done: int = 0  # tokens already through the model (a long input, between its chunks)
    total: Optional[np.ndarray] = field(default=None, repr=False)  # float64 sum of its hidden states so far


class Embedder:
    """The queue of embedding jobs and the passes that run them (`step`, on the engine thread)."""

    def __init__(self, model, chunk_tokens: int, wake: Callable[[], None], max_jobs: int):
        self.model = model
        self.width: Optional[int] = getattr(model, "width", None) if hasattr(model, "hidden_states") else None
        self.chunk_tokens = chunk_tokens
        self.cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        self.max_jobs = max_jobs
        self._wake = wake  # tells the engine thread there is work (Queue.wake)
        self._lock = threading.Lock()
        self._inputs: Deque[_Input] = collections.deque()
        self._jobs = 0  # jobs queued or running
        self._closed = False

    @property
    def pending(self) -> bool:
        with self._lock:
            return bool(self._inputs)

    def submit(self, inputs: Sequence[Sequence[int]]) -> EmbeddingHandle:
        """Queue one job (token ids per input, each non-empty and within the limits: validation's), or
        refuse it at once: 501 when the model has no hidden-state output, 429 when MAX_CONCURRENT_REQUESTS
        jobs already wait, 503 once the engine stops."""
        if self.width is None:
            raise from_http_status(501, "This model serves no embeddings: its ONNX graph was built before they "
                                        "existed; rebuild it (scripts/build_graph.py) or let the server build it")
        handle = EmbeddingHandle(len(inputs))
        with self._lock:
            if self._closed:
                raise Unavailable("The server is shutting down")
            if self._jobs >= self.max_jobs:
                raise Overloaded()
            self._jobs += 1
            self._inputs.extend(_Input(handle, i, ids) for i, ids in enumerate(inputs))
        self._wake()
        return handle

    def close(self, error: ServiceError) -> None:
        """(Engine thread, stopping.) Answer every queued job with `error`; refuse new ones."""
        with self._lock:
            self._closed = True
            handles = {id(item.handle): item.handle for item in self._inputs}
            self._inputs.clear()
        for handle in handles.values():
            handle._fail(error)

    def step(self) -> None:
        """(Engine thread.) One forward pass over the next inputs; answers the jobs it completes. A pass
        that fails fails the jobs in it, not the engine."""
        group = self._next_group()
        if not group:
            return
        try:
            self._run(group)
        except Exception:
            log.exception("embedding pass failed")
            failed = {id(item.handle): item.handle for item in group}
            self._drop(lambda item: id(item.handle) in failed, GenerationError("Embedding failed; see the server log"))
            self.cache.clear()
            return
        finished = [item for item in group if item.done == len(item.ids)]
        for item in finished:
            mean = item.total / len(item.ids)
            if item.handle._set(item.index, (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)):
                self._finish_job()
        with self._lock:
            for _ in finished:
                self._inputs.popleft()  # a group is the front of the line, in order
            if not self._inputs or self._inputs[0].done == 0:
                self.cache.clear()  # nothing half done: give the memory back

    def _next_group(self) -> List[_Input]:
        """The inputs of the next pass: the front of the line (see the module's docstring)."""
        self._drop(lambda item: item.handle.cancelled, Cancelled("client disconnected"))
        with self._lock:
            if not self._inputs:
                return []
            first = self._inputs[0]
            group, width = [first], len(first.ids)
            if width >= self.chunk_tokens:
                return group
            for item in list(self._inputs)[1:]:
                wider = max(width, len(item.ids))
                if len(item.ids) >= self.chunk_tokens or wider * (len(group) + 1) > self.chunk_tokens:
                    break
                group.append(item)
                width = wider
            return group

    def _run(self, group: List[_Input]) -> None:
        """One pass: each input's next tokens (all of them, or a long one's next chunk); their hidden
        states are added to the inputs' sums."""
        takes = [min(len(item.ids) - item.done, self.chunk_tokens) for item in group]
        width = max(takes)
        tokens = np.zeros((len(group), width), dtype=np.int64)  # right-padded
        for row, (item, take) in enumerate(zip(group, takes)):
            tokens[row, :take] = item.ids[item.done : item.done + take]
        starts = np.array([item.done for item in group], dtype=np.int64)
        counts = np.array(takes, dtype=np.int64)
        self.cache.reserve(len(group), int(starts.max()) + max(width, getattr(self.model, "min_width", 1)), [item.done for item in group])
        index = np.concatenate([row * width + np.arange(take) for row, take in enumerate(takes)])
        hidden = self.model.hidden_states(tokens, starts, counts, self.cache, 0, index)
        offset = 0
        for item, take in zip(group, takes):
            part = hidden[offset : offset + take].sum(axis=0, dtype=np.float64)
            item.total = part if item.total is None else item.total + part
            item.done += take
            offset += take

    def _drop(self, which: Callable[[_Input], bool], error: ServiceError) -> None:
        """Take the inputs `which` picks out of the line; their jobs end with `error` (their callers wake)."""
        with self._lock:
            dropped = [item for item in self._inputs if which(item)]
            if not dropped:
                return
            self._inputs = collections.deque(item for item in self._inputs if not which(item))
        handles = {id(item.handle): item.handle for item in dropped}
        for handle in handles.values():
            handle._fail(error)
            self._finish_job()

    def _finish_job(self) -> None:
        with self._lock:
            self._jobs -= 1
