"""The model: state carried in chunks equals the sequence run whole (torch-rnn's stateful test)."""
import numpy as np
import pytest
import tensorflow as tf

import training.model
from training.config import TrainConfig
from training.fast_lstm import lstm_stack
from training.model import CharRNN


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_chunks_carrying_state_equal_the_whole_sequence(cell):
    config = TrainConfig(cell=cell, embedding_size=8, hidden_size=16, num_layers=2, dropout=0.3)
    model = CharRNN(vocab_size=11, config=config)
    ids = tf.constant(np.random.default_rng(0).integers(0, 11, size=(3, 24)), tf.int32)  # (batch, time)
    whole, whole_states = model(ids, model.zero_state(3))
    states, chunks = model.zero_state(3), []
    for begin in range(0, 24, 5):  # uneven chunks: 5, 5, 5, 5, 4
        logits, states = model(ids[:, begin:begin + 5], states)
        chunks.append(logits)
    np.testing.assert_allclose(tf.concat(chunks, axis=1), whole, atol=1e-5)
    for a, b in zip(states, whole_states):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert len(states) == config.num_layers * (2 if cell == "lstm" else 1)


def test_packed_state_round_trips_and_has_state_size():
    model = CharRNN(vocab_size=5, config=TrainConfig(hidden_size=8, num_layers=3, embedding_size=4))
    states = [tf.random.normal((2, 8)) for _ in range(6)]
    packed = model.pack_state(states)
    assert packed.shape == (2, model.state_size) == (2, 48)
    for a, b in zip(model.unpack_state(packed), states):
        np.testing.assert_array_equal(a, b)


def test_dropout_is_active_only_in_training():
    model = CharRNN(vocab_size=7, config=TrainConfig(hidden_size=8, num_layers=1, embedding_size=4, dropout=0.5))
    ids = tf.constant([[1, 2, 3, 4]])
    a, _ = model(ids, model.zero_state(1))
    b, _ = model(ids, model.zero_state(1))
    c, _ = model(ids, model.zero_state(1), training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_training_path_carrying_state_in_chunks_equals_inference_on_the_whole_sequence(monkeypatch):
    """The training call of an LSTM stack (fast_lstm.lstm_stack's wavefront) computes what inference
    computes, and carries state across calls as inference does."""
    calls = []
    monkeypatch.setattr(training.model, "lstm_stack", lambda *args: calls.append(args) or lstm_stack(*args))
    model = CharRNN(vocab_size=11, config=TrainConfig(embedding_size=8, hidden_size=16, num_layers=3, dropout=0.0))
    model.time_chunks = 4
    ids = tf.constant(np.random.default_rng(1).integers(0, 11, size=(3, 23)), tf.int32)  # (batch, time)
    whole, whole_states = model(ids, model.zero_state(3))
    states, chunks = model.zero_state(3), []
    for begin in range(0, 23, 10):  # 10, 10, 3: each call is itself cut into up to 4 pieces
        logits, states = model(ids[:, begin:begin + 10], states, training=True)
        chunks.append(logits)
    assert len(calls) == 3
    np.testing.assert_allclose(tf.concat(chunks, axis=1), whole, atol=1e-5)
    for a, b in zip(states, whole_states):
        np.testing.assert_allclose(a, b, atol=1e-5)
