"""The sweep (training/sweep.py): grid sizes, parameter matching against Keras' own count, resume after a kill,
failures listed, the table from run directories, clear messages for bad flags. Training is a stand-in
(a script that answers as training.train does) except for one real tiny run."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from training import sweep
from training.config import CELLS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]

# Answers as `python -m training.train` does: a summary line, a backup, exit statuses. PLAN (a JSON file) says
# which configurations fail (exit status, last stderr line) or wait to be killed.
FAKE_TRAIN = textwrap.dedent("""\
    import json, os, signal, sys, time
    from pathlib import Path
    argv = sys.argv[1:]
    flag = lambda name: argv[argv.index(name) + 1]
    run_dir = Path(flag("--run-dir"))
    name = f"{flag('--cell')}-{flag('--num-layers')}x{flag('--hidden-size')}"
    plan = json.loads(Path(os.environ["FAKE_TRAIN_PLAN"]).read_text())
    with open(plan["calls"], "a") as log:
        log.write(json.dumps({"name": name, "argv": argv}) + "\\n")
    print("Epoch 1/1 ...", flush=True)
    (run_dir / "backup.npz").write_bytes(b"backup")
    if name in plan.get("fail", {}):
        status, message = plan["fail"][name]
        print("Traceback ...\\n  something\\n" + message, file=sys.stderr)
        sys.exit(status)
    if name == plan.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
    if name == plan.get("hang"):
        def on_term(signum, frame):
            Path(plan["calls"]).with_name("sigterm-" + name).write_text("")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
        Path(plan["calls"]).with_name("hanging-" + name).write_text("")
        time.sleep(120)  # never that long: the test kills the sweep, and its training is told
    loss = {"lstm": 1.5, "gru": 1.6, "rnn": 1.9}[flag("--cell")]
    print("summary " + json.dumps({"run_dir": str(run_dir), "global_step": 210, "epoch": 1, "session_steps": 210,
                                   "seconds": 1.0, "best_val_loss": loss, "best_val_bpc": loss / 0.6931471805599453,
                                   "stopped": False, "stopped_early": False}), flush=True)
