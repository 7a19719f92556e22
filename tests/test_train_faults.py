"""Training's own faults, through its command lines: the disk filling while a checkpoint or backup is written, a
damaged backup or weights file, a run directory from another corpus or config on --resume. Each gets one message
naming the file (no traceback), a non-zero exit, and the last good checkpoint intact."""
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_checkpoints import DiskFillsUp, flip_a_byte_of_the_data

from training import checkpoints
from training.checkpoints import BACKUP, BEST_WEIGHTS, LAST_WEIGHTS
from training.export import main as export_main
from training.train import main

ROOT = Path(__file__).resolve().parents[1]


def snapshot(directory):
    """Every file under `directory`, byte for byte."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def leftovers(directory):
    return sorted(p.name for p in Path(directory).rglob(".tmp-*"))


def summary_of(out):
    return json.loads(out.split("summary ", 1)[1].splitlines()[0])


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's finished tiny run, to damage; the shared one stays as it is."""
    config, _ = trained_run
    copy = tmp_path / "run"
    shutil.copytree(config.run_dir, copy)
    return copy


def tiny_argv(tiny_config, run_dir, *more):
    return ["--corpus", tiny_config.corpus, "--preset", "tiny", "--run-dir", str(run_dir), "--verbose", "0", *more]


def test_disk_full_during_a_backup_stops_with_a_message_and_resume_continues(tiny_config, tmp_path, capsys,
                                                                            monkeypatch):
    """Simulated: the disk fills 4 KiB into the third backup (step 60). The backup of step 40 stays, byte for
    byte; when space is back, --resume continues from it."""
    run_dir = tmp_path / "run"
    real_open, opened, at_failure = open, [], {}

    def open_on_a_filling_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name == ".tmp-" + BACKUP:
            opened.append(file)
            if len(opened) == 3:
                at_failure.update(snapshot(run_dir))
                return DiskFillsUp(f, 4096)
        return f

    monkeypatch.setattr(checkpoints, "open", open_on_a_filling_disk, raising=False)
    assert main(tiny_argv(tiny_config, run_dir, "--backup-every", "20")) == 1
    err = capsys.readouterr().err
    backup = run_dir / BACKUP
    assert f"error: {backup}: could not be written: No space left on device (errno 28)" in err
    assert f"Free some space, then continue from the last good backup with: python -m training.train --run-dir " \
           f"{run_dir} --resume" in err
    assert "Traceback" not in err
    assert backup.read_bytes() == at_failure[BACKUP] and leftovers(run_dir) == []

    monkeypatch.undo()  # space is back
    assert main(["--run-dir", str(run_dir), "--resume", "--stop-after-steps", "5", "--verbose", "1"]) == 0
    out = capsys.readouterr().out
    assert "(global step 40)" in out
    assert summary_of(out)["global_step"] == 45


