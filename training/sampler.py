"""The in-graph sampler: from a batch of next-character logits and each row's settings to the next characters.

Used by the exported graph (training/graph.py) for every `generate` call, and so by the sample printed after
each training epoch, which runs the same graph: one sampler, one random stream, the same text for the same
seed wherever it runs.

Order (vLLM's): temperature, then top-k, then top-p, then min-p, then inverse-CDF sampling with one uniform
number per row per character: splitmix64's output number `position` for the stream `seed`. A row's draws never
depend on its batch-mates, and a continued stream draws what one long call would have drawn. Temperature 0 is
greedy: the likeliest character, no draw. Log-probabilities are reported from the model's own distribution
(before temperature and filters, as vLLM's default `raw_logprobs` and OpenAI's API report them).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from model_interface.signatures import MAX_CHARS_PER_CALL, MAX_LOGPROBS, MAX_TEMPERATURE, MAX_TOP_K

GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def check_settings(num_chars, temperature, top_k, top_p, min_p, logprobs) -> None:
    """The assertions a `generate` call must pass: TF Serving returns their message as INVALID_ARGUMENT, and
    the gateway shows it, so each names the input and its bounds (model_interface.signatures')."""
    tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0 (0 = greedy)")
    tf.debugging.assert_less_equal(temperature, MAX_TEMPERATURE, message=f"temperature must be <= {MAX_TEMPERATURE:g}")
    tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0 = off)")
    tf.debugging.assert_less_equal(top_k, MAX_TOP_K, message=f"top_k must be <= {MAX_TOP_K}")
    tf.debugging.assert_positive(top_p, message="top_p must be in (0, 1]")
    tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]")
    tf.debugging.assert_non_negative(min_p, message="min_p must be in [0, 1]")
    tf.debugging.assert_less_equal(min_p, 1.0, message="min_p must be in [0, 1]")
    tf.debugging.assert_non_negative(logprobs, message=f"logprobs must be in [0, {MAX_LOGPROBS}]")
    tf.debugging.assert_less_equal(logprobs, MAX_LOGPROBS, message=f"logprobs must be in [0, {MAX_LOGPROBS}]")
    tf.debugging.assert_non_negative(num_chars, message="num_chars must be >= 0")
    tf.debugging.assert_less_equal(num_chars, MAX_CHARS_PER_CALL,
                                   message=f"num_chars must be <= {MAX_CHARS_PER_CALL} per call")


def mix(x):
    """splitmix64's finaliser on uint64 tensors: a counter in, 64 well-mixed bits out."""
    def shift(x, n):
        return tf.bitwise.right_shift(x, tf.constant(n, tf.uint64))

    x = (x ^ shift(x, 30)) * tf.constant(0xBF58476D1CE4E5B9, tf.uint64)
    x = (x ^ shift(x, 27)) * tf.constant(0x94D049BB133111EB, tf.uint64)
    return x ^ shift(x, 31)


def uniform(seed, position):
    """Numbers in (0, 1): 24 bits of splitmix64(seed + (position + 1) * golden), elementwise (seed and position
    broadcast: (batch,) each, or (batch, 1) and (batch, steps) for a call's draws at once)."""
    counter = tf.bitcast(seed, tf.uint64) + (tf.cast(position, tf.uint64) + 1) * tf.constant(GOLDEN, tf.uint64)
    top24 = tf.bitwise.right_shift(mix(counter), tf.constant(40, tf.uint64))
    return (tf.cast(top24, tf.float32) + 0.5) * (1.0 / (1 << 24))


def draws(seed, position, steps):
    """(steps, batch): each row's numbers for its next `steps` characters, from `position` on. Made once per call
    before the loop: a character then costs one read instead of splitmix64's dozen ops."""
    positions = position[:, None] + tf.range(steps, dtype=tf.float32)[None, :]  # exact integers below 2**24
    return tf.transpose(uniform(seed[:, None], positions))


