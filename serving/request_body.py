"""A request's body, read and decoded the one way every route does it, so bad bytes are the client's 400 and
never the gateway's 500.

Two things the JSON parser and the WSGI server raise are not the usual "invalid JSON" errors: a body nested
deeper than Python's recursion limit makes `json.loads` raise RecursionError, and a chunked body with broken
framing (a chunk size that is not hex, a chunk longer than its size, no terminator) makes gunicorn's reader
raise its ParseException (or NoMoreData when the client stops sending) from inside `request.get_data()`.
"""
from __future__ import annotations

import json

from flask import request
from gunicorn.http.errors import NoMoreData, ParseException

from serving.errors import bad_request


def body_bytes() -> bytes:
    """The whole body (within the app's MAX_CONTENT_LENGTH, which werkzeug enforces with a 413)."""
    try:
        return request.get_data(cache=True)
    except (ParseException, NoMoreData) as e:
        detail = str(e) or type(e).__name__
        raise bad_request(f"the request body could not be read: its chunked framing is broken ({detail})",
                          code="invalid_body") from None


def load_json(raw: bytes):
    """Bytes -> the JSON value, or a 400 `invalid_json` saying what is wrong."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply to be read as JSON", code="invalid_json") from None


def body_json():
    return load_json(body_bytes())
