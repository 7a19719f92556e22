"""Running texts through an exported model: long texts in chunks and regions, the training split, the
vocabulary check, and the same numbers through TF Serving's protocol."""
import numpy as np
import pytest

from analysis.activations import text_activations
from analysis.exported import ModelError, region_bounds, run_text
from analysis.scoring import bits_per_char, log2_probs
from model_interface.client import ModelClient
from model_interface.metadata import ModelMetadata


@pytest.fixture(scope="module")
def text(corpus_slice):
    return corpus_slice.read_text(encoding="utf-8")[:1500]


def test_facts_come_from_the_version_itself(model_client, exported_model, trained_run):
    config, _ = trained_run
    meta = model_client.metadata
    assert (meta.num_layers, meta.hidden_size, meta.cell) == (config.num_layers, config.hidden_size, "lstm")
    assert meta.val_fraction == config.val_fraction
    # What the graph's `metadata` signature answers is the version's own charlm.json.
    assert meta.vocab == ModelMetadata.read(exported_model[1]).vocab


def test_split_is_the_one_training_made(model_client, corpus_slice):
    from training.corpus import Vocab, split_ids

    text = corpus_slice.read_text(encoding="utf-8")
    meta = model_client.metadata
    train_ids, val_ids = split_ids(Vocab.from_text(text).encode(text), meta.val_fraction)
    train, val = meta.split(text)
    assert (len(train), len(val)) == (len(train_ids), len(val_ids))


def test_chunks_and_primed_regions_give_what_one_call_gives(model_client, text):
    whole = model_client.score([text])
    one_call = whole["log_probs"][0]
    # Chunks of 97 carry the state exactly; regions primed with everything before them start where one pass is.
    pieces = run_text(model_client, "score", text, ("log_probs",), regions=3, chunk_chars=97,
                      prime_chars=2000)["log_probs"]
    np.testing.assert_allclose(pieces, one_call, atol=1e-4)
    assert bits_per_char(log2_probs(model_client, text, chunk_chars=97)) == \
        pytest.approx(float(whole["bits_per_char"][0]), abs=1e-4)
    # Short primes are an approximation, but only the regions' first characters feel it.
    short = run_text(model_client, "score", text, ("log_probs",), regions=3, chunk_chars=500,
                     prime_chars=64)["log_probs"]
    assert np.abs(short - one_call).mean() < 0.05


def test_activations_in_chunks_equal_one_call_and_tanh_is_applied_once(model_client, text):
    whole = model_client.activations([text[:400]])
    values = text_activations(model_client, text[:400], chunk_chars=33)
    np.testing.assert_allclose(values["tanh_cell"], np.tanh(whole["cell"][0]), atol=1e-5)
    np.testing.assert_allclose(values["forget_gate"], whole["forget_gate"][0], atol=1e-5)
    assert set(values) == {"tanh_cell", "hidden", "input_gate", "forget_gate", "output_gate"}


def test_a_slice_is_primed_with_the_text_before_it(model_client, text):
    full = run_text(model_client, "score", text, ("log_probs",), prime_chars=4000)["log_probs"]
    tail = run_text(model_client, "score", text, ("log_probs",), start=1000, prime_chars=4000)["log_probs"]
    np.testing.assert_allclose(tail, full[1000:], atol=1e-4)


def test_characters_outside_the_vocabulary_are_refused_before_any_call(model_client):
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        run_text(model_client, "score", "abc\u2603", ("log_probs",))


def test_region_bounds_cover_the_range_without_empty_pieces():
    assert region_bounds(10, 20, 3) == [(10, 13), (13, 17), (17, 20)]
    assert region_bounds(0, 2, 5) == [(0, 1), (1, 2)]


def test_the_same_numbers_through_tensorflow_serving_protocol(model_client, loaded_model, text):
    """The gRPC stand-in speaking TF Serving's PredictionService over the same SavedModel (no TF Serving binary
    exists for this machine), read through ModelClient's TF Serving transport."""
    from serving.tfserving_standin import SavedModelPredictionService, serve

    server, port = serve(SavedModelPredictionService("charlm", {1: loaded_model}))
    remote = ModelClient.open(tfserving=f"127.0.0.1:{port}", name="charlm")
    try:
        assert remote.metadata.vocab == model_client.metadata.vocab
        assert remote.metadata.num_layers == model_client.metadata.num_layers
        np.testing.assert_allclose(log2_probs(remote, text, regions=2), log2_probs(model_client, text, regions=2),
                                   atol=1e-6)
        np.testing.assert_allclose(text_activations(remote, text[:300])["tanh_cell"],
                                   text_activations(model_client, text[:300])["tanh_cell"], atol=1e-6)
    finally:
        remote.close()
        server.stop(None)
