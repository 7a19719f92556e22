"""Export a trained run as a self-contained SavedModel version for TensorFlow Serving, the gateway and analysis.

    python -m training.export --run-dir runs/charlm [--export-dir exported_models] [--model-name charlm]
                              [--checkpoint best|last] [--if-changed]

Writes exported_models/<name>/<version>/ (TF Serving's layout, version = next integer): built under a
hidden temporary name in the same directory and renamed into place, so a version appears whole or not at
all. The graph holds the vocabulary (text in, text out), the sampling loop, and plain tf.Variables — no
Keras is needed to load it. Signatures are documented in docs/model-signatures.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from model_interface import signatures, versions
from model_interface.errors import MetadataError
from model_interface.metadata import CREATED_FORMAT, ModelMetadata
from model_interface.signatures import MAX_CHARS_PER_CALL
FUSED_CELL_MAX_BATCH = 4  # up to this many rows, two LSTMBlockCell ops per layer beat separate ops

GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


class ExportError(ValueError):
    pass


def build_module(model, vocab, info: dict):
    """A tf.Module whose tf.functions are the four signatures, holding copies of the model's weights."""
    import tensorflow as tf

    cell, hidden, layers = model.cell, model.hidden_size, model.num_layers
    per_layer = 2 if cell == "lstm" else 1
    state_size = layers * per_layer * hidden + 1  # + the position counter that keys the sampler's RNG
    vocab_size = len(vocab)
    trace_width = layers * per_layer * hidden + (layers * 4 * hidden if cell == "lstm" else 0)  # states, gates
    string_spec = tf.TensorSpec([None], tf.string)
    state_spec = tf.TensorSpec([None, None], tf.float32)

    class CharLM(tf.Module):
        def __init__(self):
            super().__init__(name="charlm")
            self.chars = tf.constant(list(vocab.chars))  # (vocab,)
            self.char_ids = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(self.chars, tf.range(vocab_size, dtype=tf.int32)), -1)
            self.embedding = tf.Variable(model.embedding.embeddings.numpy(), name="embedding")
            # One matmul per layer and step: [x, h] @ [kernel; recurrent_kernel]. GRU keeps the
            # recurrent half apart, as its reset gate scales the recurrent part of the candidate.
            self.kernels, self.recurrent_kernels, self.biases = [], [], []
            for layer in model.recurrent:
                kernel, recurrent, bias = (w.numpy() for w in layer.cell.weights)
                if cell == "lstm":
                    kernel, recurrent, bias = map(block_cell_gate_order, (kernel, recurrent, bias))
                if cell == "gru":
                    self.kernels.append(tf.Variable(kernel, name="kernel"))
                    self.recurrent_kernels.append(tf.Variable(recurrent, name="recurrent_kernel"))
                else:
                    self.kernels.append(tf.Variable(np.concatenate([kernel, recurrent]), name="fused_kernel"))
                self.biases.append(tf.Variable(bias, name="bias"))
            if cell == "lstm":
                self.half_kernels, self.half_biases = [], []
                for kernel, bias in zip(self.kernels, self.biases):
                    pieces = [half_cell_weights(kernel.numpy(), bias.numpy(), hidden, own) for own in (0, 1)]
                    self.half_kernels.append([tf.Variable(k, name="half_kernel") for k, _ in pieces])
                    self.half_biases.append([tf.Variable(b, name="half_bias") for _, b in pieces])
            self.head_kernel = tf.Variable(model.head.kernel.numpy(), name="head_kernel")
            self.head_bias = tf.Variable(model.head.bias.numpy(), name="head_bias")
            self.info = tf.constant(json.dumps(info, ensure_ascii=False))

        # --- the recurrence, one character at a time -------------------------------------------------
        def unpack(self, state):
            """(batch, state_size) or (batch, 0) -> per-layer states and the position (batch,)."""
            batch = tf.shape(state)[0]
            check = tf.debugging.assert_equal(
                tf.logical_or(tf.shape(state)[1] == 0, tf.shape(state)[1] == state_size), True,
                message=f"state must have {state_size} columns (or 0 for a fresh start)")
            with tf.control_dependencies([check]):
                state = tf.identity(state)
            state = tf.cond(tf.shape(state)[1] == 0, lambda: tf.zeros([batch, state_size]), lambda: state)
            state = tf.ensure_shape(state, [None, state_size])
            parts = tf.split(state[:, :-1], layers * per_layer, axis=1)  # each (batch, hidden)
            return parts, state[:, -1]

        def pack(self, parts, position):
            return tf.concat(parts + [position[:, None]], axis=1)  # (batch, state_size)

        def step(self, ids, parts):
            """Consume ids (batch,) -> new per-layer states, and gates (batch, layers, 4*hidden) for LSTM."""
            x = tf.gather(self.embedding, ids)  # (batch, embedding)
            new_parts, gates = [], []
            for i in range(layers):
                if cell == "lstm":
                    h, c = parts[2 * i], parts[2 * i + 1]
                    z = tf.matmul(tf.concat([x, h], 1), self.kernels[i]) + self.biases[i]  # (batch, 4*hidden)
                    zi, zg, zf, zo = tf.split(z, 4, axis=1)  # i, c, f, o
                    gi, gf, gg, go = tf.sigmoid(zi), tf.sigmoid(zf), tf.tanh(zg), tf.sigmoid(zo)
                    c = gf * c + gi * gg
                    x = go * tf.tanh(c)
                    new_parts += [x, c]
                    gates.append(tf.concat([gi, gf, gg, go], 1))
                elif cell == "gru":
                    h = parts[i]
                    xz, xr, xh = tf.split(tf.matmul(x, self.kernels[i]) + self.biases[i][0], 3, axis=1)
                    hz, hr, hh = tf.split(tf.matmul(h, self.recurrent_kernels[i]) + self.biases[i][1], 3, axis=1)
                    z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
                    x = z * h + (1.0 - z) * tf.tanh(xh + r * hh)
                    new_parts.append(x)
                else:
                    x = tf.tanh(tf.matmul(tf.concat([x, parts[i]], 1), self.kernels[i]) + self.biases[i])
                    new_parts.append(x)
            return new_parts, gates

        def step_halves(self, ids, halves):
            """Consume ids with each LSTM layer as two LSTMBlockCell ops over half its units each.

            halves: per layer h[:half], h[half:], c[:half], c[half:]. A single stream is bound by reading the
            weights once per character; the two ops are independent, so TensorFlow runs them on two cores at
            once, and one op per half-layer instead of a dozen keeps the per-character overhead low.
            """
            x = tf.gather(self.embedding, ids)  # (batch, embedding)
            new_halves = []
            for i in range(layers):
                h_a, h_b, c_a, c_b = halves[4 * i: 4 * i + 4]
                out = []
                for own in (0, 1):
                    h_own, h_other, c_own = (h_a, h_b, c_a) if own == 0 else (h_b, h_a, c_b)
                    no_peephole = tf.zeros(tf.shape(c_own)[1:])
                    result = tf.raw_ops.LSTMBlockCell(
                        x=tf.concat([x, h_other], 1), cs_prev=c_own, h_prev=h_own, w=self.half_kernels[i][own],
                        wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=self.half_biases[i][own],
                        forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
                    out.append((result[6], result[1]))  # h, c of these units
                (h_a, c_a), (h_b, c_b) = out
                new_halves += [h_a, h_b, c_a, c_b]
                x = tf.concat([h_a, h_b], 1)  # (batch, hidden)
            return new_halves

        def logits(self, parts):
            """The next-character logits are a function of the state alone: the top layer's h."""
            return self.head(parts[-2] if cell == "lstm" else parts[-1])

        def head(self, top_h):
            return tf.matmul(top_h, self.head_kernel) + self.head_bias  # (batch, vocab)

        def encode(self, text):
            """text (batch,) -> ids (batch, time) padded with -1, lengths (batch,), unknown characters."""
            chars = tf.strings.unicode_split(text, "UTF-8")  # ragged (batch, time)
            ids = tf.ragged.map_flat_values(self.char_ids.lookup, chars)
            unknown = tf.strings.reduce_join(tf.ragged.boolean_mask(chars, ids < 0), axis=1)
            return ids.to_tensor(-1), tf.cast(ids.row_lengths(), tf.int32), unknown

        def read(self, text, state):
            """Encode texts and unpack their states. A row with unknown characters is read as empty (its
            length to consume is 0), so it is left untouched and reported, never half-read."""
            ids, lengths, unknown = self.encode(text)
            parts, position = self.unpack(state)
            return ids, lengths, tf.where(tf.strings.length(unknown) == 0, lengths, 0), unknown, parts, position

        def consume(self, ids, lengths, parts, position, log_probs=False, collect=False):
            """Run the text through the recurrence; rows stop at their own length. Returns the new parts and
            position, and on request the log-probability of each character (batch, time) and the per-character
            states and gates (time, batch, trace_width)."""
            if cell == "lstm":
                empty = lambda: (parts, position, tf.zeros([tf.shape(ids)[0], 0]), tf.zeros([0, tf.shape(ids)[0], trace_width]))
                parts, position, scores, trace = tf.cond(
                    tf.shape(ids)[1] > 0,
                    lambda: self.consume_sequence(ids, lengths, parts, position, log_probs, collect), empty)
            else:
                parts, position, scores, trace = self.consume_by_character(ids, lengths, parts, position, collect)
            return parts, position, (scores if log_probs else None), (trace if collect else None)

        def consume_sequence(self, ids, lengths, parts, position, log_probs, collect):
            """LSTM: each layer over the whole text in one BlockLSTM op, the time loop inside the kernel
            (and the input projection for all characters in one matmul) instead of ops per character."""
            batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
            x = tf.transpose(tf.gather(self.embedding, tf.maximum(ids, 0)), [1, 0, 2])  # (time, batch, embedding)
            last = tf.stack([tf.maximum(lengths - 1, 0), tf.range(batch)], axis=1)  # each row's last character
            started = (lengths > 0)[:, None]
            no_peephole = tf.zeros([hidden])
            new_parts, states, gates = [], [], []
            for i in range(layers):
                h0, c0 = parts[2 * i], parts[2 * i + 1]
                gi, cs, gf, go, gg, _, x = tf.raw_ops.BlockLSTM(
                    seq_len_max=tf.cast(steps, tf.int64), x=x, cs_prev=c0, h_prev=h0, w=self.kernels[i],
                    wci=no_peephole, wcf=no_peephole, wco=no_peephole, b=self.biases[i], forget_bias=0.0,
                    cell_clip=-1.0, use_peephole=False)  # each (time, batch, hidden)
                new_parts += [tf.where(started, tf.gather_nd(x, last), h0), tf.where(started, tf.gather_nd(cs, last), c0)]
                states += [x, cs]
                gates.append(tf.concat([gi, gf, gg, go], axis=2))
            scores = tf.zeros([batch, steps])
            if log_probs:
                top_before = tf.concat([parts[-2][None], x[:-1]], axis=0)  # top h before each character
                logits = tf.einsum("tbh,hv->tbv", top_before, self.head_kernel) + self.head_bias
                scores = tf.gather(tf.nn.log_softmax(logits), tf.maximum(tf.transpose(ids), 0), batch_dims=2)
                scores = tf.where(tf.sequence_mask(lengths, steps), tf.transpose(scores), 0.0)  # (batch, time)
            trace = tf.concat(states + gates, axis=2) if collect else tf.zeros([steps, batch, trace_width])
            return new_parts, position + tf.cast(lengths, tf.float32), scores, trace

        def consume_by_character(self, ids, lengths, parts, position, collect):
            batch, steps = tf.shape(ids)[0], tf.shape(ids)[1]
            # One spare row at the end, so stacking works when the text is empty (size 0 cannot stack).
            scores = tf.TensorArray(tf.float32, size=steps + 1)
            trace = tf.TensorArray(tf.float32, size=steps + 1 if collect else 0)
            for t in tf.range(steps):
                active = t < lengths  # (batch,)
                ids_t = tf.maximum(ids[:, t], 0)
                scores = scores.write(t, tf.gather(tf.nn.log_softmax(self.logits(parts)), ids_t, batch_dims=1))
                new_parts, gates = self.step(ids_t, parts)
                if collect:
                    trace = trace.write(t, tf.concat(new_parts + gates, axis=1))
                parts = [tf.where(active[:, None], n, o) for n, o in zip(new_parts, parts)]
                position = tf.where(active, position + 1.0, position)
            scores = scores.write(steps, tf.zeros([batch]))
            scores = tf.where(tf.sequence_mask(lengths, steps), tf.transpose(scores.stack()[:steps]), 0.0)
            trace = trace.write(steps, tf.zeros([batch, trace_width])).stack()[:steps] if collect else None
            return parts, position, scores, trace

        # --- sampling ------------------------------------------------------------------------------
        def draw(self, logits, seed, position):
            """Inverse-CDF sampling with one uniform number per row: splitmix64's output number `position`
            for the stream `seed`. A row's draws never depend on its batch-mates, and a continued stream
            draws what one long call would have drawn."""
            counter = tf.bitcast(seed, tf.uint64) + (tf.cast(position, tf.uint64) + 1) * tf.constant(GOLDEN, tf.uint64)
            top24 = tf.bitwise.right_shift(mix(counter), tf.constant(40, tf.uint64))
            u = (tf.cast(top24, tf.float32) + 0.5) * (1.0 / (1 << 24))  # (batch,) in (0, 1)
            cdf = tf.cumsum(tf.nn.softmax(logits), axis=1)  # (batch, vocab)
            below = tf.cast(cdf < u[:, None] * cdf[:, -1:], tf.int32)
            return tf.minimum(tf.reduce_sum(below, axis=1), vocab_size - 1)  # the first index reaching u

        def top_k_top_p(self, logits, top_k, top_p):
            """Leave the k likeliest characters, then the likeliest whose mass reaches p; the rest -inf."""
            ranked = tf.sort(logits, direction="DESCENDING")  # (batch, vocab)
            kth = tf.gather(ranked, tf.clip_by_value(top_k - 1, 0, vocab_size - 1), batch_dims=1)
            floor = tf.where(top_k > 0, kth, -np.inf)
            probs = tf.nn.softmax(tf.where(ranked >= floor[:, None], ranked, -np.inf))
            before = tf.cumsum(probs, axis=1, exclusive=True)  # mass of the better-ranked characters
            nucleus = tf.reduce_min(tf.where(before < top_p[:, None], ranked, np.inf), axis=1)
            floor = tf.maximum(floor, nucleus)
            return tf.where(logits >= floor[:, None], logits, -np.inf)

        # --- the signatures ----------------------------------------------------------------------------
        @tf.function(input_signature=[string_spec, state_spec, tf.TensorSpec([None], tf.int32),
                                      tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int32),
                                      tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int64)])
        def generate(self, prompt, state, num_chars, temperature, top_k, top_p, seed):
            tf.debugging.assert_positive(temperature, message="temperature must be > 0")
            tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 = off)")
            tf.debugging.assert_positive(top_p, message="top_p must be in (0, 1]")
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]")
            tf.debugging.assert_non_negative(num_chars, message="num_chars must be >= 0")
            tf.debugging.assert_less_equal(num_chars, MAX_CHARS_PER_CALL,
                                           message=f"num_chars must be <= {MAX_CHARS_PER_CALL} per call")
            ids, _, lengths, unknown, parts, position = self.read(prompt, state)
            num_chars = tf.where(tf.strings.length(unknown) == 0, num_chars, 0)  # nor generates anything
            args = (ids, lengths, parts, position, num_chars, temperature, top_k, top_p, seed)
            # Choose the loop once per call, not per character: conds inside the loop cost every step.
            small = tf.shape(prompt)[0] <= FUSED_CELL_MAX_BATCH
            filtered = tf.reduce_any(top_k > 0) | tf.reduce_any(top_p < 1.0)
            generated, parts, position = tf.switch_case(
                tf.cast(small, tf.int32) * 2 + tf.cast(filtered, tf.int32),
                [lambda fused=fused, filt=filt: self.prime_and_sample(*args, fused_cell=fused, filtered=filt)
                 for fused in (False, True) for filt in (False, True)])
            chars = tf.gather(self.chars, tf.maximum(generated, 0))
            text = tf.strings.reduce_join(tf.where(generated >= 0, chars, ""), axis=1)
            return {"text": text, "state": self.pack(parts, position), "unknown_chars": unknown}

        def prime_and_sample(self, ids, lengths, parts, position, num_chars, temperature, top_k, top_p, seed,
                             fused_cell, filtered):
            halves = fused_cell and cell == "lstm"
            if halves:
                # A few rows: the prompt too goes character by character on both cores, as generation does.
                carried = [piece for p in parts for piece in (p[:, :hidden // 2], p[:, hidden // 2:])]
                for t in tf.range(tf.shape(ids)[1]):
                    active = t < lengths
                    new = self.step_halves(tf.maximum(ids[:, t], 0), carried)
                    carried = [tf.where(active[:, None], n, o) for n, o in zip(new, carried)]
                position = position + tf.cast(lengths, tf.float32)
            else:
                parts, position, _, _ = self.consume(ids, lengths, parts, position)
                carried = parts
            longest = tf.reduce_max(tf.concat([num_chars, [0]], 0))
            out = tf.TensorArray(tf.int32, size=longest + 1)  # a spare row: stacking size 0 fails
            for i in tf.range(longest):
                active = i < num_chars
                top_h = tf.concat(carried[-4:-2], 1) if halves else (carried[-2] if cell == "lstm" else carried[-1])
                logits = self.head(top_h) / temperature[:, None]
                if filtered:
                    logits = self.top_k_top_p(logits, top_k, top_p)
                next_ids = self.draw(logits, seed, position)
                new = self.step_halves(next_ids, carried) if halves else self.step(next_ids, carried)[0]
                carried = [tf.where(active[:, None], n, o) for n, o in zip(new, carried)]
                position = tf.where(active, position + 1.0, position)
                out = out.write(i, tf.where(active, next_ids, -1))
            out = out.write(longest, -tf.ones_like(num_chars))
            parts = [tf.concat(carried[k:k + 2], 1) for k in range(0, len(carried), 2)] if halves else carried
            return tf.transpose(out.stack()), parts, position  # (batch, chars + 1), -1 where none generated

        @tf.function(input_signature=[string_spec, state_spec])
        def score(self, text, state):
            ids, lengths, read_lengths, unknown, parts, position = self.read(text, state)
            parts, position, log_probs, _ = self.consume(ids, read_lengths, parts, position, log_probs=True)
            counted = tf.maximum(read_lengths, 1)
            bits = -tf.reduce_sum(log_probs, axis=1) / tf.cast(counted, tf.float32) / float(np.log(2.0))
            return {"log_probs": log_probs, "lengths": lengths, "bits_per_char": bits,
                    "state": self.pack(parts, position), "unknown_chars": unknown}

        @tf.function(input_signature=[string_spec, state_spec])
        def activations(self, text, state):
            ids, lengths, read_lengths, unknown, parts, position = self.read(text, state)
            parts, position, _, trace = self.consume(ids, read_lengths, parts, position, collect=True)
            trace = tf.transpose(trace, [1, 0, 2])  # (batch, time, layers * (per_layer + 4 if lstm) * hidden)
            steps = tf.shape(trace)[1]
            batch = tf.shape(trace)[0]
            states = tf.reshape(trace[:, :, : layers * per_layer * hidden], [batch, steps, layers, per_layer, hidden])
            result = {"hidden": states[:, :, :, 0], "lengths": lengths, "unknown_chars": unknown,
                      "state": self.pack(parts, position)}
            if cell == "lstm":
                gates = tf.reshape(trace[:, :, layers * per_layer * hidden:], [batch, steps, layers, 4, hidden])
                result.update(cell=states[:, :, :, 1], input_gate=gates[:, :, :, 0], forget_gate=gates[:, :, :, 1],
                              cell_candidate=gates[:, :, :, 2], output_gate=gates[:, :, :, 3])
            return result

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int32)])
        def metadata(self, request):
            batch = tf.shape(request)[0]
            return {"vocab": tf.tile(self.chars[None, :], [batch, 1]), "info": tf.fill([batch], self.info),
                    "state_size": tf.fill([batch], state_size)}

    return CharLM()


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


