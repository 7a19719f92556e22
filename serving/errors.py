"""Every failure as OpenAI's error envelope {"error": {"message", "type", "param", "code"}}, so no client ever
sees an HTML page, a traceback or a bare 500.

The rest of the gateway raises typed errors that say what went wrong, not how HTTP tells it: the model
interface's (model_interface.errors: the model is unavailable, the version is gone, the deadline passed, the
inputs were refused) and the gateway's own below. This module alone turns them into statuses and codes.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from model_interface.errors import (DeadlineExceeded, InputRejected, ModelInterfaceError, ModelUnavailable,
                                    VersionNotFound)

log = logging.getLogger(__name__)

# OpenAI's `type` values by status; `code` narrows it down.
TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
         415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "server_error",
         504: "server_error"}
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
              415: "unsupported_media_type"}


# --- the gateway's own typed failures ------------------------------------------------------------------------
class GatewayError(Exception):
    """Base of the gateway's own failures (the model interface has its own)."""


class UnknownModel(GatewayError):
    """The request names a model this gateway does not serve."""


class TooManyStreams(GatewayError):
    """The worker already runs as many generations as it takes."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AdmissionQueueFull(TooManyStreams):
    """Every stream slot is taken and the admission queue holds as many waiting requests as it takes."""


class ClientGone(GatewayError):
    """The client hung up before its request was answered (one waiting for admission, say): nobody reads the reply."""


class ShuttingDown(GatewayError):
    """The worker is stopping (SIGTERM): it admits nothing new, and ends the streams still running at its deadline."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class GenerationStalled(GatewayError):
    """A stream received nothing for too long."""


class APIError(Exception):
    """A failure already in HTTP's terms: request validation, authentication, and what the mapping below gives."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# Most specific first: VersionNotFound is a ModelUnavailable; the last row catches the model interface's
# other failures (a version whose metadata cannot be read is as unusable as one that is not there).
STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (UnknownModel, 404, "model_not_found"),
    (AdmissionQueueFull, 429, "queue_full"),
    (TooManyStreams, 429, "too_many_streams"),
    (ShuttingDown, 503, "server_shutting_down"),
    (ClientGone, 499, "client_closed_request"),
    (GenerationStalled, 504, "generation_stalled"),
    (InputRejected, 400, "invalid_value"),
    (VersionNotFound, 503, "version_unloaded"),
    (ModelUnavailable, 503, "backend_unavailable"),
    (DeadlineExceeded, 504, "backend_timeout"),
    (ModelInterfaceError, 503, "backend_unavailable"),
)


# The Retry-After of a 503 backend_unavailable: the gRPC channel tries to reconnect to a TF Serving that went away at
# least every 2 s (model_interface.client.CHANNEL_OPTIONS), so a retry after that finds a restarted one.
BACKEND_RETRY_AFTER_S = 2


def as_api_error(error: Exception) -> APIError | None:
    """The status, code and envelope of a typed failure; None for anything else (a bug: a logged 500)."""
    if isinstance(error, APIError):
        return error
    for kind, status, code in STATUSES:
        if isinstance(error, kind):
            break
    else:
        return None
    if isinstance(error, UnknownModel):
        return APIError(status, str(error), param="model", code=code)
    if isinstance(error, TooManyStreams):
        return APIError(status, f"too many concurrent streams: {error}; retry shortly", code=code,
                        headers={"Retry-After": str(error.retry_after_s)})
    if isinstance(error, ShuttingDown):  # another replica (or this one, restarted) takes the retry
        return APIError(status, str(error), code=code, headers={"Retry-After": str(error.retry_after_s)})
    if code == "backend_unavailable":  # TF Serving down or no version yet: worth retrying once it is back
        return APIError(status, str(error), code=code, headers={"Retry-After": str(BACKEND_RETRY_AFTER_S)})
    return APIError(status, str(error), code=code)


def internal_error() -> APIError:
    return APIError(500, "internal error; it has been logged", code="internal_error")


def error_response(error: APIError):
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(APIError)
    @app.errorhandler(GatewayError)
    @app.errorhandler(ModelInterfaceError)
    def typed_error(error: Exception):
        return error_response(as_api_error(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        # Werkzeug's own 404/405/413: same envelope, its message.
        status = error.code or 500
        response = error_response(APIError(status, error.description or error.name,
                                           code=HTTP_CODES.get(status, "http_error")))
        allowed = getattr(error, "valid_methods", None)
        if allowed:
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")  # the traceback goes to the log, never to the client
        return error_response(internal_error())
