"""One client, two transports: in-process and TF Serving gRPC (against the PredictionService stand-in, which
runs the same SavedModel; it is not TF Serving) answer the same calls with the same numbers."""
import numpy as np
import pytest

from model_interface.client import ModelClient, TFServingGrpc
from model_interface.errors import DeadlineExceeded, InputRejected, LayoutError, ModelUnavailable, VersionNotFound
from model_interface.metadata import ModelMetadata
from model_interface.signatures import SamplingSettings
from serving.launch import free_port


@pytest.fixture(scope="module")
def standin(loaded_model):
    from serving.tfserving_standin import SavedModelPredictionService, serve

    service = SavedModelPredictionService("charlm", {1: loaded_model})
    server, port = serve(service)
    yield service, f"127.0.0.1:{port}"
    server.stop(0)


def test_both_transports_answer_alike(model_client, standin, exported_model):
    remote = ModelClient(TFServingGrpc(standin[1], "charlm", deadline_s=30))
    assert remote.metadata == model_client.metadata == ModelMetadata.read(exported_model[1])
    settings = [SamplingSettings(temperature=0.8, seed=3), SamplingSettings(top_k=4, seed=9)]
    here = model_client.generate(["ROMEO:", "a"], [40, 25], settings)
    there = remote.generate(["ROMEO:", "a"], [40, 25], settings)
    assert here["text"] == there["text"] and [len(t) for t in here["text"]] == [40, 25]
    np.testing.assert_array_equal(here["state"], there["state"])
    np.testing.assert_allclose(model_client.score(["To be"])["log_probs"], remote.score(["To be"])["log_probs"])
    only = remote.activations(["ab"], outputs=("hidden", "lengths"))
    assert set(only) == {"hidden", "lengths"}  # TF Serving's output_filter


def test_failures_are_typed(model_client, standin):
    service, address = standin
    with pytest.raises(InputRejected, match="state must have"):
        model_client.score(["a"], np.zeros([1, 3], np.float32))
    with pytest.raises(InputRejected, match="state must have"):
        ModelClient(TFServingGrpc(address, "charlm")).score(["a"], np.zeros([1, 3], np.float32))
    with pytest.raises(VersionNotFound, match="version 7"):
        ModelClient(TFServingGrpc(address, "charlm"), version=7).score(["a"])
    with pytest.raises(ModelUnavailable, match="UNAVAILABLE"):
        ModelClient(TFServingGrpc(f"127.0.0.1:{free_port()}", "charlm", deadline_s=5)).score(["a"])
    service.delay_s = 1.0
    try:
        with pytest.raises(DeadlineExceeded, match="within 0.2 s"):
            ModelClient(TFServingGrpc(address, "charlm", deadline_s=0.2)).score(["a"])
    finally:
        service.delay_s = 0.0


def test_open_names_a_wrong_path_before_loading(tmp_path):
    with pytest.raises(LayoutError, match="--model .*: no such directory"):
        ModelClient.open(tmp_path / "missing", what="--model")
