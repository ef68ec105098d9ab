"""The engine package: the only code in the service that runs the model.

The engine itself is numpy only; the model backend it is given may import torch (model/torch_backend/) or
not. Importing the package loads neither (transports import `handle` from here and must stay light):
`Engine` and `create_engine` load the rest on first use.
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
