"""Admission and the waiting line: who may enter, and which waiting requests join the batch next.

`next_group` is the scheduling policy as a pure function of plain data (TGI's `queue.rs` `next_batch`
is unit-tested the same way); `Queue` holds the line and the admission count behind one lock, for the
request threads that `admit` and the engine thread that takes groups.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, List, Optional, Tuple

from ..errors import Cancelled, Overloaded, QueueTimeout, ServiceError, Unavailable
from ..validation import GenerationRequest
from .handle import Handle


@dataclass(eq=False)
class Entry:
    """An admitted request: what it asked for, its prompt ids, the handle its caller waits on, and its
    grammar compiled (`validation.grammar.TokenConstraint`; None: unconstrained)."""

    handle: Handle
    request: GenerationRequest
    prompt_ids: Tuple[int, ...]
    enqueued_at: float
    request_id: Optional[str] = None
    constraint: Optional[object] = None

    @property
    def rows(self) -> int:
        """Rows of the batch it occupies once it joins: one per completion asked for (`n`)."""
        return self.request.n

    @property
    def row_tokens(self) -> int:
        """KV-cache positions one of its rows may come to hold: its prompt and every new token it may ask for."""
        return len(self.prompt_ids) + self.request.max_new_tokens

    @property
    def tokens(self) -> int:
        """What it counts against MAX_BATCH_TOTAL_TOKENS: `row_tokens` in each of its rows."""
        return self.rows * self.row_tokens


@dataclass
class Grouping:
    """What `next_group` decided: the group to prefill now, who keeps waiting, and who is answered now."""

    group: List[Entry] = field(default_factory=list)
    waiting: List[Entry] = field(default_factory=list)
    refused: List[Tuple[Entry, ServiceError]] = field(default_factory=list)


def next_group(
    waiting: Iterable[Entry],
    room: int,
    chunk_tokens: int,
    now: float,
    queue_timeout: float,
    to_prefill: Callable[[Entry], int] = lambda entry: len(entry.prompt_ids),
    token_room: Optional[int] = None,
) -> Grouping:
    """The next prefill group: waiting requests in order while they fit in the batch (`room` rows; a
    request of `n` completions takes n), in the KV-cache budget (`token_room`: MAX_BATCH_TOTAL_TOKENS less
    what the running rows may hold, each request counting `Entry.tokens`; None: no budget) and, together,
    in one prefill chunk (a longer prompt goes alone, chunk by chunk; a prompt is prefilled once whatever
    its `n`). A prompt counts the tokens `to_prefill` says its prefill computes (all of them, or those after
    its prefix found in the prefix cache). First come, first served: once a request is left waiting,
    nothing behind it joins. Cancelled requests, and those that waited past `queue_timeout` seconds
    without joining, are refused."""
    out = Grouping()
    width, rows, tokens, closed = 0, 0, 0, False
    for entry in waiting:
        if entry.handle.cancelled:
            out.refused.append((entry, Cancelled("client disconnected")))
            continue
        joins = False
        fits = token_room is None or tokens + entry.tokens <= token_room
        if not closed and rows + entry.rows <= room and fits:  # only then is its prompt measured
            wider = max(width, to_prefill(entry))
            joins = not out.group or wider * (len(out.group) + 1) <= chunk_tokens
        if joins:
            out.group.append(entry)
            width, rows, tokens = wider, rows + entry.rows, tokens + entry.tokens
        elif now - entry.enqueued_at > queue_timeout:
            out.refused.append((entry, QueueTimeout(f"Request waited more than {queue_timeout:g} s for a free slot")))
        else:
            closed = True
            out.waiting.append(entry)
    return out


class Queue:
    """The waiting line and the admission count (rows running + waiting, what `max_admitted` bounds)."""

    def __init__(self, max_admitted: int):
        self.max_admitted = max_admitted
        self._cond = threading.Condition()
        self._waiting: Deque[Entry] = collections.deque()
        self._admitted = 0
        self.closed = False

    def admit(self, entry: Entry) -> None:
        """Join the line, or Overloaded (429) at once when the service holds as many rows as it may."""
        with self._cond:
            if self.closed:
                raise Unavailable("The server is shutting down")
            if self._admitted + entry.rows > self.max_admitted:
                raise Overloaded()
            self._admitted += entry.rows
            self._waiting.append(entry)
            self._cond.notify()

    def done(self, rows: int = 1) -> None:
        """Rows of an admitted request got their answer (result or error): their places are free."""
        with self._cond:
            self._admitted -= rows

    def wait_for_work(self, busy: Callable[[], bool]) -> bool:
        """(Engine thread.) Block while there is nothing to do (`busy()`: rows in the batch, embeddings
        queued; asked under the lock, so work that `wake` announces is never missed); False once closed."""
        with self._cond:
            while not self.closed and not self._waiting and not busy():
                self._cond.wait()
            return not self.closed

    def wake(self) -> None:
        """Work arrived outside the line (an embedding job): the engine thread stops waiting."""
        with self._cond:
            self._cond.notify_all()

    def take(
        self, room: int, chunk_tokens: int, queue_timeout: float,
        to_prefill: Optional[Callable[[Entry], int]] = None, token_room: Optional[int] = None,
    ) -> Grouping:
        """(Engine thread.) Apply `next_group` to the line; the caller answers the refused."""
        with self._cond:
            if not self._waiting:
                return Grouping()
            measure = {} if to_prefill is None else {"to_prefill": to_prefill}
            now = time.monotonic()
            grouping = next_group(self._waiting, room, chunk_tokens, now, queue_timeout, token_room=token_room, **measure)
            self._waiting = collections.deque(grouping.waiting)
            return grouping

    def close(self) -> None:
        """No more admissions; wakes the engine thread, which then answers what is left (`drain`)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def drain(self) -> List[Entry]:
        """(Engine thread, closed.) Those still waiting, taken out of the line to be answered."""
        with self._cond:
            self.closed = True
            leftovers, self._waiting = list(self._waiting), collections.deque()
            return leftovers

    def stats(self) -> dict:
        with self._cond:
            return {"waiting": len(self._waiting), "admitted": self._admitted}