def draw(logits, u):
    """Inverse-CDF sampling: the first character whose cumulative probability reaches the row's number u (batch,)."""
    vocab_size = tf.shape(logits)[1]
    cdf = tf.cumsum(tf.nn.softmax(logits), axis=1)  # (batch, vocab)
    below = tf.cast(cdf < u[:, None] * cdf[:, -1:], tf.int32)
    return tf.minimum(tf.reduce_sum(below, axis=1), vocab_size - 1)


class Settings(NamedTuple):
    """The rows' sampling settings as the per-character ops use them, made once per call (prepare): the loop
    then repeats none of this."""
    sampling: tf.Tensor  # (batch,) bool: temperature > 0; greedy rows take the likeliest character
    divisor: tf.Tensor  # (batch, 1): the temperature, 1 for greedy rows
    has_top_k: tf.Tensor  # (batch,) bool
    kth: tf.Tensor  # (batch,) int32: the top-k cut's index among the ranked logits
    top_p: tf.Tensor  # (batch, 1)
    has_top_p: tf.Tensor  # (batch,) bool: top_p < 1
    log_min_p: tf.Tensor  # (batch,): log(min_p); -inf keeps everything


def prepare(temperature, top_k, top_p, min_p, vocab_size: int) -> Settings:
    sampling = temperature > 0
    return Settings(sampling, tf.where(sampling, temperature, 1.0)[:, None], top_k > 0,
                    tf.clip_by_value(top_k - 1, 0, vocab_size - 1), top_p[:, None], top_p < 1.0, tf.math.log(min_p))


def filtered(logits, settings: Settings):
    """Leave the k likeliest characters, then the likeliest whose mass reaches p, then those at least min_p
    times as likely as the likeliest; the rest -inf. The likeliest character always stays."""
    ranked = tf.sort(logits, direction="DESCENDING")  # (batch, vocab)
    floor = tf.where(settings.has_top_k, tf.gather(ranked, settings.kth, batch_dims=1), -np.inf)
    probs = tf.nn.softmax(tf.where(ranked >= floor[:, None], ranked, -np.inf))
    before = tf.cumsum(probs, axis=1, exclusive=True)  # mass of the better-ranked characters
    nucleus = tf.reduce_min(tf.where(before < settings.top_p, ranked, np.inf), axis=1)
    # Only rows that ask: at p = 1 rounding could cut a negligible tail, and a row's text must not depend on
    # whether it (or a batch-mate) asked for log-probabilities.
    nucleus = tf.where(settings.has_top_p, nucleus, -np.inf)
    relative = ranked[:, 0] + settings.log_min_p  # p / p_max >= min_p
    floor = tf.maximum(tf.maximum(floor, nucleus), relative)
    return tf.where(logits >= floor[:, None], logits, -np.inf)


def processing(top_k, top_p, min_p, logprobs):
    """Whether any row filters or wants alternatives: the sort costs every step, so calls without either skip it."""
    return tf.reduce_any(top_k > 0) | tf.reduce_any(top_p < 1.0) | tf.reduce_any(min_p > 0) | tf.reduce_any(logprobs > 0)


def next_chars(logits, settings: Settings, u, processed: bool, alternatives: int):
    """The next character of every row, its log-probability and (when processed) the `alternatives` likeliest
    characters with theirs: (batch, vocab) logits, the rows' prepared settings and numbers u (batch,; draws())
    -> ids (batch,), log_prob (batch,), top ids and log-probs (batch, alternatives), or None."""
    raw = tf.nn.log_softmax(logits)  # the model's own distribution: what log-probabilities report
    greedy = tf.argmax(logits, axis=1, output_type=tf.int32)
    scaled = logits / settings.divisor
    if processed:
        scaled = filtered(scaled, settings)
    ids = tf.where(settings.sampling, draw(scaled, u), greedy)
    chosen = tf.gather(raw, ids, batch_dims=1)
    if not processed:
        return ids, chosen, None, None
    top_log_probs, top_ids = tf.math.top_k(raw, k=alternatives)
    return ids, chosen, top_ids, top_log_probs