def mix(x):
    """splitmix64's finaliser on uint64 tensors: a counter in, 64 well-mixed bits out."""
    import tensorflow as tf

    def shift(x, n):
        return tf.bitwise.right_shift(x, tf.constant(n, tf.uint64))

    x = (x ^ shift(x, 30)) * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    x = (x ^ shift(x, 27)) * tf.constant(0x94D049BB133111EB, tf.uint64)
    return x ^ shift(x, 31)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_warmup(path: Path, model_name: str) -> None:
    """TF Serving replays these PredictionLogs at load (--enable_model_warmup) so no user pays for tracing."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in signatures.warmup_calls():
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def model_metadata(model_name: str, vocab, config, source: dict, val_loss: float | None = None,
                   corpus: dict | None = None) -> ModelMetadata:
    import tensorflow as tf

    return ModelMetadata(
        model_name=model_name, vocab=tuple(vocab.chars), cell=config.cell, num_layers=config.num_layers,
        hidden_size=config.hidden_size, embedding_size=config.embedding_size,
        state_size=ModelMetadata.state_size_for(config.cell, config.num_layers, config.hidden_size),
        max_chars_per_call=signatures.MAX_CHARS_PER_CALL, signatures=signatures.SIGNATURES,
        val_fraction=config.val_fraction, corpus_sha256=(corpus or {}).get("sha256"),
        corpus_chars=(corpus or {}).get("chars"), val_loss=val_loss,
        val_bpc=val_loss / float(np.log(2)) if val_loss is not None else None,
        config=dataclasses.asdict(config), source=source,
        created=time.strftime(CREATED_FORMAT, time.gmtime()), tensorflow=tf.__version__)


def publish_model(model, vocab, config, export_dir: Path, model_name: str, metadata: ModelMetadata | None = None) -> Path:
    """Build the SavedModel of a Keras CharRNN and publish it as the next version of export_dir/model_name.
    Every export goes through here: trained runs, untrained (random-weights) models, hand-set weights."""
    import tensorflow as tf

    metadata = metadata or model_metadata(model_name, vocab, config, {"checkpoint": "untrained"})
    module = build_module(model, vocab, metadata.model_dump(mode="json"))

    def build(directory: Path) -> None:
        concrete = {name: getattr(module, name).get_concrete_function() for name in signatures.SIGNATURES}
        concrete[signatures.SERVING_DEFAULT] = concrete[signatures.GENERATE]
        tf.saved_model.save(module, str(directory), signatures=concrete)
        metadata.write(directory)
        write_warmup(directory / versions.EXTRA_DIR / versions.WARMUP_FILE, model_name)

    return versions.publish_version(Path(export_dir) / model_name, build)


def export_untrained(config, chars, export_dir: Path, model_name: str = "charlm", seed: int = 0) -> Path:
    """A version with random weights (Keras' initialisers, seeded): the same graph and work as a trained model,
    for benchmarks and tests."""
    import keras

    from training.corpus import Vocab
    from training.model import CharRNN

    keras.utils.set_random_seed(seed)
    vocab = Vocab(tuple(chars))
    return publish_model(CharRNN(len(vocab), config), vocab, config, export_dir, model_name)


def export_version(run_dir: Path, export_dir: Path = Path("exported_models"), model_name: str = "charlm",
                   checkpoint: str = "best", if_changed: bool = False) -> Path:
    """Export the run's checkpoint as the next version; returns the version directory."""
    from training.config import TrainConfig
    from training.corpus import Vocab
    from training.model import CharRNN

    run_dir = Path(run_dir)
    weights = run_dir / f"{checkpoint}.weights.h5"
    for needed in (run_dir / "config.json", run_dir / "vocab.json", weights):
        if not needed.is_file():
            raise ExportError(f"{needed}: not found; is {run_dir} a finished training run? "
                              f"(--checkpoint {checkpoint})")
    config = TrainConfig.load(run_dir / "config.json")
    vocab = Vocab.load(run_dir / "vocab.json")
    weights_sha256 = file_sha256(weights)
    newest = versions.newest_version(Path(export_dir) / model_name)
    if if_changed and newest is not None:
        try:
            previous = ModelMetadata.read(newest).source.weights_sha256
        except MetadataError:
            previous = None
        if previous == weights_sha256:
            print(f"{newest} already holds {weights}; nothing to export")
            return newest

    model = CharRNN(len(vocab), config)
    model.load_weights(weights)
    corpus = json.loads((run_dir / "corpus.json").read_text()) if (run_dir / "corpus.json").exists() else {}
    val_loss = None
    if (run_dir / "history.csv").exists():
        import csv

        losses = [float(r["val_loss"]) for r in csv.DictReader(open(run_dir / "history.csv"))]
        val_loss = min(losses) if checkpoint == "best" and losses else (losses[-1] if losses else None)
    source = {"run_dir": str(run_dir.resolve()), "checkpoint": checkpoint, "weights_sha256": weights_sha256}
    metadata = model_metadata(model_name, vocab, config, source, val_loss, corpus)
    return publish_model(model, vocab, config, export_dir, model_name, metadata)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the training run to export")
    parser.add_argument("--export-dir", default="exported_models", help="root of the model directories")
    parser.add_argument("--model-name", default="charlm", help="the model's name (a directory under --export-dir)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best validation loss, or the final weights")
    parser.add_argument("--if-changed", action="store_true",
                        help="do nothing if the newest version was exported from the same weights")
    args = parser.parse_args(argv)
    if not args.model_name or "/" in args.model_name or args.model_name.startswith("."):
        parser.error(f"--model-name must be a plain directory name, got {args.model_name!r}")
    try:
        version = export_version(Path(args.run_dir), Path(args.export_dir), args.model_name, args.checkpoint,
                                 args.if_changed)
    except ExportError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
