"""FastLSTM computes what keras.layers.LSTM computes: outputs, states and every gradient."""
import numpy as np
import pytest
import tensorflow as tf
import keras

from training.fast_lstm import FastLSTM, lstm_sequence, lstm_sequence_from_ids, lstm_stack

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


def weighted_loss(tensors):
    """A loss that weighs every element of every tensor differently, so no gradient can hide (in fp32)."""
    return sum(tf.reduce_sum(tf.cast(t, tf.float32) * tf.reshape(tf.sin(tf.range(tf.size(t), dtype=tf.float32) + k), tf.shape(t)))
               for k, t in enumerate(tensors))


def outputs_and_grads(layer, x, h0, c0, training=True, mask=None):
    """Everything the layer returns, and the gradients of a loss that weighs every output differently."""
    with tf.GradientTape() as tape:
        tape.watch([x, h0, c0])
        out = layer(x, initial_state=[h0, c0], training=training, mask=mask)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        loss = weighted_loss(out)
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


VOCAB, EMBEDDING = 7, FEATURES


def stacks(num_layers=2):
    """Stock LSTM layers and FastLSTM layers with the same random weights, each returning sequences and
    states (as CharRNN builds them), and a random embedding table."""
    rng = np.random.default_rng(2)
    refs, fasts = [], []
    for i in range(num_layers):
        ref = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
        fast = FastLSTM(UNITS, return_sequences=True, return_state=True)
        for layer in (ref, fast):
            layer.build((None, None, EMBEDDING if i == 0 else UNITS))
        weights = [rng.normal(0, 0.4, w.shape).astype("float32") for w in ref.get_weights()]
        ref.set_weights(weights)
        fast.set_weights(weights)
        refs.append(ref)
        fasts.append(fast)
    embeddings = tf.Variable(rng.normal(size=(VOCAB, EMBEDDING)).astype("float32"), name="embeddings")
    return refs, fasts, embeddings


def stock_stack(ids, embeddings, layers, states, between):
    """The plain computation lstm_stack reschedules: embed, then each layer on the whole sequence."""
    x, new_states = tf.gather(embeddings, ids), []  # (batch, time, embedding)
    for i, layer in enumerate(layers):
        x, h, c = layer(x, initial_state=states[2 * i:2 * i + 2], training=True)
        x = between(i, x)
        new_states += [h, c]
    return x, new_states


def stack_outputs_and_grads(run, ids, embeddings, layers, states):
    def between(i, x):  # elementwise and different per layer, as dropout's mask is
        return x * (1.0 + 0.5 * i) + 0.1

    with tf.GradientTape() as tape:
        tape.watch(states)
        out, new_states = run(ids, embeddings, layers, states, between)
        flat = [out, *new_states]
        loss = weighted_loss(flat)
    sources = {"embeddings": embeddings, **{f"state_{k}": s for k, s in enumerate(states)},
               **{f"{w.path}": w for layer in layers for w in layer.trainable_weights}}
    grads = tape.gradient(loss, list(sources.values()))
    return flat, [(name, g) for name, g in zip(sources, grads)]


@pytest.mark.parametrize("time, chunks", [(11, 1), (11, 3), (11, 11), (4, 9)],
                         ids=["one chunk", "uneven chunks", "a step per chunk", "more chunks than steps"])
def test_wavefront_stack_matches_stock_layers(time, chunks, stock_loop_calls):
    refs, fasts, embeddings = stacks()
    rng = np.random.default_rng(3)
    ids = tf.constant(rng.integers(0, VOCAB, size=(BATCH, time)), tf.int32)  # (batch, time)
    states = [tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32) for _ in range(4)]

    def wavefront(ids, embeddings, layers, states, between):
        return lstm_stack(ids, embeddings, layers, states, between, chunks=chunks)

    ref_out, ref_grads = stack_outputs_and_grads(stock_stack, ids, embeddings, refs, states)
    fast_out, fast_grads = stack_outputs_and_grads(wavefront, ids, embeddings, fasts, states)
    assert "FastLSTM" not in stock_loop_calls
    assert [o.shape for o in fast_out] == [o.shape for o in ref_out]
    for a, b in zip(fast_out, ref_out):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(fast_grads) == len(ref_grads) == 1 + 4 + 2 * 3
    for (name, a), (_, b) in zip(fast_grads, ref_grads):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)  # the embedding's gradient is sparse
        scale = np.abs(b).max()
        np.testing.assert_allclose(a / scale, b / scale, atol=1e-4, err_msg=f"gradient w.r.t. {name}")


