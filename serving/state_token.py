"""The opaque, signed continuation `state` clients carry between /v1/generate (and /v1/score, /v1/activations) calls.

It holds the model's float32 state row (which ends with the sampler's position) and the seed, so passing it back
with an empty prompt continues exactly where the text stopped; it names the model and version, because another
version's numbers would silently give nonsense; and it is signed, so the gateway only ever reads numbers it
produced itself.

Format (clients must not rely on it): three base64url parts without padding, joined by "."

    <header>.<numbers>.<signature>

- header: JSON `{"model": str, "version": int, "seed": int}`;
- numbers: the state row as little-endian float32 bytes;
- signature: HMAC-SHA256 under a state secret of `PURPOSE + header + "." + numbers` (the two base64 texts as
  sent), so neither part can be changed nor a part of another token swapped in.

The secrets are CHARLM_STATE_SECRETS (serving/settings.py): the first signs, every one verifies, so a secret is
rotated by putting a new one first and dropping the old one once the states it signed no longer matter. A state
signed by any other secret (forged, altered, or from another deployment, which has a secret of its own) is
refused. Without the setting, each process signs with a random secret of its own, made once: states then do not
survive a restart and do not verify on another gunicorn worker or replica (a warning says so at start-up).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets as random_secrets
import threading
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

MAX_POSITION = 2 ** 24  # float32 counts every whole number up to here
PURPOSE = b"charlm continuation state v1\n"  # what the signature is for: a secret shared with other uses stays apart
EXTENSION = "charlm.state_signer"
_B64 = re.compile(r"[A-Za-z0-9_-]+")
INT64 = (-(2 ** 63), 2 ** 63 - 1)
MIN_SECRET_BYTES = 16  # a shorter secret could be guessed offline from one state


class StateError(ValueError):
    """A state the gateway will not read; `reason` is "malformed", "signature", "model", "width" or "numbers"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, PURPOSE + signed.encode("ascii"), hashlib.sha256).digest()


def encode(model: str, version: int, seed: int, state: np.ndarray, secret: bytes) -> str:
    header = json.dumps({"model": model, "version": int(version), "seed": int(seed)}, separators=(",", ":"))
    signed = f"{_b64(header.encode())}.{_b64(np.asarray(state, '<f4').tobytes())}"
    return f"{signed}.{_b64(_mac(secret, signed))}"


NOT_OURS = ("state is not signed by this deployment: it was altered or forged, comes from another deployment, or was "
            "signed with a secret no longer in CHARLM_STATE_SECRETS; start again from the text")


def decode(token: str, model: str, version: int, state_size: int, secrets: Sequence[bytes]) -> tuple[int, np.ndarray]:
    """-> (seed, state row float32 [state_size]); StateError says what is wrong. The signature is checked first,
    against every secret (in constant time each, and all of them whichever matches), so nothing a client made up
    is parsed beyond splitting it in three."""
    parts = token.split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not all(_B64.fullmatch(p) for p in parts):
        raise StateError("state is not a state this server returned (expected three base64url parts)", "malformed")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        given = _unb64(parts[2])
    except (ValueError, binascii.Error):
        given = b""
    matched = [hmac.compare_digest(given, _mac(secret, signed)) for secret in secrets]
    if not any(matched):
        raise StateError(NOT_OURS, "signature")
    try:
        header = json.loads(_unb64(parts[0]))
        raw = _unb64(parts[1])
        seed, token_model, token_version = header["seed"], header["model"], header["version"]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise StateError("state is not a state this server returned", "malformed") from None
    if not (isinstance(token_model, str) and type(token_version) is int and type(seed) is int
            and INT64[0] <= seed <= INT64[1]):
        raise StateError("state is not a state this server returned", "malformed")
    if (token_model, token_version) != (model, version):
        served = f"version {version}" if token_model == model else f"{model} version {version}"
        raise StateError(f"this state belongs to {token_model} version {token_version}; the server now serves "
                         f"{served}; a state only continues the version that made it: start again from the text",
                         "model")
    if len(raw) != 4 * state_size:
        held = f"{len(raw) // 4} numbers" if len(raw) % 4 == 0 else f"{len(raw)} bytes (not whole float32 numbers)"
        raise StateError(f"state holds {held}; {model} version {version} needs {state_size} numbers", "width")
    state = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.all(np.isfinite(state)):
        raise StateError("state holds invalid numbers: NaN or infinite values", "numbers")
    position = state[-1]
    if position < 0 or position != np.floor(position):
        raise StateError("state holds invalid numbers: its position is not a whole number of characters", "numbers")
    if position > MAX_POSITION:
        raise StateError(f"state holds invalid numbers: its position {position:.0f} is past {MAX_POSITION:,} "
                         "characters, where float32 stops counting whole characters", "numbers")
    # From the zero state a recurrent net cannot leave these bounds: h = o * tanh(c) (LSTM), a mix of tanh values
    # (GRU) or tanh (RNN) stays within 1, and an LSTM's c_t = f * c_{t-1} + i * g grows by less than 1 a step. A
    # larger number was never produced by the model; it would overflow its matmuls into NaN.
    largest = float(np.max(np.abs(state[:-1]), initial=0.0))
    if largest > max(1.0, float(position)):
        raise StateError(f"state holds invalid numbers: {largest:.3g} is beyond what the model reaches in "
                         f"{position:.0f} characters", "numbers")
    return seed, state


class StateSigner:
    """The secrets of one gateway: `encode` signs with the first, `decode` accepts any of them."""

    def __init__(self, secrets: Sequence[bytes]):
        if not secrets:
            raise ValueError("a StateSigner needs at least one secret")
        self.secrets = tuple(secrets)

    def encode(self, model: str, version: int, seed: int, state: np.ndarray) -> str:
        return encode(model, version, seed, state, self.secrets[0])

    def decode(self, token: str, model: str, version: int, state_size: int) -> tuple[int, np.ndarray]:
        return decode(token, model, version, state_size, self.secrets)


_process_secret: bytes | None = None
_process_lock = threading.Lock()


def process_secret() -> bytes:
    """A random secret made once per process (so every app of a process, and every thread, shares it)."""
    global _process_secret
    with _process_lock:
        if _process_secret is None:
            _process_secret = random_secrets.token_bytes(32)
        return _process_secret


def signer_for(settings) -> StateSigner:
    """The signer CHARLM_STATE_SECRETS asks for; a secret that is too short stops the gateway (named by its place in
    the list, never by its value)."""
    configured = [s.get_secret_value().encode("utf-8") for s in settings.state_secrets]
    short = [str(i + 1) for i, secret in enumerate(configured) if len(secret) < MIN_SECRET_BYTES]
    if short:
        raise ValueError(f"CHARLM_STATE_SECRETS (state_secrets): secret number {', '.join(short)} of the list is "
                         f"shorter than {MIN_SECRET_BYTES} bytes; use e.g. `openssl rand -base64 32`")
    if configured:
        return StateSigner(configured)
    log.warning("CHARLM_STATE_SECRETS is not set: continuation states are signed with a random secret of this "
                "process, so they will not verify after a restart, on another gunicorn worker or on another replica. "
                "Set CHARLM_STATE_SECRETS to the same secret on every replica (docs/serving.md, 'Continuation "
                "states').")
    return StateSigner([process_secret()])


def init_app(app, settings) -> None:
    """At start-up (the native routes' blueprint calls it when it is registered): the app's signer, and the warning
    when there is no configured secret."""
    app.extensions[EXTENSION] = signer_for(settings)


def current_signer() -> StateSigner:
    from flask import current_app

    return current_app.extensions[EXTENSION]
