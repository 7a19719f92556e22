"""Scale-out through tf.distribute: two real worker processes on 127.0.0.1 stay in lockstep."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.launch import free_ports
from training.strategy import choose_strategy, tf_config_workers

ROOT = Path(__file__).resolve().parents[1]


def test_default_strategy_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_config_workers() == []
    assert choose_strategy("auto").num_replicas_in_sync == 1


@pytest.mark.slow
def test_two_workers_end_with_identical_weights(corpus_slice, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    run_dir = tmp_path / "run"
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "training.train", "--corpus", str(corpus_slice), "--preset", "tiny",
             "--dropout", "0.1", "--run-dir", str(run_dir), "--stop-after-steps", "12", "--verbose", "0"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    summaries = [json.loads(out.split("summary ", 1)[1].splitlines()[0]) for out in outputs]
    assert [s["global_step"] for s in summaries] == [12, 12]
    with np.load(run_dir / "backup.npz") as chief, np.load(run_dir / "worker-1" / "backup.npz") as other:
        weights = [k for k in chief.files if k.startswith(("weight_", "optimizer_"))]
        assert weights and set(weights) <= set(other.files)
        for key in weights:
            np.testing.assert_array_equal(chief[key], other[key], err_msg=key)
        # Each worker trains on its own rows but both gather the whole batch's carried state.
        assert chief["state_000"].shape == (8, 32)
        np.testing.assert_array_equal(chief["state_000"], other["state_000"])
        assert np.abs(chief["optimizer_001"]).sum() > 0  # Adam's moments moved: the steps really ran
