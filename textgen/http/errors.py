"""One JSON error body everywhere: {"error": ..., "error_type": ...}, also for 404/405/413 and crashes."""

from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from werkzeug.exceptions import HTTPException

from ..errors import InternalError, Overloaded, ServiceError, from_http_status

log = logging.getLogger(__name__)


def error_response(error: ServiceError):
    response = jsonify(error.to_dict())
    response.status_code = error.status
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
