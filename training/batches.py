"""Stream-contiguous batches for stateful truncated BPTT (char-rnn's CharSplitLMMinibatchLoader).

The split is cut into `batch_size` parallel streams laid side by side; batch k is the k-th window of
`seq_length` characters of every stream, so row i of batch k+1 continues row i of batch k and the
recurrent state carried from one batch to the next is the state of the text that came just before.

    stream 0: [ batch 0 ][ batch 1 ][ batch 2 ] ...
    stream 1: [ batch 0 ][ batch 1 ][ batch 2 ] ...
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from training.corpus import CorpusError


def chars_needed(batch_size: int, seq_length: int) -> int:
    """A split must give every stream one window plus the one-character target shift."""
    return batch_size * (seq_length + 1)


def num_batches(num_chars: int, batch_size: int, seq_length: int) -> int:
    stream_length = num_chars // batch_size
    return max(0, (stream_length - 1) // seq_length)


def corpus_chars_needed(batch_size: int, seq_length: int, val_fraction: float) -> int:
    """The smallest corpus whose train and validation splits both hold one batch."""
    need = chars_needed(batch_size, seq_length)
    n = math.floor(need / min(val_fraction, 1.0 - val_fraction) * 0.99)  # just under; rounding decides the rest
    while not (int(n * (1.0 - val_fraction)) >= need and n - int(n * (1.0 - val_fraction)) >= need):
        n += 1
    return n


def check_split_sizes(name: str, train_chars: int, val_chars: int, batch_size: int, seq_length: int,
                      val_fraction: float) -> None:
    need = chars_needed(batch_size, seq_length)
    for split, have in (("training", train_chars), ("validation", val_chars)):
        if have < need:
            raise CorpusError(
                f"{name}: too short: its {split} split has {have:,} characters, but --batch-size "
                f"{batch_size} x (--seq-length {seq_length} + 1) needs {need:,}; the corpus needs at least "
                f"{corpus_chars_needed(batch_size, seq_length, val_fraction):,} characters with "
                f"--val-fraction {val_fraction} (or use a smaller --batch-size or --seq-length)")


def stream_batches(ids: np.ndarray, batch_size: int, seq_length: int, start: int = 0) -> tf.data.Dataset:
    """Windows (x, y), each (batch, time) int32, y shifted one character ahead; from batch `start` on."""
    n = num_batches(len(ids), batch_size, seq_length)
    if n < 1:
        raise CorpusError(f"{len(ids)} characters cannot fill one batch of {batch_size} x {seq_length}")
    stream_length = len(ids) // batch_size
    streams = tf.constant(np.asarray(ids[: batch_size * stream_length], dtype=np.int32)
                          .reshape(batch_size, stream_length))  # (batch, stream_length)

    def window(k):
        begin = tf.cast(k, tf.int32) * seq_length
        x = streams[:, begin: begin + seq_length]  # (batch, time)
        y = streams[:, begin + 1: begin + seq_length + 1]  # (batch, time)
        return x, y

    # No autotuning: a window is one slice, nothing to tune, and with it on, TensorFlow 2.21 sometimes spends up to
    # a minute deleting an iterator that has been read to its end, waiting for the autotuner's thread to wake
    # (tf.data's Model::OptimizeLoop; docs/results.md, 2026-12-03): the training loop stood still that long
    # after an epoch's last batch or before validation, in 13 of the 27 epochs of three `make train` runs.
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.range(start, n).map(window).prefetch(2).with_options(options)
