"""Atomic checkpoints (best and last weights) and exact-resume backups of a run.

Every file is written under a temporary name in the same directory, flushed to disk, then renamed over
the old one: a kill at any moment leaves either the previous file or the new one, never half of one. A write
that fails (the disk full, a quota, an I/O error) removes its temporary file and raises CheckpointError naming
the file and the cause; the previous file is untouched. The bytes of a file are built in memory and written
by Python, HDF5's included (see weights_file), so that every failed write is one OSError.

A backup (backup.npz) holds everything the next step depends on: model weights (the dropout seed
generators' state among them), every optimizer variable (Adam's moments and its iteration count, which
drives the learning-rate schedule), the recurrent state carried into the next batch, and the position
(epoch, batch within the epoch, global step) plus the bookkeeping of the epoch in progress and of the
best-checkpoint and early-stopping decisions. Its members carry zip's CRC-32, so a damaged backup is found
when it is read. A weights file carries a sha256 of its arrays (the root attribute WEIGHTS_DIGEST), because
HDF5 keeps no checksum of its own data: damage that would otherwise load silently is found too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno as errno_codes
import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKUP = "backup.npz"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"
WEIGHTS_DIGEST = "charlm_weights_sha256"  # root attribute of a weights file: sha256 of its arrays
DISK_FULL = (errno_codes.ENOSPC, errno_codes.EDQUOT)


class CheckpointError(RuntimeError):
    """A checkpoint or backup that could not be written, or cannot be read; the message names the file.

    `kind` is "write" (writing it failed; `errno` says why), "damaged" (the file cannot be read, or its contents
    are not what was written) or "mismatch" (it was written by a model of another shape)."""

    def __init__(self, path: Path, kind: str, message: str, errno: int | None = None):
        self.path, self.kind, self.errno = Path(path), kind, errno
        super().__init__(f"{path}: {message}")


@dataclass
class Progress:
    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # batches of that epoch already trained
    global_step: int = 0  # batches trained since the run began
    epoch_loss_sum: float = 0.0  # training loss summed over the batches of the epoch in progress
    first_loss: float = math.nan  # first batch's loss, the yardstick of the explosion guard
    best_val_loss: float = math.inf  # best validation loss so far (nats/char)
    best_epoch: int = -1  # epoch (0-based) that reached it
    epochs_without_improvement: int = 0  # early stopping's counter


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        _fsync_dir(path.parent)
    except OSError as error:
        raise CheckpointError(path, "write", f"was written, but {path.parent} could not be synced "
                                             f"({_cause(error)}); a crash now may bring back the previous "
                                             f"{path.name}", error.errno) from None


def _cause(error: OSError) -> str:
    return f"{os.strerror(error.errno)} (errno {error.errno})" if error.errno else _first_line(error)


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _writing(path: Path, tmp: Path):
    """Whatever fails inside, remove the temporary file; an OS error becomes a CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CheckpointError(path, "write", f"could not be written: {_cause(error)}; the previous {path.name}, "
                                             f"if any, is intact and no temporary file is left", error.errno) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _weights_digest(h5file) -> str:
    import h5py

    digest = hashlib.sha256()

    def add(name, item):
        if isinstance(item, h5py.Dataset):
            value = np.ascontiguousarray(item[()])
            digest.update(f"{name} {value.dtype.str} {value.shape}\n".encode())
            digest.update(value.tobytes())

    h5file.visititems(add)  # in name order
    return digest.hexdigest()


def weights_file(model) -> bytes:
    """The .weights.h5 file model.save_weights writes, built in memory, with its digest added.

    HDF5 writes only to memory here; Python writes the file. When one of HDF5's own writes to the disk fails (the
    disk full), h5py can take the process down with it (seen with h5py 3.14: a segmentation fault while closing
    the file), where Python's write raises an OSError that names the cause. The two Keras calls are what
    model.save_weights(path) runs (keras.src.saving.saving_lib.save_weights_only), given a buffer for the path."""
    import h5py
    from keras.src.saving import saving_lib

    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    with h5py.File(buffer, "r+") as f:
        f.attrs[WEIGHTS_DIGEST] = _weights_digest(f)
    return buffer.getvalue()


def save_weights(model, path: Path) -> None:
    path = Path(path)
    data = weights_file(model)
    tmp = path.with_name(".tmp-" + path.name)
    with _writing(path, tmp):
        with open(tmp, "wb") as f:
            f.write(data)
        replace_atomically(tmp, path)


