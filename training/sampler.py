"""The in-graph sampler: from a batch of next-character logits and each row's settings to the next characters.

Used by the exported graph (training/graph.py) for every `generate` call, and so by the sample printed after
each training epoch, which runs the same graph: one sampler, one random stream, the same text for the same
seed wherever it runs.

Order (vLLM's): temperature, then top-k, then top-p, then min-p, then inverse-CDF sampling along the characters
ranked likeliest first (each filter keeps a prefix of that ranking) with one uniform number per row per
character: splitmix64's output number `position` for the stream `seed`. A row's draws never
depend on its batch-mates, and a continued stream draws what one long call would have drawn. Temperature 0 is
greedy: the likeliest character, no draw. Log-probabilities are reported from the model's own distribution
(before temperature and filters, as vLLM's default `raw_logprobs` and OpenAI's API report them).
"""
from __future__ import annotations

from typing import NamedTuple

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


class Settings(NamedTuple):
    """The rows' sampling settings as the per-character ops use them, made once per call (prepare): the loop
    then repeats none of this."""
    divisor: tf.Tensor  # (batch, 1): the temperature, 1 for greedy rows
    last_of_top_k: tf.Tensor  # (batch, 1) int32: the rank of the top-k set's last character (vocab - 1: top-k off)
    top_p: tf.Tensor  # (batch, 1): the nucleus' share of the top-k set's mass; 1 keeps all of it
    neg_log_min_p: tf.Tensor  # (batch, 1): -log(min_p); +inf keeps everything


def prepare(temperature, top_k, top_p, min_p, vocab_size: int) -> Settings:
    last = tf.where(top_k > 0, tf.minimum(top_k, vocab_size) - 1, vocab_size - 1)
    return Settings(tf.where(temperature > 0, temperature, 1.0)[:, None], last[:, None], top_p[:, None],
                    -tf.math.log(min_p)[:, None])


def step_numbers(numbers, temperature):
    """draws()' (steps, batch) as the loop reads them, (steps, batch, 1), and 0 for greedy rows: a draw of 0
    picks the likeliest character, so greedy needs no op of its own per character."""
    return tf.where(temperature[None, :] > 0, numbers, 0.0)[..., None]


def first_at_least(ascending, values):
    """Per row, how many of `ascending` (batch, n) are below each of `values` (batch, k): the index of the first
    at least as large. tf.searchsorted is this op wrapped in reshapes for any rank, a handful of ops more per
    character; these are 2-D already."""
    return tf.raw_ops.LowerBound(sorted_inputs=ascending, values=values)


def kept(weights, cumulative, scaled_gap, settings: Settings):
    """How many of the ranked characters the filters leave, (batch, 1): the top k, then of those the likeliest
    whose mass reaches p, then those at least min_p times as likely as the likeliest. Each filter keeps a
    prefix of the ranking, so their intersection is the shortest prefix, and the likeliest always stays.

    weights: (batch, vocab) exp(scaled logit - the best one), ranked; cumulative: their running sums;
    scaled_gap: log(weights)."""
    top_k_mass = tf.gather(cumulative, settings.last_of_top_k, batch_dims=1)  # (batch, 1)
    # A character stays while the mass ranked before it is below p of the top-k set's. At p = 1 that is every
    # character of the set, as past it the mass before a character is the whole set's: top-k needs no test of
    # its own. A weight too small to move the running sum is dropped, and could never be drawn anyway.
    before = tf.cumsum(weights, axis=1, exclusive=True)  # the same running sums one place later: ascending
    nucleus = first_at_least(before, settings.top_p * top_k_mass)  # how many have less mass before them
    near = tf.raw_ops.UpperBound(sorted_inputs=-scaled_gap, values=settings.neg_log_min_p)  # p / p_max >= min_p
    return tf.minimum(nucleus, near)


def processing(top_k, top_p, min_p, logprobs):
    """Whether any row filters or wants alternatives: the filters cost every step, so calls without either skip them."""
    return tf.reduce_any(top_k > 0) | tf.reduce_any(top_p < 1.0) | tf.reduce_any(min_p > 0) | tf.reduce_any(logprobs > 0)


def next_chars(logits, settings: Settings, u, processed: bool, alternatives: int):
    """The next character of every row, its log-probability and (when processed) the `alternatives` likeliest
    characters with theirs: (batch, vocab) logits, the rows' prepared settings and numbers u (batch, 1;
    step_numbers()) -> ids (batch,), log_prob (batch,), top ids and log-probs (batch, alternatives), or None.

    Everything runs on the characters ranked likeliest first (one top_k of the whole vocabulary; ties in
    vocabulary order): the filters keep a prefix of the ranking, the draw walks it, the alternatives are its
    head. A per-character op costs about a microsecond whatever its size, so this chain is kept short: one
    ranking, and binary searches instead of masks and counts."""
    vocab_size = logits.shape[1] or tf.shape(logits)[1]  # static in the exported graph: no op per character
    ranked, order = tf.math.top_k(logits, k=vocab_size)  # (batch, vocab) each
    scaled_gap = (ranked - ranked[:, :1]) / settings.divisor  # (batch, vocab), <= 0: the best is 0
    weights = tf.exp(scaled_gap)  # unnormalised probabilities after temperature, ranked
    cumulative = tf.cumsum(weights, axis=1)
    if processed:
        mass = tf.gather(cumulative, kept(weights, cumulative, scaled_gap, settings) - 1, batch_dims=1)
    else:
        mass = cumulative[:, -1:]  # (batch, 1)
    # Inverse CDF along the ranking: the first character whose running mass reaches u of the kept mass, at
    # most the last kept one (its running sum is that mass, and u < 1).
    rank = first_at_least(cumulative, u * mass)[:, 0]  # (batch,)
    raw = tf.nn.log_softmax(ranked)  # the model's own distribution, ranked: what log-probabilities report
    ids = tf.gather(order, rank, batch_dims=1)
    chosen = tf.gather(raw, rank, batch_dims=1)
    if not processed:
        return ids, chosen, None, None
    return ids, chosen, order[:, :alternatives], raw[:, :alternatives]
