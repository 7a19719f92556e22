"""Atomic checkpoints (best and last weights) and exact-resume backups of a run.

Every file is written under a temporary name in the same directory, flushed to disk, then renamed over
the old one: a kill at any moment leaves either the previous file or the new one, never half of one.

A backup (backup.npz) holds everything the next step depends on: model weights (the dropout seed
generators' state among them), every optimizer variable (Adam's moments and its iteration count, which
drives the learning-rate schedule), the recurrent state carried into the next batch, and the position
(epoch, batch within the epoch, global step) plus the bookkeeping of the epoch in progress and of the
best-checkpoint and early-stopping decisions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKUP = "backup.npz"
BEST_WEIGHTS = "best.weights.h5"
LAST_WEIGHTS = "last.weights.h5"


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
    _fsync_dir(path.parent)


def save_weights(model, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(".tmp-" + path.name)  # Keras insists on the .weights.h5 ending
    model.save_weights(tmp)
    replace_atomically(tmp, path)


def save_backup(path: Path, model, optimizer, carried_state: list[np.ndarray], progress: Progress) -> None:
    path = Path(path)
    arrays = {f"weight_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer_{i:03d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
    arrays.update({f"state_{i:03d}": s for i, s in enumerate(carried_state)})
    arrays["progress"] = np.frombuffer(json.dumps(dataclasses.asdict(progress)).encode(), dtype=np.uint8)
    tmp = path.with_name(".tmp-" + path.name)
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    replace_atomically(tmp, path)


def load_backup(path: Path, model, optimizer) -> tuple[list[np.ndarray], Progress]:
    """Restore weights and optimizer in place; return the carried state and the progress."""
    with np.load(path) as backup:
        def series(prefix):
            return [backup[k] for k in sorted(k for k in backup.files if k.startswith(prefix))]

        weights, optimizer_values, states = series("weight_"), series("optimizer_"), series("state_")
        progress = Progress(**json.loads(bytes(backup["progress"]).decode()))
    if len(weights) != len(model.variables) or len(optimizer_values) != len(optimizer.variables):
        raise ValueError(f"{path}: the backup does not match this model's shape")
    for variable, value in zip(model.variables, weights):  # variables, not weights: seed states too
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_values):
        variable.assign(value)
    return states, progress
