"""Checkpoints and backups: a failed write keeps the previous file, a damaged file is refused naming it."""
import dataclasses
import errno
import os
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from training import checkpoints
from training.checkpoints import BACKUP, BEST_WEIGHTS, CheckpointError, Progress
from training.model import CharRNN

VOCAB = 60


def tiny_model(tiny_config, **changes):
    model = CharRNN(VOCAB, dataclasses.replace(tiny_config, **changes))
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    return model, optimizer


def values(variables):
    return [np.array(v.numpy()) for v in variables]


def nudge(model):
    for v in model.trainable_variables:
        v.assign(v + 0.5)


class DiskFillsUp:
    """Simulation of a disk that fills part-way through a file: the first `room` bytes reach the real file, then
    write raises OSError(ENOSPC), as Python's file write does when write(2) finds no space left."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, data):
        data = memoryview(data).cast("B")
        taken = min(len(data), self.room)
        self.file.write(data[:taken])
        self.room -= taken
        if taken < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return taken

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def fill_disk_while_writing(monkeypatch, name, room=2048):
    """Every file checkpoints.py opens for writing under the temporary name of `name` hits a full disk."""
    real_open = open

    def open_on_a_full_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return DiskFillsUp(f, room) if "w" in mode and Path(file).name == ".tmp-" + name else f

    monkeypatch.setattr(checkpoints, "open", open_on_a_full_disk, raising=False)


def test_a_full_disk_during_a_backup_keeps_the_previous_backup(tiny_config, tmp_path, monkeypatch):
    """Simulated (DiskFillsUp): the disk fills after 2 KiB of the new backup."""
    model, optimizer = tiny_model(tiny_config)
    path = tmp_path / BACKUP
    checkpoints.save_backup(path, model, optimizer, [], Progress(global_step=20))
    good, saved = path.read_bytes(), values(model.variables)
    nudge(model)
    fill_disk_while_writing(monkeypatch, BACKUP)
    with pytest.raises(CheckpointError) as failure:
        checkpoints.save_backup(path, model, optimizer, [], Progress(global_step=40))
    assert str(failure.value).startswith(f"{path}: could not be written: No space left on device (errno 28)")
    assert failure.value.kind == "write" and failure.value.errno == errno.ENOSPC
    assert path.read_bytes() == good and os.listdir(tmp_path) == [BACKUP]  # the partial temporary file is gone
    monkeypatch.undo()
    _, progress = checkpoints.load_backup(path, model, optimizer)
    assert progress.global_step == 20
    for restored, before in zip(values(model.variables), saved):
        np.testing.assert_array_equal(restored, before)


def test_weights_carry_their_digest_and_plain_keras_files_still_load(tiny_config, tmp_path):
    model, _ = tiny_model(tiny_config)
    checkpoints.save_weights(model, tmp_path / BEST_WEIGHTS)
    with h5py.File(tmp_path / BEST_WEIGHTS, "r") as f:
        assert len(f.attrs[checkpoints.WEIGHTS_DIGEST]) == 64
    other, _ = tiny_model(tiny_config, seed=7)
    checkpoints.load_weights(other, tmp_path / BEST_WEIGHTS)  # Keras reads a file with the digest attribute
    for a, b in zip(values(other.weights), values(model.weights)):
        np.testing.assert_array_equal(a, b)
    model.save_weights(tmp_path / "plain.weights.h5")  # a run from before digests: checked for structure only
    checkpoints.load_weights(other, tmp_path / "plain.weights.h5")


def flip_a_byte_of_the_data(path):
    """Change one byte inside the embedding's stored array: HDF5 itself reads the file as if nothing happened."""
    with h5py.File(path, "r") as f:
        offset = f["embedding/vars/0"].id.get_offset()
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "header", "data"])
def test_damaged_weights_are_refused_naming_the_file(tiny_config, tmp_path, damage, capfd):
    model, _ = tiny_model(tiny_config)
    path = tmp_path / BEST_WEIGHTS
    checkpoints.save_weights(model, path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "header":
        path.write_bytes(b"\0" * 64 + data[64:])
    else:
        flip_a_byte_of_the_data(path)
        plain, _ = tiny_model(tiny_config)
        plain.load_weights(path)  # what Keras alone would have done: load it, silently wrong
        assert not np.array_equal(plain.embedding.embeddings.numpy(), model.embedding.embeddings.numpy())
    with pytest.raises(CheckpointError) as failure:
        checkpoints.load_weights(model, path)
    message = str(failure.value)
    assert message.startswith(f"{path}: is damaged") and failure.value.kind == "damaged"
    assert ("no longer match the sha256" in message) == (damage == "data")
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "empty", "not-npz", "bit-flip", "no-progress"])
def test_a_damaged_backup_is_refused_naming_the_file_and_nothing_is_restored(tiny_config, tmp_path, damage):
    model, optimizer = tiny_model(tiny_config)
    path = tmp_path / BACKUP
    checkpoints.save_backup(path, model, optimizer, [], Progress(global_step=20))
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[:len(data) * 2 // 3]
    elif damage == "empty":
        data = b""
    elif damage == "not-npz":
        data = b"not a backup at all\n" * 10
    elif damage == "bit-flip":
        data[len(data) // 2] ^= 0x01  # inside an array: zip's CRC-32 sees it
    else:
        arrays = dict(np.load(path))
        del arrays["progress"]
        np.savez(path, **arrays)
        data = path.read_bytes()
    path.write_bytes(bytes(data))
    nudge(model)
    before = values(model.variables) + values(optimizer.variables)
    with pytest.raises(CheckpointError) as failure:
        checkpoints.load_backup(path, model, optimizer)
    assert str(failure.value).startswith(f"{path}: is damaged or truncated and cannot be resumed from (")
    assert failure.value.kind == "damaged"
    for after, was in zip(values(model.variables) + values(optimizer.variables), before):
        np.testing.assert_array_equal(after, was)


def test_a_backup_of_another_model_is_refused_naming_the_variable(tiny_config, tmp_path):
    model, optimizer = tiny_model(tiny_config)
    path = tmp_path / BACKUP
    checkpoints.save_backup(path, model, optimizer, [np.zeros((8, 32), np.float32)] * 2, Progress())
    wider, wider_optimizer = tiny_model(tiny_config, hidden_size=48)
    with pytest.raises(CheckpointError, match=r"lstm_cell/kernel has shape \(16, 128\) in the backup, \(16, 192\) "
                                              r"in the model built from the run's config.json and vocab.json"):
        checkpoints.load_backup(path, wider, wider_optimizer)
    with pytest.raises(CheckpointError, match=r"recurrent state of \[\(8, 32\), \(8, 32\)\].*asks for "
                                              r"\[\(16, 32\), \(16, 32\)\]"):
        checkpoints.load_backup(path, model, optimizer, batch_size=16)
    checkpoints.load_backup(path, model, optimizer, batch_size=8)
