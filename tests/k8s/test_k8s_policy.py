"""Policy over the rendered manifests and the Dockerfiles: checkov (no failed check, every skip says why, the
broken examples rejected), the Pod Security Standard "restricted" and this project's own rules, pinned images."""
from __future__ import annotations

import re

from k8s_helpers import MIN_SKIP_REASON, OVERLAYS, ROOT, find, pod_specs


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
