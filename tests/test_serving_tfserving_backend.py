"""The `tfserving` backend against serving.tfserving_standin (a stand-in speaking TF Serving's PredictionService
protocol over the same SavedModel, not TF Serving): same texts as in-process, the requests it sends, a
restart of the server, the deadline."""
import numpy as np
import pytest

from model_interface import signatures as sig
from model_interface.errors import InputRejected, VersionNotFound
from model_interface.signatures import SamplingSettings, fresh_states, generate_inputs
from serving.app import create_app
from serving.settings import Settings
from serving.tfserving_backend import TFServingBackend
from serving.tfserving_standin import SavedModelPredictionService, serve
from serving_helpers import assert_error, wait_until


@pytest.fixture(scope="module")
def service(loaded_model):
    return SavedModelPredictionService("charlm", {1: loaded_model})


@pytest.fixture(scope="module")
def server(service):
    server, port = serve(service)
    yield server, port
    server.stop(0)


@pytest.fixture(scope="module")
def app(server):
    return create_app({"backend": "tfserving", "tfserving_address": f"127.0.0.1:{server[1]}",
                       "tfserving_timeout_s": 1.0, "model_poll_s": 0})


@pytest.fixture
def client(app):
    return app.test_client()


def test_generation_through_tfserving_is_the_same_text(client, model_client, service):
    reply = client.post("/v1/completions", json={"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 150,
                                                 "seed": 9}).get_json()
    direct = model_client.generate(["ROMEO:\n"], 150, SamplingSettings(seed=9))["text"][0]  # in-process, one call
    assert reply["choices"][0]["text"] == direct
    generate = [r for r in service.requests if r.model_spec.signature_name == "generate"]
    assert len(generate) > 1  # several chunks, each a Predict carrying the state
    spec = generate[-1].model_spec
    assert spec.name == "charlm" and spec.version.value == 1  # pinned to the version the stream started on
    # The batcher asks for generate's outputs but the alternatives (20 a character), which no row here wants; the
    # chosen characters' log-probabilities feed `logprobs` and `best_of`.
    assert set(generate[-1].output_filter) == set(sig.OUTPUTS[sig.GENERATE]) - {"top_ids", "top_log_probs"}


def test_logprobs_through_tfserving_are_the_local_ones(client, exported_model, service):
    """The prompt's (score) and the generated characters' (generate) log-probabilities over gRPC, output filters
    and all, equal the local backend's."""
    from serving_helpers import shared_app

    body = {"model": "charlm", "prompt": "ROMEO:\n", "max_tokens": 20, "seed": 4, "echo": True, "logprobs": 3}
    remote = client.post("/v1/completions", json=body).get_json()["choices"][0]
    local = shared_app(exported_model[0]).test_client().post("/v1/completions", json=body).get_json()["choices"][0]
    assert remote["text"] == local["text"] and remote["logprobs"]["tokens"] == local["logprobs"]["tokens"]
    assert remote["logprobs"]["token_logprobs"][0] is None
    assert np.allclose(remote["logprobs"]["token_logprobs"][1:], local["logprobs"]["token_logprobs"][1:], atol=1e-5)
    generate = [r for r in service.requests if r.model_spec.signature_name == "generate"][-1]
    assert {"top_ids", "top_log_probs"} <= set(generate.output_filter)  # asked for: this row wants 3 alternatives