def test_disk_full_during_a_weights_file_keeps_every_checkpoint(tiny_config, tmp_path, capsys, monkeypatch):
    """Simulated: the disk fills 4 KiB into the second weights file: the best weights of epoch 2 (or the last
    weights, if epoch 2 did not improve). best.weights.h5 of epoch 1 and the backup stay, byte for byte."""
    run_dir = tmp_path / "run"
    real_open, opened, at_failure = open, [], {}

    def open_on_a_filling_disk(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name in (".tmp-" + BEST_WEIGHTS, ".tmp-" + LAST_WEIGHTS):
            opened.append(Path(file).name.removeprefix(".tmp-"))
            if len(opened) == 2:
                at_failure.update(snapshot(run_dir))
                return DiskFillsUp(f, 4096)
        return f

    monkeypatch.setattr(checkpoints, "open", open_on_a_filling_disk, raising=False)
    assert main(tiny_argv(tiny_config, run_dir)) == 1
    err = capsys.readouterr().err
    assert f"error: {run_dir / opened[1]}: could not be written: No space left on device (errno 28)" in err
    assert "Traceback" not in err and leftovers(run_dir) == []
    for name in (BEST_WEIGHTS, LAST_WEIGHTS, BACKUP):  # whatever existed before is byte for byte the same
        assert (run_dir / name).exists() == (name in at_failure), name
        if name in at_failure:
            assert (run_dir / name).read_bytes() == at_failure[name], name
    checkpoints.check_weights(run_dir / BEST_WEIGHTS)

    monkeypatch.undo()
    assert main(["--run-dir", str(run_dir), "--resume"]) == 0
    assert summary_of(capsys.readouterr().out)["global_step"] == 420
    checkpoints.check_weights(run_dir / LAST_WEIGHTS)


@pytest.mark.slow
def test_a_real_write_failure_from_the_command_line(corpus_slice, tmp_path):
    """Not simulated in Python: RLIMIT_FSIZE (no root needed) makes the kernel refuse, with EFBIG, any write past
    50,000 bytes of a file, as a full disk refuses with ENOSPC. With backups only at epoch ends, the first file to
    reach that size is best.weights.h5 (about 140 KB). While h5py wrote that file itself, this crashed the process
    (a segmentation fault inside h5py), hence a subprocess: it cannot take the test session with it."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "training.train", "--corpus", str(corpus_slice), "--preset", "tiny",
                           "--run-dir", str(run_dir), "--backup-every", "0", "--epochs", "1", "--verbose", "0"],
                          cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), preexec_fn=limit_file_size,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: {run_dir / BEST_WEIGHTS}: could not be written: File too large (errno 27)" in done.stderr
    assert "Fix the cause, then run the same command again (there is no backup yet)" in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert not (run_dir / BEST_WEIGHTS).exists() and leftovers(run_dir) == []


def truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def flip_a_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_a_middle_byte])
def test_resume_from_a_damaged_backup_is_refused_and_changes_nothing(run_copy, capsys, damage):
    damage(run_copy / BACKUP)
    before = snapshot(run_copy)
    assert main(["--run-dir", str(run_copy), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"error: {run_copy / BACKUP}: is damaged or truncated and cannot be resumed from (" in err
    assert f"remove {run_copy / BACKUP} and start this one over without --resume" in err
    assert "Traceback" not in err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("name", [BEST_WEIGHTS, LAST_WEIGHTS])
@pytest.mark.parametrize("damage", [truncate, flip_a_byte_of_the_data])
def test_a_damaged_weights_file_is_refused_by_resume_and_export(run_copy, tmp_path, capsys, name, damage):
    damage(run_copy / name)
    before = snapshot(run_copy)
    assert main(["--run-dir", str(run_copy), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"error: {run_copy / name}: is damaged" in err and "Remove it to resume" in err
    assert "Traceback" not in err
    assert snapshot(run_copy) == before

    checkpoint, other = name.split(".")[0], "last" if name == BEST_WEIGHTS else "best"
    export_dir = tmp_path / "exported"
    assert export_main(["--run-dir", str(run_copy), "--export-dir", str(export_dir), "--checkpoint", checkpoint]) == 1
    err = capsys.readouterr().err
    assert f"error: {run_copy / name}: is damaged" in err and f"(--checkpoint {other})" in err
    assert "Traceback" not in err
    assert not (export_dir / "charlm").exists() or not any((export_dir / "charlm").iterdir())
    checkpoints.check_weights(run_copy / (other + ".weights.h5"))  # the other checkpoint is untouched and whole
    assert snapshot(run_copy) == before


def test_resume_with_another_config_names_config_json_and_every_differing_flag(run_copy, capsys):
    before = snapshot(run_copy)
    with pytest.raises(SystemExit) as exit_info:
        main(["--run-dir", str(run_copy), "--resume", "--hidden-size", "99", "--cell", "gru", "--seq-length", "64",
              "--epochs", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (f"--seq-length (and --cell, --hidden-size) cannot change on --resume: the run's {run_copy}/config.json "
            f"has --seq-length 32, --cell lstm, --hidden-size 32; the command line asks for --seq-length 64, --cell "
            f"gru, --hidden-size 99") in err
    assert "--epochs" not in err.split("error:")[1]  # may change on --resume
    assert snapshot(run_copy) == before


def test_resume_keeps_the_runs_config_whatever_the_preset(run_copy):
    """`make train` passes --preset (small unless PRESET says otherwise) on every run, resumed ones too: the run's
    config.json wins over it, and flags that may change do."""
    from training.config import build_parser
    from training.train import resolve_config

    config = resolve_config(build_parser().parse_args(["--run-dir", str(run_copy), "--resume", "--preset", "small",
                                                       "--epochs", "3"]))
    assert (config.hidden_size, config.batch_size, config.epochs, config.run_dir) == (32, 8, 3, str(run_copy))


def test_resume_on_another_corpus_is_refused_naming_corpus_json(run_copy, tmp_path, capsys):
    """The run's config.json names a corpus whose text is no longer the text the run was started on."""
    config = json.loads((run_copy / "config.json").read_text())
    changed = tmp_path / "changed.txt"
    changed.write_text(Path(config["corpus"]).read_text(encoding="utf-8").replace("the", "thy"), encoding="utf-8")
    (run_copy / "config.json").write_text(json.dumps(dict(config, corpus=str(changed))))
    before = snapshot(run_copy)
    assert main(["--run-dir", str(run_copy), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"error: {changed}: sha256 " in err and f"differs from {run_copy / 'corpus.json'}" in err
    assert "Traceback" not in err
    assert snapshot(run_copy) == before


def test_resume_with_another_runs_vocabulary_or_model_is_refused_naming_the_file(run_copy, capsys):
    vocab = json.loads((run_copy / "vocab.json").read_text(encoding="utf-8"))
    (run_copy / "vocab.json").write_text(json.dumps({"chars": vocab["chars"] + ["é"]}), encoding="utf-8")
    before = snapshot(run_copy)
    assert main(["--run-dir", str(run_copy), "--resume"]) == 1
    err = capsys.readouterr().err
    n = len(vocab["chars"])
    assert f"error: {run_copy / 'vocab.json'}: {n + 1} characters, not the {n} of " in err
    assert "Traceback" not in err and snapshot(run_copy) == before

    (run_copy / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(dict(config, hidden_size=48)))  # not the backup's model
    before = snapshot(run_copy)
    assert main(["--run-dir", str(run_copy), "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"error: {run_copy / BACKUP}: model variable lstm_0/lstm_cell/kernel has shape (16, 128) in " \
           f"the backup, (16, 192) in the model built from the run's config.json and vocab.json" in err
    assert "Traceback" not in err and snapshot(run_copy) == before


def test_an_unreadable_config_json_is_refused_naming_it(run_copy, capsys):
    (run_copy / "config.json").write_text('{"hidden_size": 32, "colour": "blue"}')
    with pytest.raises(SystemExit):
        main(["--run-dir", str(run_copy), "--resume"])
    err = capsys.readouterr().err
    assert f"{run_copy / 'config.json'} cannot be read as a training config" in err and "colour" in err
