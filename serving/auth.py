"""API keys: when CHARLM_API_KEYS is set, every route that computes needs `Authorization: Bearer <key>` (what
OpenAI's clients send from api_key): the /v1/ API, /tokenize and /detokenize, the visualisation page's
/visualize/features, and any route added later, because the open routes are a list and everything else is
protected. Open: the probes and metrics (the kubelet and Prometheus send no key), the API description, the two
pages and their static files (the pages send the key their API key field holds with each call they make), and a
CORS preflight, which serving/cors.py answers before this check (browsers send no Authorization on it)."""
from __future__ import annotations

import hmac

from flask import Flask, request

from serving.errors import APIError

# Computing nothing a client can make expensive, and needed by what cannot send a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/visualize"})
OPEN_PREFIXES = ("/static/",)


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def init_app(app: Flask, settings) -> None:
    keys = [key.get_secret_value().encode() for key in settings.api_keys]
    if not keys:
        return

    @app.before_request
    def require_key():
        if is_open(request.path):
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given = given.strip().encode()
        # Compare with every key, in constant time, so timing does not tell how much of a key matched.
        matched = [hmac.compare_digest(given, key) for key in keys]
        if scheme.lower() != "bearer" or not any(matched):
            raise APIError(401, "a valid API key is required: send `Authorization: Bearer <key>`" if not given
                           else "invalid API key", code="invalid_api_key",
                           headers={"WWW-Authenticate": 'Bearer realm="charlm"'})
        return None