""")


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Point the sweep at the stand-in; returns (plan writer, calls reader)."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    plan_path = tmp_path / "plan.json"
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setattr(sweep, "TRAIN_COMMAND", [sys.executable, str(script)])
    monkeypatch.setenv("FAKE_TRAIN_PLAN", str(plan_path))

    def plan(**kwargs):
        plan_path.write_text(json.dumps({"calls": str(calls), **kwargs}))
        calls.unlink(missing_ok=True)

    def called():
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    plan()
    return plan, called


def tiny_names(corpus) -> list[str]:
    return [c["name"] for c in sweep.sweep_facts("tiny", str(corpus), None)["configurations"]]


# --- the grid and its sizes ----------------------------------------------------------------------------------------

def test_grid_sizes():
    assert len(sweep.GRIDS["paper"]) == 36 and len(sweep.GRIDS["small"]) == 12 and len(sweep.GRIDS["tiny"]) == 3
    paper = sweep.configurations(sweep.GRIDS["paper"], vocab_size=65, embedding_size=64)
    assert [c.index for c in paper] == list(range(36))
    assert {(c.cell, c.num_layers, c.lstm_size) for c in paper} == {
        (cell, n, size) for cell in CELLS for n in (1, 2, 3) for size in (64, 128, 256, 512)}
    assert len({c.name for c in paper}) == 36
    assert all(c.hidden_size == c.lstm_size for c in paper if c.cell == "lstm")


def test_parameter_count_is_keras_count_params():
    from training.model import CharRNN

    for cell in CELLS:
        for num_layers, hidden in ((1, 24), (2, 17), (3, 9)):
            config = TrainConfig(cell=cell, num_layers=num_layers, hidden_size=hidden, embedding_size=12)
            keras_count = CharRNN(41, config).count_params()
            assert sweep.parameter_count(cell, num_layers, hidden, 41, 12) == keras_count, (cell, num_layers, hidden)


def test_gru_and_rnn_sizes_are_the_nearest_match_to_the_lstm():
    vocab, embedding = 65, 64

    def count(c, hidden):
        return sweep.parameter_count(c.cell, c.num_layers, hidden, vocab, embedding)

    paper = sweep.configurations(sweep.GRIDS["paper"], vocab, embedding)
    lstm = {(c.num_layers, c.lstm_size): c.parameters for c in paper if c.cell == "lstm"}
    for c in paper:
        target = lstm[(c.num_layers, c.lstm_size)]
        assert c.parameters == count(c, c.hidden_size)
        for other in (c.hidden_size - 1, c.hidden_size + 1):  # no neighbouring size comes closer
            assert abs(count(c, c.hidden_size) - target) <= abs(count(c, other) - target), c
        assert abs(c.parameters - target) / target < 0.02, c
    sizes = {c.name: c.hidden_size for c in paper if c.lstm_size == 512 and c.num_layers == 1}
    assert sizes["lstm-1x512"] < sizes["gru-1x594"] < sizes["rnn-1x1039"]  # fewer gates, more units


def test_machine_reads_bf16_units_from_proc_cpuinfo():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.partition(":")[2].split())
    info = sweep.machine()
    assert info["bf16"] == sorted(flags & {"avx512_bf16", "amx_bf16"})
    assert info["cpu"] != "unknown" and info["cores"] >= 1


# --- running, resuming, failing ---------------------------------------------------------------------------------

def test_resume_skips_done_configurations_and_resumes_the_killed_one(corpus_slice, fake_train, tmp_path):
    plan, called = fake_train
    lstm, gru, rnn = tiny_names(corpus_slice)
    sweep_dir = tmp_path / "sweep"
    plan(hang=gru)
    runner = ("import sys, training.sweep as s; s.TRAIN_COMMAND = [sys.executable, sys.argv[1]]; "
              "sys.exit(s.main(sys.argv[2:]))")
    args = ["run", "--grid", "tiny", "--corpus", str(corpus_slice), "--sweep-dir", str(sweep_dir)]
    process = subprocess.Popen([sys.executable, "-c", runner, str(tmp_path / "fake_train.py"), *args], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / f"hanging-{gru}").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    process.kill()  # SIGKILL: the sweep gets no say
    process.communicate()
    while not (tmp_path / f"sigterm-{gru}").exists():  # its training was told, and stopped
        assert time.monotonic() < deadline, "the orphaned training was not sent SIGTERM"
        time.sleep(0.1)
    assert (sweep_dir / lstm / "result.json").exists() and not (sweep_dir / gru / "result.json").exists()

    plan()
    assert sweep.main(args) == 0
    calls = called()
    assert [c["name"] for c in calls] == [gru, rnn]  # lstm was done: skipped
    assert "--resume" in calls[0]["argv"] and "--resume" not in calls[1]["argv"]
    sessions = json.loads((sweep_dir / gru / "sessions.json").read_text())
    assert len(sessions) == 2 and sessions[0]["interrupted"] and sessions[1]["exit_status"] == 0
    rows = json.loads((sweep_dir / "table.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert rows[1]["sessions"] == 2 and rows[1]["wall_seconds"] == pytest.approx(
        sum(s["seconds"] for s in sessions), abs=0.11)

    assert sweep.main(args) == 0 and called() == calls  # everything done: nothing runs again


def test_failed_configurations_are_listed_and_the_sweep_exits_non_zero(corpus_slice, fake_train, tmp_path, capsys):
    plan, called = fake_train
    lstm, gru, rnn = tiny_names(corpus_slice)
    sweep_dir = tmp_path / "sweep"
    args = ["run", "--grid", "tiny", "--corpus", str(corpus_slice), "--sweep-dir", str(sweep_dir)]
    plan(fail={lstm: [1, "python -m training.train: error: the training loss exploded to 9.1"]}, die=gru)
    assert sweep.main(args) == 1
    assert [c["name"] for c in called()] == [lstm, gru, rnn]  # the failures did not stop the others
    err = capsys.readouterr().err
    assert f"failed: {lstm} (exit status 1): python -m training.train: error: the training loss exploded" in err
    assert f"failed: {gru} (exit status -9): killed by SIGKILL" in err
    rows = {r["name"]: r for r in json.loads((sweep_dir / "table.json").read_text())["rows"]}
    assert (rows[lstm]["status"], rows[lstm]["exit_status"]) == ("failed", 1)
    assert (rows[gru]["status"], rows[gru]["exit_status"]) == ("failed", -9)
    assert rows[rnn]["status"] == "done"
    table = (sweep_dir / "table.md").read_text()
    assert f"| {lstm} | lstm |" in table and "| failed |" in table and "| 1 | python -m training.train: error: " \
        "the training loss exploded to 9.1 |" in table
    assert "| -9 | killed by SIGKILL |" in table

    # run-one exits as its training did (a death by signal as a shell says it: 128 + 9), so the Job's
    # podFailurePolicy can tell them apart; a later run retries the failures and skips the rest
    one = ["run-one", "--grid", "tiny", "--corpus", str(corpus_slice), "--sweep-dir", str(sweep_dir), "--index"]
    assert sweep.main([*one, "0"]) == 1 and sweep.main([*one, "1"]) == 137
    plan()
    assert sweep.main(args) == 0 and [c["name"] for c in called()] == [lstm, gru]
    assert all("--resume" in c["argv"] for c in called())  # they had left a backup


def test_table_from_run_directories(tmp_path):
    facts = {"grid": "tiny", "train_args": ["--preset", "tiny", "--epochs", "1"], "epochs": 1, "corpus": "c.txt",
             "corpus_sha256": "ab" * 32, "vocab_size": 65, "embedding_size": 16, "val_fraction": 0.1,
             "configurations": [{"name": c.name, **c.__dict__}
                                for c in sweep.configurations(sweep.GRIDS["tiny"], 65, 16)]}
    sweep_dir = tmp_path / "sweep"
    sweep.write_json_atomic(sweep_dir / "sweep.json", facts)
    lstm, gru, rnn = facts["configurations"]
    sweep.write_json_atomic(sweep_dir / lstm["name"] / "result.json", {
        **lstm, "status": "done", "val_loss": 1.5, "val_bpc": 1.5 / math.log(2), "epochs": 1, "steps": 210,
        "wall_seconds": 12.3, "sessions": 1, "machines": ["AMD EPYC, 2 cores, bf16: avx512_bf16"]})
    (sweep_dir / gru["name"]).mkdir()
    (sweep_dir / gru["name"] / "backup.npz").write_bytes(b"")
    assert sweep.main(["table", "--sweep-dir", str(sweep_dir)]) == 1  # not every configuration is done

    table = (sweep_dir / "table.md").read_text()
    assert "| LSTM | 1.5000 (2.1640) |" in table and "| GRU | unfinished |" in table and "| RNN | not run |" in table
    assert f"| {lstm['name']} | lstm | 1 | 32 | {lstm['parameters']:,} | done | 1.5000 | 2.1640 | 1 | 210 | 12 | " \
           f"AMD EPYC, 2 cores, bf16: avx512_bf16 |" in table
    assert "War and Peace 1.077 nats/char (1.554 bits)" in table and "Linux kernel 0.84 nats/char (1.212 bits)" in table
    saved = json.loads((sweep_dir / "table.json").read_text())
    assert [r["status"] for r in saved["rows"]] == ["done", "unfinished", "not run"]
    assert saved["paper_best_test_nats"] == {"War and Peace": 1.077, "Linux kernel": 0.84}
    assert (sweep_dir / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(sweep_dir.glob(".*"))  # no temporary file left


# --- bad input --------------------------------------------------------------------------------------------------

def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stopped:
        sweep.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_unknown_grid_names_the_flag(capsys, tmp_path):
    err = cli_error(capsys, ["run", "--grid", "huge", "--sweep-dir", str(tmp_path)])
    assert "--grid" in err and "'huge'" in err and "paper" in err


def test_bad_index_names_the_flag(capsys, corpus_slice, tmp_path):
    common = ["--grid", "tiny", "--corpus", str(corpus_slice), "--sweep-dir", str(tmp_path / "s")]
    for index in ("3", "-1"):
        err = cli_error(capsys, ["run-one", "--index", index, *common])
        assert f"--index {index} is out of range: grid tiny has 3 configurations, 0 to 2" in err
    assert "--index" in cli_error(capsys, ["run-one", "--index", "$(JOB_COMPLETION_INDEX)", *common])
    assert not (tmp_path / "s").exists()


def test_another_sweep_in_the_same_directory_is_refused(capsys, corpus_slice, fake_train, tmp_path):
    args = ["--corpus", str(corpus_slice), "--sweep-dir", str(tmp_path / "s")]
    assert sweep.main(["run-one", "--grid", "tiny", "--index", "0", *args]) == 0
    assert "--epochs differs from the sweep already in" in cli_error(
        capsys, ["run-one", "--grid", "tiny", "--index", "0", "--epochs", "2", *args])
    assert "--grid differs" in cli_error(capsys, ["run-one", "--grid", "small", "--index", "0", *args])
    assert "--sweep-dir" in cli_error(capsys, ["table", "--sweep-dir", str(tmp_path / "none")])


# --- one real training ------------------------------------------------------------------------------------------

def test_run_one_trains_the_configuration_for_real(corpus_slice, tmp_path):
    """The real `python -m training.train`, tiny preset, one epoch on the slice: the row is what training said."""
    sweep_dir = tmp_path / "sweep"
    args = ["run-one", "--grid", "tiny", "--index", "0", "--corpus", str(corpus_slice), "--sweep-dir", str(sweep_dir)]
    assert sweep.main(args) == 0
    name = tiny_names(corpus_slice)[0]
    result = json.loads((sweep_dir / name / "result.json").read_text())
    history = (sweep_dir / name / "history.csv").read_text().splitlines()
    assert result["status"] == "done" and result["epochs"] == 1 and len(history) == 2
    vocab = json.loads((sweep_dir / name / "vocab.json").read_text())["chars"]
    assert result["val_loss"] < 0.8 * math.log(len(vocab))  # it learned
    assert math.isclose(result["val_bpc"], result["val_loss"] / math.log(2))
    config = json.loads((sweep_dir / name / "config.json").read_text())
    assert (config["cell"], config["num_layers"], config["hidden_size"]) == ("lstm", 1, 32)
    assert result["steps"] > 0 and result["wall_seconds"] > 0 and result["machines"]

    assert sweep.main(args) == 0  # done: skipped, no second session
    assert len(json.loads((sweep_dir / name / "sessions.json").read_text())) == 1
    assert sweep.main(["table", "--sweep-dir", str(sweep_dir)]) == 1  # the other two have not run
