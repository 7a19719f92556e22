"""Typed failures of talking to an exported model. They say what went wrong in words a user can act on; they
carry no HTTP status: the gateway maps them (serving/errors.py), the CLIs print them."""
from __future__ import annotations


class ModelInterfaceError(Exception):
    """Base of every failure below."""


class LayoutError(ModelInterfaceError, ValueError):
    """A model or version directory that is missing, empty or not TF Serving's layout."""


class MetadataError(ModelInterfaceError, ValueError):
    """A version's charlm.json is missing, unreadable or incomplete."""


class ModelUnavailable(ModelInterfaceError):
    """Nothing answered (TF Serving down, no version loaded yet): retrying later may work."""


class VersionNotFound(ModelUnavailable):
    """The version asked for is not (or no longer) loaded or served."""


class DeadlineExceeded(ModelInterfaceError):
    """The call did not finish within its deadline."""


class InputRejected(ModelInterfaceError, ValueError):
    """The model refused the inputs (TensorFlow's INVALID_ARGUMENT): the caller sent something wrong."""
