"""The Kubernetes manifests (k8s/), checked without a cluster.

Every kustomization is rendered with a real kubectl's built-in kustomize (`kubectl kustomize`, what
`kubectl apply -k` runs), then checked by schema (`kubernetes-validate --strict`), by policy (`checkov`, over
the rendered manifests and the Dockerfiles) and against the Pod Security Standard "restricted"; and the values
the manifests give the gateway and TF Serving are compared with what the code reads: serving/settings.py,
serving/gunicorn.conf.py (loaded by gunicorn itself), the Flask routes, the training CLI, TF Serving's own config
protos. The two scripts the manifests run (TF Serving's readiness probe, the training entry point) are run here too.

One module per concern:

- test_k8s_rendering.py: what each kustomization renders, strict schema validation, what `make undeploy` keeps;
- test_k8s_policy.py: checkov, the restricted standard, pinned images;
- test_k8s_tfserving_config.py: TF Serving's model, batching and monitoring config files, parsed as its protos;
- test_k8s_gateway.py: the gateway's settings, its headless gRPC Service to every TF Serving pod, ports, probes
  and graceful shutdown, network policy, HPA/PDB/Ingress;
- test_k8s_training_jobs.py: the single and multi-worker training Jobs and their entry point;
- test_sweep_jobs.py: the sweep's Indexed Job (one pod per configuration of training.sweep's grid) and its table Job;
- test_k8s_readiness_probe.py: TF Serving's probes, the readiness script against a REST model-status stand-in.

Here: the session fixtures (render once, validate once, run checkov once) and the broken inputs they are fed;
k8s_helpers.py has the helpers, k8s_tfserving_protos.py TF Serving's config messages.

The tools live in .venv-k8s (`make k8s-tools`, which `make test` runs); without them these tests fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from k8s_helpers import BASES, KUBERNETES_VERSIONS, OVERLAYS, ROOT, load_yaml, run, tool

# --- deliberately broken inputs: the checks must reject them ---------------------------------------------------------

UNKNOWN_FIELD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: broken
  namespace: charlm
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: c
          image: example/c:1.0
          imagePullPolice: Always
"""

PRIVILEGED_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: privileged
  namespace: charlm
spec:
  containers:
    - name: c
      image: example/c:latest
      securityContext:
        privileged: true
        runAsUser: 0
"""

BAD_DOCKERFILE = """\
FROM python:latest
RUN pip install flask
CMD ["python", "-m", "flask", "run"]
"""


# --- session fixtures: render once, validate once, run checkov once -----------------------------------------------

@pytest.fixture(scope="session")
def rendered_dir(tmp_path_factory) -> Path:
    kubectl = tool("kubectl")
    out = tmp_path_factory.mktemp("k8s") / "scan"
    (out / "rendered").mkdir(parents=True)
    (out / "bases").mkdir()
    for group, names in (("rendered", OVERLAYS), ("bases", BASES)):
        for name, directory in names.items():
            done = run([kubectl, "kustomize", directory])
            assert done.returncode == 0, f"kubectl kustomize {directory}:\n{done.stderr}"
            assert "kind:" in done.stdout, f"{directory} rendered nothing"
            (out / group / f"{name}.yaml").write_text(done.stdout)
    (out / "negative").mkdir()
    (out / "negative" / "unknown-field.yaml").write_text(UNKNOWN_FIELD)
    (out / "negative" / "privileged-pod.yaml").write_text(PRIVILEGED_POD)
    (out / "negative" / "bad.Dockerfile").write_text(BAD_DOCKERFILE)
    (out / "docker").mkdir()
    for dockerfile in (ROOT / "docker").glob("*.Dockerfile"):
        shutil.copy(dockerfile, out / "docker" / dockerfile.name)
    return out


@pytest.fixture(scope="session")
def docs(rendered_dir) -> dict[str, list[dict]]:
    """Rendered documents by kustomization name (OVERLAYS and BASES), plus the negative examples by file name."""
    files = sorted((rendered_dir / "rendered").glob("*.yaml")) + sorted((rendered_dir / "bases").glob("*.yaml"))
    files += sorted((rendered_dir / "negative").glob("*.yaml"))
    loaded = load_yaml(files)
    return {name.removesuffix(".yaml") if name.removesuffix(".yaml") in {**OVERLAYS, **BASES} else name: d
            for name, d in loaded.items()}


@pytest.fixture(scope="session")
def validation(rendered_dir) -> dict[str, dict[str, dict[str, list[str]]]]:
    """kubernetes-validate --strict over every rendered file and the negative ones, for each version:
    {version: {file name: {"passed": [resource, ...], "errors": [message, ...]}}}."""
    validate = tool("kubernetes-validate")
    files = sorted(rendered_dir.glob("*/*.yaml"))
    results = {}
    for version in KUBERNETES_VERSIONS:
        done = run([validate, "--strict", "-k", version, *files])
        per_file = {f.name: {"passed": [], "errors": []} for f in files}
        for line in (done.stdout + done.stderr).splitlines():
            passed = re.match(r"INFO (\S+) passed for resource (\S+) against version", line)
            failed = re.match(r"ERROR (\S+) did not validate for resource (\S+) against version [\d.]+: (.*)", line)
            if passed:
                per_file[Path(passed[1]).name]["passed"].append(passed[2])
            elif failed:
                per_file[Path(failed[1]).name]["errors"].append(f"{failed[2]}: {failed[3]}")
            elif line.startswith(("ERROR", "WARN")):
                pytest.fail(f"kubernetes-validate: {line}")
        results[version] = per_file
    return results


@pytest.fixture(scope="session")
def checkov_results(rendered_dir) -> dict[str, dict]:
    """One checkov run over the rendered overlays, the Dockerfiles and the negative examples:
    {"failed"|"passed"|"skipped": [check, ...]} with each check's file name."""
    checkov = tool("checkov")
    scan = rendered_dir.parent / "checkov"
    for sub in ("rendered", "docker", "negative"):  # not the bases: they have no namespace yet
        shutil.copytree(rendered_dir / sub, scan / sub, dirs_exist_ok=True)
    done = run([checkov, "-d", scan, "--framework", "kubernetes", "dockerfile", "--skip-download",
                "--output", "json"], env={**os.environ, "LOG_LEVEL": "WARNING"})
    assert done.returncode in (0, 1), f"checkov did not run:\n{done.stderr[-3000:]}"
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, done.stdout[:2000]
    results = {"failed": [], "passed": [], "skipped": []}
    for report in reports:
        assert not report["results"]["parsing_errors"], report["results"]["parsing_errors"]
        for kind in results:
            for check in report["results"][f"{kind}_checks"]:
                check["file"] = "/".join(Path(check["file_path"]).parts[-2:])
                results[kind].append(check)
    return results
