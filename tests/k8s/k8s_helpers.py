"""What the modules of tests/k8s/ share: where the tools are, which kustomizations there are, running a tool, and
reading rendered documents (find a resource, its pod spec and containers, a mounted ConfigMap file, the gateway's
settings as it builds them). The session fixtures built on these are in conftest.py."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-k8s" / "bin"
# Schemas of the newest Kubernetes the pinned kubernetes-validate knows, and of an older supported release
# (the oldest whose API has every field used here is 1.30: lifecycle sleep actions).
KUBERNETES_VERSIONS = ("1.34.0", "1.37.0")

# What `make deploy` applies, and what the training instructions apply (docs/deploy.md).
OVERLAYS = {
    "dev": "k8s/overlays/dev",
    "prod": "k8s/overlays/prod",
    "dev-train": "k8s/overlays/dev/train",
    "prod-train": "k8s/overlays/prod/train",
    "prod-train-multiworker": "k8s/overlays/prod/train-multiworker",
    "prod-sweep": "k8s/overlays/prod/sweep",
    "prod-sweep-table": "k8s/overlays/prod/sweep-table",
}
# Rendered on their own too: schema-checked (no namespace yet, so not policy-checked).
BASES = {"base": "k8s/base", "training-single": "k8s/training/single",
         "training-multiworker": "k8s/training/multiworker", "sweep": "k8s/sweep", "sweep-table": "k8s/sweep/table"}
SERVING = {"dev": "dev-train", "prod": "prod-train"}  # serving overlay -> its training overlay

POD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "Pod"}
MIN_SKIP_REASON = 20  # characters; a checkov skip must say why

TO_JSON = ("import json, sys, yaml\n"
           "json.dump({p: [d for d in yaml.safe_load_all(open(p, encoding='utf-8')) if d] for p in sys.argv[1:]},"
           " sys.stdout)")


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make k8s-tools` (make test does) to install k8s/requirements-tools.txt")
    return path


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs)


def load_yaml(paths: list[Path]) -> dict[str, list[dict]]:
    """YAML files -> their documents (PyYAML lives in the tools environment, not in .venv)."""
    done = run([tool("python"), "-c", TO_JSON, *paths])
    assert done.returncode == 0, done.stderr
    return {Path(p).name: docs for p, docs in json.loads(done.stdout).items()}


# --- reading rendered documents -------------------------------------------------------------------------------------

def find(documents, kind: str, name: str | None = None) -> dict:
    matches = [d for d in documents if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(documents):
    for d in documents:
        if d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"], d["metadata"].get("labels", {})
        elif d["kind"] in POD_KINDS:
            template = d["spec"]["template"]
            yield d["metadata"]["name"], template["spec"], template["metadata"].get("labels", {})


def container(spec: dict, name: str) -> dict:
    return next(c for c in spec["containers"] if c["name"] == name)


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def port_of(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def flags(args: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def mounted_file(spec: dict, c: dict, path: str, documents) -> str:
    """The content a ConfigMap volume puts at `path` in container c."""
    for mount in c.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            name = volume["configMap"]["name"]
            data = next(d["data"] for d in documents if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
            return data[path[len(mount["mountPath"].rstrip("/")) + 1:]]
    raise AssertionError(f"nothing mounted at {path}")


def quantity_cores(value) -> float:
    value = str(value)
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def gateway_settings(deployment: dict, monkeypatch):
    """serving.settings.Settings as the gateway container builds it from its environment."""
    from serving.settings import Settings

    env = env_of(container(deployment["spec"]["template"]["spec"], "gateway"))
    for name in list(os.environ):
        if name.upper().startswith("CHARLM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CHARLM_") and value is not None:
            monkeypatch.setenv(name, value)
    return Settings()
