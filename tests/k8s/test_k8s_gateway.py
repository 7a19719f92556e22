"""The gateway's manifests agree with its code: the CHARLM_* settings serving/settings.py reads (the state secrets
from one required Secret for every replica), the headless gRPC Service it reaches every TF Serving pod through (and
the round-robin channel that uses them all), gunicorn's bind, timeouts and graceful shutdown
(serving/gunicorn.conf.py, loaded by gunicorn itself) against the ports, probes and termination grace period; the
network policy in front of TF Serving; the autoscaler, disruption budgets and Ingress."""
from __future__ import annotations

import json
import os
import re
import sys

import pytest

from k8s_helpers import ROOT, container, env_of, find, flags, gateway_settings, pod_specs, port_of, run, selects


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
def test_every_gateway_replica_signs_states_with_the_secrets_of_one_required_secret(overlay, docs):
    """A continuation state one gateway returned must verify on whichever replica the next request reaches: every
    replica reads CHARLM_STATE_SECRETS from the same Secret, which must exist (a missing Secret keeps the pods from
    starting, rather than each signing with a random secret of its own), and docs/deploy.md says how to make it."""
    documents = docs[overlay]
    c = container(find(documents, "Deployment", "charlm-gateway")["spec"]["template"]["spec"], "gateway")
    [entry] = [e for e in c["env"] if e["name"] == "CHARLM_STATE_SECRETS"]
    assert "value" not in entry
    ref = entry["valueFrom"]["secretKeyRef"]
    assert ref.get("optional") is False
    assert find(documents, "HorizontalPodAutoscaler", "charlm-gateway")["spec"]["maxReplicas"] > 1
    assert f"create secret generic {ref['name']} --from-literal={ref['key']}=" in (ROOT / "docs/deploy.md").read_text()


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_gateway_reaches_every_tf_serving_pod_through_a_headless_grpc_service(overlay, docs, monkeypatch):
    documents = docs[overlay]
    settings = gateway_settings(find(documents, "Deployment", "charlm-gateway"), monkeypatch)
    # A dns:/// target naming a Service by its full name: gRPC's own resolver, every address the name has.
    target = re.fullmatch(r"dns:///([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", settings.tfserving_address)
    assert target, f"{overlay}: {settings.tfserving_address!r} is not dns:///<service>.<ns>.svc.cluster.local:<port>"
    name, namespace, port = target.groups()
    service = find(documents, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    # Headless: the name resolves to one address per ready pod, not to one cluster IP (one connection, one pod).
    assert service["spec"].get("clusterIP") == "None" and not service["spec"].get("publishNotReadyAddresses")
    tfserving = find(documents, "Deployment", "charlm-tfserving")
    pod_labels = tfserving["spec"]["template"]["metadata"]["labels"]
    selector = {"matchLabels": service["spec"]["selector"]}
    assert selects(selector, pod_labels)
    assert [w for w, _, labels in pod_specs(documents) if selects(selector, labels)] == ["charlm-tfserving"]
    # With no proxy in between, the gateway connects to the pods' own port: TF Serving's gRPC --port.
    c = container(tfserving["spec"]["template"]["spec"], "tfserving")
    args = flags(c["args"])
    [grpc] = service["spec"]["ports"]
    assert grpc["name"] == "grpc" and grpc["targetPort"] == "grpc"
    assert grpc["port"] == int(port) == port_of(c, "grpc") == int(args["port"])
    # The channel spreads its calls over those addresses (gRPC's default, pick_first, would use one).
    from model_interface.client import CHANNEL_OPTIONS

    config = json.loads(dict(CHANNEL_OPTIONS)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    # gRPC resolves the name again when a connection closes: TF Serving closes each after an age, so a replica
    # added or replaced is found; calls in flight then get longer than the gateway's deadline to finish.
    channel = dict(a.split("=", 1) for a in args["grpc_channel_arguments"].split(","))
    assert 0 < int(channel["grpc.max_connection_age_ms"]) <= 300_000
    assert int(channel["grpc.max_connection_age_grace_ms"]) >= settings.tfserving_timeout_s * 1000
    if overlay == "prod":
        assert tfserving["spec"]["replicas"] > 1  # what all this is for


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_tf_serving_cluster_ip_service_maps_its_ports(overlay, docs):
    """charlm-tfserving stays for other clients and port-forward: gRPC and REST on TF Serving's ports."""
    documents = docs[overlay]
    service = find(documents, "Service", "charlm-tfserving")
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "rest"}
    tfserving = find(documents, "Deployment", "charlm-tfserving")
    assert selects({"matchLabels": service["spec"]["selector"]}, tfserving["spec"]["template"]["metadata"]["labels"])
    c = container(tfserving["spec"]["template"]["spec"], "tfserving")
    args = flags(c["args"])
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["targetPort"] == "grpc" and port_of(c, "grpc") == int(args["port"])
    rest = next(p for p in service["spec"]["ports"] if p["name"] == "rest")
    assert rest["targetPort"] == "rest" and port_of(c, "rest") == int(args["rest_api_port"])


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
