"""The decode step alone, timed the way the benchmarks compare models and settings: `batch` rows that
each hold `prompt` tokens, every step rewriting the same position, so every step does the same work."""

from __future__ import annotations

import time
from typing import List

from textgen.engine.batch import Batch


def decode_step_times(model, batch: int, prompt: int = 40, steps: int = 30) -> List[float]:
    """Milliseconds of each of `steps` decode steps (`Batch.step`: the forward pass and its logits)."""
    rows = Batch(model)
    rows.add(list(range(batch)), [list(range(1, prompt + 1))] * batch)
    while rows.prefill_step() is None:
        pass
    times = []
    for _ in range(steps):
        for row in rows.slots:  # back to the same length: the cache does not grow, the work stays put
            row.length = prompt
        started = time.perf_counter()
        rows.step([5] * batch)
        times.append((time.perf_counter() - started) * 1000)
    return times
