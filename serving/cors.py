"""CORS for browser pages on other origins: off unless CHARLM_CORS_ORIGINS lists origins (or "*" for any).

An allowed Origin gets `Access-Control-Allow-Origin` (that origin) on every response, errors included, so a page
can read a 4xx body. A preflight (OPTIONS with Access-Control-Request-Method, for a route that takes that method)
is answered here with 204 before the API key check: browsers send no Authorization header on a preflight. Any
other origin gets no CORS headers, so its browser keeps the response from the page."""
from __future__ import annotations

from flask import Flask, Response, request

ALLOW_HEADERS = "Authorization, Content-Type"  # what OpenAI's clients and the playground send
MAX_AGE_S = 3600  # how long a browser may reuse a preflight's answer (browsers cap it: Chromium at 2 h)


def init_app(app: Flask, settings) -> None:
    """Call before auth.init_app: the preflight must be answered before the key is asked for."""
    origins = set(settings.cors_origins)
    if not origins:
        return
    any_origin = "*" in origins

    def allowed() -> str | None:
        origin = request.headers.get("Origin")
        return origin if origin and (any_origin or origin.rstrip("/").lower() in origins) else None

    @app.before_request
    def preflight():
        origin, method = allowed(), request.headers.get("Access-Control-Request-Method")
        rule = request.url_rule
        if request.method != "OPTIONS" or origin is None or not method or rule is None or method not in rule.methods:
            return None  # not a preflight we answer: the request goes on (an unanswered one gets no CORS headers)
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(sorted(rule.methods - {"HEAD"}))
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
        return response

    @app.after_request
    def allow_origin(response):
        response.vary.add("Origin")  # whether the header is there depends on the Origin: caches must key on it
        origin = allowed()
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
        return response
