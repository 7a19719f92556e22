"""Reading an exported model: long texts in chunks and regions, the training split, TF Serving's protocol."""
from concurrent import futures

import numpy as np
import pytest

from analysis.activations import text_activations
from analysis.exported import LocalModel, ModelError, TFServingModel, region_bounds, run_text, version_directory
from analysis.scoring import bits_per_char, log2_probs


@pytest.fixture(scope="module")
def model(exported_model, loaded_model):
    return LocalModel(loaded_model, str(exported_model[1]))


@pytest.fixture(scope="module")
def text(corpus_slice):
    return corpus_slice.read_text(encoding="utf-8")[:1500]


def test_facts_come_from_the_version_itself(model, trained_run):
    config, _ = trained_run
    assert (model.num_layers, model.hidden_size, model.cell) == (config.num_layers, config.hidden_size, "lstm")
    assert model.val_fraction == config.val_fraction
    assert len(model.vocab) == model.info["vocab_size"]


def test_split_is_the_one_training_made(model, corpus_slice):
    from training.corpus import Vocab, split_ids

    text = corpus_slice.read_text(encoding="utf-8")
    train_ids, val_ids = split_ids(Vocab.from_text(text).encode(text), model.val_fraction)
    train, val = model.split(text)
    assert (len(train), len(val)) == (len(train_ids), len(val_ids))


def test_version_directory_picks_the_newest_complete_version(exported_model, tmp_path):
    model_dir, version = exported_model
    assert version_directory(model_dir) == version
    assert version_directory(version) == version
    with pytest.raises(ModelError, match="no complete model version"):
        version_directory(tmp_path)
    with pytest.raises(ModelError, match="no such directory"):
        version_directory(tmp_path / "missing")


def test_chunks_and_primed_regions_give_what_one_call_gives(model, text):
    whole = model.call("score", {"text": np.array([text], object), "state": np.zeros([1, 0], np.float32)})
    one_call = whole["log_probs"][0]
    # Chunks of 97 carry the state exactly; regions primed with everything before them start where one pass is.
    pieces = run_text(model, "score", text, ("log_probs",), regions=3, chunk_chars=97, prime_chars=2000)["log_probs"]
    np.testing.assert_allclose(pieces, one_call, atol=1e-4)
    assert bits_per_char(log2_probs(model, text, chunk_chars=97)) == pytest.approx(float(whole["bits_per_char"][0]),
                                                                                   abs=1e-4)
    # Short primes are an approximation, but only the regions' first characters feel it.
    short = run_text(model, "score", text, ("log_probs",), regions=3, chunk_chars=500, prime_chars=64)["log_probs"]
    assert np.abs(short - one_call).mean() < 0.05


def test_activations_in_chunks_equal_one_call_and_tanh_is_applied_once(model, text):
    whole = model.call("activations", {"text": np.array([text[:400]], object), "state": np.zeros([1, 0], np.float32)})
    values = text_activations(model, text[:400], chunk_chars=33)
    np.testing.assert_allclose(values["tanh_cell"], np.tanh(whole["cell"][0]), atol=1e-5)
    np.testing.assert_allclose(values["forget_gate"], whole["forget_gate"][0], atol=1e-5)
    assert set(values) == {"tanh_cell", "hidden", "input_gate", "forget_gate", "output_gate"}


def test_a_slice_is_primed_with_the_text_before_it(model, text):
    full = run_text(model, "score", text, ("log_probs",), prime_chars=4000)["log_probs"]
    tail = run_text(model, "score", text, ("log_probs",), start=1000, prime_chars=4000)["log_probs"]
    np.testing.assert_allclose(tail, full[1000:], atol=1e-4)


def test_characters_outside_the_vocabulary_are_refused_before_any_call(model):
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        run_text(model, "score", "abc\u2603", ("log_probs",))


def test_region_bounds_cover_the_range_without_empty_pieces():
    assert region_bounds(10, 20, 3) == [(10, 13), (13, 17), (17, 20)]
    assert region_bounds(0, 2, 5) == [(0, 1), (1, 2)]


def test_the_same_numbers_through_tensorflow_serving_protocol(model, loaded_model, text):
    """A gRPC server speaking TF Serving's PredictionService over the same SavedModel (no TF Serving binary
    exists for this machine), read through TFServingModel."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            function = loaded_model.signatures[request.model_spec.signature_name]
            outputs = function(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            response = predict_pb2.PredictResponse()
            for name, value in outputs.items():
                if not request.output_filter or name in request.output_filter:
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_send_message_length", 1 << 30)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        remote = TFServingModel(f"127.0.0.1:{port}", "charlm")
        assert remote.vocab == model.vocab and remote.num_layers == model.num_layers
        np.testing.assert_allclose(log2_probs(remote, text, regions=2), log2_probs(model, text, regions=2), atol=1e-6)
        np.testing.assert_allclose(text_activations(remote, text[:300])["tanh_cell"],
                                   text_activations(model, text[:300])["tanh_cell"], atol=1e-6)
    finally:
        server.stop(None)
