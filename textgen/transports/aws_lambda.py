"""AWS Lambda transport: HTTP events go through the Flask app, direct invocations straight to the engine.

HTTP events (API Gateway REST v1, HTTP API v2, Function URLs, ALB targets; base64 bodies included)
are recognised by their `requestContext` and handed to apig-wsgi, so routes, validation and error
bodies are exactly the HTTP service's. Any other event is a direct invocation of the generate path:
``{"prompt": ...}`` or ``{"inputs": ..., "parameters": ...}`` in, the same JSON as `POST /generate` out;
an error comes back as the error body plus its HTTP `status`.
"""

from __future__ import annotations

import logging
import uuid

from apig_wsgi import make_lambda_handler
from flask import Flask

from ..errors import InternalError, ServiceError
from .responses import complete_body
from ..validation import validate_generate

log = logging.getLogger(__name__)


def make_handler(app: Flask):
    http_handler = make_lambda_handler(app, binary_support=True)

    def handler(event, context):
        if isinstance(event, dict) and "requestContext" in event:
            return http_handler(event, context)
        return invoke_direct(app, event, getattr(context, "aws_request_id", None))

    return handler


def invoke_direct(app: Flask, event, request_id=None) -> dict:
    settings = app.extensions["textgen.settings"]
    engine = app.extensions["textgen.engine"]
    request_id = request_id or uuid.uuid4().hex
    try:
        request = validate_generate(event, settings, stream=False)
        return complete_body(request, engine.submit(request, request_id=request_id).results())[0]
    except ServiceError as error:
        return {**error.to_dict(), "status": error.status}
    except Exception:
        log.exception("unhandled error (request %s)", request_id)
        error = InternalError(request_id)
        return {**error.to_dict(), "status": error.status}
