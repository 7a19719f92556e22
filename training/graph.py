"""The exported graph: a tf.Module whose tf.functions are a version's four signatures (generate, score,
activations, metadata), holding plain tf.Variable copies of a CharRNN's weights — no Keras needed to load it.

Text in, text out (the vocabulary is a lookup table inside the graph); the recurrent state in and out of every
call as one float32 [batch, state_size] row per stream: per layer h (and c for LSTM), then the position, which
keys the sampler (training/sampler.py). Inputs and outputs are model_interface.signatures'.

Precision "bf16" stores bfloat16 copies of the weights the generation loop reads (embedding table, layer
kernels with their biases, head kernel) and multiplies them in bf16, through oneDNN; the state, the gate
arithmetic, the head's product and everything the sampler does stay float32, so the signatures are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from model_interface import signatures
from model_interface.metadata import ModelMetadata
from training import sampler
from training.precision import PRECISIONS  # how a version stores and multiplies its weights

TIME_PADDING = 16  # texts are read padded to a multiple of this many characters (encode)
SEQUENCE_PIECE = 64  # an LSTM reads a text in pieces of at most this many characters (a multiple of TIME_PADDING)


def longest_of(lengths):
    return tf.reduce_max(tf.concat([lengths, [0]], 0))  # 0 for an empty batch

FUSED_CELL_MAX_BATCH = 4  # up to this many rows, two LSTMBlockCell ops per layer beat separate ops
# bf16 keeps each kernel as blocks of this many output units: independent products that TensorFlow can run
# side by side on the cores (whole, one product runs oneDNN's bf16 kernel on two threads, which scaled badly
# in the measurements for one stream).
BF16_BLOCK_UNITS = 512
# Past this many rows a bf16 LSTM multiplies each layer's whole kernel, stored a second time (in, 4 * units):
# measured on AMD EPYC (AVX512-BF16), the whole product is 1.0-1.4x as fast as the blocks from 6 rows up and
# 0.4-0.7x at 1-3 (about even at 4). Both layouts give the same bf16 sums bit for bit, so a row's text does not
# depend on the path (the tests check a row alone and in batches on either side).
BF16_BLOCKS_MAX_BATCH = 4


@dataclass(frozen=True)
class ModelShape:
    cell: str  # lstm | gru | rnn
    num_layers: int
    hidden_size: int
    embedding_size: int
    vocab_size: int

    @classmethod
    def of(cls, model) -> "ModelShape":
        return cls(model.cell, model.num_layers, model.hidden_size, model.embedding.output_dim, model.vocab_size)

    @property
    def per_layer(self) -> int:
        return 2 if self.cell == "lstm" else 1

    @property
    def state_size(self) -> int:
        return ModelMetadata.state_size_for(self.cell, self.num_layers, self.hidden_size)

    @property
    def trace_width(self) -> int:
        """Columns of one character's activations trace: every state, then (LSTM) the four gates per layer."""
        gates = self.num_layers * 4 * self.hidden_size if self.cell == "lstm" else 0
        return self.num_layers * self.per_layer * self.hidden_size + gates


