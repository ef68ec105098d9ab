"""Noticing that a client hung up while its request is generated, so the engine drops the work.

One watcher thread per process waits (epoll, no timeout) on the sockets of every client with a request
in the engine; request threads just block on their handle, woken only by the engine. A socket that
turns readable with nothing to read (the peer closed it) cancels its request: the engine then drops the
row at its next step and answers `Cancelled`, which ends the request's wait. Without a socket (tests'
clients, Lambda) nothing is watched.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from typing import Iterator, Optional

log = logging.getLogger(__name__)


class HangupWatcher:
    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()  # the selector's own map is changed from request threads
        self._thread: Optional[threading.Thread] = None

    @contextlib.contextmanager
    def watching(self, environ: dict, handle) -> Iterator[None]:
        """While the block runs, a hang-up of the request's client cancels `handle`."""
        sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        if sock is None or not self._register(sock, handle):
            yield
            return
        try:
            yield
        finally:
            self._unregister(sock)

    def _register(self, sock, handle) -> bool:
        with self._lock:
            try:
                self._selector.register(sock, selectors.EVENT_READ, handle)
            except (ValueError, KeyError, OSError):  # closed already, or watched twice: not ours to watch
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="textgen-hangups", daemon=True)
                self._thread.start()
        return True

    def _unregister(self, sock) -> None:
        with self._lock:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass  # already dropped by the watcher

    def _run(self) -> None:
        while True:
            # Blocks until a watched socket turns readable; epoll sees sockets registered meanwhile.
            for key, _ in self._selector.select():
                gone = _peer_closed(key.fileobj)
                # Readable with data (a pipelined request) is no hang-up: that socket is not watched further.
                self._unregister(key.fileobj)
                if gone:
                    key.data.cancel()


def _peer_closed(sock) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ValueError:  # TLS sockets refuse MSG_PEEK: assume still there
        return False
    except OSError:  # reset by peer, or closed
        return True


_WATCHER = HangupWatcher()


def watching(environ: dict, handle):
    """Context manager: while it runs, a hang-up of the request's client cancels `handle`."""
    return _WATCHER.watching(environ, handle)
