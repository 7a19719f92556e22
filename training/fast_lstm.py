"""FastLSTM: keras.layers.LSTM with a faster training path on CPU.

On CPU, Keras' TensorFlow backend trains an LSTM through its generic RNN loop: every time step multiplies
x_t @ kernel as well as h @ recurrent_kernel, and autodiff through the tf.while_loop accumulates the weight
gradients step by step with small matmuls. FastLSTM keeps the layer (weights, config, serialization) and
replaces only that loop when training in the plain configuration:

- the input projection of all time steps is one large matmul, x @ kernel + bias, before the loop;
- the loop does only h @ recurrent_kernel and the gate arithmetic;
- a hand-written backward pass (tf.custom_gradient) runs a reverse loop that carries only (dh, dc) and
  emits each step's gate gradients; the weight gradients are then single large matmuls over all
  (time * batch) rows: d_recurrent_kernel = H_prev^T @ dGates, d_kernel = X^T @ dGates,
  d_bias = sum(dGates), d_inputs = dGates @ kernel^T.

CharRNN trains a stack of these layers through lstm_stack (below), which adds two things for the embedded
first layer and the stack as a whole:

- the first layer's input projection is a per-token table, embeddings @ kernel + bias (vocab rows), looked
  up inside the loop, instead of a (time*batch, embedding) @ (embedding, 4*units) matmul;
- the sequence is cut into a few time chunks carrying (h, c), so that layer 2 runs chunk k while layer 1
  runs chunk k+1 (and the reverse in the backward pass): each step's matmul is too small to keep two cores
  busy, two loops side by side do (a wavefront over layers and time).

The two loops are XLA-compiled on their own (tf.function(jit_compile=True)): XLA fuses each step's ~20
gate ops into a few kernels and keeps the per-step tensors in preallocated buffers, and its per-step matmul
is fastest in the transposed form used below, (4*units, units) @ (units, batch). The large matmuls stay in
TensorFlow (oneDNN), which runs them faster than XLA does; so the caller's train step needs no jit_compile
(XLA-compiling the whole step was measured slower on CPU).

Same math in fp32 as keras.layers.LSTM. Anything else takes the stock path unchanged: a visible GPU (where
cuDNN runs), inference in fp32 (no gradient needed, and XLA would recompile for every new sequence length), a
mask, dropout or recurrent dropout while training, other activations, no bias, unroll, go_backwards, a
compute dtype other than float32 or bfloat16.

Under Keras' mixed_bfloat16 policy (compute bfloat16, variables float32) the same path runs its matmuls in
bf16: the large ones (input projection, H^T @ dGates, X^T @ dGates, dGates @ kernel^T) through TensorFlow's
oneDNN kernels, which accumulate in fp32 and round the result to bf16 (measured 1.4-1.9x fp32 at these
shapes on an AVX512-BF16 CPU). The cell state, the gate arithmetic, the bias and each step's h and dh stay
fp32; only a matmul's operands are bf16. The loops are then TensorFlow while_loops whose per-step matmul is
oneDNN's, in bf16, and whose per-step gate arithmetic is a small XLA cluster: XLA's CPU matmul is no faster
in bf16 than in fp32, oneDNN's is, and XLA still fuses the ~20 gate ops (measured side by side on the medium
shape: bf16 in fp32 XLA loops < bf16 plain-TensorFlow loops < this; docs/training.md, "bf16 or fp32"). They
keep Keras' (batch, units) layout, the one oneDNN's matmul wants. The first layer's table and the d_table sum
stay fp32 (a few vocab rows, and a sum of ~time*batch/vocab rows per id that bf16 would round away).
"""
import keras
import tensorflow as tf


def _buffer(dtype, size):
    return tf.TensorArray(dtype, size=size, clear_after_read=False)