def test_models_readyz_score_activations(client, service):
    assert client.get("/readyz").get_json() == {"status": "ready", "backend": "tfserving", "model": "charlm",
                                                "version": 1}
    card = client.get("/v1/models").get_json()["data"][0]
    assert card["backend"] == "tfserving" and card["versions"] == [1]
    assert client.post("/v1/score", json={"text": "First Citizen:"}).get_json()["characters"] == 14
    reply = client.post("/v1/activations", json={"text": "abc", "kind": "hidden"}).get_json()
    assert np.array(reply["values"]).shape == (3, 32)
    # The last *activations* request: a background look for a newer version may have come after it.
    activations = [r for r in service.requests if r.model_spec.signature_name == "activations"]
    assert list(activations[-1].output_filter) == ["hidden", "lengths", "state", "unknown_chars"]
    # Looking for the newest version sends no version: TF Serving answers with its newest, and names it.
    # TF Serving's batching stacks calls: none may send a zero-width state beside full-width ones.
    widths = {r.inputs["state"].tensor_shape.dim[1].size for r in service.requests if "state" in r.inputs}
    assert widths == {2 * 32 + 1}
    metadata = [r for r in service.requests if r.model_spec.signature_name == "metadata"]
    assert any(not r.model_spec.HasField("version") for r in metadata)


def test_errors_are_translated(server):
    backend = TFServingBackend(Settings(backend="tfserving", tfserving_address=f"127.0.0.1:{server[1]}"))
    assert backend.transport._channel is None  # nothing opened until the first call (after gunicorn's fork)
    # model_construct skips SamplingSettings' own check, so the model's check is what answers.
    too_cold = SamplingSettings.model_construct(temperature=-1.0)
    with pytest.raises(InputRejected, match="temperature must be >= 0"):  # 0 is greedy
        backend.call("generate", 1, generate_inputs(["A"], fresh_states(1), [3], [too_cold]))
    with pytest.raises(VersionNotFound):
        backend.call("generate", 99, generate_inputs(["A"], fresh_states(1), [3], [SamplingSettings()]))
    backend.close()


def test_deadline_is_a_504(client, service):
    service.delay_s = 2.0
    try:
        assert_error(client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 3}),
                     504, code="backend_timeout")
        assert_error(client.get("/readyz"), 504, code="backend_timeout")
    finally:
        service.delay_s = 0.0
    assert client.post("/v1/completions", json={"model": "charlm", "prompt": "A", "max_tokens": 3}).status_code == 200


def test_tfserving_restart_is_503_then_recovers(loaded_model):
    service = SavedModelPredictionService("charlm", {1: loaded_model})
    server, port = serve(service)
    client = create_app({"backend": "tfserving", "tfserving_address": f"127.0.0.1:{port}"}).test_client()
    body = {"model": "charlm", "prompt": "A", "max_tokens": 10, "seed": 1}
    before = client.post("/v1/completions", json=body).get_json()["choices"][0]["text"]
    server.stop(0).wait()
    assert_error(client.post("/v1/completions", json=body), 503, code="backend_unavailable")
    assert_error(client.get("/readyz"), 503)
    assert client.get("/healthz").status_code == 200  # liveness does not depend on the backend
    server, _ = serve(SavedModelPredictionService("charlm", {1: loaded_model}), port)
    try:
        # gRPC reconnects by itself (backoff capped at 2 s); no restart of the gateway.
        recovered = wait_until(lambda: client.post("/v1/completions", json=body).status_code == 200, timeout=20)
        assert recovered
        assert client.post("/v1/completions", json=body).get_json()["choices"][0]["text"] == before
    finally:
        server.stop(0)


def test_version_label_picks_the_version(loaded_model):
    service = SavedModelPredictionService("charlm", {1: loaded_model, 2: loaded_model}, labels={"stable": 1})
    server, port = serve(service)
    try:
        backend = TFServingBackend(Settings(backend="tfserving", tfserving_address=f"127.0.0.1:{port}",
                                            tfserving_version_label="stable"))
        backend.refresh()
        assert backend.model().version == 1  # not the newest (2): the labelled one
        assert service.requests[0].model_spec.version_label == "stable"
        backend.close()
    finally:
        server.stop(0)


def test_unknown_model_name_on_tfserving_is_503_at_start(server):
    client = create_app({"backend": "tfserving", "tfserving_address": f"127.0.0.1:{server[1]}",
                         "model_name": "nosuch"}).test_client()
    error = assert_error(client.get("/readyz"), 503)
    assert "NOT_FOUND" in error["message"]
