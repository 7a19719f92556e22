"""Training: it learns, it logs, it refuses what it must, and it resumes exactly."""
import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from training.checkpoints import BACKUP, Progress
from training.corpus import Vocab
from training.train import TrainingDiverged, main, train

ROOT = Path(__file__).resolve().parents[1]


def read_backup(path):
    with np.load(path) as backup:
        progress = Progress(**json.loads(bytes(backup["progress"]).decode()))
        return {k: backup[k] for k in backup.files if k != "progress"}, progress


def test_loss_falls_well_below_uniform(trained_run):
    config, summary = trained_run
    vocab = Vocab.load(Path(config.run_dir) / "vocab.json")
    uniform = math.log(len(vocab))  # nats/char of a model that knows nothing
    assert summary["best_val_loss"] < 0.7 * uniform
    rows = list(csv.DictReader(open(Path(config.run_dir) / "history.csv")))
    assert len(rows) == config.epochs
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert math.isclose(float(rows[0]["val_bpc"]), float(rows[0]["val_loss"]) / math.log(2), rel_tol=1e-9)


def test_run_directory_holds_the_run(trained_run):
    config, summary = trained_run
    run_dir = Path(config.run_dir)
    for name in ("config.json", "vocab.json", "corpus.json", "history.csv", "best.weights.h5",
                 "last.weights.h5", BACKUP):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((run_dir / "config.json").read_text())["hidden_size"] == config.hidden_size
    assert json.loads((run_dir / "corpus.json").read_text())["chars"] == 60_000
    _, progress = read_backup(run_dir / BACKUP)
    assert progress.global_step == summary["global_step"] and progress.epoch == config.epochs
    assert not list(run_dir.glob(".tmp-*"))


def test_resume_is_exact(tiny_config, tmp_path):
    """Stopped mid-epoch and resumed gives bit-for-bit what one uninterrupted run gives (dropout on)."""
    def config(name):
        return dataclasses.replace(tiny_config, dropout=0.2, backup_every=0, run_dir=str(tmp_path / name))

    whole = train(config("whole"))
    first = train(dataclasses.replace(config("split"), stop_after_steps=150))  # mid-epoch 1 of 2 (210 steps)
    assert first["stopped"] and first["global_step"] == 150
    _, progress = read_backup(tmp_path / "split" / BACKUP)
    assert (progress.epoch, progress.step_in_epoch) == (0, 150)
    rest = train(config("split"), resume=True)
    assert rest["session_steps"] == whole["global_step"] - 150
    a, _ = read_backup(tmp_path / "whole" / BACKUP)
    b, _ = read_backup(tmp_path / "split" / BACKUP)
    assert a.keys() == b.keys() and any(k.startswith("state_") for k in a)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert rest["best_val_loss"] == pytest.approx(whole["best_val_loss"], rel=1e-6)


