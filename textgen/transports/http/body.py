"""The request's JSON body, read whole and never more than MAX_REQUEST_BYTES."""

from __future__ import annotations

from typing import Any

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from ...validation import parse_json_body


def json_body() -> Any:
    raw = request.get_data(cache=False)
    # werkzeug answers 413 to a Content-Length over MAX_CONTENT_LENGTH, but a chunked body (no length)
    # it reads up to the limit and returns cut there, silently: one just over 1 MB was a 400 "Malformed
    # JSON" (tests/reliability), or parsed if the cut left valid JSON. A byte past the limit means 413.
    if len(raw) >= current_app.config["MAX_CONTENT_LENGTH"] and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return parse_json_body(raw)