def _run_forward(steps, step_input, h0, c0, recurrent_kernel, dtype):
    """The loop shared by both forward functions below; step_input(t) is x_t @ kernel + bias as
    (4*units, batch)."""
    rk_t = tf.transpose(recurrent_kernel)  # (4*units, units)

    # Inside the loop h and c are (units, batch): the (4*units, units) @ (units, batch) matmul is faster
    # than (batch, units) @ (units, 4*units) here, and each gate is then a contiguous row block.
    def step(t, h, c, hs, cs, gates):
        z = step_input(t) + tf.matmul(rk_t, h)  # (4*units, batch)
        i, f, g, o = tf.split(z, 4, axis=0)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c = f * c + i * g
        h = o * tf.tanh(c)
        # gate activations are kept so that the backward pass never re-runs a matmul
        return (t + 1, h, c, hs.write(t + 1, tf.transpose(h)), cs.write(t + 1, c),
                gates.write(t, tf.concat([i, f, g, o], axis=0)))

    # h and c buffers hold the initial state at index 0: step t finds its predecessor at t
    hs = _buffer(dtype, steps + 1).write(0, h0)
    cs = _buffer(dtype, steps + 1).write(0, tf.transpose(c0))
    _, h, c, hs, cs, gates = tf.while_loop(
        lambda t, *_: t < steps, step, maximum_iterations=steps,
        loop_vars=(0, tf.transpose(h0), tf.transpose(c0), hs, cs, _buffer(dtype, steps)))
    # hs (time+1, batch, units), cs (time+1, units, batch), gates (time, 4*units, batch)
    return hs.stack(), cs.stack(), gates.stack(), tf.transpose(h), tf.transpose(c)


@tf.function(jit_compile=True)
def _forward_loop(xp, h0, c0, recurrent_kernel):
    """xp (time, batch, 4*units), h0 and c0 (batch, units) -> every step's h, c and gate activations."""
    return _run_forward(tf.shape(xp)[0], lambda t: tf.transpose(xp[t]), h0, c0, recurrent_kernel, xp.dtype)


@tf.function(jit_compile=True)
def _forward_loop_from_ids(ids, table, h0, c0, recurrent_kernel):
    """ids (time, batch) index rows of table (vocab, 4*units); otherwise as _forward_loop."""
    table_t = tf.transpose(table)  # (4*units, vocab): a step's input is a gather of columns, no transpose
    return _run_forward(tf.shape(ids)[0], lambda t: tf.gather(table_t, ids[t], axis=1), h0, c0,
                        recurrent_kernel, table.dtype)


@tf.function(jit_compile=True)
def _backward_loop(gates, cs, d_hs, d_h, d_c, recurrent_kernel):
    """Reverse loop: carries (dh, dc), emits dGates (time, batch, 4*units); also returns d_h0, d_c0."""
    steps = tf.shape(gates)[0]

    def step(t, dh, dc, d_gates):
        i, f, g, o = tf.split(gates[t], 4, axis=0)  # (units, batch) each
        tanh_c = tf.tanh(cs[t + 1])
        dh = dh + tf.transpose(d_hs[t])  # the gradient reaching h_t from the layer's output at t
        dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
        dz = tf.concat([dc * g * i * (1.0 - i),  # through the sigmoid of each gate, tanh of g
                        dc * cs[t] * f * (1.0 - f),
                        dc * i * (1.0 - g * g),
                        dh * tanh_c * o * (1.0 - o)], axis=0)  # (4*units, batch)
        return t - 1, tf.matmul(recurrent_kernel, dz), dc * f, d_gates.write(t, tf.transpose(dz))

    _, dh, dc, d_gates = tf.while_loop(
        lambda t, *_: t >= 0, step, maximum_iterations=steps,
        loop_vars=(steps - 1, tf.transpose(d_h), tf.transpose(d_c), _buffer(gates.dtype, steps)))
    return d_gates.stack(), tf.transpose(dh), tf.transpose(dc)


BF16 = tf.bfloat16


