"""Who may call what: the optional key (bearer, or Anthropic's `x-api-key`) on the generation routes, and CORS for browsers.

Both are off unless configured (API_KEY, CORS_ALLOW_ORIGINS). /health, /info, /metrics, /openapi.json,
/docs and the playground page never need a key: monitors, load balancers and a first visit must work
without one.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, current_app, request

from ...errors import Unauthorized

# Response headers a browser page may read (the playground shows the request id and timings).
EXPOSED_HEADERS = [
    "X-Request-Id",
    "x-compute-time",
    "x-queue-time",
    "x-time-per-token",
    "x-prompt-tokens",
    "x-generated-tokens",
    "Retry-After",
]


def require_key(blueprint: Blueprint) -> None:
    """Every route of `blueprint` answers 401 unless the request brings one of the configured keys."""

    @blueprint.before_request
    def _check_key():
        keys = current_app.extensions["textgen.settings"].api_keys
        if not keys or request.method == "OPTIONS":  # a CORS preflight never carries credentials
            return None
        given = _bearer(request.headers.get("Authorization", ""))
        if given is None:  # Anthropic's clients send the key as `x-api-key`
            given = request.headers.get("x-api-key", "").strip() or None
        if given is None:
            raise Unauthorized("Missing API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)")
        # Compare with every key, in constant time, so timing tells nothing about which part matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given.encode(), key.encode())
        if not matched:
            raise Unauthorized("Invalid API key")
        return None


def _bearer(header: str):
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def enable_cors(app: Flask, origins: tuple) -> None:
    """CORS headers for the allowed origins only (flask-cors answers the preflights)."""
    if not origins:
        return
    from flask_cors import CORS

    CORS(
        app,
        origins=list(origins) if origins != ("*",) else "*",
        allow_headers=["Authorization", "Content-Type", "X-Request-Id", "x-api-key", "anthropic-version"],
        expose_headers=EXPOSED_HEADERS,
        max_age=600,
    )
