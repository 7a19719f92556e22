"""The short sample printed after each training epoch (char-rnn's sample.lua), drawn by the exported graph itself.

The graph of training/graph.py is built once for the model being trained; after each epoch its variables take
the model's current weights and its `generate` signature samples, with the in-graph sampler and its seeded
random stream (training/sampler.py). So an epoch's sample is exactly what an export of that epoch's weights
writes for the same prime, settings and seed: `python -m training.sample --seed ...` reproduces it.
"""
from __future__ import annotations

import keras

from model_interface.signatures import MAX_CHARS_PER_CALL, SamplingSettings, fresh_states, generate_inputs
from training.corpus import Vocab

PRIME = "\n"  # a play's text starts after a blank line; falls back to the vocabulary's first character


class EpochSampler:
    """`generate` of the exported graph over the weights of a CharRNN being trained."""

    def __init__(self, model, vocab: Vocab):
        from training.graph import CharLMGraph, ModelShape

        self.model, self.vocab = model, vocab
        self.graph = CharLMGraph(ModelShape.of(model), vocab.chars)
        self.prime = PRIME if PRIME in vocab.chars else vocab.chars[0]

    def sample(self, length: int, settings: SamplingSettings) -> str:
        self.graph.assign_weights(self.model)
        pieces, prompt, state = [], self.prime, fresh_states(1)
        while sum(map(len, pieces)) < length:
            n = min(MAX_CHARS_PER_CALL, length - sum(map(len, pieces)))
            out = self.graph.generate(**generate_inputs([prompt], state, [n], [settings]))
            pieces.append(out["text"].numpy()[0].decode("utf-8"))
            prompt, state = "", out["state"].numpy()
        return "".join(pieces)


class SampleEachEpoch(keras.callbacks.Callback):
    """Prints a short sample at each temperature after every epoch, to watch the model learn."""

    def __init__(self, model, vocab: Vocab, config):
        super().__init__()
        self.char_model, self.vocab, self.config = model, vocab, config
        self.sampler: EpochSampler | None = None  # built on first use: a silent run never traces it

    def on_epoch_end(self, epoch, logs=None):
        if not self.config.sample_length or not self.config.verbose:
            return
        self.sampler = self.sampler or EpochSampler(self.char_model, self.vocab)
        seed = self.config.seed + epoch
        for t in self.config.sample_temperatures:
            text = self.sampler.sample(self.config.sample_length, SamplingSettings(temperature=t, seed=seed))
            print(f"\n--- sample after epoch {epoch + 1}, temperature {t:g}, seed {seed} "
                  f"(prime {self.sampler.prime!r}) ---\n{text}\n---", flush=True)
