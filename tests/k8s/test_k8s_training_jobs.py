"""The training Jobs (single and multi-worker) and their entry point, k8s/training/common/train-and-export.sh, run
with a recording `python`: the TF_CONFIG of each completion index, resume from a backup, export on worker 0 only,
and the training and export CLIs take the flags the Jobs give them."""
from __future__ import annotations

import json
import subprocess
import sys

from k8s_helpers import ROOT, container, env_of, find, mounted_file, port_of, run, selects


def test_multiworker_job_wiring(docs):
    documents = docs["prod-train-multiworker"]
    job = find(documents, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    c = container(pod, "train")
    env = env_of(c)
    assert int(env["WORKERS"]) == spec["completions"] == spec["parallelism"] > 1
    service = find(documents, "Service", env["WORKER_SERVICE"])
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == env["WORKER_SERVICE"]
    assert selects({"matchLabels": service["spec"]["selector"]}, spec["template"]["metadata"]["labels"])
    assert service["spec"]["ports"][0]["port"] == port_of(c, "worker") == int(env["WORKER_PORT"])
    prefix = next(e for e in c["env"] if e["name"] == "WORKER_HOSTNAME_PREFIX")
    assert prefix["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/job-name']"
    script = (ROOT / "k8s/training/common/train-and-export.sh").read_text()
    for name in ("prod-train-multiworker", "prod-train", "dev-train"):
        job_spec = find(docs[name], "Job")["spec"]["template"]["spec"]
        t = container(job_spec, "train")
        assert t["command"][0] == "sh"
        assert mounted_file(job_spec, t, t["command"][1], docs[name]) == script
        from training.config import build_parser

        build_parser().parse_args(t["args"] + ["--run-dir", env_of(t)["RUN_DIR"]])  # the CLI takes them


def run_entrypoint(tmp_path, env: dict[str, str], args=("--preset", "small")) -> list[dict]:
    """train-and-export.sh with `python` replaced by a recorder: the commands it runs and their TF_CONFIG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.jsonl"
    recorder = bin_dir / "python"
    recorder.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        f"open({str(log)!r}, 'a').write(json.dumps({{'argv': sys.argv[1:], "
                        f"'tf_config': os.environ.get('TF_CONFIG')}}) + '\\n')\n")
    recorder.chmod(0o755)
    done = subprocess.run(["sh", str(ROOT / "k8s/training/common/train-and-export.sh"), *args],
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_entrypoint_builds_tf_config_from_the_completion_index(docs, tmp_path, monkeypatch):
    from training.strategy import tf_config_workers

    job = find(docs["prod-train-multiworker"], "Job")
    c = container(job["spec"]["template"]["spec"], "train")
    env = {k: v for k, v in env_of(c).items() if v is not None}
    env["WORKER_HOSTNAME_PREFIX"] = job["metadata"]["name"]  # what the downward API gives
    workers = int(env["WORKERS"])
    for index in range(workers):
        work = tmp_path / str(index)
        work.mkdir()
        calls = run_entrypoint(work, {**env, "JOB_COMPLETION_INDEX": str(index)}, c["args"])
        config = json.loads(calls[0]["tf_config"])
        hosts = [f"{job['metadata']['name']}-{i}.{env['WORKER_SERVICE']}:{env['WORKER_PORT']}" for i in range(workers)]
        assert config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        monkeypatch.setenv("TF_CONFIG", calls[0]["tf_config"])
        assert tf_config_workers() == hosts  # what training.strategy reads: several workers -> multi-worker
        assert calls[0]["argv"] == ["-m", "training.train", "--run-dir", env["RUN_DIR"], *c["args"]]
        exports = [call["argv"] for call in calls[1:]]
        assert exports == ([["-m", "training.export", "--run-dir", env["RUN_DIR"], "--export-dir", env["EXPORT_DIR"],
                             "--model-name", env["MODEL_NAME"], "--if-changed"]] if index == 0 else [])


def test_entrypoint_resumes_a_run_with_a_backup_and_needs_no_tf_config_alone(tmp_path):
    env = {"RUN_DIR": "runs/charlm", "EXPORT_DIR": "/models", "MODEL_NAME": "charlm"}
    calls = run_entrypoint(tmp_path, env)
    assert calls[0] == {"argv": ["-m", "training.train", "--run-dir", "runs/charlm", "--preset", "small"],
                        "tf_config": None}
    (tmp_path / "runs/charlm").mkdir(parents=True)
    (tmp_path / "runs/charlm/backup.npz").write_bytes(b"")
    (tmp_path / "calls.jsonl").unlink()
    calls = run_entrypoint(tmp_path, env)
    assert calls[0]["argv"] == ["-m", "training.train", "--run-dir", "runs/charlm", "--resume", "--preset", "small"]
    assert calls[1]["argv"][:2] == ["-m", "training.export"]


def test_export_takes_the_entrypoints_flags():
    done = run([sys.executable, "-m", "training.export", "--help"])
    assert done.returncode == 0, done.stderr
    for flag in ("--run-dir", "--export-dir", "--model-name", "--if-changed"):
        assert flag in done.stdout
