"""Who observes the engine (metrics): a registry of weakly held listeners, called on the engine thread."""

from __future__ import annotations

import logging
import threading
import weakref

log = logging.getLogger(__name__)


class Listeners:
    """`listener.on_outcome(result_or_error)` as each request ends and `listener.on_decode_step(rows)` per
    decode step, both optional, called on the engine thread before the caller sees the event, so they
    must be quick. Held weakly: a listener lives as long as its owner keeps it (tests build many apps
    over one engine). An exception in a listener is logged and ignored: an observer never breaks the loop."""

    def __init__(self) -> None:
        self._refs: tuple = ()  # replaced, never mutated: the engine thread reads it without the lock
        self._lock = threading.Lock()

    def add(self, listener) -> None:
        with self._lock:
            self._refs = tuple(ref for ref in self._refs if ref() is not None) + (weakref.ref(listener),)

    def remove(self, listener) -> None:
        with self._lock:
            self._refs = tuple(ref for ref in self._refs if ref() is not None and ref() is not listener)

    def notify(self, method: str, *args) -> None:
        for ref in self._refs:
            listener = ref()
            callback = getattr(listener, method, None)
            if callback is not None:
                try:
                    callback(*args)
                except Exception:
                    log.exception("engine listener %r failed in %s", listener, method)
