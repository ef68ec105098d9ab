"""A client that hangs up while its request is generated gets its work dropped, with no polling: one
watcher thread waits on the sockets, request threads wait on their handles."""

import json
import socket
import threading
import time

import pytest

from devtools.servers import thread_server, wait_until
from textgen.server import create_app
from textgen.transports.http.disconnect import HangupWatcher


class FakeHandle:
    def __init__(self):
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_hang_up_cancels_the_request(pair):
    ours, theirs = pair
    watcher, handle = HangupWatcher(), FakeHandle()
    with watcher.watching({"gunicorn.socket": ours}, handle):
        theirs.close()
        assert handle.cancelled.wait(2)


def test_data_from_the_client_is_no_hang_up_and_ends_the_watch(pair):
    ours, theirs = pair
    watcher, handle = HangupWatcher(), FakeHandle()
    with watcher.watching({"werkzeug.socket": ours}, handle):
        theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request
        assert wait_until(lambda: not watcher._selector.get_map(), timeout=2)
        theirs.close()
        time.sleep(0.2)
    assert not handle.cancelled.is_set() and ours.recv(64, socket.MSG_PEEK).startswith(b"GET")


def test_after_the_block_the_socket_is_not_watched(pair):
    ours, theirs = pair
    watcher, handle = HangupWatcher(), FakeHandle()
    with watcher.watching({"gunicorn.socket": ours}, handle):
        pass
    theirs.close()
    time.sleep(0.2)
    assert not handle.cancelled.is_set() and not watcher._selector.get_map()


def test_without_a_socket_nothing_is_watched():
    watcher, handle = HangupWatcher(), FakeHandle()
    with watcher.watching({}, handle):
        pass
    assert watcher._thread is None


@pytest.mark.parametrize("route", ["/generate", "/v1/completions"])
def test_a_blocking_client_that_hangs_up_frees_its_slot(make_engine, slow_forward, route):
    engine = make_engine()
    slow_forward(engine)  # 250 tokens take over 5 s
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 250, "do_sample": False}}
    if route.startswith("/v1"):
        body = {"prompt": "Hi", "max_tokens": 250, "temperature": 0}
    payload = json.dumps(body).encode()
    with thread_server(create_app(engine.settings, engine=engine)) as url:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        sock.sendall(
            f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
        )
        assert wait_until(lambda: engine.stats()["running"] == 1, timeout=5)
        sock.close()
        closed = time.monotonic()
        assert wait_until(lambda: engine.stats()["admitted"] == 0, timeout=5)
        assert time.monotonic() - closed < 2.0
