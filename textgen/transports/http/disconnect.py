"""Noticing that a client hung up while its request waits, so the engine can drop the work."""

from __future__ import annotations

import select
import socket
from typing import Callable


def client_gone_probe(environ: dict) -> Callable[[], bool]:
    """A cheap check, polled while waiting: is the client's socket closed by the peer?

    gunicorn and werkzeug's server both put the connection's socket in the WSGI environ. A readable
    socket whose peek returns b"" has been closed by the client. Without a socket (tests, Lambda) the
    answer is always no.
    """
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except ValueError:  # TLS sockets refuse MSG_PEEK; a closed fd gives -1: assume still there
            return False
        except OSError:
            return True

    return gone
