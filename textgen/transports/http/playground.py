"""GET /: the playground, one self-contained HTML page (inline CSS and JS) that streams from the API.

The page is package data beside this package (textgen/transports/http/static/playground.html), found relative to this
file so it works from any working directory, in the image and in a checkout. It needs no key to load:
the page itself asks for one when a generation route answers 401.
"""

from __future__ import annotations

import os

from flask import Blueprint, send_file

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "playground.html")

# Inline script and style only, and requests to this server only: the page loads nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

bp = Blueprint("playground", __name__)


@bp.get("/")
def playground():
    response = send_file(PAGE, mimetype="text/html", max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    return response
