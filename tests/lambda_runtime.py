"""A loopback stand-in for the AWS Lambda Runtime API, enough for the real awslambdaric to run against.

    GET  /2018-06-01/runtime/invocation/next            -> the next event, with the Lambda-Runtime-* headers
    POST /2018-06-01/runtime/invocation/{id}/response   -> the handler's result
    POST /2018-06-01/runtime/invocation/{id}/error      -> the handler's error
    POST /2018-06-01/runtime/init/error                 -> the init phase failed
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:gpt2-text-generator"


class RuntimeAPI:
    def __init__(self):
        self.pending: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self.outcomes: dict[str, "queue.Queue[tuple[str, object]]"] = {}
        self.init_error = None
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path != PREFIX + "/invocation/next":
                    return self._reply(404, {"message": "not found"})
                request_id, event = api.pending.get()
                body = json.dumps(event).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Lambda-Runtime-Aws-Request-Id", request_id)
                self.send_header("Lambda-Runtime-Deadline-Ms", str(int((time.time() + 300) * 1000)))
                self.send_header("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN)
                self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Sampled=0")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path[len(PREFIX) :].strip("/").split("/")
                if parts == ["init", "error"]:
                    api.init_error = json.loads(data or b"{}")
                    return self._reply(202, {"status": "OK"})
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
                    api.outcomes.setdefault(parts[1], queue.Queue()).put((parts[2], json.loads(data or b"null")))
                    return self._reply(202, {"status": "OK"})
                self._reply(404, {"message": "not found"})

            def _reply(self, status, payload):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()

    def invoke(self, event, timeout: float = 120.0):
        """Queue one event; return ("response" | "error", payload) once the runtime posts it."""
        request_id = str(uuid.uuid4())
        self.outcomes.setdefault(request_id, queue.Queue())
        self.pending.put((request_id, event))
        return self.outcomes[request_id].get(timeout=timeout)