def test_wavefront_stack_traced_with_unknown_time_matches_stock_layers():
    refs, fasts, embeddings = stacks()
    rng = np.random.default_rng(4)
    ids = tf.constant(rng.integers(0, VOCAB, size=(BATCH, 9)), tf.int32)
    states = [tf.zeros((BATCH, UNITS)) for _ in range(4)]

    @tf.function(input_signature=[tf.TensorSpec((None, None), tf.int32)])
    def wavefront(ids):
        return lstm_stack(ids, embeddings, fasts, states, chunks=3)

    out, new_states = wavefront(ids)
    ref_out, ref_states = stock_stack(ids, embeddings, refs, states, lambda i, x: x)
    for a, b in zip([out, *new_states], [ref_out, *ref_states]):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_sequence_from_ids_matches_sequence_on_embedded_ids():
    _, fast = pair()
    rng = np.random.default_rng(5)
    table = tf.constant(rng.normal(size=(VOCAB, FEATURES)), tf.float32)  # (vocab, features)
    ids = tf.constant(rng.integers(0, VOCAB, size=(TIME, BATCH)), tf.int32)  # (time, batch)
    _, h0, c0 = inputs()
    kernel, bias, recurrent_kernel = (tf.convert_to_tensor(w) for w in
                                      (fast.cell.kernel, fast.cell.bias, fast.cell.recurrent_kernel))

    def run(from_ids):
        with tf.GradientTape() as tape:
            tape.watch([table, kernel, bias, recurrent_kernel, h0, c0])
            if from_ids:
                projected = tf.nn.bias_add(tf.matmul(table, kernel), bias)  # (vocab, 4*units)
                out = lstm_sequence_from_ids(ids, projected, recurrent_kernel, h0, c0)
            else:
                out = lstm_sequence(tf.gather(table, ids), kernel, bias, recurrent_kernel, h0, c0)
            loss = weighted_loss(out)
        return out, tape.gradient(loss, [table, kernel, bias, recurrent_kernel, h0, c0])

    (out_a, grads_a), (out_b, grads_b) = run(True), run(False)
    for a, b in zip(out_a, out_b):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)  # tf.gather's gradient is sparse
        np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


# --- bf16 (Keras' mixed_bfloat16 policy) ---
#
# The bf16 path rounds every matmul operand and every output sequence to bf16: 8 significant bits, a spacing of
# 2**-8 (0.0039) just below 1, where h, the gates and these weights' products live. A value passes several such
# roundings (operands, product, output) and an error in h or dh feeds every later step, so the errors grow with
# the path: measured up to ~0.008 in outputs and ~0.006 of the largest gradient for one layer over 11 steps, up to
# ~0.027 for the first layer's h0 gradient through two layers (Keras' own mixed_bfloat16 LSTM: 0.037 there).
# BF16_TOL, 2**-5 (eight bf16 spacings), covers that and is still well below what a wrong gate, term or transpose
# gives (0.1 and more); an fp32 path agrees to ~1e-6, so the tests also check that bf16 really ran.
BF16_TOL = 2.0 ** -5


def bf16_like(layer, cls=FastLSTM):
    """A layer of class cls under mixed_bfloat16 with the fp32 layer's config and weights."""
    bf16 = cls.from_config({**layer.get_config(), "dtype": "mixed_bfloat16"})
    bf16.build((None, None, layer.cell.kernel.shape[0]))
    bf16.set_weights(layer.get_weights())
    return bf16


def bf16_errors(out, grads, ref_out, ref_grads):
    """Largest difference of each output, and of each gradient relative to its largest element; gradients as
    (name, gradient) pairs in the same order."""
    assert len(out) == len(ref_out) and len(grads) == len(ref_grads)
    errors = {f"output {k}": np.abs(np.asarray(tf.cast(a, tf.float32)) - np.asarray(b)).max()
              for k, (a, b) in enumerate(zip(out, ref_out))}
    for (name, a), (_, b) in zip(grads, ref_grads):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)  # the embedding's gradient is sparse
        assert a.dtype == b.dtype == tf.float32, name  # gradients of fp32 variables and inputs are fp32
        errors[f"gradient w.r.t. {name}"] = np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max()
    return errors


def assert_close_in_bf16(out, grads, ref_out, ref_grads):
    errors = bf16_errors(out, grads, ref_out, ref_grads)
    assert max(errors.values()) < BF16_TOL, errors
    assert errors["output 0"] > 1e-4  # and it did compute in bf16


def test_trains_fast_under_mixed_bfloat16_on_cpu(stock_loop_calls):
    ref, fast = pair(return_sequences=True, return_state=True)
    bf16 = bf16_like(fast)
    assert bf16.compute_dtype == "bfloat16" and bf16.trains_fast(training=True)
    assert [w.dtype for w in bf16.weights] == ["float32"] * 3  # weights stay fp32: checkpoints unchanged
    out, _ = outputs_and_grads(bf16, *inputs())
    assert "FastLSTM" not in stock_loop_calls
    assert [o.dtype for o in out] == [tf.bfloat16] * 3  # the layer's contract under the policy


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_bf16_outputs_and_gradients_match_fp32_within_bf16_tolerance(graph, stock_loop_calls):
    _, fast = pair(return_sequences=True, return_state=True)
    run = tf.function(outputs_and_grads) if graph else outputs_and_grads
    x, h0, c0 = inputs()
    ref_out, ref_grads = run(fast, x, h0, c0)  # the fp32 path (itself checked against keras.layers.LSTM above)
    bf16_out, bf16_grads = run(bf16_like(fast), x, h0, c0)
    assert "FastLSTM" not in stock_loop_calls
    assert bf16_grads.keys() == ref_grads.keys()
    assert_close_in_bf16(bf16_out, list(bf16_grads.items()), ref_out, list(ref_grads.items()))


