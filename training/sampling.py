"""A short sample from the model being trained, printed after each epoch (char-rnn's sample.lua).

This is the quick per-character loop for a glance at training; the exported model samples in-graph.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from training.corpus import Vocab


def sample_text(model, vocab: Vocab, length: int, temperature: float, seed: int, prime: str = "\n") -> str:
    step = tf.function(lambda ids, states: model(ids, states, training=False), reduce_retracing=True)
    rng = np.random.default_rng(seed)
    prime = "".join(c for c in prime if c in vocab.chars) or vocab.chars[0]
    logits, states = step(tf.constant(vocab.encode(prime)[None, :]), model.zero_state(1))
    ids = []
    for _ in range(length):
        scaled = logits[0, -1].numpy().astype(np.float64) / temperature  # (vocab,)
        p = np.exp(scaled - scaled.max())
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
        logits, states = step(tf.constant([[ids[-1]]], tf.int32), states)
    return vocab.decode(ids)


class SampleEachEpoch(keras.callbacks.Callback):
    """Prints a short sample at each temperature after every epoch, to watch the model learn."""

    def __init__(self, model, vocab: Vocab, config):
        super().__init__()
        self.char_model, self.vocab, self.config = model, vocab, config

    def on_epoch_end(self, epoch, logs=None):
        if not self.config.sample_length or not self.config.verbose:
            return
        for t in self.config.sample_temperatures:
            text = sample_text(self.char_model, self.vocab, self.config.sample_length, t, self.config.seed + epoch)
            print(f"\n--- sample after epoch {epoch + 1}, temperature {t} ---\n{text}\n---", flush=True)
