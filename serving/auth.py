"""API keys: when CHARLM_API_KEYS is set, every /v1/ route needs `Authorization: Bearer <key>` (what
OpenAI's clients send from api_key). Probes, metrics, the API description and the playground page stay open."""
from __future__ import annotations

import hmac

from flask import Flask, request

from serving.errors import APIError

PROTECTED_PREFIX = "/v1/"


def init_app(app: Flask, settings) -> None:
    keys = [key.get_secret_value().encode() for key in settings.api_keys]
    if not keys:
        return

    @app.before_request
    def require_key():
        if not request.path.startswith(PROTECTED_PREFIX):
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
