"""Batching tests that cannot pass for the wrong reason: the rows of every decode step, seen through the
engine's listener, and a way to make requests wait in the queue at the same moment.

"Together equals alone" proves nothing about batching by itself: an engine that ran one row at a time
would pass it. So the tests submit their requests while the engine thread is held inside a decode step
(they all wait in the queue when it resumes, as a burst of clients would), and then check, from the
rows of each decode step, that the requests really were decoded in the same steps.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

from textgen.validation import validate_generate

HOLD_SECONDS = 60  # the longest the engine thread is ever held: a failing test never wedges it for good


class DecodeSteps:
    """An engine listener: how many rows each decode step ran. The engine holds listeners weakly, so the
    test keeps this object referenced while it is registered (`with DecodeSteps(engine) as steps:`)."""

    def __init__(self, engine):
        self.engine = engine
        self.rows: List[int] = []
        self.outcomes: list = []
        self._armed = False
        self._entered = threading.Event()
        self._release = threading.Event()

    def __enter__(self) -> "DecodeSteps":
        self.engine.add_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self.engine.remove_listener(self)

    # -- called on the engine thread ---------------------------------------------------------------
    def on_decode_step(self, rows: int) -> None:
        self.rows.append(rows)
        if self._armed:
            self._armed = False
            self._entered.set()
            self._release.wait(HOLD_SECONDS)

    def on_outcome(self, outcome) -> None:
        self.outcomes.append(outcome)

    # -- called by the test ------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, start=None, timeout: float = 30.0):
        """Park the engine thread inside its next decode step for the duration of the block: of a
        request already running, or of what `start()` submits (called once the hold is armed, so its
        first decode step cannot slip past). The steps recorded before are forgotten: `rows` then holds
        only the steps that follow the release."""
        self._entered.clear()
        self._release.clear()
        outcomes_before = len(self.outcomes)
        self._armed = True
        try:
            if start is not None:
                start()
            deadline = time.monotonic() + timeout
            while not self._entered.wait(0.01):
                if len(self.outcomes) > outcomes_before or time.monotonic() > deadline:
                    raise AssertionError(f"no decode step came to hold; ended meanwhile: {self.outcomes[outcomes_before:]}")
            del self.rows[:]  # the engine thread is parked: nothing appends meanwhile
            yield self
        finally:
            self._armed = False
            self._release.set()


def submit_together(engine, steps: DecodeSteps, requests: Sequence) -> list:
    """Submit `requests` (validated `GenerationRequest`s), each from its own thread, while the engine is
    held in the first decode step of a greedy two-token placeholder request: when it resumes, the
    placeholder ends and every request is waiting, so the engine can admit them in one prefill group.
    Returns their handles; `steps.rows` then records only the decode steps after the release. The engine
    must be idle and have room for all of them in one batch."""
    placeholder_request = validate_generate(
        {"inputs": "Hello world", "parameters": {"max_new_tokens": 2, "do_sample": False}}, engine.settings
    )
    placeholder = []
    with steps.hold(start=lambda: placeholder.append(engine.submit(placeholder_request))):
        with ThreadPoolExecutor(len(requests)) as pool:
            handles = list(pool.map(engine.submit, requests, timeout=HOLD_SECONDS / 2))
    assert placeholder[0].result().generated_tokens == 2  # it ended in the held step, before they joined
    return handles


def expected_rows(generated_tokens: Sequence[int]) -> List[int]:
    """The rows of each decode step when requests join the batch in the same step and each stays until
    its last token: a request's first token comes from its prefill, every later one from a decode step,
    so decode step s (from 1) carries every request that generates more than s tokens."""
    longest = max(generated_tokens, default=0)
    return [sum(n > s for n in generated_tokens) for s in range(1, longest)]


def assert_decoded_together(rows: Sequence[int], results: Sequence) -> None:
    """The requests (their results) were decoded in the same steps, from the first to the last: every
    step carried each of them that was not finished yet, so the first step carried all of them."""
    generated = [r.generated_tokens for r in results]
    assert sum(rows) == sum(n - 1 for n in generated), (rows, generated)  # no decode step went unrecorded
    assert list(rows) == expected_rows(generated), (rows, generated)