def check_weights(path: Path) -> None:
    """Raise CheckpointError unless `path` reads whole and (when it carries one) matches its digest."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            expected, actual = f.attrs.get(WEIGHTS_DIGEST), _weights_digest(f)
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError or ValueError for a damaged file
        raise CheckpointError(path, "damaged", f"is damaged or truncated ({_first_line(error)})") from None
    if isinstance(expected, bytes):
        expected = expected.decode()
    if expected is not None and expected != actual:
        raise CheckpointError(path, "damaged", "is damaged: its weights no longer match the sha256 written "
                                               "with them")


def load_weights(model, path: Path) -> None:
    """model.load_weights, checked first; a damaged file or one of another shape raises CheckpointError."""
    path = Path(path)
    check_weights(path)
    try:
        model.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise CheckpointError(path, "mismatch", f"does not fit this model: {_first_line(error)}") from None


def save_backup(path: Path, model, optimizer, carried_state: list[np.ndarray], progress: Progress) -> None:
    path = Path(path)
    arrays = {f"weight_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays.update({f"state_{i:03d}": s for i, s in enumerate(carried_state)})
    arrays["progress"] = np.frombuffer(json.dumps(dataclasses.asdict(progress)).encode(), dtype=np.uint8)
    tmp = path.with_name(".tmp-" + path.name)
    with _writing(path, tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        replace_atomically(tmp, path)


def _read_backup(path: Path):
    damaged = "is damaged or truncated and cannot be resumed from"
    try:
        with np.load(path) as backup:
            def series(prefix):
                return [backup[k] for k in sorted(k for k in backup.files if k.startswith(prefix))]

            weights, optimizer_values, states = series("weight_"), series("optimizer_"), series("state_")
            progress = Progress(**json.loads(bytes(backup["progress"]).decode()))
    except (EOFError, zipfile.BadZipFile, KeyError, TypeError) as error:  # truncated, no progress, bad fields
        raise CheckpointError(path, "damaged", f"{damaged} ({_first_line(error)})") from None
    except ValueError as error:  # not an .npz at all (np.load takes it for a pickle), or a bad array header
        detail = "not an .npz archive" if "pickle" in str(error) else _first_line(error)
        raise CheckpointError(path, "damaged", f"{damaged} ({detail})") from None
    except OSError as error:
        raise CheckpointError(path, "damaged", f"cannot be read ({_first_line(error)})") from None
    return weights, optimizer_values, states, progress


def _check_shapes(path: Path, what: str, variables, values) -> None:
    if len(values) != len(variables):
        raise CheckpointError(path, "mismatch", f"holds {len(values)} {what} variables, the model built from "
                                                f"the run's config.json and vocab.json has {len(variables)}")
    for variable, value in zip(variables, values):
        if tuple(value.shape) != tuple(variable.shape):
            name = variable.path.split("/", 1)[-1]  # without the model's name, which Keras numbers per process
            raise CheckpointError(path, "mismatch", f"{what} variable {name} has shape "
                                                    f"{tuple(value.shape)} in the backup, "
                                                    f"{tuple(variable.shape)} in the model built from the "
                                                    f"run's config.json and vocab.json")


def load_backup(path: Path, model, optimizer, batch_size: int | None = None) -> tuple[list[np.ndarray], Progress]:
    """Restore weights and optimizer in place; return the carried state and the progress.

    Nothing is assigned until the whole backup has been read and every shape checked: a damaged backup,
    or one of another model (or, given `batch_size`, another number of streams), raises CheckpointError."""
    path = Path(path)
    weights, optimizer_values, states, progress = _read_backup(path)
    _check_shapes(path, "model", model.variables, weights)  # variables, not weights: seed states too
    _check_shapes(path, "optimizer", optimizer.variables, optimizer_values)
    if batch_size is not None and states:
        expected = [(batch_size, int(s.shape[-1])) for s in model.zero_state(1)]
        if [tuple(s.shape) for s in states] != expected:
            raise CheckpointError(path, "mismatch", f"carries the recurrent state of "
                                                    f"{[tuple(s.shape) for s in states]} (streams, units) "
                                                    f"per layer, the run's config.json asks for {expected}")
    for variable, value in zip(model.variables, weights):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_values):
        variable.assign(value)
    return states, progress
