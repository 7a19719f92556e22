"""Ranking cells: correlations on known columns, and a planted LSTM cell that counts quote parity must come first."""
import dataclasses
import json

import numpy as np
import pytest

from analysis.cells import SELECT_BLOCK, correlations, liveliest_window, rank_cells, scored_blocks, scored_part
from analysis.features import feature_tracks

PLANTED_LAYER, PLANTED_CELL, DETECTOR_CELL = 1, 5, 2
HIDDEN = 8


def test_correlations_match_numpy_and_give_nan_for_a_constant_cell():
    rng = np.random.default_rng(0)
    feature = rng.normal(size=300)
    values = np.stack([feature * 2 + 1, -feature, rng.normal(size=300), np.full(300, 0.3)], axis=1)
    r = correlations(values, feature)
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(-1.0)
    assert r[2] == pytest.approx(np.corrcoef(values[:, 2], feature)[0, 1])
    assert np.isnan(r[3])


def test_rank_cells_finds_a_planted_column_and_scores_it_on_the_block_it_was_not_chosen_on():
    rng = np.random.default_rng(1)
    steps, layers, hidden = 1000, 2, 6
    values = rng.normal(size=(steps, layers, hidden))
    feature = rng.normal(size=steps)
    values[:, 1, 4] = -feature + 0.1 * rng.normal(size=steps)  # anti-correlated counts as tracking
    values[:500, 0, 2] = feature[:500]  # perfect on the choosing half only: luck, not a tracker
    ranking = rank_cells(values, {"f": feature, "flat": np.ones(steps)}, top=3)
    best = ranking["f"]["best"]
    assert (best[0]["layer"], best[0]["cell"]) == (0, 2)  # chosen on the first block…
    assert abs(best[0]["r_held_out"]) < 0.2  # …and found out on the second
    assert (best[1]["layer"], best[1]["cell"]) == (1, 4)
    assert best[1]["r_held_out"] < -0.95
    assert ranking["flat"]["best"] == [] and "constant" in ranking["flat"]["note"]


