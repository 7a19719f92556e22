"""The character-level recurrent language model: embedding, stacked LSTM/GRU/RNN, dropout, dense head.

The recurrent state is an explicit input and output of every call rather than hidden in stateful
layers: training carries it from batch to batch (per replica under tf.distribute), export threads it
through its signatures, and "continue a stream" or "resume tomorrow" are the same call.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from training.config import TrainConfig
from training.fast_lstm import FastLSTM, lstm_stack
from training.precision import POLICIES


def recurrent_layer(cell: str, units: int, name: str, dtype: str = "float32") -> keras.layers.Layer:
    # Defaults kept cuDNN-eligible (tanh, sigmoid, bias, no recurrent dropout, no unroll): a GPU user
    # gets the cuDNN kernel with no change. FastLSTM is keras.layers.LSTM with a faster CPU training path.
    common = dict(return_sequences=True, return_state=True, name=name, dtype=dtype)
    if cell == "lstm":
        return FastLSTM(units, **common)
    if cell == "gru":
        return keras.layers.GRU(units, reset_after=True, **common)
    return keras.layers.SimpleRNN(units, **common)


class CharRNN(keras.Model):
    def __init__(self, vocab_size: int, config: TrainConfig, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.cell = config.cell
        self.hidden_size = config.hidden_size
        self.num_layers = config.num_layers
        # The layers' dtype policy: "mixed_bfloat16" for --precision bf16 (bf16 compute, fp32 variables, so
        # checkpoints are the same either way). The model itself stays float32: the states it takes and
        # returns and the logits it hands the loss are fp32.
        policy = POLICIES[config.precision]
        self.embedding = keras.layers.Embedding(vocab_size, config.embedding_size, name="embedding", dtype=policy)
        self.recurrent = [recurrent_layer(config.cell, config.hidden_size, f"{config.cell}_{i}", policy)
                          for i in range(config.num_layers)]
        self.dropouts = [keras.layers.Dropout(config.dropout, seed=config.seed + i, name=f"dropout_{i}",
                                              dtype=policy) for i in range(config.num_layers)]
        self.head = keras.layers.Dense(vocab_size, name="head", dtype=policy)
        # Pieces of the sequence the fast LSTM training path runs as a wavefront (fast_lstm.lstm_stack): 5
        # and 10 were fastest for the medium shape on 2 cores, 2 and 4 close behind, all ahead of one loop
        # per layer; 20 loses that gain to per-call overhead (docs/results.md).
        self.time_chunks = 5
        self(tf.zeros((1, 1), tf.int32), self.zero_state(1))  # create the weights now

    @property
    def states_per_layer(self) -> int:
        return 2 if self.cell == "lstm" else 1  # LSTM carries (h, c); GRU and RNN carry h

    @property
    def state_size(self) -> int:
        """Width of the packed state: every layer's h (and c for LSTM), side by side."""
        return self.num_layers * self.states_per_layer * self.hidden_size

    def zero_state(self, batch_size) -> list[tf.Tensor]:
        """The state at the start of a text: a flat list, layer by layer, (h, c) for LSTM."""
        return [tf.zeros((batch_size, self.hidden_size)) for _ in range(self.num_layers * self.states_per_layer)]

    def pack_state(self, states: list[tf.Tensor]) -> tf.Tensor:
        return tf.concat(states, axis=-1)  # (batch, state_size)

    def unpack_state(self, packed: tf.Tensor) -> list[tf.Tensor]:
        return tf.split(packed, self.num_layers * self.states_per_layer, axis=-1)  # each (batch, hidden)

    def call(self, ids, states, training=False):
        """ids (batch, time) int32 and a flat state list -> logits (batch, time, vocab) and the new states."""
        # (the first call, from __init__, builds the layers: it goes the layers' own way)
        if self.embedding.built and all(isinstance(layer, FastLSTM) and layer.trains_fast(training=training)
                                        for layer in self.recurrent):
            # the same computation, scheduled as a wavefront over time chunks (fast_lstm.lstm_stack)
            x, new_states = lstm_stack(ids, self.embedding.embeddings, self.recurrent, states,
                                       lambda i, x: self.dropouts[i](x, training=training), self.time_chunks)
            return self.logits(x), new_states  # (batch, time, vocab)
        x = self.embedding(ids)  # (batch, time, embedding)
        k = self.states_per_layer
        new_states = []
        for i, (layer, dropout) in enumerate(zip(self.recurrent, self.dropouts)):
            x, *layer_states = layer(x, initial_state=list(states[i * k:(i + 1) * k]), training=training)
            x = dropout(x, training=training)  # (batch, time, hidden)
            new_states.extend(tf.cast(s, tf.float32) for s in layer_states)  # bf16 from Keras' own mixed loop
        return self.logits(x), new_states  # (batch, time, vocab)

    def logits(self, x):
        """The head's logits in fp32 whatever the layers compute in: softmax and loss stay fp32."""
        return tf.cast(self.head(x), tf.float32)  # (batch, time, vocab)
