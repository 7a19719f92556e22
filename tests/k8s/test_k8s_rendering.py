"""What each kustomization renders, checked by schema with kubernetes-validate --strict (and that the schema check
rejects an unknown field); what `make deploy` applies and `make undeploy` keeps."""
from __future__ import annotations

import re

from k8s_helpers import BASES, OVERLAYS, ROOT


def test_every_kustomization_renders_what_it_should(docs):
    prod = {(d["kind"], d["metadata"]["name"]) for d in docs["prod"]}
    for expected in [("Namespace", "charlm"), ("Deployment", "charlm-tfserving"), ("Deployment", "charlm-gateway"),
                     ("Service", "charlm-tfserving"), ("Service", "charlm-tfserving-grpc"),
                     ("Service", "charlm-gateway"),
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


def test_undeploy_keeps_the_namespace_and_volumes(docs):
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^deploy:\n\t\$\(KUBECTL\) apply -k \$\(K8S_OVERLAY\)$", makefile, re.M)
    assert re.search(r"^K8S_OVERLAY\s*\?=\s*k8s/overlays/prod$", makefile, re.M)
    assert "-l 'charlm.io/retain!=true'" in re.search(r"^undeploy:\n\t(.*)$", makefile, re.M)[1]
    kept = {(d["kind"], d["metadata"]["name"]) for d in docs["prod"]
            if d["metadata"].get("labels", {}).get("charlm.io/retain") == "true"}
    assert kept == {("Namespace", "charlm"), ("PersistentVolumeClaim", "charlm-models"),
                    ("PersistentVolumeClaim", "charlm-runs")}
