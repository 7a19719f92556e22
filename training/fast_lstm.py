"""FastLSTM: keras.layers.LSTM with a faster CPU training path.

Keras' TF backend runs the generic RNN loop on CPU: every time step multiplies
x_t @ kernel and h @ recurrent_kernel, and autodiff through the tf.while_loop
accumulates the weight gradients step by step with small matmuls. Here, in the
plain configuration, the input projection of all time steps is one big matmul,
the loop does only h @ recurrent_kernel, and a hand-written backward pass runs a
reverse loop that only carries (dh, dc) and emits per-step gate gradients; the
weight gradients then come from single large matmuls over all time steps.

Same weights, same config, same math (fp32) as keras.layers.LSTM; anything that
is not the plain configuration (and any machine with a GPU, where cuDNN runs)
takes the stock path.
"""
import keras
import tensorflow as tf
from keras import activations


def _is(fn, *candidates):
    return any(fn is c for c in candidates)


def _lstm_forward_backward(xp, h0, c0, rk):
    """The recurrence with a hand-written gradient.

    xp: (time, batch, 4*units) input projection x @ kernel + bias, gates i, f, c, o
    h0, c0: (batch, units) initial state
    rk: (units, 4*units) recurrent kernel
    Returns hs (time, batch, units), h_T, c_T.
    """

    @tf.custom_gradient
    def recurrence(xp, h0, c0, rk):
        steps = tf.shape(xp)[0]
        units = tf.shape(h0)[-1]

        def step(t, h, c, hs, cs, gates):
            z = xp[t] + tf.matmul(h, rk)  # (batch, 4*units)
            i, f, g, o = tf.split(z, 4, axis=-1)
            i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
            c = f * c + i * g
            h = o * tf.tanh(c)
            # activations are kept so the backward pass never re-runs a matmul
            return (t + 1, h, c, hs.write(t, h), cs.write(t, c),
                    gates.write(t, tf.concat([i, f, g, o], axis=-1)))

        ta = lambda: tf.TensorArray(xp.dtype, size=steps)
        _, hT, cT, hs, cs, gates = tf.while_loop(
            lambda t, *_: t < steps, step,
            (tf.constant(0), h0, c0, ta(), ta(), ta()))
        hs, cs, gates = hs.stack(), cs.stack(), gates.stack()  # (time, batch, ·)

        def grad(d_hs, d_hT, d_cT):
            d_hs = tf.zeros_like(hs) if d_hs is None else d_hs
            d_hT = tf.zeros_like(h0) if d_hT is None else d_hT
            d_cT = tf.zeros_like(c0) if d_cT is None else d_cT
            # c_{t-1} for every step: (time, batch, units)
            c_prev = tf.concat([c0[None], cs[:-1]], axis=0)
            rk_t = tf.transpose(rk)  # (4*units, units), transposed once, not per step

            def back(t, dh, dc, dz_ta):
                i, f, g, o = tf.split(gates[t], 4, axis=-1)
                tc = tf.tanh(cs[t])
                dh = dh + d_hs[t]
                dc = dc + dh * o * (1.0 - tc * tc)
                dz = tf.concat([
                    dc * g * i * (1.0 - i),
                    dc * c_prev[t] * f * (1.0 - f),
                    dc * i * (1.0 - g * g),
                    dh * tc * o * (1.0 - o),
                ], axis=-1)  # (batch, 4*units)
                return t - 1, tf.matmul(dz, rk_t), dc * f, dz_ta.write(t, dz)

            _, dh0, dc0, dz = tf.while_loop(
                lambda t, *_: t >= 0, back,
                (steps - 1, d_hT, d_cT, tf.TensorArray(xp.dtype, size=steps)))
            dz = dz.stack()  # (time, batch, 4*units)
            # h_{t-1} for every step, flattened over (time*batch) so the weight
            # gradient is one large matmul instead of one small matmul per step
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], axis=0), (-1, units))
            d_rk = tf.matmul(h_prev, tf.reshape(dz, (-1, 4 * units)), transpose_a=True)
            return dz, dh0, dc0, d_rk

        return (hs, hT, cT), grad

    return recurrence(xp, h0, c0, rk)


@keras.saving.register_keras_serializable(package="charlm")
class FastLSTM(keras.layers.LSTM):
    """Drop-in keras.layers.LSTM; see the module docstring."""

    def _fast_path_ok(self, mask, training):
        cell = self.cell
        return (
            keras.backend.backend() == "tensorflow"
            and not tf.config.list_logical_devices("GPU")  # cuDNN is faster still
            and mask is None
            and not (training and (cell.dropout or cell.recurrent_dropout))
            and _is(cell.activation, activations.tanh, tf.tanh, keras.ops.tanh)
            and _is(cell.recurrent_activation, activations.sigmoid, tf.sigmoid,
                    keras.ops.sigmoid)
            and cell.use_bias
            and not self.unroll
            and not self.go_backwards
        )

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if keras.tree.is_nested(mask):
            mask = mask[0]
        if not self._fast_path_ok(mask, training):
            return super().inner_loop(sequences, initial_state, mask, training=training)

        cell = self.cell
        kernel = tf.convert_to_tensor(cell.kernel)  # (input_dim, 4*units)
        x = tf.transpose(sequences, (1, 0, 2))  # (time, batch, input_dim): loop reads x[t]
        xp = tf.tensordot(x, kernel, 1) + tf.convert_to_tensor(cell.bias)  # (time, batch, 4*units)
        hs, h, c = _lstm_forward_backward(
            xp, initial_state[0], initial_state[1],
            tf.convert_to_tensor(cell.recurrent_kernel))
        if self.return_sequences:
            outputs = tf.transpose(hs, (1, 0, 2))  # (batch, time, units)
        else:
            outputs = h[:, None]  # (batch, 1, units), as keras' rnn() returns
        return h, outputs, [h, c]