def test_explosion_guard_stops_with_a_clear_message(tiny_config, tmp_path, capsys):
    code = main(["--corpus", tiny_config.corpus, "--preset", "tiny", "--run-dir", str(tmp_path / "run"),
                 "--learning-rate", "5", "--lr-schedule", "constant", "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "exploded" in err and "first loss" in err and "--learning-rate" in err


def test_nan_guard(tiny_config, tmp_path):
    bad = tmp_path / "nan"
    config = dataclasses.replace(tiny_config, run_dir=str(bad), learning_rate=float("1e30"), grad_clip=1e30,
                                 lr_schedule="constant", explode_factor=1e30)
    with pytest.raises(TrainingDiverged, match="became nan|exploded"):
        train(config)


def test_new_run_will_not_overwrite_a_run(trained_run, capsys):
    config, _ = trained_run
    with pytest.raises(SystemExit):
        main(["--corpus", config.corpus, "--preset", "tiny", "--run-dir", config.run_dir])
    err = capsys.readouterr().err
    assert "already holds a run" in err and "pass --resume" in err


def test_resume_refusals(trained_run, tmp_path, capsys):
    config, _ = trained_run
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path / "empty"), "--resume"])
    assert "no backup.npz to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--run-dir", config.run_dir, "--resume", "--hidden-size", "99"])
    assert "--hidden-size cannot change on --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(corpus_slice, tmp_path):
    """A real process killed with SIGKILL resumes from its last backup, not from the start."""
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "training.train", "--corpus", str(corpus_slice), "--preset", "tiny",
            "--run-dir", str(run_dir), "--backup-every", "25", "--verbose", "2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (run_dir / BACKUP).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before any backup"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, progress = read_backup(run_dir / BACKUP)
    assert progress.global_step >= 25 and progress.global_step % 25 == 0 or progress.step_in_epoch == 0
    total = 2 * 210  # tiny preset: 2 epochs of 210 batches on the 60,000-character slice
    assert progress.global_step < total
    resumed = subprocess.run(argv + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"(global step {progress.global_step})" in resumed.stdout
    summary = json.loads(resumed.stdout.split("summary ", 1)[1].splitlines()[0])
    assert summary["global_step"] == total and summary["session_steps"] == total - progress.global_step
    assert not summary["stopped"]


@pytest.fixture
def bf16_units(monkeypatch):
    """Pretend the CPU has bfloat16 units, so the bf16 path is tested on any CPU (emulated where it has none)."""
    from training import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])


def test_bf16_run_learns(tiny_config, tmp_path, bf16_units):
    config = dataclasses.replace(tiny_config, precision="bf16", epochs=1, run_dir=str(tmp_path / "bf16"))
    summary = train(config)
    vocab = Vocab.load(tmp_path / "bf16" / "vocab.json")
    assert summary["best_val_loss"] < 0.7 * math.log(len(vocab))
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    weights, _ = read_backup(tmp_path / "bf16" / BACKUP)
    assert {w.dtype for w in weights.values() if w.dtype.kind == "f"} == {np.dtype("float32")}  # fp32 checkpoints


def test_bf16_without_bf16_units_says_so_and_trains_in_fp32(tiny_config, tmp_path, monkeypatch, capsys):
    from training import config as config_lib
    from training import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    # as the small preset does: fp32 gets its own settings for the same time
    monkeypatch.setitem(config_lib.PRESETS, "tiny", {**config_lib.PRESETS["tiny"],
                                                     "fp32_fallback": {"hidden_size": 16, "epochs": 1}})
    run_dir = tmp_path / "run"
    code = main(["--corpus", tiny_config.corpus, "--preset", "tiny", "--run-dir", str(run_dir), "--precision", "bf16",
                 "--stop-after-steps", "3", "--verbose", "0"])
    assert code == 0
    err = capsys.readouterr().err
    assert "--precision bf16: this CPU has no bfloat16 units" in err and "training in fp32 instead" in err
    assert "--hidden-size 16 --epochs 1" in err
    saved = json.loads((run_dir / "config.json").read_text())  # what the run trains in
    assert (saved["precision"], saved["hidden_size"], saved["epochs"], saved["fp32_fallback"]) == ("fp32", 16, 1, {})
    weights, _ = read_backup(run_dir / BACKUP)
    assert weights["state_000"].shape[-1] == 16  # the state carried is the fallback's shape's


def test_a_bf16_run_resumed_without_bf16_units_keeps_its_shape(tiny_config, tmp_path, monkeypatch, capsys):
    from training import config as config_lib
    from training import precision

    monkeypatch.setitem(config_lib.PRESETS, "tiny", {**config_lib.PRESETS["tiny"],
                                                     "fp32_fallback": {"hidden_size": 16}})
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    run_dir = tmp_path / "run"
    argv = ["--corpus", tiny_config.corpus, "--preset", "tiny", "--run-dir", str(run_dir), "--precision", "bf16",
            "--stop-after-steps", "2", "--verbose", "0"]
    assert main(argv) == 0
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])  # the run moved to a CPU without bf16 units
    assert main(["--run-dir", str(run_dir), "--resume", "--stop-after-steps", "2", "--verbose", "0"]) == 0
    err = capsys.readouterr().err
    assert "training in fp32 instead" in err and "--hidden-size" not in err
    weights, progress = read_backup(run_dir / BACKUP)
    assert progress.global_step == 4 and weights["state_000"].shape[-1] == 32  # tiny's, as the run began


