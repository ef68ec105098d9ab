"""The engine package: the only code in the service that runs the model.

The engine itself is numpy only; the model backend it is given may import torch (model/torch_backend/) or
not. Importing the package loads neither (transports import `handle` from here and must stay light):
`Engine` and `create_engine` load the rest on first use.

Files (the loop reads schedule -> step -> update, one function each, in core.py):
- core.py: `Engine`, the one thread that owns the model and runs the loop.
- embeddings.py: `Embedder`, embedding jobs run on the engine thread between its steps (pooled, normalised).
- queue.py: admission (429 when full) and `next_group`, the scheduling policy as a pure function.
- batch.py: the running batch, one `Row` record per KV-cache slot; prefill chunks and decode steps.
- generation.py: `Generation`, one completion's state: its tokens, sampler, detokenizer and stop matcher.
- sampling.py: the next token of every row at once, each row from its own seeded generator.
- stop.py: stop sequences, and which text is safe to hand out.
- detokenize.py: the text each new token adds.
- prefix_cache.py: the keys and values of recent prompts' first blocks, reused by later prompts.
- handle.py: what a transport holds while its request runs: events, then a result.
- listeners.py: the engine's observers (metrics).
- runtime.py: the packages each backend runs on, and their versions (/info).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .handle import GenerationResult, Handle, TokenEvent

if TYPE_CHECKING:
    from ..settings import Settings
    from .core import Engine

__all__ = ["Engine", "GenerationResult", "Handle", "TokenEvent", "create_engine"]


def __getattr__(name: str):
    if name == "Engine":
        from .core import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_engine(settings: "Settings") -> "Engine":
    """Load the model once (its backend sizes its own threads) and start the engine thread."""
    import atexit

    from ..model.loader import load_model
    from .core import Engine

    model, tokenizer = load_model(settings)
    engine = Engine(model, tokenizer, settings).start()
    # Stop the engine thread before the interpreter tears the model's runtime down (a clean exit 0 on SIGTERM).
    atexit.register(engine.stop)
    return engine