class CharLMGraph(tf.Module):
    """Built empty for a shape and vocabulary; `assign_weights` copies a CharRNN's weights in (at export, and
    after each training epoch for the epoch's sample, which runs this same graph)."""

    def __init__(self, shape: ModelShape, vocab, metadata_json: str = "{}", precision: str = "fp32"):
        super().__init__(name="charlm")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.shape, self.precision = shape, precision
        # bf16: a kernel is stored (out, in), one variable, and multiplied in blocks of output units (at most
        # BF16_BLOCK_UNITS, none straddling two gates), each a run of its rows, as x @ block^T: oneDNN reads each
        # output unit's weights in one run (batch 64 measured 1.10x as fast as with (in, units) blocks, one stream
        # the same; Intel Xeon with AMX). Its sums are rounded to bf16 once, so a row's result must not depend on
        # the batch size (one row alone, or in a batch of 64): the tests check that a row's text and
        # log-probabilities are the same alone and batched. An LSTM's or RNN's bias is bf16 too, in the same
        # blocks, added inside the product (grappler fuses MatMul + BiasAdd into one oneDNN op; one stream's
        # generate measured 1.36x the plain product with a float32 bias added after, AMD EPYC); a GRU's stays
        # float32, added after.
        self.bf16 = precision == "bf16"
        self.weight_dtype = tf.bfloat16 if self.bf16 else tf.float32
        self.cell, self.hidden, self.layers, self.per_layer = shape.cell, shape.hidden_size, shape.num_layers, shape.per_layer
        self.state_size, self.trace_width = shape.state_size, shape.trace_width
        self.alternatives = min(signatures.MAX_LOGPROBS, shape.vocab_size)  # top characters reported per step
        self.chars = tf.constant(list(vocab))  # (vocab,)
        self.char_ids = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.chars, tf.range(shape.vocab_size, dtype=tf.int32)), -1)
        self.metadata_json = tf.constant(metadata_json)
        hidden, zeros = shape.hidden_size, lambda *dims: tf.zeros(dims)
        stored, stored_bias = self.new_kernel, self.new_bias
        self.embedding = tf.Variable(tf.zeros([shape.vocab_size, shape.embedding_size], self.weight_dtype),
                                     name="embedding")
        # One matmul per layer and step: [x, h] @ [kernel; recurrent_kernel]. GRU keeps the recurrent half
        # apart, as its reset gate scales the recurrent part of the candidate.
        self.kernels, self.recurrent_kernels, self.biases = [], [], []
        for i in range(shape.num_layers):
            n_in = shape.embedding_size if i == 0 else hidden
            if shape.cell == "gru":
                self.kernels.append(stored(n_in, 3 * hidden, "kernel"))
                self.recurrent_kernels.append(stored(hidden, 3 * hidden, "recurrent_kernel"))
                # input and recurrent biases (float32 at either precision)
                self.biases.append(tf.Variable(zeros(2, 3 * hidden), name="bias"))
            else:
                gates = 4 if shape.cell == "lstm" else 1
                self.kernels.append(stored(n_in + hidden, gates * hidden, "fused_kernel"))
                self.biases.append(stored_bias(gates * hidden, "bias"))
        self.half_kernels = self.wide_kernels = None
        if shape.cell == "lstm" and self.bf16:
            # Batches past BF16_BLOCKS_MAX_BATCH: each layer's kernel and bias whole, [x; h] (in, 4 * hidden).
            self.wide_kernels = [tf.Variable(tf.zeros([k.shape[1], 4 * hidden], tf.bfloat16), name="wide_kernel")
                                 for k in self.kernels]
            self.wide_biases = [tf.Variable(tf.zeros([4 * hidden], tf.bfloat16), name="wide_bias") for _ in self.kernels]
        if shape.cell == "lstm" and not self.bf16:  # LSTMBlockCell has no bf16 kernel
            # A single stream runs each layer as two LSTMBlockCell ops over half the units each (step_halves).
            self.half_kernels = [[tf.Variable(zeros(k.shape[0], 2 * hidden), name="half_kernel") for _ in (0, 1)]
                                 for k in self.kernels]
            self.half_biases = [[tf.Variable(zeros(2 * hidden), name="half_bias") for _ in (0, 1)] for _ in self.kernels]
        # bf16 stores the head as (hidden, vocab) too: it is multiplied in float32 (head_weights).
        self.head_kernel = tf.Variable(tf.zeros([hidden, shape.vocab_size], self.weight_dtype), name="head_kernel")
        self.head_bias = tf.Variable(zeros(shape.vocab_size), name="head_bias")

    def assign_weights(self, model) -> None:
        """Copy a CharRNN's weights in, in the layouts the graph's ops want (rounded to bf16 for a bf16 graph)."""
        def store(weight, value, by_output_unit=False):
            # bf16 kernels multiplied in blocks are stored (out, in): a block is a run of rows
            weight.assign(tf.cast(value.T if by_output_unit else value, weight.dtype))  # bf16: to nearest even

        store(self.embedding, model.embedding.embeddings.numpy())
        for i, layer in enumerate(model.recurrent):
            kernel, recurrent, bias = (w.numpy() for w in layer.cell.weights)
            if self.cell == "lstm":
                kernel, recurrent, bias = map(block_cell_gate_order, (kernel, recurrent, bias))
            if self.cell == "gru":
                store(self.kernels[i], kernel, self.bf16)
                store(self.recurrent_kernels[i], recurrent, self.bf16)
            else:
                store(self.kernels[i], np.concatenate([kernel, recurrent]), self.bf16)
            store(self.biases[i], bias)
            if self.wide_kernels is not None:
                store(self.wide_kernels[i], np.concatenate([kernel, recurrent]))
                store(self.wide_biases[i], bias)
            if self.half_kernels is not None:
                for own in (0, 1):
                    half_kernel, half_bias = half_cell_weights(self.kernels[i].numpy(), bias, self.hidden, own)
                    self.half_kernels[i][own].assign(half_kernel)
                    self.half_biases[i][own].assign(half_bias)
        store(self.head_kernel, model.head.kernel.numpy())
        self.head_bias.assign(model.head.bias.numpy())

    # --- products with the stored weights --------------------------------------------------------------
    def block_units(self, units: int) -> list[slice]:
        """Blocks of at most BF16_BLOCK_UNITS output units, none straddling two gates: a gate is then its
        block (or the concatenation of its blocks), with no split of the whole product."""
        gates = {"lstm": 4, "gru": 3}.get(self.cell, 1)
        per_gate = units // gates
        bounds = np.linspace(0, per_gate, -(-per_gate // BF16_BLOCK_UNITS) + 1).astype(int)
        return [slice(g * per_gate + a, g * per_gate + b) for g in range(gates) for a, b in zip(bounds[:-1], bounds[1:])]

    def new_kernel(self, n_in: int, n_out: int, name: str):
        """fp32 (in, out); bf16 (out, in), one variable that the loop splits into its blocks of rows (a split
        along the first axis shares the buffer): a loop carries every tensor it reads as a loop variable, and
        each costs three control-flow ops per character, so one per kernel instead of one per block."""
        if not self.bf16:
            return tf.Variable(tf.zeros([n_in, n_out]), name=name)
        return tf.Variable(tf.zeros([n_out, n_in], tf.bfloat16), name=name)

    def new_bias(self, n_out: int, name: str):
        return tf.Variable(tf.zeros([n_out], self.weight_dtype), name=name)

    def layer_weights(self, wide: bool = False):
        """What step() reads: the embedding table, then per layer (kernel, bias), GRU (kernel, bias, recurrent
        kernel, its bias); each read from its variable here, so a caller that loops reads them once per call,
        not once per character (a read is an op of its own in every iteration). wide: a bf16 LSTM's whole
        kernels instead of their blocks."""
        read = tf.convert_to_tensor
        if self.cell == "gru":
            layers = [(k, b[0], r, b[1]) for k, r, b in zip(self.kernels, self.recurrent_kernels, self.biases)]
        elif wide:
            layers = list(zip(self.wide_kernels, self.wide_biases))
        else:
            layers = list(zip(self.kernels, self.biases))
        return read(self.embedding), [tuple(read(w) for w in layer) for layer in layers], wide

    def half_weights(self):
        """step_halves' weights, read once per call as layer_weights' are: the embedding table, then per layer
        and half (kernel, bias)."""
        return tf.convert_to_tensor(self.embedding), [
            [(tf.convert_to_tensor(k), tf.convert_to_tensor(b)) for k, b in zip(kernels, biases)]
            for kernels, biases in zip(self.half_kernels, self.half_biases)]

    def operand(self, x):
        """A matmul operand in the weights' dtype (bf16 rounds the float32 activations; fp32: unchanged)."""
        return tf.cast(x, self.weight_dtype)

    def gate_products(self, x, kernel, bias, gates: int, wide: bool = False) -> list:
        """x (batch, in) @ kernel + bias -> float32 (batch, out), as its `gates` equal parts (batch, out / gates).

        bf16: bf16 operands, fp32 accumulation inside oneDNN; a bf16 bias is added there too, each sum rounded
        once to bf16 and widened to float32, where the gate arithmetic runs (a GRU's float32 bias is added after
        the widening). The kernel (out, in) is multiplied in its blocks of output units (block_units), or, wide,
        a whole kernel (in, out) in one product."""
        if not self.bf16:
            z = tf.matmul(x, kernel) + bias
            return tf.split(z, gates, axis=1) if gates > 1 else [z]
        x = self.operand(x)
        if wide:
            return tf.split(tf.cast(tf.nn.bias_add(tf.matmul(x, kernel), bias), tf.float32), gates, axis=1)
        sizes = [u.stop - u.start for u in self.block_units(kernel.shape[0])]
        split = lambda w: tf.split(w, sizes, axis=0) if len(sizes) > 1 else [w]
        if bias.dtype == tf.bfloat16:  # each (batch, units); independent, so run side by side
            blocks = [tf.nn.bias_add(tf.matmul(x, k, transpose_b=True), b) for k, b in zip(split(kernel), split(bias))]
        else:
            blocks = [tf.matmul(x, k, transpose_b=True) for k in split(kernel)]
        per_gate = len(blocks) // gates  # block_units: no block straddles two gates
        parts = [tf.cast(tf.concat(blocks[g * per_gate:(g + 1) * per_gate], 1) if per_gate > 1 else blocks[g * per_gate],
                         tf.float32) for g in range(gates)]
        if bias.dtype == tf.bfloat16:
            return parts
        return [p + b for p, b in zip(parts, tf.split(bias, gates))]

    def float_weights(self, variable, by_output_unit: bool = False):
        """A stored weight as float32 in the fp32 layout, for the ops that only take float32 (BlockLSTM)
        and for the head; once per call, outside any per-character loop. fp32: the variable itself.
        by_output_unit: a bf16 kernel stored (out, in)."""
        if not self.bf16:
            return variable
        return tf.transpose(tf.cast(variable, tf.float32)) if by_output_unit else tf.cast(variable, tf.float32)

    # --- the recurrence, one character at a time -------------------------------------------------
    def unpack(self, state):
        """(batch, state_size) or (batch, 0) -> per-layer states and the position (batch,)."""
        batch = tf.shape(state)[0]
        check = tf.debugging.assert_equal(
            tf.logical_or(tf.shape(state)[1] == 0, tf.shape(state)[1] == self.state_size), True,
            message=f"state must have {self.state_size} columns (or 0 for a fresh start)")
        with tf.control_dependencies([check]):
            state = tf.identity(state)
        state = tf.cond(tf.shape(state)[1] == 0, lambda: tf.zeros([batch, self.state_size]), lambda: state)
        state = tf.ensure_shape(state, [None, self.state_size])
        parts = tf.split(state[:, :-1], self.layers * self.per_layer, axis=1)  # each (batch, hidden)
        return parts, state[:, -1]

    def pack(self, parts, position):
        return tf.concat(parts + [position[:, None]], axis=1)  # (batch, state_size)

    def step(self, ids, parts, weights=None):
        """Consume ids (batch,) -> new per-layer states, and gates (batch, layers, 4*hidden) for LSTM.
        weights: layer_weights(), read once per call by a caller that loops."""
        table, weights, wide = self.layer_weights() if weights is None else weights
        x = tf.gather(table, ids)  # (batch, embedding), in the weights' dtype
        new_parts, gates = [], []
        for i in range(self.layers):
            if self.cell == "lstm":
                h, c = parts[2 * i], parts[2 * i + 1]
                xh = tf.concat([self.operand(x), self.operand(h)], 1)
                zi, zg, zf, zo = self.gate_products(xh, *weights[i], gates=4, wide=wide)  # i, c, f, o; each (batch, hidden)
                gi, gf, gg, go = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
                c = gf * c + gi * gg
                x = go * tf.tanh(c)
                new_parts += [x, c]
                gates.append(tf.concat([gi, gf, gg, go], 1))
            elif self.cell == "gru":
                h = parts[i]
                kernel, bias, recurrent_kernel, recurrent_bias = weights[i]
                xz, xr, xh = self.gate_products(x, kernel, bias, gates=3)
                hz, hr, hh = self.gate_products(h, recurrent_kernel, recurrent_bias, gates=3)
                z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
                x = z * h + (1.0 - z) * tf.tanh(xh + r * hh)
                new_parts.append(x)
            else:
                x = tf.tanh(self.gate_products(tf.concat([self.operand(x), self.operand(parts[i])], 1), *weights[i],
                                               gates=1)[0])
                new_parts.append(x)
        return new_parts, gates

    def step_halves(self, ids, halves, weights):
        """Consume ids with each LSTM layer as two LSTMBlockCell ops over half its units each.

        halves: per layer h[:half], h[half:], c[:half], c[half:]; weights: half_weights(). A single stream is
        bound by reading the weights once per character; the two ops are independent, so TensorFlow runs them
        on two cores at once, and one op per half-layer instead of a dozen keeps the per-character overhead low.
        """
        table, layers = weights
        x = tf.gather(table, ids)  # (batch, embedding)
        new_halves = []
        for i in range(self.layers):
            h_a, h_b, c_a, c_b = halves[4 * i: 4 * i + 4]
            out = []
            for own in (0, 1):
                h_own, h_other, c_own = (h_a, h_b, c_a) if own == 0 else (h_b, h_a, c_b)
                no_peephole = tf.zeros(tf.shape(c_own)[1:])
                kernel, bias = layers[i][own]
                result = tf.raw_ops.LSTMBlockCell(
                    x=tf.concat([x, h_other], 1), cs_prev=c_own, h_prev=h_own, w=kernel,
                    wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=bias,
                    forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
                out.append((result[6], result[1]))  # h, c of these units
            (h_a, c_a), (h_b, c_b) = out
            new_halves += [h_a, h_b, c_a, c_b]
            x = tf.concat([h_a, h_b], 1)  # (batch, hidden)
        return new_halves

    def logits(self, parts):
        """The next-character logits are a function of the state alone: the top layer's h."""
        return self.head(parts[-2] if self.cell == "lstm" else parts[-1])

    def head(self, top_h, kernel=None, padding=None):
        """kernel: head_weights(), read once per call; bf16 versions multiply the head in float32, as
        its output is the logits themselves (a bf16 sum would move log-probabilities by ~0.01-0.05 nats)
        and it is 1% of the weights. padding: head_padding(batch), also once per call."""
        kernel = self.head_weights() if kernel is None else kernel
        rows = tf.shape(top_h)[0]
        padding = self.head_padding(rows) if padding is None else padding
        return tf.nn.bias_add(tf.matmul(tf.pad(top_h, padding), kernel), self.head_bias)[:rows]  # (batch, vocab)

    @staticmethod
    def head_padding(rows):
        """At least two rows: a float32 product of one row takes oneDNN's matrix-vector kernel, which sums in
        another order than at two rows or more (measured: the last bit of most logits), and a stream's logits
        must not depend on whether it runs alone."""
        return tf.convert_to_tensor([[0, tf.maximum(0, 2 - rows)], [0, 0]])  # (2, 2), for tf.pad

    def head_weights(self):
        return self.float_weights(self.head_kernel)

    def encode(self, text):
        """text (batch,) -> ids (batch, time) padded with -1, lengths (batch,), unknown characters."""
        chars = tf.strings.unicode_split(text, "UTF-8")  # ragged (batch, time)
        ids = tf.ragged.map_flat_values(self.char_ids.lookup, chars)
        unknown = tf.strings.reduce_join(tf.ragged.boolean_mask(chars, ids < 0), axis=1)
        # Time padded to a multiple of TIME_PADDING: TensorFlow keeps memory for every input shape it has run, and
        # a server sees every text length; rows stop at their own lengths, so the padding changes no result.
        padded = (longest_of(tf.cast(ids.row_lengths(), tf.int32)) + TIME_PADDING - 1) // TIME_PADDING * TIME_PADDING
        return (ids.to_tensor(-1, shape=tf.stack([ids.nrows(out_type=tf.int32), padded])),
                tf.cast(ids.row_lengths(), tf.int32), unknown)

    def read(self, text, state):
        """Encode texts and unpack their states. A row with unknown characters is read as empty (its
        length to consume is 0), so it is left untouched and reported, never half-read."""
        ids, lengths, unknown = self.encode(text)
        parts, position = self.unpack(state)
        return ids, lengths, tf.where(tf.strings.length(unknown) == 0, lengths, 0), unknown, parts, position

    def consume(self, ids, lengths, parts, position, log_probs=False, collect=False):
        """Run the text through the recurrence; rows stop at their own length. Returns the new parts and
        position, and on request the log-distribution before each character (batch, time, vocab) and the
        per-character states and gates (time, batch, trace_width)."""
        if self.cell == "lstm":
            batch = tf.shape(ids)[0]
            empty = lambda: (parts, position, tf.zeros([batch, 0, self.shape.vocab_size]),
                             tf.zeros([0, batch, self.trace_width]))
            parts, position, scores, trace = tf.cond(
                tf.shape(ids)[1] > 0,
                lambda: self.consume_sequence(ids, lengths, parts, position, log_probs, collect), empty)
        else:
            parts, position, scores, trace = self.consume_by_character(ids, lengths, parts, position, collect)
        return parts, position, (scores if log_probs else None), (trace if collect else None)

    def consume_sequence(self, ids, lengths, parts, position, log_probs, collect):
        """LSTM: the text in pieces of at most SEQUENCE_PIECE characters, each layer over a piece in one
        BlockLSTM op (the time loop inside the kernel, the piece's input projection in one matmul).

        Pieces, not the whole text at once: ids come padded to a multiple of TIME_PADDING, so every op
        sees one of SEQUENCE_PIECE / TIME_PADDING time lengths whatever the text's length (TensorFlow keeps
        memory for every shape an op has run), and a 5,000-character text needs a few MB of intermediate
        values instead of 140 MB."""
        batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
        table = self.float_weights(self.embedding)
        weights = [(self.float_weights(k, by_output_unit=True), self.float_weights(b)) for k, b in zip(self.kernels, self.biases)]
        head_kernel = self.head_weights() if log_probs else None
        no_peephole = tf.zeros([self.hidden])
        pieces = (steps + SEQUENCE_PIECE - 1) // SEQUENCE_PIECE
        # Each element (piece, batch, ...), concatenated along time at the end.
        scores = tf.TensorArray(tf.float32, size=pieces if log_probs else 0, infer_shape=False)
        trace = tf.TensorArray(tf.float32, size=pieces if collect else 0, infer_shape=False)
        running = list(parts)  # the recurrence as it runs on, past a row's end too (those values go unused)
        final = list(parts)  # each row's state after its own last character
        for p in tf.range(pieces):
            start = p * SEQUENCE_PIECE
            size = tf.minimum(SEQUENCE_PIECE, steps - start)
            x = tf.transpose(tf.gather(table, tf.maximum(ids[:, start:start + size], 0)), [1, 0, 2])  # (piece, batch, embedding)
            inside = lengths - start  # characters of each row from this piece on
            last = tf.stack([tf.clip_by_value(inside - 1, 0, size - 1), tf.range(batch)], axis=1)
            reached = (inside > 0)[:, None]  # the row's text goes on into this piece
            top_before = running[-2]
            new_running, new_final, states, gates = [], [], [], []
            for i, (kernel, bias) in enumerate(weights):
                gi, cs, gf, go, gg, _, x = tf.raw_ops.BlockLSTM(
                    seq_len_max=tf.cast(size, tf.int64), x=x, cs_prev=running[2 * i + 1], h_prev=running[2 * i],
                    w=kernel, wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=bias, forget_bias=0.0,
                    cell_clip=-1.0, use_peephole=False)  # each (piece, batch, hidden)
                new_running += [x[-1], cs[-1]]
                new_final += [tf.where(reached, tf.gather_nd(x, last), final[2 * i]),
                              tf.where(reached, tf.gather_nd(cs, last), final[2 * i + 1])]
                states += [x, cs]
                gates.append(tf.concat([gi, gf, gg, go], axis=2))
            if log_probs:
                before = tf.concat([top_before[None], x[:-1]], axis=0)  # top h before each character
                logits = tf.einsum("tbh,hv->tbv", before, head_kernel) + self.head_bias
                scores = scores.write(p, tf.nn.log_softmax(logits))  # (piece, batch, vocab)
            if collect:
                trace = trace.write(p, tf.concat(states + gates, axis=2))  # (piece, batch, trace_width)
            running, final = new_running, new_final
        dist = (tf.transpose(scores.concat(), [1, 0, 2]) if log_probs
                else tf.zeros([batch, steps, self.shape.vocab_size]))  # (batch, time, vocab)
        trace = trace.concat() if collect else tf.zeros([steps, batch, self.trace_width])
        return final, position + tf.cast(lengths, tf.float32), dist, trace

    def consume_by_character(self, ids, lengths, parts, position, collect):
        batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
        # One spare row at the end, so stacking works when the text is empty (size 0 cannot stack).
        scores = tf.TensorArray(tf.float32, size=steps + 1)  # the log-distribution before each character
        trace = tf.TensorArray(tf.float32, size=steps + 1 if collect else 0)
        weights = self.layer_weights()
        for t in tf.range(steps):
            active = t < lengths  # (batch,)
            ids_t = tf.maximum(ids[:, t], 0)
            scores = scores.write(t, tf.nn.log_softmax(self.logits(parts)))
            new_parts, gates = self.step(ids_t, parts, weights)
            if collect:
                trace = trace.write(t, tf.concat(new_parts + gates, axis=1))
            parts = [tf.where(active[:, None], n, o) for n, o in zip(new_parts, parts)]
            position = tf.where(active, position + 1.0, position)
        scores = scores.write(steps, tf.zeros([batch, self.shape.vocab_size]))
        scores = tf.transpose(scores.stack()[:steps], [1, 0, 2])  # (batch, time, vocab)
        trace = trace.write(steps, tf.zeros([batch, self.trace_width])).stack()[:steps] if collect else None
        return parts, position, scores, trace

    # --- the signatures ------------------------------------------------------------------------------
    @tf.function(input_signature=signatures.tensor_specs(signatures.GENERATE))
    def generate(self, prompt, state, num_chars, temperature, top_k, top_p, min_p, logprobs, seed):
        sampler.check_settings(num_chars, temperature, top_k, top_p, min_p, logprobs)  # tf.function runs asserts
        ids, _, lengths, unknown, parts, position = self.read(prompt, state)
        num_chars = tf.where(tf.strings.length(unknown) == 0, num_chars, 0)  # nor generates anything
        args = (ids, lengths, parts, position, num_chars, temperature, top_k, top_p, min_p, seed)
        # Choose the loop once per call, not per character: conds inside the loop cost every step.
        processed = sampler.processing(top_k, top_p, min_p, logprobs)
        # An LSTM has a layout for few rows (fp32: LSTMBlockCell halves; bf16: kernel blocks) and one for more.
        if self.half_kernels is None and self.wide_kernels is None:  # GRU, RNN: one loop for every batch size
            branch, few_rows = tf.cast(processed, tf.int32), (False,)
        else:
            small = tf.shape(prompt)[0] <= (BF16_BLOCKS_MAX_BATCH if self.bf16 else FUSED_CELL_MAX_BATCH)
            branch, few_rows = tf.cast(small, tf.int32) * 2 + tf.cast(processed, tf.int32), (False, True)
        generated, chosen, top_ids, top_log_probs, parts, position = tf.switch_case(
            branch, [lambda few=few, proc=proc: self.prime_and_sample(*args, few_rows=few, processed=proc)
                     for few in few_rows for proc in (False, True)])
        chars = tf.gather(self.chars, tf.maximum(generated, 0))
        text = tf.strings.reduce_join(tf.where(generated >= 0, chars, ""), axis=1)
        # Each row's alternatives beyond its own `logprobs` are blanked (-1, 0), so no row's reply depends
        # on what its batch-mates asked for.
        wanted = tf.range(self.alternatives)[None, None, :] < logprobs[:, None, None]
        longest = longest_of(num_chars)  # the replies' width: the most characters a row asked for
        return {"text": text, "state": self.pack(parts, position), "unknown_chars": unknown,
                "log_probs": chosen[:, :longest], "top_ids": tf.where(wanted, top_ids, -1)[:, :longest],
                "top_log_probs": tf.where(wanted, top_log_probs, 0.0)[:, :longest]}

    def prime_and_sample(self, ids, lengths, parts, position, num_chars, temperature, top_k, top_p, min_p, seed,
                         few_rows, processed):
        halves = few_rows and self.half_kernels is not None
        wide = not few_rows and self.wide_kernels is not None
        weights = self.half_weights() if halves else self.layer_weights(wide)
        step = (lambda ids, carried: self.step_halves(ids, carried, weights)) if halves else (
            lambda ids, carried: self.step(ids, carried, weights)[0])
        if halves:
            # A few rows: the prompt too goes character by character on both cores, as generation does.
            carried = [piece for p in parts for piece in (p[:, :self.hidden // 2], p[:, self.hidden // 2:])]
        elif self.bf16:
            # The prompt through the same bf16 step as the generated characters, at any batch size (score's
            # float32 BlockLSTM would leave a row's state, and so its text, depending on the batch size).
            carried = parts
        else:
            parts, position, _, _ = self.consume(ids, lengths, parts, position)
            carried = parts
        if halves or self.bf16:
            for t in tf.range(tf.shape(ids)[1]):
                active = t < lengths
                new = step(tf.maximum(ids[:, t], 0), carried)
                carried = [tf.where(active[:, None], n, o) for n, o in zip(new, carried)]
            position = position + tf.cast(lengths, tf.float32)
        longest = longest_of(num_chars)
        batch, alternatives = tf.shape(num_chars)[0], self.alternatives
        # The outputs are built TIME_PADDING-wide blocks past `longest` (at least one spare column: stacking size
        # 0 fails), so the ops after the loop see a few widths, not one per length (TensorFlow keeps memory for
        # every shape an op has run); generate() trims them to `longest` last.
        width = (longest + TIME_PADDING) // TIME_PADDING * TIME_PADDING
        out = tf.TensorArray(tf.int32, size=width)
        chosen = tf.TensorArray(tf.float32, size=width)
        top_ids = tf.TensorArray(tf.int32, size=width if processed else 0)
        top_log_probs = tf.TensorArray(tf.float32, size=width if processed else 0)
        head_kernel = self.head_weights()  # bf16: widened once per call, not per character
        # (width, batch, 1): an active row's i-th number is at position + i
        numbers = sampler.step_numbers(sampler.draws(seed, position, width), temperature)
        settings = sampler.prepare(temperature, top_k, top_p, min_p, self.shape.vocab_size)
        padding = self.head_padding(batch)

        def next_chars(i, carried):
            top_h = tf.concat(carried[-4:-2], 1) if halves else (carried[-2] if self.cell == "lstm" else carried[-1])
            return sampler.next_chars(self.head(top_h, head_kernel, padding), settings, numbers[i], processed,
                                      alternatives)

        # Until the shortest row's end every row is active: that loop keeps no mask (a tf.where per state and
        # output, each character); the rest, while rows of other lengths run on, masks the rows that are done.
        shortest = tf.reduce_min(tf.concat([num_chars, [longest]], 0))  # 0 for an empty batch, as `longest`
        for i in tf.range(shortest):
            next_ids, log_prob, best_ids, best_log_probs = next_chars(i, carried)
            carried = step(next_ids, carried)
            out = out.write(i, next_ids)
            chosen = chosen.write(i, log_prob)
            if processed:
                top_ids = top_ids.write(i, best_ids)
                top_log_probs = top_log_probs.write(i, best_log_probs)
        position = position + tf.cast(shortest, tf.float32)
        for i in tf.range(shortest, longest):
            active = i < num_chars
            next_ids, log_prob, best_ids, best_log_probs = next_chars(i, carried)
            carried = [tf.where(active[:, None], n, o) for n, o in zip(step(next_ids, carried), carried)]
            position = tf.where(active, position + 1.0, position)
            out = out.write(i, tf.where(active, next_ids, -1))
            chosen = chosen.write(i, tf.where(active, log_prob, 0.0))
            if processed:
                top_ids = top_ids.write(i, best_ids)
                top_log_probs = top_log_probs.write(i, best_log_probs)
        for i in tf.range(longest, width):  # the padding: nothing generated there
            out = out.write(i, -tf.ones_like(num_chars))
            chosen = chosen.write(i, tf.zeros([batch]))
            if processed:
                top_ids = top_ids.write(i, tf.fill([batch, alternatives], -1))
                top_log_probs = top_log_probs.write(i, tf.zeros([batch, alternatives]))
        parts = [tf.concat(carried[k:k + 2], 1) for k in range(0, len(carried), 2)] if halves else carried
        generated = tf.transpose(out.stack())  # (batch, width), -1 where none generated
        if processed:
            top_ids = tf.transpose(top_ids.stack(), [1, 0, 2])  # (batch, width, alternatives)
            top_log_probs = tf.transpose(top_log_probs.stack(), [1, 0, 2])
        else:
            top_ids, top_log_probs = tf.fill([batch, width, alternatives], -1), tf.zeros([batch, width, alternatives])
        done = generated >= 0  # (batch, width)
        return (generated, tf.transpose(chosen.stack()), tf.where(done[..., None], top_ids, -1),
                tf.where(done[..., None], top_log_probs, 0.0), parts, position)

    @tf.function(input_signature=signatures.tensor_specs(signatures.SCORE))
    def score(self, text, state):
        ids, lengths, read_lengths, unknown, parts, position = self.read(text, state)
        parts, position, dist, _ = self.consume(ids, read_lengths, parts, position, log_probs=True)
        read = tf.sequence_mask(read_lengths, tf.shape(ids)[1])  # (batch, time)
        log_probs = tf.where(read, tf.gather(dist, tf.maximum(ids, 0), batch_dims=2), 0.0)
        top_log_probs, top_ids = tf.math.top_k(dist, k=self.alternatives)  # (batch, time, alternatives)
        counted = tf.maximum(read_lengths, 1)
        bits = -tf.reduce_sum(log_probs, axis=1) / tf.cast(counted, tf.float32) / float(np.log(2.0))
        longest = longest_of(lengths)  # the replies' time axis: the longest text, not encode's padding
        return {"log_probs": log_probs[:, :longest], "lengths": lengths, "bits_per_char": bits,
                "state": self.pack(parts, position), "unknown_chars": unknown,
                "top_ids": tf.where(read[..., None], top_ids, -1)[:, :longest],
                "top_log_probs": tf.where(read[..., None], top_log_probs, 0.0)[:, :longest]}

    @tf.function(input_signature=signatures.tensor_specs(signatures.ACTIVATIONS))
    def activations(self, text, state):
        ids, lengths, read_lengths, unknown, parts, position = self.read(text, state)
        parts, position, _, trace = self.consume(ids, read_lengths, parts, position, collect=True)
        trace = tf.transpose(trace, [1, 0, 2])[:, :longest_of(lengths)]  # (batch, time, layers * (per_layer + 4 if lstm) * hidden)
        steps = tf.shape(trace)[1]
        batch = tf.shape(trace)[0]
        width = self.layers * self.per_layer * self.hidden
        states = tf.reshape(trace[:, :, :width], [batch, steps, self.layers, self.per_layer, self.hidden])
        result = {"hidden": states[:, :, :, 0], "lengths": lengths, "unknown_chars": unknown,
                  "state": self.pack(parts, position)}
        if self.cell == "lstm":
            gates = tf.reshape(trace[:, :, width:], [batch, steps, self.layers, 4, self.hidden])
            result.update(cell=states[:, :, :, 1], input_gate=gates[:, :, :, 0], forget_gate=gates[:, :, :, 1],
                          cell_candidate=gates[:, :, :, 2], output_gate=gates[:, :, :, 3])
        return result

    @tf.function(input_signature=signatures.tensor_specs(signatures.METADATA))
    def metadata(self, request):
        batch = tf.shape(request)[0]
        return {"vocab": tf.tile(self.chars[None, :], [batch, 1]), "info": tf.fill([batch], self.metadata_json),
                "state_size": tf.fill([batch], self.state_size)}


def half_cell_weights(kernel: np.ndarray, bias: np.ndarray, hidden: int, own: int):
    """The rows and columns of a block-ordered LSTM kernel [x; h] (in + hidden, 4 * hidden) that compute the
    units of one half (own = 0: units [0, half), 1: [half, hidden)), with the rows ordered as that half's
    LSTMBlockCell sees its input: [x; h of the other half; h of its own half]."""
    half = hidden // 2
    own_units = np.arange(half) if own == 0 else np.arange(half, hidden)
    other_units = np.arange(half, hidden) if own == 0 else np.arange(half)
    n_in = kernel.shape[0] - hidden
    rows = np.concatenate([np.arange(n_in), n_in + other_units, n_in + own_units])
    cols = np.concatenate([gate * hidden + own_units for gate in range(4)])
    return kernel[rows][:, cols], bias[cols]


def block_cell_gate_order(w: np.ndarray) -> np.ndarray:
    """Keras keeps an LSTM's gates as i, f, c, o along the last axis; TF's LSTMBlockCell wants i, c, f, o."""
    i, f, c, o = np.split(w, 4, axis=-1)
    return np.concatenate([i, c, f, o], axis=-1)