def test_resume_keeps_the_saved_precision(tiny_config, tmp_path, bf16_units, capsys):
    from training.config import build_parser
    from training.train import resolve_config

    run_dir = tmp_path / "run"
    first = main(["--corpus", tiny_config.corpus, "--preset", "tiny", "--run-dir", str(run_dir), "--precision", "bf16",
                  "--stop-after-steps", "3", "--verbose", "0"])
    assert first == 0
    resumed = resolve_config(build_parser().parse_args(["--run-dir", str(run_dir), "--resume", "--preset", "small"]))
    assert resumed.precision == "bf16"
    with pytest.raises(SystemExit):
        main(["--run-dir", str(run_dir), "--resume", "--precision", "fp32"])
    assert "--precision cannot change on --resume" in capsys.readouterr().err
    summary = train(dataclasses.replace(resumed, stop_after_steps=2), resume=True)
    assert summary["global_step"] == 5


def test_a_moving_average_of_the_weights_is_validated_kept_and_resumed(tiny_config, tmp_path):
    """--ema-momentum: the last (and best) weights are the optimizer's moving average, the backup goes on
    from the trained weights, and a run stopped mid-epoch and resumed ends bit for bit where one run does."""
    import keras

    from training.checkpoints import load_backup
    from training.model import CharRNN

    def config(name, **changes):
        return dataclasses.replace(tiny_config, ema_momentum=0.9, backup_every=0, run_dir=str(tmp_path / name),
                                   **changes)

    whole = train(config("whole"))
    run_dir = tmp_path / "whole"
    vocab = Vocab.load(run_dir / "vocab.json")
    trained = CharRNN(len(vocab), config("whole"))
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)  # as training's: no learning-rate variable
    optimizer = keras.optimizers.Adam(schedule, use_ema=True, ema_momentum=0.9)
    optimizer.build(trained.trainable_variables)
    load_backup(run_dir / BACKUP, trained, optimizer)
    kept = CharRNN(len(vocab), config("whole"))
    kept.load_weights(run_dir / "last.weights.h5")
    differ = [not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(trained.trainable_variables, kept.trainable_variables)]
    assert all(differ)  # the backup holds the trained weights, the checkpoint something else...
    optimizer.finalize_variable_values(trained.trainable_variables)
    for average, saved in zip(trained.trainable_variables, kept.trainable_variables):
        np.testing.assert_array_equal(average.numpy(), saved.numpy())  # ...the average
    assert whole["best_val_loss"] < 0.7 * math.log(len(vocab))

    first = train(config("split", stop_after_steps=150))
    assert first["stopped"]
    rest = train(config("split"), resume=True)
    a, _ = read_backup(run_dir / BACKUP)
    b, _ = read_backup(tmp_path / "split" / BACKUP)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)
    assert rest["best_val_loss"] == pytest.approx(whole["best_val_loss"], rel=1e-6)



def test_weight_decay_shrinks_the_matrices_and_leaves_the_biases(tiny_config):
    """--weight-decay is decoupled (AdamW): with no gradient, one step scales every matrix by
    1 - lr * decay and leaves every bias as it was."""
    import tensorflow as tf

    from training.model import CharRNN
    from training.train import build_optimizer

    config = dataclasses.replace(tiny_config, weight_decay=0.5, warmup_steps=0, lr_schedule="constant")
    model = CharRNN(20, config)
    optimizer = build_optimizer(config, model, steps_per_epoch=10)
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    factor = 1.0 - config.learning_rate * config.weight_decay
    assert any(b.ndim == 1 for b in before) and any(b.ndim == 2 for b in before)
    for old, variable in zip(before, model.trainable_variables):
        np.testing.assert_allclose(variable.numpy(), old * (factor if old.ndim >= 2 else 1.0), rtol=1e-6,
                                   err_msg=variable.path)
