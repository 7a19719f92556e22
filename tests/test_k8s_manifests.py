"""The Kubernetes manifests (k8s/), checked without a cluster.

Every kustomization is rendered with a real kubectl's built-in kustomize (`kubectl kustomize`, what
`kubectl apply -k` runs), then checked by schema (`kubernetes-validate --strict`), by policy (`checkov`, over
the rendered manifests and the Dockerfiles) and against the Pod Security Standard "restricted"; and the values
the manifests give the gateway and TF Serving are compared with what the code reads: serving/settings.py,
serving/gunicorn.conf.py (loaded by gunicorn itself), the Flask routes, the training CLI. The two scripts the
manifests run (TF Serving's readiness probe, the training entry point) are run here too.

The tools live in .venv-k8s (`make k8s-tools`, which `make test` runs); without them these tests fail.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
}
# Rendered on their own too: schema-checked (no namespace yet, so not policy-checked).
BASES = {"base": "k8s/base", "training-single": "k8s/training/single",
         "training-multiworker": "k8s/training/multiworker"}
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


# --- deliberately broken inputs: the checks below must reject them -------------------------------------------------

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


# --- helpers over rendered documents ------------------------------------------------------------------------------

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


def configmap_data(documents, name: str) -> dict[str, str]:
    """A ConfigMap's data by its name before kustomize's hash suffix."""
    matches = [d for d in documents if d["kind"] == "ConfigMap"
               and re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
    assert len(matches) == 1, f"ConfigMap {name}: {len(matches)} found"
    return matches[0]["data"]


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


def text_proto_values(text: str, field: str) -> list[str]:
    """Values of `field: value` in a TF Serving text proto (comments removed)."""
    text = re.sub(r"#.*", "", text)
    return [m.strip('"') for m in re.findall(rf"\b{field}\s*(?::\s*)?\{{?\s*(?:value\s*:\s*)?(\"[^\"]*\"|[\w.]+)",
                                             text)]


def version_labels(text: str) -> dict[str, int]:
    text = re.sub(r"#.*", "", text)
    return {k: int(v) for k, v in re.findall(r'version_labels\s*\{\s*key:\s*"([^"]+)"\s*value:\s*(\d+)\s*\}', text)}


def restricted_violations(spec: dict) -> list[str]:
    """What keeps a pod spec from the Pod Security Standard "restricted" (plus this project's own rules: read-only
    root filesystem, requests and limits, pinned image tags)."""
    problems = []
    pod = spec.get("securityContext", {})
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret", "name"}
    for volume in spec.get("volumes", []):
        if set(volume) - allowed_volumes:
            problems.append(f"volume {volume['name']}: {sorted(set(volume) - allowed_volumes)}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    if pod.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile is not RuntimeDefault")
    if pod.get("runAsUser") == 0:
        problems.append("pod runs as UID 0")
    writable = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v}
    for c in spec.get("initContainers", []) + spec["containers"]:
        sc, where = c.get("securityContext", {}), f"container {c['name']}"
        if not (sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True):
            problems.append(f"{where}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod.get("runAsUser")) in (0, None):
            problems.append(f"{where}: no non-zero runAsUser")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            problems.append(f"{where}: capabilities are not exactly drop [ALL]")
        if sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile is not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        for mount in c.get("volumeMounts", []):
            if not mount.get("readOnly") and mount["name"] not in writable:
                problems.append(f"{where}: {mount['mountPath']} is writable but not an emptyDir or volume claim")
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in c.get("resources", {}).get(kind, {}):
                    problems.append(f"{where}: no {resource} {kind}")
        image = c.get("image", "")
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if "@sha256:" not in image and (not tag or tag == "latest"):
            problems.append(f"{where}: image {image!r} is not pinned")
    return problems


# --- rendering, schema, policy --------------------------------------------------------------------------------------

def test_every_kustomization_renders_what_it_should(docs):
    prod = {(d["kind"], d["metadata"]["name"]) for d in docs["prod"]}
    for expected in [("Namespace", "charlm"), ("Deployment", "charlm-tfserving"), ("Deployment", "charlm-gateway"),
                     ("Service", "charlm-tfserving"), ("Service", "charlm-gateway"),
                     ("HorizontalPodAutoscaler", "charlm-gateway"), ("PodDisruptionBudget", "charlm-gateway"),
                     ("PodDisruptionBudget", "charlm-tfserving"), ("NetworkPolicy", "charlm-tfserving"),
                     ("Ingress", "charlm-gateway"), ("PersistentVolumeClaim", "charlm-models"),
                     ("PersistentVolumeClaim", "charlm-runs"), ("ConfigMap", "charlm-tfserving-models")]:
        assert expected in prod
    assert not any(d["kind"] == "Ingress" for d in docs["dev"])  # the Ingress is prod's optional component
    assert {d["kind"] for d in docs["prod-train-multiworker"]} >= {"Job", "Service", "NetworkPolicy", "ConfigMap"}
    for name in OVERLAYS:
        namespaces = {d["metadata"].get("namespace") for d in docs[name] if d["kind"] != "Namespace"}
        assert namespaces == {"charlm-dev" if name.startswith("dev") else "charlm"}, name


def test_rendered_manifests_pass_strict_schema_validation(validation, docs):
    for version, per_file in validation.items():
        for name in [*OVERLAYS, *BASES]:
            result = per_file[f"{name}.yaml"]
            assert result["errors"] == [], f"{name} against Kubernetes {version}"
            assert len(result["passed"]) == len(docs[name]), f"{name}: not every resource was validated"


def test_schema_validation_rejects_an_unknown_field(validation):
    for per_file in validation.values():
        errors = per_file["unknown-field.yaml"]["errors"]
        assert errors and "imagePullPolice" in errors[0]
        assert per_file["privileged-pod.yaml"]["errors"] == []  # schema-valid: policy is a separate check


def test_checkov_finds_no_failed_check(checkov_results):
    ours = [c for c in checkov_results["failed"] if not c["file"].startswith("negative/")]
    assert ours == [], "\n".join(f"{c['check_id']} {c['check_name']}: {c['file']} {c['resource']}" for c in ours)
    checked = {c["file"] for c in checkov_results["passed"]}
    assert {f"rendered/{name}.yaml" for name in OVERLAYS} <= checked
    assert {f"docker/{p.name}" for p in (ROOT / "docker").glob("*.Dockerfile")} <= checked
    ids = {c["check_id"] for c in checkov_results["passed"]}
    # The checks that carry the restricted standard ran (and passed).
    assert {"CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_38",
            "CKV_K8S_40", "CKV2_K8S_6", "CKV_DOCKER_2", "CKV_DOCKER_3"} <= ids


def test_checkov_rejects_the_broken_examples(checkov_results):
    failed = {(c["file"], c["check_id"]) for c in checkov_results["failed"]}
    assert {("negative/privileged-pod.yaml", "CKV_K8S_16"), ("negative/privileged-pod.yaml", "CKV_K8S_20"),
            ("negative/privileged-pod.yaml", "CKV_K8S_14")} <= failed
    assert {("negative/bad.Dockerfile", "CKV_DOCKER_3"), ("negative/bad.Dockerfile", "CKV_DOCKER_7")} <= failed


def test_every_skipped_check_says_why(checkov_results, docs):
    assert checkov_results["skipped"], "expected the documented skips (image digests, API keys in env)"
    for check in checkov_results["skipped"]:
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) >= MIN_SKIP_REASON, f"{check['check_id']} on {check['resource']}: no reason"
    for name in OVERLAYS:
        for d in docs[name]:
            for key, value in d["metadata"].get("annotations", {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check) and len(reason) >= MIN_SKIP_REASON, value


def test_every_pod_meets_the_restricted_standard(docs):
    pods = 0
    for name in OVERLAYS:
        for workload, spec, _ in pod_specs(docs[name]):
            assert restricted_violations(spec) == [], f"{name}: {workload}"
            assert spec.get("automountServiceAccountToken") is False, f"{name}: {workload}"
            pods += 1
    assert pods >= 7
    assert len(restricted_violations(find(docs["privileged-pod.yaml"], "Pod")["spec"])) >= 5
    for name in ("dev", "prod"):
        labels = find(docs[name], "Namespace")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_images_are_pinned_to_the_versions_the_code_uses(docs):
    tensorflow = re.search(r"^tensorflow==([\d.]+)", (ROOT / "requirements.txt").read_text(), re.M)[1]
    makefile = (ROOT / "Makefile").read_text()
    registry = re.search(r"^IMAGE_REGISTRY\s*\?=\s*(\S+)", makefile, re.M)[1]
    tag = re.search(r"^IMAGE_TAG\s*\?=\s*(\S+)", makefile, re.M)[1]
    for name in OVERLAYS:
        for workload, spec, _ in pod_specs(docs[name]):
            for c in spec["containers"]:
                if c["name"] == "tfserving":
                    assert c["image"] == f"tensorflow/serving:{tensorflow}"
                else:  # what `make images` builds and tags
                    assert c["image"] == f"{registry}/{'gateway' if c['name'] == 'gateway' else 'train'}:{tag}"


# --- the manifests agree with the code ------------------------------------------------------------------------------

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


def gunicorn_config(env: dict[str, str], tmp_path) -> dict:
    """serving/gunicorn.conf.py as gunicorn itself loads it in a process with the container's environment."""
    script = ("import json, sys\n"
              "from gunicorn.app.wsgiapp import WSGIApplication\n"
              "sys.argv = ['gunicorn', '-c', 'serving/gunicorn.conf.py', 'serving.app:create_app()']\n"
              "cfg = WSGIApplication().cfg\n"
              "print(json.dumps({k: getattr(cfg, k) for k in ('bind', 'graceful_timeout', 'timeout', 'workers',"
              " 'threads', 'worker_class_str')}))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CHARLM_", "GUNICORN_", "PORT", "WEB_"))}
    done = run([sys.executable, "-c", script],
               env={**clean, **env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateway_environment_names_settings_the_code_reads(overlay, docs, monkeypatch):
    from serving.settings import Settings

    gateway = find(docs[overlay], "Deployment", "charlm-gateway")
    env = env_of(container(gateway["spec"]["template"]["spec"], "gateway"))
    fields = set(Settings.model_fields)
    unknown = [n for n in env if n.startswith("CHARLM_") and n[len("CHARLM_"):].lower() not in fields]
    assert unknown == [], f"not fields of serving/settings.py: {unknown}"
    assert set(env) - {n for n in env if n.startswith("CHARLM_")} <= {"PORT", "WEB_CONCURRENCY", "HOME"}
    settings = gateway_settings(gateway, monkeypatch)  # every value parses, as at start-up
    assert settings.backend == "tfserving"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateway_reaches_tf_serving_at_its_grpc_service(overlay, docs, monkeypatch):
    documents = docs[overlay]
    settings = gateway_settings(find(documents, "Deployment", "charlm-gateway"), monkeypatch)
    host, _, port = settings.tfserving_address.rpartition(":")
    service = find(documents, "Service", host)
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == int(port)
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "rest"}
    tfserving = find(documents, "Deployment", "charlm-tfserving")
    spec = tfserving["spec"]["template"]["spec"]
    assert selects({"matchLabels": service["spec"]["selector"]}, tfserving["spec"]["template"]["metadata"]["labels"])
    c = container(spec, "tfserving")
    args = flags(c["args"])
    assert grpc["targetPort"] == "grpc" and port_of(c, "grpc") == int(args["port"])
    rest = next(p for p in service["spec"]["ports"] if p["name"] == "rest")
    assert rest["targetPort"] == "rest" and port_of(c, "rest") == int(args["rest_api_port"])


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_model_name_and_labels_agree(overlay, docs, monkeypatch):
    documents = docs[overlay]
    settings = gateway_settings(find(documents, "Deployment", "charlm-gateway"), monkeypatch)
    tfserving = find(documents, "Deployment", "charlm-tfserving")
    spec = tfserving["spec"]["template"]["spec"]
    c = container(spec, "tfserving")
    model_config = mounted_file(spec, c, flags(c["args"])["model_config_file"], documents)
    assert text_proto_values(model_config, "name") == [settings.served_name]
    labels = version_labels(model_config)
    assert "stable" in labels
    if settings.tfserving_version_label:
        assert settings.tfserving_version_label in labels
    policy = re.sub(r"#.*", "", model_config)
    assert re.search(r"model_version_policy\s*\{\s*latest\s*\{\s*num_versions:\s*2\s*\}", policy)
    assert flags(c["args"])["allow_version_labels_for_unavailable_models"] == "true"
    # The readiness probe asks about this model on the REST port.
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[-2:] == [flags(c["args"])["rest_api_port"], settings.served_name]
    # The model lives on the models volume, where the training Job exports it.
    base_path = text_proto_values(model_config, "base_path")[0]
    models_mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert models_mount["readOnly"] and base_path == f"{models_mount['mountPath']}/{settings.served_name}"
    claim = next(v for v in spec["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    for train in [SERVING[overlay]] + (["prod-train-multiworker"] if overlay == "prod" else []):
        job = find(docs[train], "Job")
        job_spec = job["spec"]["template"]["spec"]
        t = container(job_spec, "train")
        env = env_of(t)
        assert env["MODEL_NAME"] == settings.served_name
        mount = next(m["mountPath"] for m in t["volumeMounts"]
                     if next(v for v in job_spec["volumes"] if v["name"] == m["name"])
                     .get("persistentVolumeClaim", {}).get("claimName") == claim)
        assert env["EXPORT_DIR"] == mount, "training exports onto the volume TF Serving reads"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_tf_serving_batching_and_threads_fit_its_cpu(overlay, docs, monkeypatch):
    documents = docs[overlay]
    settings = gateway_settings(find(documents, "Deployment", "charlm-gateway"), monkeypatch)
    spec = find(documents, "Deployment", "charlm-tfserving")["spec"]["template"]["spec"]
    c = container(spec, "tfserving")
    args = flags(c["args"])
    assert args["enable_batching"] == "true" and args["enable_model_warmup"] == "true"
    batching = mounted_file(spec, c, args["batching_parameters_file"], documents)
    cores = quantity_cores(c["resources"]["limits"]["cpu"])
    threads = int(text_proto_values(batching, "num_batch_threads")[0])
    assert threads == cores, "TF Serving's CPU guidance: num_batch_threads = the cores the server has"
    assert int(text_proto_values(batching, "max_enqueued_batches")[0]) == threads  # online serving
    assert int(text_proto_values(batching, "batch_timeout_micros")[0]) <= 10_000
    assert int(text_proto_values(batching, "max_batch_size")[0]) >= settings.max_batch
    # TensorFlow's own thread pools follow the CPU limit too.
    assert args["tensorflow_intra_op_parallelism"] == args["tensorflow_inter_op_parallelism"] == "$(CPU_LIMIT)"
    cpu_limit = next(e for e in c["env"] if e["name"] == "CPU_LIMIT")["valueFrom"]["resourceFieldRef"]
    assert cpu_limit["resource"] == "limits.cpu" and cpu_limit["containerName"] == "tfserving"
    monitoring = mounted_file(spec, c, args["monitoring_config_file"], documents)
    annotations = find(documents, "Deployment", "charlm-tfserving")["spec"]["template"]["metadata"]["annotations"]
    assert re.search(r"enable:\s*true", monitoring)
    assert text_proto_values(monitoring, "path") == [annotations["prometheus.io/path"]]
    assert int(annotations["prometheus.io/port"]) == port_of(c, "rest")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateway_port_probes_and_graceful_shutdown_match_gunicorn(overlay, docs, tmp_path):
    documents = docs[overlay]
    gateway = find(documents, "Deployment", "charlm-gateway")
    spec = gateway["spec"]["template"]["spec"]
    c = container(spec, "gateway")
    env = {k: v for k, v in env_of(c).items() if v is not None}
    cfg = gunicorn_config(env, tmp_path)
    assert cfg["bind"] == [f"0.0.0.0:{port_of(c, 'http')}"]
    assert cfg["worker_class_str"] == "gthread"
    # SIGTERM comes after preStop; gunicorn then gives streams graceful_timeout to finish.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + cfg["graceful_timeout"] + 1
    # A worker may take gunicorn's timeout to start (loading TensorFlow); the startup probe waits that long.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= cfg["timeout"]
    # Liveness is the process (/healthz, no backend call); readiness is the backend (/readyz).
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
    from flask import Flask

    from serving import routes_health

    app = Flask("probe-routes")
    app.register_blueprint(routes_health.bp)
    assert {"/healthz", "/readyz"} <= {rule.rule for rule in app.url_map.iter_rules()}
    service = find(documents, "Service", "charlm-gateway")
    assert [p["targetPort"] for p in service["spec"]["ports"] if p["name"] == "http"] == ["http"]
    assert selects({"matchLabels": service["spec"]["selector"]}, gateway["spec"]["template"]["metadata"]["labels"])


def test_tf_serving_liveness_differs_from_readiness(docs):
    for overlay in ("dev", "prod"):
        c = container(find(docs[overlay], "Deployment", "charlm-tfserving")["spec"]["template"]["spec"], "tfserving")
        assert c["livenessProbe"] != c["readinessProbe"]
        assert "exec" in c["readinessProbe"] and "tcpSocket" in c["livenessProbe"]
        assert c["readinessProbe"]["timeoutSeconds"] >= 5


def test_only_the_gateway_reaches_tf_serving(docs):
    for overlay in ("dev", "prod"):
        documents = docs[overlay]
        tfserving = find(documents, "Deployment", "charlm-tfserving")["spec"]["template"]
        gateway_labels = find(documents, "Deployment", "charlm-gateway")["spec"]["template"]["metadata"]["labels"]
        policies = [p for p in documents if p["kind"] == "NetworkPolicy"
                    and selects(p["spec"]["podSelector"], tfserving["metadata"]["labels"])]
        assert len(policies) == 1
        policy = policies[0]["spec"]
        assert "Ingress" in policy["policyTypes"]
        [rule] = policy["ingress"]
        [source] = rule["from"]
        assert set(source) == {"podSelector"} and selects(source["podSelector"], gateway_labels)
        assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
        assert [p["port"] for p in rule["ports"]] == ["grpc"]
        # Every pod of the stack is selected by some policy.
        for _, _, labels in pod_specs(documents):
            assert any(selects(p["spec"]["podSelector"], labels) for p in documents if p["kind"] == "NetworkPolicy")


def test_autoscaler_disruption_budgets_and_ingress_point_at_the_gateway(docs, monkeypatch):
    documents = docs["prod"]
    gateway = find(documents, "Deployment", "charlm-gateway")
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    hpa = find(documents, "HorizontalPodAutoscaler", "charlm-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "charlm-gateway"}
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    for overlay in ("dev", "prod"):  # a replica count in the Deployment would undo the autoscaler at every apply
        assert "replicas" not in find(docs[overlay], "Deployment", "charlm-gateway")["spec"]
    for pdb in (d for d in documents if d["kind"] == "PodDisruptionBudget"):
        deployment = find(documents, "Deployment", pdb["metadata"]["name"])
        assert selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert selects(find(documents, "PodDisruptionBudget", "charlm-gateway")["spec"]["selector"], labels)
    ingress = find(documents, "Ingress", "charlm-gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = find(documents, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # server-sent events
    settings = gateway_settings(gateway, monkeypatch)
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= settings.stream_idle_timeout_s
    body = notes["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body[:-1]) * {"k": 1 << 10, "m": 1 << 20}[body[-1]] >= settings.max_body_bytes


def test_undeploy_keeps_the_namespace_and_volumes(docs):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^deploy:\n\t\$\(KUBECTL\) apply -k \$\(K8S_OVERLAY\)$", makefile, re.M)
    assert re.search(r"^K8S_OVERLAY\s*\?=\s*k8s/overlays/prod$", makefile, re.M)
    assert "-l 'charlm.io/retain!=true'" in re.search(r"^undeploy:\n\t(.*)$", makefile, re.M)[1]
    kept = {(d["kind"], d["metadata"]["name"]) for d in docs["prod"]
            if d["metadata"].get("labels", {}).get("charlm.io/retain") == "true"}
    assert kept == {("Namespace", "charlm"), ("PersistentVolumeClaim", "charlm-models"),
                    ("PersistentVolumeClaim", "charlm-runs")}


# --- the multi-worker Job and the training entry point --------------------------------------------------------------

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


# --- TF Serving's readiness probe, against a server answering as TF Serving's REST API does ------------------------

AVAILABLE = """{
 "model_version_status": [
  {
   "version": "2",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  },
  {
   "version": "1",
   "state": "END",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  }
 ]
}
"""
LOADING = AVAILABLE.replace('"AVAILABLE"', '"LOADING"')
ENDED = AVAILABLE.replace('"AVAILABLE"', '"END"')
NOT_FOUND = '{ "error": "Could not find any versions of model charlm" }'


class FakeModelStatus(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/models/charlm with whatever the test put in `reply`."""
    reply: tuple[int, str] = (200, AVAILABLE)
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status, body = self.reply if self.path == "/v1/models/charlm" else (404, NOT_FOUND)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a probe that gave up and closed its connection is no error of the server's


@pytest.fixture
def model_status_server():
    server = QuietServer(("127.0.0.1", 0), FakeModelStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def readiness(docs, port: int, tmp_path) -> subprocess.CompletedProcess:
    """The probe command of the rendered Deployment, with its script from the rendered ConfigMap, on `port`."""
    documents = docs["prod"]
    spec = find(documents, "Deployment", "charlm-tfserving")["spec"]["template"]["spec"]
    c = container(spec, "tfserving")
    command = list(c["readinessProbe"]["exec"]["command"])
    script = tmp_path / "model-available.sh"
    script.write_text(mounted_file(spec, c, command[1], documents))
    command[1], command[2] = str(script), str(port)
    return subprocess.run(command, capture_output=True, text=True, timeout=c["readinessProbe"]["timeoutSeconds"] + 5)


@pytest.mark.parametrize("reply, ready", [((200, AVAILABLE), True), ((200, LOADING), False), ((200, ENDED), False),
                                          ((404, NOT_FOUND), False), ((200, "not json at all"), False)])
def test_readiness_probe_reads_the_model_state(reply, ready, docs, model_status_server, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeModelStatus, "reply", reply)
    done = readiness(docs, model_status_server.server_address[1], tmp_path)
    assert (done.returncode == 0) == ready, done.stdout + done.stderr


def test_readiness_probe_fails_when_nothing_listens(docs, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    done = readiness(docs, port, tmp_path)
    assert done.returncode != 0