def test_a_feature_found_only_in_the_first_half_is_still_chosen_and_scored():
    """Strings in the kernel sample came all in its first half: halves would leave nothing to score them on.
    Alternate blocks choose on some of them and score on others."""
    rng = np.random.default_rng(2)
    steps = 4 * SELECT_BLOCK
    feature = np.zeros(steps)
    feature[: steps // 2] = rng.random(steps // 2) < 0.1  # rare, and only in the first half
    values = rng.normal(size=(steps, 1, 4))
    values[:, 0, 3] = feature + 0.3 * rng.normal(size=steps)
    best = rank_cells(values, {"inside_string": feature})["inside_string"]["best"]
    assert best[0]["cell"] == 3 and best[0]["r_held_out"] > 0.2
    held = scored_part(steps)
    assert held.sum() == steps // 2 and not held[:SELECT_BLOCK].any() and held[SELECT_BLOCK:2 * SELECT_BLOCK].all()
    assert scored_blocks(steps) == [(SELECT_BLOCK, 2 * SELECT_BLOCK), (3 * SELECT_BLOCK, 4 * SELECT_BLOCK)]


def test_the_window_shown_lies_inside_the_scored_blocks():
    track = np.zeros(4 * SELECT_BLOCK)
    track[100:300:2] = 1  # livelier, but on a choosing block
    track[SELECT_BLOCK + 700:SELECT_BLOCK + 760:3] = 1
    a, b = liveliest_window(track, 500, scored_blocks(len(track)))
    assert SELECT_BLOCK <= a and b <= 2 * SELECT_BLOCK and b - a == 500 and a <= SELECT_BLOCK + 700


def test_liveliest_window_lands_where_the_feature_varies():
    track = np.zeros(1000)
    track[700:760:2] = 1
    a, b = liveliest_window(track, 100)
    assert b - a == 100 and a <= 700 and b >= 760


# --- the planted model --------------------------------------------------------------------------------------
def quote_text(rng, length):
    """Words of a few letters, lines, and quotations of varying length."""
    parts, size = [], 0
    while size < length:
        word = "".join(rng.choice(list("abcde"), size=rng.integers(1, 7)))
        parts.append(word + rng.choice([" ", " ", " ", "\n", ' "', '" ']))
        size += len(parts[-1])
    return "".join(parts)[:length]


def planted_weights(model, vocab):
    """Layer 0, unit 2 says whether the character just read is a quote (h = ±tanh(1)); layer 1, unit 5 flips
    its cell on every quote (f = 0, i = 1, candidate = -sign of its own h) and holds it otherwise (f = 1, i = 0).
    Everything else is random, and nothing else reads unit 5."""
    rng = np.random.default_rng(7)
    big, flip = 20.0, 10.0
    embedding = rng.normal(0, 0.5, size=model.embedding.embeddings.shape)
    embedding[:, 0] = [1.0 if c == '"' else 0.0 for c in vocab.chars]  # dim 0: is a quote
    model.embedding.embeddings.assign(embedding)

    def gate(block, unit):  # Keras keeps the gates as i, f, c, o along the last axis
        return {"i": 0, "f": 1, "c": 2, "o": 3}[block] * HIDDEN + unit

    layer0, layer1 = (layer.cell for layer in model.recurrent)
    kernel, recurrent, bias = (rng.normal(0, 0.3, size=w.shape) for w in (layer0.kernel, layer0.recurrent_kernel, layer0.bias))
    for block in "ifco":
        kernel[:, gate(block, DETECTOR_CELL)] = 0
        recurrent[:, gate(block, DETECTOR_CELL)] = 0
    bias[gate("i", DETECTOR_CELL)], bias[gate("f", DETECTOR_CELL)], bias[gate("o", DETECTOR_CELL)] = big, -big, big
    kernel[0, gate("c", DETECTOR_CELL)], bias[gate("c", DETECTOR_CELL)] = big, -big / 2  # c = +1 on '"', else -1
    for w, v in zip(layer0.weights, (kernel, recurrent, bias)):
        w.assign(v)

    kernel, recurrent, bias = (rng.normal(0, 0.3, size=w.shape) for w in (layer1.kernel, layer1.recurrent_kernel, layer1.bias))
    recurrent[PLANTED_CELL, :] = 0  # no other unit reads the planted one
    for block in "ifco":
        kernel[:, gate(block, PLANTED_CELL)] = 0
        recurrent[:, gate(block, PLANTED_CELL)] = 0
        bias[gate(block, PLANTED_CELL)] = 0
    quote = 1 / np.tanh(1.0)  # scales the detector's h to ±1
    kernel[DETECTOR_CELL, gate("i", PLANTED_CELL)] = big * quote
    kernel[DETECTOR_CELL, gate("f", PLANTED_CELL)] = -big * quote
    recurrent[PLANTED_CELL, gate("c", PLANTED_CELL)] = -flip  # the candidate is minus the sign of its own h
    bias[gate("c", PLANTED_CELL)] = flip / 4  # from c = 0 (no quote yet) the first quote goes positive
    bias[gate("o", PLANTED_CELL)] = big
    for w, v in zip(layer1.weights, (kernel, recurrent, bias)):
        w.assign(v)


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    client = build_planted_model(tmp_path_factory.mktemp("planted"))
    yield client
    client.close()


def build_planted_model(export_dir):
    """A 2x8 LSTM with a quote-parity cell planted at layer 1, cell 5, exported as every model is
    (training.export.publish_model) and opened through the model interface as the analyses open any version."""
    from model_interface.client import ModelClient
    from training.config import TrainConfig
    from training.corpus import Vocab
    from training.export import publish_model
    from training.model import CharRNN

    vocab = Vocab.from_text('abcde \n"')
    config = dataclasses.replace(TrainConfig(), hidden_size=HIDDEN, num_layers=2, embedding_size=4, dropout=0.0)
    model = CharRNN(len(vocab), config)
    planted_weights(model, vocab)
    return ModelClient.open(model=publish_model(model, vocab, config, export_dir, "planted"))


def test_the_planted_quote_cell_ranks_first_for_inside_quotes(planted_model):
    from analysis.activations import text_activations

    text = quote_text(np.random.default_rng(3), 3000)
    values = text_activations(planted_model, text, chunk_chars=700)  # one pass, in chunks carrying the state
    cells = values["tanh_cell"]  # (time, layers, hidden)
    assert cells.shape == (3000, 2, HIDDEN)
    ranking = rank_cells(cells, feature_tracks(text), top=3)
    best = ranking["inside_quotes"]["best"]
    assert (best[0]["layer"], best[0]["cell"]) == (PLANTED_LAYER, PLANTED_CELL)
    assert best[0]["r_held_out"] > 0.9
    assert abs(best[1]["r_held_out"]) < 0.7  # nothing else tracks it nearly as well
    # It is not simply "the quote cell for every feature".
    assert (ranking["line_position"]["best"][0]["layer"], ranking["line_position"]["best"][0]["cell"]) != \
        (PLANTED_LAYER, PLANTED_CELL)
    assert json.dumps(ranking)  # plain numbers, ready for the report's JSON
