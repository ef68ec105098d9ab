"""The service's errors: each carries its HTTP status and the `error_type` clients see.

Every transport renders them the same way: ``{"error": message, "error_type": error_type}``.
The `error_type` values follow Text Generation Inference where it has one.
"""

from __future__ import annotations

from typing import Optional


class ServiceError(Exception):
    status = 500
    error_type = "generation"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}


class BadRequest(ServiceError):
    """The body is not JSON, or not a JSON object."""

    status = 400
    error_type = "bad_request"


class ValidationError(ServiceError):
    """A well-formed request that breaks a rule: names the field and the limit (TGI's wording)."""

    status = 422
    error_type = "validation"

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param  # the offending field, when there is one (OpenAI's error body names it)


class Unauthorized(ServiceError):
    """API_KEY is set and the request has no `Authorization: Bearer <key>` with one of its keys."""

    status = 401
    error_type = "unauthorized"


class Overloaded(ServiceError):
    """More requests admitted than MAX_CONCURRENT_REQUESTS: answered at once, with Retry-After."""

    status = 429
    error_type = "overloaded"

    def __init__(self, message: str = "Model is overloaded", retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(ServiceError):
    """The request body did not arrive within the server's read deadline (a slow or stalled client);
    raised by the gunicorn worker's socket reads (http/gunicorn_worker.py), inside the app's body read."""

    status = 408
    error_type = "request_timeout"


class QueueTimeout(ServiceError):
    """Waited longer than QUEUE_TIMEOUT for a batch slot."""

    status = 503
    error_type = "queue_timeout"


class Unavailable(ServiceError):
    """The model is not loaded or the engine is not running."""

    status = 503
    error_type = "unavailable"


class Cancelled(ServiceError):
    """The client went away; nobody reads this, but the handle must end with something."""

    status = 499
    error_type = "cancelled"


class InternalError(ServiceError):
    """An unexpected exception: the client gets the request id, the trace stays in the server log."""

    status = 500
    error_type = "internal"

    def __init__(self, request_id: str):
        super().__init__(f"Internal server error (request id {request_id})")


class GenerationError(ServiceError):
    """Something failed inside the engine; details go to the server log, not to the client."""

    status = 500
    error_type = "generation"


def from_http_status(status: int, description: str) -> ServiceError:
    """Wrap a werkzeug HTTPException (404, 405, 413, ...) into the service's error shape."""
    error = ServiceError(description)
    error.status = status
    error.error_type = _HTTP_ERROR_TYPES.get(status, "http_error")
    return error


_HTTP_ERROR_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