@tf.function(jit_compile=True)
def _gates_bf16(x_t, bias, z_recurrent, c):
    """One forward step's gate arithmetic in fp32, fused by XLA: x_t (+ bias, unless None) and z_recurrent
    (batch, 4*units), c (batch, units) -> the new h (fp32 and bf16), c, and the gate activations
    (batch, 4*units)."""
    z = tf.cast(x_t, tf.float32) + tf.cast(z_recurrent, tf.float32)
    i, f, g, o = tf.split(z if bias is None else tf.nn.bias_add(z, bias), 4, axis=1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g  # fp32: the cell state sums over many steps, bf16 would round it away
    h = o * tf.tanh(c)
    return h, tf.cast(h, BF16), c, tf.concat([i, f, g, o], axis=1)


@tf.function
def _forward_loop_bf16(xp, ids, table, bias, h0, c0, recurrent_kernel):
    """The bf16 forward loop, in (batch, units) layout: each step's matmul in TensorFlow (oneDNN, bf16), its
    gate arithmetic an XLA cluster (_gates_bf16); see the module docstring.

    Step t's input is xp[t] + bias, xp (time, batch, 4*units) = x @ kernel in bf16, or with xp None, rows
    ids[t] of table (vocab, 4*units) fp32; h0, c0 (batch, units) fp32; recurrent_kernel (units, 4*units) bf16.
    -> hs (time+1, batch, units) bf16, cs (time+1, batch, units) fp32, gates (time, batch, 4*units) fp32,
    and the last h and c in fp32.
    """
    steps = tf.shape(ids if xp is None else xp)[0]

    def step(t, h, h_bf16, c, hs, cs, gates):
        x_t = tf.gather(table, ids[t]) if xp is None else xp[t]
        # bf16 operands, summed in fp32 by oneDNN, the result rounded to bf16 (as every bf16 matmul here)
        z_recurrent = tf.matmul(h_bf16, recurrent_kernel)
        h, h_bf16, c, step_gates = _gates_bf16(x_t, bias, z_recurrent, c)
        return t + 1, h, h_bf16, c, hs.write(t + 1, h_bf16), cs.write(t + 1, c), gates.write(t, step_gates)

    h0_bf16 = tf.cast(h0, BF16)
    hs = _buffer(BF16, steps + 1).write(0, h0_bf16)
    cs = _buffer(tf.float32, steps + 1).write(0, c0)
    _, h, _, c, hs, cs, gates = tf.while_loop(
        lambda t, *_: t < steps, step, maximum_iterations=steps,
        loop_vars=(0, h0, h0_bf16, c0, hs, cs, _buffer(tf.float32, steps)))
    return hs.stack(), cs.stack(), gates.stack(), h, c


@tf.function(jit_compile=True)
def _gate_gradients_bf16(gates_t, c_prev, c_t, dh, dc, d_output):
    """One reverse step's gate arithmetic in fp32, fused by XLA -> dGates (batch, 4*units) in bf16 (the
    operand of the matmuls that use it) and the dc reaching the step before."""
    i, f, g, o = tf.split(gates_t, 4, axis=1)  # (batch, units) each
    tanh_c = tf.tanh(c_t)
    dh = dh + tf.cast(d_output, tf.float32)  # the gradient reaching h_t from the layer's output at t
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    dz = tf.concat([dc * g * i * (1.0 - i),  # through the sigmoid of each gate, tanh of g
                    dc * c_prev * f * (1.0 - f),
                    dc * i * (1.0 - g * g),
                    dh * tanh_c * o * (1.0 - o)], axis=1)
    return tf.cast(dz, BF16), dc * f


@tf.function
def _backward_loop_bf16(gates, cs, d_hs, d_h, d_c, recurrent_kernel):
    """The bf16 reverse loop, as _forward_loop_bf16: carries (dh, dc) in fp32, emits dGates (time, batch,
    4*units) in bf16; also returns d_h0, d_c0 in fp32."""
    steps = tf.shape(gates)[0]

    def step(t, dh, dc, d_gates):
        dz, dc = _gate_gradients_bf16(gates[t], cs[t], cs[t + 1], dh, dc, d_hs[t])
        dh = tf.cast(tf.matmul(dz, recurrent_kernel, transpose_b=True), tf.float32)
        return t - 1, dh, dc, d_gates.write(t, dz)

    _, dh, dc, d_gates = tf.while_loop(
        lambda t, *_: t >= 0, step, maximum_iterations=steps,
        loop_vars=(steps - 1, d_h, d_c, _buffer(BF16, steps)))
    return d_gates.stack(), dh, dc


def _gradients(hs, cs, gates, h0, c0, recurrent_kernel, d_outputs, d_h, d_c):
    """The backward loop and the recurrent kernel's gradient, shared by both sequence functions.
    Returns dGates (time*batch, 4*units), d_recurrent_kernel, d_h0, d_c0."""
    units = recurrent_kernel.shape[0]
    d_outputs = tf.zeros_like(hs[1:]) if d_outputs is None else d_outputs
    d_h = tf.zeros_like(h0) if d_h is None else tf.cast(d_h, tf.float32)
    d_c = tf.zeros_like(c0) if d_c is None else tf.cast(d_c, tf.float32)
    loop = _backward_loop_bf16 if recurrent_kernel.dtype == BF16 else _backward_loop
    d_gates, d_h0, d_c0 = loop(*map(tf.stop_gradient, (gates, cs, d_outputs, d_h, d_c, recurrent_kernel)))
    d_gates = tf.reshape(d_gates, (-1, 4 * units))  # (time*batch, 4*units), bf16 in the bf16 path
    h_prev = tf.reshape(hs[:-1], (-1, units))  # (time*batch, units): h_{t-1} of each row
    return d_gates, tf.matmul(h_prev, d_gates, transpose_a=True), d_h0, d_c0


def lstm_sequence(x, kernel, bias, recurrent_kernel, h0, c0):
    """The LSTM over a time-major sequence with a hand-written gradient. Gate order i, f, c, o (Keras').

    x (time, batch, input_dim), kernel (input_dim, 4*units), bias (4*units,),
    recurrent_kernel (units, 4*units), h0 and c0 (batch, units) -> outputs (time, batch, units), h, c.
    A bf16 recurrent_kernel selects the bf16 path: x and kernel are then bf16 too, the outputs bf16, and h
    and c come back fp32 (the bias, h0 and c0 may be either; they are used in fp32).
    """
    if recurrent_kernel.dtype == BF16:
        return _lstm_sequence_bf16(x, kernel, bias, recurrent_kernel, h0, c0)

    @tf.custom_gradient
    def run(x, kernel, bias, recurrent_kernel, h0, c0):
        steps, batch, units = tf.shape(x)[0], tf.shape(x)[1], recurrent_kernel.shape[0]
        x2 = tf.reshape(x, (-1, x.shape[-1]))  # (time*batch, input_dim)
        xp = tf.reshape(tf.nn.bias_add(tf.matmul(x2, kernel), bias), (steps, batch, 4 * units))
        # the loops are differentiated by hand (grad below): keep the tape out of them
        hs, cs, gates, h, c = _forward_loop(*map(tf.stop_gradient, (xp, h0, c0, recurrent_kernel)))

        def grad(d_outputs, d_h, d_c):
            d_gates, d_recurrent_kernel, d_h0, d_c0 = _gradients(
                hs, cs, gates, h0, c0, recurrent_kernel, d_outputs, d_h, d_c)
            d_kernel = tf.matmul(x2, d_gates, transpose_a=True)
            # a (1, rows) @ (rows, 4*units) matmul sums the rows several times faster than reduce_sum
            d_bias = tf.matmul(tf.ones((1, tf.shape(d_gates)[0]), d_gates.dtype), d_gates)[0]
            d_x = tf.matmul(d_gates, kernel, transpose_b=True)  # (time*batch, input_dim)
            return (tf.reshape(d_x, tf.shape(x)), d_kernel, d_bias, d_recurrent_kernel, d_h0, d_c0)

        return (hs[1:], h, c), grad

    return run(x, kernel, bias, recurrent_kernel, h0, c0)


def _like(grads, tensors):
    """Each gradient in its tensor's dtype (tf.custom_gradient requires it)."""
    return tuple(tf.cast(g, t.dtype) for g, t in zip(grads, tensors))


def _lstm_sequence_bf16(x, kernel, bias, recurrent_kernel, h0, c0):
    """lstm_sequence's bf16 path: bf16 matmuls, fp32 cell state, gates, bias and carried (h, c)."""

    @tf.custom_gradient
    def run(x, kernel, bias, recurrent_kernel, h0, c0):
        inputs = (x, kernel, bias, recurrent_kernel, h0, c0)
        x, kernel = tf.cast(x, BF16), tf.cast(kernel, BF16)
        bias32, h0, c0 = (tf.cast(t, tf.float32) for t in (bias, h0, c0))
        x2 = tf.reshape(x, (-1, x.shape[-1]))  # (time*batch, input_dim) bf16
        xp = tf.reshape(tf.matmul(x2, kernel), (tf.shape(x)[0], tf.shape(x)[1], -1))  # (time, batch, 4*units) bf16
        hs, cs, gates, h, c = _forward_loop_bf16(
            tf.stop_gradient(xp), None, None, *map(tf.stop_gradient, (bias32, h0, c0, recurrent_kernel)))

        def grad(d_outputs, d_h, d_c):
            d_gates, d_recurrent_kernel, d_h0, d_c0 = _gradients(
                hs, cs, gates, h0, c0, recurrent_kernel, d_outputs, d_h, d_c)  # d_gates bf16
            d_kernel = tf.matmul(x2, d_gates, transpose_a=True)
            d_bias = tf.matmul(tf.ones((1, tf.shape(d_gates)[0]), BF16), d_gates)[0]  # summed in fp32, rounded once
            d_x = tf.matmul(d_gates, kernel, transpose_b=True)  # (time*batch, input_dim)
            return _like((tf.reshape(d_x, tf.shape(x)), d_kernel, d_bias, d_recurrent_kernel, d_h0, d_c0),
                         inputs)

        return (hs[1:], h, c), grad

    return run(x, kernel, bias, recurrent_kernel, h0, c0)


def lstm_sequence_from_ids(ids, table, recurrent_kernel, h0, c0):
    """The LSTM over embedded token ids, given each token's input projection.

    ids (time, batch) int, table (vocab, 4*units) = embeddings @ kernel + bias: x_t @ kernel + bias is
    row ids[t] of the table, so the projection costs vocab rows instead of time*batch and its gradient is
    a sum of dGates rows per id. -> outputs (time, batch, units), h, c, as lstm_sequence (a bf16
    recurrent_kernel selects the bf16 path there too; the table stays fp32).
    """
    bf16 = recurrent_kernel.dtype == BF16

    @tf.custom_gradient
    def run(table, recurrent_kernel, h0, c0):
        inputs = (table, recurrent_kernel, h0, c0)
        if bf16:
            table32, h0, c0 = (tf.cast(t, tf.float32) for t in (table, h0, c0))
            table32, h0, c0, rk = map(tf.stop_gradient, (table32, h0, c0, recurrent_kernel))
            hs, cs, gates, h, c = _forward_loop_bf16(None, ids, table32, None, h0, c0, rk)
        else:
            hs, cs, gates, h, c = _forward_loop_from_ids(
                ids, *map(tf.stop_gradient, (table, h0, c0, recurrent_kernel)))

        def grad(d_outputs, d_h, d_c):
            d_gates, d_recurrent_kernel, d_h0, d_c0 = _gradients(
                hs, cs, gates, h0, c0, recurrent_kernel, d_outputs, d_h, d_c)
            d_table = tf.math.unsorted_segment_sum(tf.cast(d_gates, table.dtype), tf.reshape(ids, (-1,)),
                                                   tf.shape(table)[0])
            return _like((d_table, d_recurrent_kernel, d_h0, d_c0), inputs)

        return (hs[1:], h, c), grad

    return run(table, recurrent_kernel, h0, c0)


def _is(fn, *candidates):
    return any(fn is c for c in candidates)


@keras.saving.register_keras_serializable(package="charlm")
class FastLSTM(keras.layers.LSTM):
    """keras.layers.LSTM, with the fast CPU training path of this module's docstring."""

    def trains_fast(self, mask=None, training=False) -> bool:
        """Whether this call takes the fast path (else keras.layers.LSTM's own loop runs)."""
        cell = self.cell
        return bool(
            # In bf16 inference (validation) too: Keras' own loop would keep the cell state in bf16, rounding
            # away what it sums over hundreds of steps; this path keeps it fp32, and its XLA parts are per step,
            # so a new sequence length recompiles nothing.
            (training or self.compute_dtype == "bfloat16")
            and keras.backend.backend() == "tensorflow"
            and not tf.config.list_logical_devices("GPU")  # cuDNN is faster still: keep it
            and mask is None
            and not cell.dropout and not cell.recurrent_dropout
            and _is(cell.activation, keras.activations.tanh, tf.tanh, tf.nn.tanh, keras.ops.tanh)
            and _is(cell.recurrent_activation, keras.activations.sigmoid, tf.sigmoid, tf.nn.sigmoid,
                    keras.ops.sigmoid)
            and cell.use_bias
            and not self.unroll
            and not self.go_backwards
            and self.compute_dtype in ("float32", "bfloat16")  # bfloat16: Keras' mixed_bfloat16 policy
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if keras.tree.is_nested(mask):
            mask = mask[0]
        if not self.trains_fast(mask, training):
            return super().inner_loop(sequences, initial_state, mask, training=training)

        cell = self.cell
        # inside the layer's call Keras reads every variable in the compute dtype (bf16 under mixed_bfloat16),
        # which selects lstm_sequence's bf16 path; it hands back h and c in fp32, Keras' contract is the
        # compute dtype
        outputs, h, c = lstm_sequence(
            tf.transpose(sequences, (1, 0, 2)),  # (time, batch, input_dim)
            tf.convert_to_tensor(cell.kernel), tf.convert_to_tensor(cell.bias),
            tf.convert_to_tensor(cell.recurrent_kernel), initial_state[0], initial_state[1])
        h, c = tf.cast(h, self.compute_dtype), tf.cast(c, self.compute_dtype)
        if self.return_sequences:
            outputs = tf.transpose(outputs, (1, 0, 2))  # (batch, time, units)
            outputs.set_shape(sequences.shape[:2] + (self.units,))
        else:
            outputs = h[:, None]  # (batch, 1, units): what keras' rnn() returns for the last step only
        # the contract of keras' rnn(): (last output, outputs, states)
        return h, outputs, [h, c]


def lstm_stack(ids, embeddings, layers, states, between=None, chunks=5):
    """A stack of FastLSTM layers over embedded token ids, run as a wavefront over time chunks.

    Each layer's sequence is cut into `chunks` pieces that carry (h, c) from one to the next. TensorFlow runs
    an op as soon as its inputs exist, so layer l+1 works on chunk k while layer l works on chunk k+1, and the
    backward pass mirrors that: two XLA loops at once keep both cores busier than one loop that splits each
    small step across them (measured: two concurrent loops take ~0.7x the time of the same two in a row).
    The first layer's input projection is a per-token table (lstm_sequence_from_ids). Same results as
    calling the layers one after the other on the whole sequence.

    ids (batch, time) int; embeddings (vocab, embedding); layers: FastLSTMs with trains_fast(training=True);
    states: flat [h, c] per layer, each (batch, units); between(i, x) is applied to layer i's output chunk
    (time, batch, units) before the next layer reads it (dropout).
    -> the last layer's outputs (batch, time, units) and the new flat state list.
    Layers with a bfloat16 compute dtype (mixed_bfloat16) take the bf16 path: their outputs are bf16, the
    states stay fp32 (in and out), the first layer's table fp32.
    """
    steps = ids.shape[1]
    chunks = max(1, min(chunks, steps or 1))  # an unknown length runs as one chunk
    bounds = [round(k * steps / chunks) for k in range(chunks + 1)] if steps else [0, None]
    ids = tf.transpose(ids)  # (time, batch)
    pieces = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    new_states = []
    for i, layer in enumerate(layers):
        cell = layer.cell
        kernel, bias, recurrent_kernel = (tf.convert_to_tensor(w) for w in
                                          (cell.kernel, cell.bias, cell.recurrent_kernel))
        if i == 0:
            table = tf.nn.bias_add(tf.matmul(embeddings, kernel), bias)  # (vocab, 4*units)
        if layer.compute_dtype == "bfloat16":
            # cast once for all chunks; autodiff casts each chunk's gradient back and sums it in fp32
            kernel, recurrent_kernel = tf.cast(kernel, BF16), tf.cast(recurrent_kernel, BF16)
        h, c = states[2 * i], states[2 * i + 1]
        outputs = []
        for piece in pieces:
            if i == 0:
                out, h, c = lstm_sequence_from_ids(piece, table, recurrent_kernel, h, c)
            else:
                out, h, c = lstm_sequence(piece, kernel, bias, recurrent_kernel, h, c)
            outputs.append(between(i, out) if between else out)  # (chunk, batch, units)
        pieces = outputs
        new_states += [h, c]
    return tf.transpose(tf.concat(pieces, axis=0), (1, 0, 2)), new_states