def test_bf16_chunks_carrying_state_equal_the_whole_sequence():
    _, fast = pair(return_sequences=True, return_state=True)
    layer = bf16_like(fast)
    x, h0, c0 = inputs(time=20)
    whole, h_whole, c_whole = layer(x, initial_state=[h0, c0], training=True)
    h, c, chunks = h0, c0, []
    for begin in range(0, 20, 5):
        y, h, c = layer(x[:, begin:begin + 5], initial_state=[h, c], training=True)
        chunks.append(y)
    # the layer hands its state over in bf16 (Keras' contract), so each boundary rounds h and c once more
    for a, b in [(tf.concat(chunks, axis=1), whole), (h, h_whole), (c, c_whole)]:
        np.testing.assert_allclose(tf.cast(a, tf.float32), tf.cast(b, tf.float32), atol=BF16_TOL)


def bf16_stacks(num_layers=2):
    refs, fasts, embeddings = stacks(num_layers)
    return refs, [bf16_like(layer) for layer in fasts], embeddings


def test_bf16_wavefront_stack_matches_fp32_stock_layers(stock_loop_calls):
    refs, fasts, embeddings = bf16_stacks()
    rng = np.random.default_rng(3)
    ids = tf.constant(rng.integers(0, VOCAB, size=(BATCH, TIME)), tf.int32)  # (batch, time)
    states = [tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32) for _ in range(4)]

    def wavefront(ids, embeddings, layers, states, between):
        return lstm_stack(ids, embeddings, layers, states, between, chunks=3)

    ref_out, ref_grads = stack_outputs_and_grads(stock_stack, ids, embeddings, refs, states)
    fast_out, fast_grads = stack_outputs_and_grads(wavefront, ids, embeddings, fasts, states)
    assert "FastLSTM" not in stock_loop_calls
    assert fast_out[0].dtype == tf.bfloat16 and all(s.dtype == tf.float32 for s in fast_out[1:])  # fp32 state
    assert_close_in_bf16(fast_out, fast_grads, ref_out, ref_grads)
    # and no less accurate than Keras' own mixed_bfloat16 LSTM, whose cell state and gates are bf16
    keras_out, keras_grads = stack_outputs_and_grads(
        stock_stack, ids, embeddings, [bf16_like(layer, keras.layers.LSTM) for layer in refs], states)
    keras_errors = bf16_errors(keras_out, keras_grads, ref_out, ref_grads)
    assert max(bf16_errors(fast_out, fast_grads, ref_out, ref_grads).values()) <= max(keras_errors.values())


def test_bf16_stack_carrying_state_across_calls_equals_the_whole_sequence():
    """torch-rnn's stateful training in bf16: batches that continue each other, the state carried between
    them (in fp32, as CharRNN carries it), give what one call over the whole sequence gives."""
    _, fasts, embeddings = bf16_stacks()
    rng = np.random.default_rng(6)
    ids = tf.constant(rng.integers(0, VOCAB, size=(BATCH, 20)), tf.int32)
    states = [tf.constant(rng.normal(size=(BATCH, UNITS)), tf.float32) for _ in range(4)]
    whole, whole_states = lstm_stack(ids, embeddings, fasts, states, chunks=1)
    pieces, carried = [], states
    for begin in range(0, 20, 5):
        out, carried = lstm_stack(ids[:, begin:begin + 5], embeddings, fasts, carried, chunks=2)
        pieces.append(out)
    # the same ops on the same values, except that matmuls over fewer rows may sum in another order: each
    # output may differ by a rounding or two of bf16 (2**-8 near 1), and that feeds the later steps
    for a, b in zip([tf.concat(pieces, axis=1), *carried], [whole, *whole_states]):
        np.testing.assert_allclose(tf.cast(a, tf.float32), tf.cast(b, tf.float32), atol=BF16_TOL)


def test_bf16_inference_takes_the_fast_path_with_an_fp32_cell_state(stock_loop_calls):
    """Validation under --precision bf16: Keras' own loop would carry c in bf16 over the whole sequence; the fast
    path carries it in fp32, so a long sequence stays within the per-step bf16 tolerance of fp32."""
    _, fast = pair(return_sequences=True, return_state=True)
    bf16 = bf16_like(fast)
    assert bf16.trains_fast(training=False) and not fast.trains_fast(training=False)
    x, h0, c0 = inputs(time=200)
    ref = fast(x, initial_state=[h0, c0], training=False)  # fp32 inference: the stock loop
    stock_loop_calls.clear()
    out = bf16(x, initial_state=[h0, c0], training=False)
    assert "FastLSTM" not in stock_loop_calls
    errors = [np.abs(np.asarray(tf.cast(a, tf.float32)) - np.asarray(b)).max() for a, b in zip(out, ref)]
    assert max(errors) < BF16_TOL and errors[0] > 1e-4, errors
