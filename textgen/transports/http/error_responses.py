"""One JSON error body everywhere: {"error": ..., "error_type": ...}, also for 404/405/413 and crashes.

Under /v1/ (the OpenAI-compatible routes) the same errors take OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, so the `openai` SDK raises its own error classes;
there a validation error is a 400, as OpenAI and vLLM answer it. Under /api/ (Ollama's routes) they take
Ollama's, {"error": "<message>"}, a validation error a 400 too: the `ollama` package raises its
`ResponseError` with that message and the status.
Under /v1/messages (Anthropic's route) they take Anthropic's, {"type": "error", "error": {"type",
"message"}}.
"""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from ...errors import InternalError, Overloaded, ServiceError, ValidationError, from_http_status

log = logging.getLogger(__name__)

# The service's error types as OpenAI names them (what its SDK and clients look at).
_OPENAI_TYPES = {
    "bad_request": "invalid_request_error",
    "validation": "invalid_request_error",
    "unauthorized": "authentication_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "payload_too_large": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "overloaded": "rate_limit_error",
}


def openai_error_body(error: ServiceError) -> dict:
    return {
        "error": {
            "message": error.message,
            "type": _OPENAI_TYPES.get(error.error_type, "server_error"),
            "param": getattr(error, "param", None),
            "code": error.error_type,
        }
    }


# The service's error types as Anthropic names them, with its status where it differs from ours.
_ANTHROPIC_TYPES = {
    "bad_request": ("invalid_request_error", 400),
    "validation": ("invalid_request_error", 400),
    "unauthorized": ("authentication_error", 401),
    "not_found": ("not_found_error", 404),
    "method_not_allowed": ("invalid_request_error", 405),
    "payload_too_large": ("request_too_large", 413),
    "request_timeout": ("timeout_error", 408),
    "overloaded": ("rate_limit_error", 429),
    "queue_timeout": ("overloaded_error", 529),  # the SDK's OverloadedError, which it retries
    "unavailable": ("overloaded_error", 529),
}


def anthropic_error(error: ServiceError) -> tuple[dict, int]:
    """Anthropic's body and status for `error` (the `anthropic` SDK raises its classes from both)."""
    kind, status = _ANTHROPIC_TYPES.get(error.error_type, ("api_error", error.status))
    return {"type": "error", "error": {"type": kind, "message": error.message}}, status


def error_response(error: ServiceError):
    g.error_type = error.error_type  # the outcome label of textgen_requests_total (http/metrics.py)
    status = error.status
    if request and request.path.startswith("/v1/messages"):
        body, status = anthropic_error(error)
    elif request and request.path.startswith("/v1/"):
        body = openai_error_body(error)
        if isinstance(error, ValidationError):
            status = 400
    elif request and request.path.startswith("/api/"):
        body = {"error": error.message}
        if isinstance(error, ValidationError):
            status = 400
    else:
        body = error.to_dict()
    response = jsonify(body)
    response.status_code = status
    if isinstance(error, Overloaded):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        response = error_response(from_http_status(error.code or 500, error.description or error.name))
        if error.code == 405 and error.response is None:
            allowed = error.get_headers()
            for name, value in allowed:
                if name.lower() == "allow":
                    response.headers["Allow"] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        # The client learns only that it failed and which request it was; the trace stays in our log.
        request_id = g.get("request_id", "-")
        log.exception("unhandled error (request %s)", request_id)
        return error_response(InternalError(request_id))
