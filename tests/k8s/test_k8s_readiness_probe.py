"""TF Serving's probes: liveness is the process, readiness is the model. The readiness probe of the rendered
Deployment, with its script from the rendered ConfigMap (k8s/base/tfserving/model-available.sh), is run against a
stand-in answering TF Serving's REST model-status request (serving/tfserving_standin.py), and against a port where
nothing listens."""
from __future__ import annotations

import subprocess

import pytest

from k8s_helpers import container, find, mounted_file
from serving.launch import free_port
from serving.tfserving_standin import serve_model_status


def test_tf_serving_liveness_differs_from_readiness(docs):
    for overlay in ("dev", "prod"):
        c = container(find(docs[overlay], "Deployment", "charlm-tfserving")["spec"]["template"]["spec"], "tfserving")
        assert c["livenessProbe"] != c["readinessProbe"]
        assert "exec" in c["readinessProbe"] and "tcpSocket" in c["livenessProbe"]
        assert c["readinessProbe"]["timeoutSeconds"] >= 5


# What TF Serving's REST API answers to GET /v1/models/charlm: a version AVAILABLE (the previous one ended), one
# still LOADING, only ended ones, a model it does not know.
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


@pytest.fixture
def model_status():
    server = serve_model_status("charlm", (200, AVAILABLE))
    yield server
    server.stop()


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
def test_readiness_probe_reads_the_model_state(reply, ready, docs, model_status, tmp_path):
    model_status.reply = reply
    done = readiness(docs, model_status.port, tmp_path)
    assert (done.returncode == 0) == ready, done.stdout + done.stderr


def test_readiness_probe_fails_when_nothing_listens(docs, tmp_path):
    port = free_port()  # free a moment ago: nothing listens there
    done = readiness(docs, port, tmp_path)
    assert done.returncode != 0
