"""gunicorn's gthread worker, with a deadline on receiving each request (gunicorn.conf.py uses it).

Why: gthread hands a connection to a thread as soon as its first byte arrives, and that thread then
blocks in recv() until the whole request is in, with no time limit. A client that sends slowly
(slowloris: one header or body byte per second, or one byte and then nothing) keeps its thread as long
as it likes. With `threads` of them (MAX_CONCURRENT_REQUESTS + 8 = 40 by default) open, nothing else
was served: with 50 connections sending a body byte per second, /health and /generate timed out
after 10 s (tests/reliability/test_hostile_input.py). Here the request line, headers and body must
all arrive within `read_timeout` seconds of the request's first byte:

- still in the headers: the connection is closed, silently, like a client that went away;
- in the body: the app's read raises RequestTimeout, answered 408 in the app's JSON, then gunicorn
  closes the connection (a body it could not read leaves the next request's start unknown).

A slow client thus holds a thread for at most `read_timeout` seconds; gunicorn.conf.py adds threads
for such clients on top of those the engine can use. And a connection that ends is closed on a pool
thread, not on the event loop that every other connection waits on (`finish_request`).
"""

from __future__ import annotations

import threading
import time

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.http2 import negotiation
from gunicorn.workers import gthread

from ...errors import RequestTimeout


class _ReadDeadline:
    """Stands in for the socket inside gunicorn's request parser (headers and body are read through
    it): while armed, each recv() waits only until the deadline. Anything else goes to the socket."""

    def __init__(self, sock, seconds: float):
        self._sock = sock
        self._seconds = seconds
        self.deadline = None
        self.in_body = False

    def arm(self) -> None:
        self.deadline, self.in_body = time.monotonic() + self._seconds, False

    def disarm(self) -> None:
        self.deadline = None

    def recv(self, size, *flags):
        if self.deadline is None:
            return self._sock.recv(size, *flags)
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            previous = self._sock.gettimeout()
            self._sock.settimeout(remaining)
            try:
                return self._sock.recv(size, *flags)
            except TimeoutError:
                pass
            finally:
                self._sock.settimeout(previous)
        if self.in_body:
            # Not an OSError: werkzeug would turn that into a 400 "client disconnected". This one passes
            # through gunicorn's body reader (which marks the connection unusable) and werkzeug's.
            raise RequestTimeout(f"The request body did not arrive within {self._seconds:g} s")
        raise NoMoreData()  # gthread closes the connection and logs it at debug level only

    def __getattr__(self, name):
        return getattr(self._sock, name)


class ThreadWorker(gthread.ThreadWorker):
    read_timeout = 10.0  # set by gunicorn.conf.py
    drain_seconds = 5.0  # set by gunicorn.conf.py (DRAIN_SECONDS)

    def handle_exit(self, sig, frame):
        """SIGTERM: drain first. /ready turns 503 at once and everything is still served for
        `drain_seconds` (balancers polling /ready stop sending meanwhile); then gthread's own graceful
        exit: no more accepts, requests in flight finish, the worker exits once idle (gunicorn's master
        kills it at GRACEFUL_TIMEOUT whatever runs). Without the wait, a balancer that had not yet seen
        /ready change kept sending to a closed port: requests lost at every restart."""
        engine = getattr(self.wsgi, "extensions", {}).get("textgen.engine")
        if engine is None or self.drain_seconds <= 0 or getattr(engine, "draining", False) or not engine.healthy():
            # Nothing to drain for: a second SIGTERM, or a dead engine (it SIGTERMs its own worker).
            return super().handle_exit(sig, frame)
        engine.drain()
        self.log.info("SIGTERM: draining for %g s (/ready 503), then finishing requests in flight", self.drain_seconds)
        timer = threading.Timer(self.drain_seconds, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()

    def handle(self, conn):
        plain_http1 = not self.cfg.is_ssl and not negotiation.prior_knowledge_allowed(self.cfg, conn.client)
        if not conn.initialized and plain_http1:
            # As gthread's handle(): a new connection takes a thread only once it has sent something.
            if not conn.data_ready and not conn.wait_for_data(gthread.DEFAULT_WORKER_DATA_TIMEOUT):
                return gthread._DEFER
            conn.sock.setblocking(True)
            conn.init()  # builds the parser now, so that it reads through the deadline
            unreader = getattr(conn.parser, "unreader", None)
            if isinstance(unreader, SocketUnreader):
                unreader.sock = _ReadDeadline(unreader.sock, self.read_timeout)
        reader = _reader(conn)
        if reader is not None:
            reader.arm()  # a request (or the next one on a kept-alive connection) starts arriving
        try:
            return super().handle(conn)
        finally:
            if reader is not None:
                reader.disarm()

    def handle_request(self, req, conn):
        # Headers are in; the app reads the body next, under the same deadline.
        reader = _reader(conn)
        if reader is not None:
            reader.in_body = True
        try:
            return super().handle_request(req, conn)
        finally:
            if reader is not None:
                reader.disarm()  # what follows (draining an unread body) has gunicorn's own limits

    def finish_request(self, conn, fs):
        # gthread closes a finished connection on its event loop, where util.close_graceful() waits up to
        # 2 s for the client to close its end: a client that never does froze the whole worker (no accept,
        # no keep-alive) 2 s per connection; 20 of them after a `Connection: close` answer kept /health
        # waiting 28 s, and 50 slow clients cut at their deadline would have done the same. The lingering
        # close now runs on a pool thread; gthread's own bookkeeping is unchanged.
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if result is not gthread._DEFER and result is not None and not result:
            self.nr_conns -= 1
            try:
                self.tpool.submit(conn.close, True)
            except RuntimeError:  # the pool is shut down: the worker is exiting
                conn.close()
            return
        super().finish_request(conn, fs)


def _reader(conn):
    reader = getattr(getattr(conn.parser, "unreader", None), "sock", None)
    return reader if isinstance(reader, _ReadDeadline) else None
