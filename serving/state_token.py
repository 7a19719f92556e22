"""The opaque continuation `state` clients carry between /v1/generate calls.

It holds the model's float32 state row (which ends with the sampler's position) and the seed, so passing it
back with an empty prompt continues exactly where the text stopped; and it names the model and version,
because another version's numbers would silently give nonsense. Format: base64url(JSON header) "."
base64url(little-endian float32 bytes). Clients must not rely on it.
"""
from __future__ import annotations

import base64
import binascii
import json

import numpy as np


class StateError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(model: str, version: int, seed: int, state: np.ndarray) -> str:
    header = json.dumps({"model": model, "version": int(version), "seed": int(seed)}, separators=(",", ":"))
    return f"{_b64(header.encode())}.{_b64(np.asarray(state, '<f4').tobytes())}"


def decode(token: str, model: str, version: int, state_size: int) -> tuple[int, np.ndarray]:
    """-> (seed, state row float32 [state_size]); StateError says what is wrong."""
    try:
        header_part, state_part = token.split(".")
        header = json.loads(_unb64(header_part))
        raw = _unb64(state_part)
        seed, token_model, token_version = int(header["seed"]), header["model"], int(header["version"])
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise StateError("state is not a state this server returned") from None
    if (token_model, token_version) != (model, version):
        raise StateError(f"state belongs to {token_model} version {token_version}, but {model} version "
                         f"{version} is being served; start again from the text")
    if len(raw) != 4 * state_size:
        raise StateError(f"state holds {len(raw) // 4} numbers; {model} version {version} needs {state_size}")
    state = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.all(np.isfinite(state)) or state[-1] < 0:
        raise StateError("state holds invalid numbers")
    return seed, state
