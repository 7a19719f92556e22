"""FastLSTM computes what keras.layers.LSTM computes: outputs, states and every gradient."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from training.fast_lstm import FastLSTM

BATCH, TIME, FEATURES, UNITS = 3, 11, 5, 16


def pair(**kwargs):
    """A stock LSTM and a FastLSTM sharing random weights (a random bias too, not the 0/1 initial one)."""
    rng = np.random.default_rng(0)
    ref, fast = keras.layers.LSTM(UNITS, **kwargs), FastLSTM(UNITS, **kwargs)
    ref.build((None, None, FEATURES))
    fast.build((None, None, FEATURES))
    weights = [rng.normal(0, 0.4, w.shape).astype("float32") for w in ref.get_weights()]
    ref.set_weights(weights)
    fast.set_weights(weights)
    return ref, fast


def inputs(time=TIME, seed=1):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(BATCH, time, FEATURES)), tf.float32)
    h0, c0 = (tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32) for _ in range(2))
    return x, h0, c0


def outputs_and_grads(layer, x, h0, c0, training=True, mask=None):
    """Everything the layer returns, and the gradients of a loss that weighs every output differently."""
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        out = layer(x, initial_state=[h0, c0], training=training, mask=mask)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        weights = [tf.reshape(tf.sin(tf.range(tf.size(o), dtype=tf.float32) + k), tf.shape(o))
                   for k, o in enumerate(out)]
        loss = sum(tf.reduce_sum(o * w) for o, w in zip(out, weights))
    sources = {"x": x, "h0": h0, "c0": c0, **{w.name: w for w in layer.trainable_weights}}
    return out, dict(zip(sources, tape.gradient(loss, list(sources.values()))))


def assert_same(ref, fast, x, h0, c0, graph=False, **kwargs):
    run = tf.function(outputs_and_grads) if graph else outputs_and_grads
    ref_out, ref_grads = run(ref, x, h0, c0, **kwargs)
    fast_out, fast_grads = run(fast, x, h0, c0, **kwargs)
    assert [o.shape for o in fast_out] == [o.shape for o in ref_out]
    for a, b in zip(fast_out, ref_out):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert fast_grads.keys() == ref_grads.keys() == {"x", "h0", "c0", "kernel", "recurrent_kernel", "bias"}
    for name in ref_grads:
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(fast_grads[name] / scale, ref_grads[name] / scale, atol=1e-4,
                                   err_msg=f"gradient w.r.t. {name}")


@pytest.fixture
def stock_loop_calls(monkeypatch):
    """Counts calls of the stock keras.layers.LSTM.inner_loop, to tell the fast path from the fallback."""
    calls = []
    original = keras.layers.LSTM.inner_loop

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.LSTM, "inner_loop", counting)
    return calls


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_sequences_and_states_match_lstm(graph, stock_loop_calls):
    ref, fast = pair(return_sequences=True, return_state=True)
    assert_same(ref, fast, *inputs(), graph=graph)
    assert "FastLSTM" not in stock_loop_calls  # the fast path ran, not the stock loop


def test_traced_with_unknown_batch_and_time_matches_lstm():
    shapes, results, layers = {}, {}, pair(return_sequences=True, return_state=True)
    spec = [tf.TensorSpec((None, None, FEATURES)), tf.TensorSpec((None, UNITS)), tf.TensorSpec((None, UNITS))]

    @tf.function(input_signature=spec)
    def run(x, h0, c0):
        for layer in layers:
            out = layer(x, initial_state=[h0, c0], training=True)
            shapes[type(layer).__name__] = [o.shape for o in out]
            results[type(layer).__name__] = out
        return results

    out = run(*inputs())
    assert shapes["FastLSTM"] == shapes["LSTM"] == [(None, None, UNITS), (None, UNITS), (None, UNITS)]
    for a, b in zip(out["FastLSTM"], out["LSTM"]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_last_output_only_matches_lstm(stock_loop_calls):
    ref, fast = pair(return_sequences=False, return_state=True)
    assert_same(ref, fast, *inputs())
    ref, fast = pair()  # neither sequences nor state
    assert_same(ref, fast, *inputs(time=7))
    assert "FastLSTM" not in stock_loop_calls


def test_inference_matches_lstm():
    ref, fast = pair(return_sequences=True, return_state=True)
    assert_same(ref, fast, *inputs(), training=False)


def test_mask_falls_back_to_the_stock_loop_and_still_matches(stock_loop_calls):
    ref, fast = pair(return_sequences=True, return_state=True)
    x, h0, c0 = inputs()
    mask = tf.constant(np.arange(TIME)[None, :] < np.array([[TIME], [6], [3]]))  # (batch, time)
    assert_same(ref, fast, x, h0, c0, mask=mask)
    assert "FastLSTM" in stock_loop_calls


def test_go_backwards_falls_back_to_the_stock_loop_and_still_matches(stock_loop_calls):
    ref, fast = pair(return_sequences=True, return_state=True, go_backwards=True)
    assert_same(ref, fast, *inputs())
    assert "FastLSTM" in stock_loop_calls


def test_chunks_carrying_state_equal_the_whole_sequence():
    _, fast = pair(return_sequences=True, return_state=True)
    x, h0, c0 = inputs(time=20)
    whole, h_whole, c_whole = fast(x, initial_state=[h0, c0], training=True)
    h, c, chunks = h0, c0, []
    for begin in range(0, 20, 5):
        y, h, c = fast(x[:, begin:begin + 5], initial_state=[h, c], training=True)
        chunks.append(y)
    np.testing.assert_allclose(tf.concat(chunks, axis=1), whole, atol=1e-5)
    np.testing.assert_allclose(h, h_whole, atol=1e-5)
    np.testing.assert_allclose(c, c_whole, atol=1e-5)


def test_same_weights_config_and_serialization_as_lstm():
    ref, fast = pair()
    assert [(w.name, w.shape) for w in fast.weights] == [(w.name, w.shape) for w in ref.weights]
    layer = FastLSTM(UNITS, return_sequences=True, dropout=0.1, name="lstm_0")
    config = layer.get_config()
    assert config == keras.layers.LSTM(UNITS, return_sequences=True, dropout=0.1, name="lstm_0").get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is FastLSTM and restored.get_config() == config
