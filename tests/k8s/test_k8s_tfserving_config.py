"""TF Serving's config files, as the rendered ConfigMaps mount them, parsed as TF Serving's own messages
(k8s_tfserving_protos.py): the model config (name, version labels and policy, base path on the volume the training
Jobs export onto), the batching parameters against the CPU limit, the monitoring config against the Prometheus
annotations; and a misspelt field or a wrong value in any of them is rejected by the parse."""
from __future__ import annotations

import pytest

from k8s_helpers import (ROOT, SERVING, container, env_of, find, flags, gateway_settings, mounted_file, port_of,
                         quantity_cores)
from k8s_tfserving_protos import BatchingParameters, ModelServerConfig, MonitoringConfig, parse_config


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_model_name_and_labels_agree(overlay, docs, monkeypatch):
    documents = docs[overlay]
    settings = gateway_settings(find(documents, "Deployment", "charlm-gateway"), monkeypatch)
    tfserving = find(documents, "Deployment", "charlm-tfserving")
    spec = tfserving["spec"]["template"]["spec"]
    c = container(spec, "tfserving")
    path = flags(c["args"])["model_config_file"]
    model_config = parse_config(mounted_file(spec, c, path, documents), ModelServerConfig, f"{overlay}: {path}")
    models = model_config.model_config_list.config
    assert [model.name for model in models] == [settings.served_name]
    [model] = models
    labels = dict(model.version_labels)
    assert "stable" in labels
    if settings.tfserving_version_label:
        assert settings.tfserving_version_label in labels
    policy = model.model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions == 2
    assert flags(c["args"])["allow_version_labels_for_unavailable_models"] == "true"
    # The readiness probe asks about this model on the REST port.
    probe = c["readinessProbe"]["exec"]["command"]
    assert probe[-2:] == [flags(c["args"])["rest_api_port"], settings.served_name]
    # The model lives on the models volume, where the training Job exports it.
    base_path = model.base_path
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
    path = args["batching_parameters_file"]
    batching = parse_config(mounted_file(spec, c, path, documents), BatchingParameters, f"{overlay}: {path}")
    for field in ("num_batch_threads", "max_enqueued_batches", "batch_timeout_micros", "max_batch_size"):
        assert batching.HasField(field), f"{overlay}: {path} does not set {field}"
    cores = quantity_cores(c["resources"]["limits"]["cpu"])
    threads = batching.num_batch_threads.value
    assert threads == cores, "TF Serving's CPU guidance: num_batch_threads = the cores the server has"
    assert batching.max_enqueued_batches.value == threads  # online serving
    assert batching.batch_timeout_micros.value <= 10_000
    assert batching.max_batch_size.value >= settings.max_batch
    # TensorFlow's own thread pools follow the CPU limit too.
    assert args["tensorflow_intra_op_parallelism"] == args["tensorflow_inter_op_parallelism"] == "$(CPU_LIMIT)"
    cpu_limit = next(e for e in c["env"] if e["name"] == "CPU_LIMIT")["valueFrom"]["resourceFieldRef"]
    assert cpu_limit["resource"] == "limits.cpu" and cpu_limit["containerName"] == "tfserving"
    path = args["monitoring_config_file"]
    monitoring = parse_config(mounted_file(spec, c, path, documents), MonitoringConfig, f"{overlay}: {path}")
    annotations = find(documents, "Deployment", "charlm-tfserving")["spec"]["template"]["metadata"]["annotations"]
    assert monitoring.prometheus_config.enable is True
    assert monitoring.prometheus_config.path == annotations["prometheus.io/path"]
    assert int(annotations["prometheus.io/port"]) == port_of(c, "rest")


# A config file of the repository, a piece of it, and that piece broken as a hand edit might break it. TF Serving
# refuses to start on such a file; the parse above must refuse it too.
BROKEN = {
    "models-misspelt-field": ("k8s/base/tfserving/models.config", ModelServerConfig,
                              'base_path: "/models/charlm"', 'base_pth: "/models/charlm"'),
    "models-field-at-the-wrong-level": ("k8s/overlays/prod/models.config", ModelServerConfig,
                                        "num_versions: 2\n      }", "}\n      num_versions: 2"),
    "models-value-of-the-wrong-type": ("k8s/overlays/prod/models.config", ModelServerConfig,
                                       "value: 1", 'value: "one"'),
    "batching-misspelt-field": ("k8s/base/tfserving/batching.config", BatchingParameters,
                                "num_batch_threads {", "num_batch_thread {"),
    "batching-number-for-a-wrapper": ("k8s/overlays/prod/batching.config", BatchingParameters,
                                      "max_batch_size { value: 1024 }", "max_batch_size: 1024"),
    "monitoring-misspelt-field": ("k8s/base/tfserving/monitoring.config", MonitoringConfig,
                                  "enable: true", "enabled: true"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_config_with_an_unknown_field_or_a_typo_is_rejected(case):
    path, message_class, right, wrong = BROKEN[case]
    text = (ROOT / path).read_text()
    parse_config(text, message_class, path)  # as committed, it parses
    assert text.count(right) == 1, f"{path} changed: {right!r} is not in it once"
    with pytest.raises(pytest.fail.Exception) as failed:
        parse_config(text.replace(right, wrong), message_class, path)
    assert str(failed.value).startswith(f"{path}: not a valid {message_class.DESCRIPTOR.full_name}: ")
