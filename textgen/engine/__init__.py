"""The engine package: the only code in the service that imports torch."""

from __future__ import annotations

import atexit

from ..settings import Settings
from .core import Engine
from .handle import GenerationResult, Handle, TokenEvent

__all__ = ["Engine", "GenerationResult", "Handle", "TokenEvent", "create_engine"]


def create_engine(settings: Settings) -> Engine:
    """Size torch's threads, load the model once, and start the engine thread."""
    from ..model.loader import configure_threads, load_model, tune_malloc

    tune_malloc()
    configure_threads(settings.torch_threads)
    model, tokenizer = load_model(settings)
    engine = Engine(model, tokenizer, settings).start()
    # Stop the engine thread before the interpreter tears torch down (a clean exit 0 on SIGTERM).
    atexit.register(engine.stop)
    return engine
