"""The exported SavedModel: layout, signatures, parity with the Keras model, sampling semantics."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from model_interface.errors import InputRejected
from model_interface.signatures import MAX_CHARS_PER_CALL, SamplingSettings, fresh_states, generate_inputs
from training.config import TrainConfig
from training.corpus import Vocab
from training.export import export_version, main
from training.graph import CharLMGraph, ModelShape
from training.model import CharRNN

ROOT = Path(__file__).resolve().parents[1]


def generate(client, prompts, num_chars, state=None, temperature=1.0, top_k=0, top_p=1.0, seed=7, validate=True,
             min_p=0.0, logprobs=0):
    """One `generate` call with per-row (or shared) settings. validate=False sends values SamplingSettings
    would refuse, to reach the graph's own checks."""
    b = len(prompts)
    per_row = lambda v: v if isinstance(v, list) else [v] * b
    make = SamplingSettings if validate else SamplingSettings.model_construct
    settings = [make(temperature=t, top_k=k, top_p=p, seed=s, min_p=m, logprobs=n)
                for t, k, p, s, m, n in zip(per_row(temperature), per_row(top_k), per_row(top_p), per_row(seed),
                                            per_row(min_p), per_row(logprobs))]
    out = client.generate(prompts, per_row(num_chars), settings, states=state)
    return out["text"], out["state"], out["unknown_chars"]


@pytest.fixture(scope="module")
def keras_model(trained_run):
    config, _ = trained_run
    run_dir = Path(config.run_dir)
    vocab = Vocab.load(run_dir / "vocab.json")
    model = CharRNN(len(vocab), TrainConfig.load(run_dir / "config.json"))
    model.load_weights(run_dir / "best.weights.h5")
    return model, vocab


def test_version_layout_and_metadata(exported_model, trained_run):
    model_dir, version = exported_model
    assert version == model_dir / "1"
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/charlm.json",
                 "assets.extra/tf_serving_warmup_requests"):
        assert (version / name).is_file(), name
    info = json.loads((version / "assets.extra/charlm.json").read_text())
    config, summary = trained_run
    assert info["vocab"] == list(Vocab.load(Path(config.run_dir) / "vocab.json").chars)
    assert info["corpus_sha256"] and info["created"] and info["hidden_size"] == config.hidden_size
    assert info["val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-6)
    assert info["state_size"] == 2 * config.hidden_size * config.num_layers + 1
    assert info["precision"] == "fp32"  # the default; tests/test_export_bf16.py has the bf16 versions


def test_warmup_file_is_prediction_logs(exported_model):
    from tensorflow_serving.apis import prediction_log_pb2

    from model_interface.signatures import INPUTS

    records = list(tf.data.TFRecordDataset(str(exported_model[1] / "assets.extra/tf_serving_warmup_requests")))
    warmed = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        warmed.add(request.model_spec.signature_name)
        assert set(request.inputs) == {i.name for i in INPUTS[request.model_spec.signature_name]}
    assert warmed == {"generate", "score", "activations", "metadata"}  # every signature, before any user


def test_signature_defs_take_text_and_batch_first(loaded_model):
    from model_interface.signatures import INPUTS

    signatures = loaded_model.signatures
    assert set(signatures) == {"generate", "score", "activations", "metadata", "serving_default"}
    inputs = signatures["generate"].structured_input_signature[1]
    expected = {"prompt": tf.string, "state": tf.float32, "num_chars": tf.int32, "temperature": tf.float32,
                "top_k": tf.int32, "top_p": tf.float32, "min_p": tf.float32, "logprobs": tf.int32, "seed": tf.int64}
    assert {k: v.dtype for k, v in inputs.items()} == expected
    for name, declared in INPUTS.items():  # the SavedModel is what the interface package says it is
        actual = signatures[name].structured_input_signature[1]
        assert {k: (v.dtype.name, v.shape.rank) for k, v in actual.items()} == \
            {i.name: (i.dtype, i.rank) for i in declared}, name
    for name, signature in signatures.items():
        for spec in signature.structured_input_signature[1].values():
            assert spec.shape.rank >= 1 and spec.shape[0] is None, name  # batch first, never a scalar
    outputs = signatures["generate"].structured_outputs
    assert outputs["text"].dtype == tf.string and outputs["state"].dtype == tf.float32


def greedy_keras(model, vocab, prompt, n):
    states = model.zero_state(1)
    logits, states = model(tf.constant(vocab.encode(prompt)[None, :]), states)
    out = []
    for _ in range(n):
        out.append(int(tf.argmax(logits[0, -1])))
        logits, states = model(tf.constant([[out[-1]]]), states)
    return vocab.decode(out)


def test_greedy_generation_matches_keras(model_client, keras_model):
    model, vocab = keras_model
    expected = greedy_keras(model, vocab, "KING RICHARD:\n", 120)
    texts, _, _ = generate(model_client, ["KING RICHARD:\n"], 120, top_k=1)
    assert texts[0] == expected
    # Temperature 0 is greedy on every path: alone, batched past FUSED_CELL_MAX_BATCH, with filters on.
    texts, _, _ = generate(model_client, ["KING RICHARD:\n"] * 6, 120, temperature=0.0, seed=list(range(6)),
                           top_p=[1.0, 0.5, 1.0, 1.0, 1.0, 1.0])
    assert texts == [expected] * 6
    alone, _, _ = generate(model_client, ["KING RICHARD:\n"], 120, temperature=0.0, seed=99)
    assert alone[0] == expected


def test_score_matches_keras_loss(model_client, keras_model, corpus_slice):
    model, vocab = keras_model
    text = corpus_slice.read_text()[50_000:50_400]
    ids = vocab.encode(text)
    logits, states = model(tf.constant(ids[None, :-1]), model.zero_state(1))
    keras_loss = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ids[None, 1:], logits)))
    # Prime the exported model with the first character, then score the rest from that state.
    primed = model_client.score([text[0]])["state"]
    scored = model_client.score([text[1:]], primed)
    assert float(scored["bits_per_char"][0]) * math.log(2) == pytest.approx(keras_loss, abs=1e-4)
    assert int(scored["lengths"][0]) == len(text) - 1


def test_continuation_in_chunks_equals_one_call(model_client):
    whole, _, _ = generate(model_client, ["ROMEO:\n"], 200, seed=42, temperature=0.9, top_p=0.95)
    pieces, state, prompt = [], None, ["ROMEO:\n"]
    for _ in range(4):
        texts, state, _ = generate(model_client, prompt, 50, state=state, seed=42, temperature=0.9, top_p=0.95)
        pieces.append(texts[0])
        prompt = [""]
    assert "".join(pieces) == whole[0] and len(whole[0]) == 200


def test_seeded_sampling_is_reproducible_and_batch_invariant(model_client):
    alone, _, _ = generate(model_client, ["First Citizen:\n"], 150, seed=1234, temperature=0.8)
    again, _, _ = generate(model_client, ["First Citizen:\n"], 150, seed=1234, temperature=0.8)
    assert alone == again
    batch, _, _ = generate(model_client, ["MENENIUS:", "First Citizen:\n", "", "a"], [30, 150, 5, 150],
                           seed=[1, 1234, 99, 5], temperature=[1.2, 0.8, 0.5, 1.0], top_k=[5, 0, 0, 3])
    assert batch[1] == alone[0]
    assert [len(t) for t in batch] == [30, 150, 5, 150]
    # Past FUSED_CELL_MAX_BATCH rows the graph takes its other LSTM path; the text must not change.
    wide, _, _ = generate(model_client, ["a", "b", "c", "d", "e", "First Citizen:\n", "f"], 150,
                          seed=[3, 4, 5, 6, 7, 1234, 8], temperature=0.8)
    assert wide[5] == alone[0]
    other, _, _ = generate(model_client, ["First Citizen:\n"], 150, seed=4321, temperature=0.8)
    assert other[0] != alone[0]


def test_sampling_follows_the_model_distribution(model_client):
    """The in-graph sampler draws characters with the softmax probabilities."""
    n = 4000
    texts, _, _ = generate(model_client, ["\nROMEO:\nI"] * n, 1, seed=list(range(n)))
    probs = _next_char_probs(model_client, "\nROMEO:\nI")
    vocab = model_client.metadata.vocab
    counts = np.array([sum(t == c for t in texts) for c in vocab]) / n
    assert 0.5 * np.abs(counts - probs).sum() < 0.05  # total variation distance


def _next_char_probs(client, prompt):
    vocab = client.metadata.vocab
    state = client.score([prompt])["state"]
    return np.exp(client.score(vocab, np.repeat(state, len(vocab), axis=0))["log_probs"][:, 0])


def test_top_k_and_top_p_limit_the_choices(model_client):
    probs = _next_char_probs(model_client, "\nROMEO:\nI")
    vocab = model_client.metadata.vocab
    ranked = [vocab[i] for i in np.argsort(-probs)]
    n = 300
    top3, _, _ = generate(model_client, ["\nROMEO:\nI"] * n, 1, seed=list(range(n)), top_k=3, temperature=2.0)
    assert set(top3) <= set(ranked[:3]) and len(set(top3)) > 1
    nucleus = float(probs[np.argsort(-probs)][0]) * 0.99  # less than the best char's mass: only it is left
    greedy, _, _ = generate(model_client, ["\nROMEO:\nI"] * n, 1, seed=list(range(n)), top_p=nucleus)
    assert set(greedy) == {ranked[0]}


def test_min_p_keeps_only_characters_near_the_likeliest(model_client):
    probs = _next_char_probs(model_client, "\nROMEO:\nI")
    vocab = model_client.metadata.vocab
    order = np.argsort(-probs)
    n = 300
    best, _, _ = generate(model_client, ["\nROMEO:\nI"] * n, 1, seed=list(range(n)), min_p=1.0)
    assert set(best) == {vocab[order[0]]}
    # Just below the second's ratio to the first: exactly those two remain, at temperature 2 both show up.
    ratio = float(probs[order[1]] / probs[order[0]]) * 0.999
    third = float(probs[order[2]] / probs[order[0]])
    assert third < ratio
    two, _, _ = generate(model_client, ["\nROMEO:\nI"] * n, 1, seed=list(range(n)), min_p=ratio)
    assert set(two) == {vocab[order[0]], vocab[order[1]]}


def test_generated_log_probs_are_recomputed_from_the_state(model_client):
    """Each generated character's log-probability and its alternatives are the model's own distribution at the
    state before it (before temperature and filters), whatever the settings sampled from."""
    prompt = "\nROMEO:\n"
    out = model_client.generate([prompt], 40, SamplingSettings(temperature=0.7, top_k=5, logprobs=5, seed=2))
    text = out["text"][0]
    vocab = np.array(model_client.metadata.vocab)
    for i in (0, 7, 39):
        probs = _next_char_probs(model_client, prompt + text[:i])
        assert out["log_probs"][0, i] == pytest.approx(np.log(probs[list(vocab).index(text[i])]), abs=1e-4)
        assert list(vocab[out["top_ids"][0, i, :5]]) == list(vocab[np.argsort(-probs)[:5]])
        np.testing.assert_allclose(out["top_log_probs"][0, i, :5], np.log(np.sort(probs)[::-1][:5]), atol=1e-4)
        assert (out["top_ids"][0, i, 5:] == -1).all()  # beyond the row's own `logprobs`
    # Asking for them changes no text, neither the row's nor a batch-mate's.
    plain = model_client.generate([prompt, "a"], 40, [SamplingSettings(temperature=0.7, top_k=5, seed=2),
                                                      SamplingSettings(seed=4)])
    mixed = model_client.generate([prompt, "a"], 40, [SamplingSettings(temperature=0.7, top_k=5, seed=2),
                                                      SamplingSettings(seed=4, logprobs=20)])
    assert plain["text"] == mixed["text"] and plain["text"][0] == text
    np.testing.assert_allclose(plain["log_probs"], mixed["log_probs"], atol=1e-6)


def test_score_reports_the_likeliest_alternatives(model_client):
    text = "\nROMEO:\nI"
    out = model_client.score([text, "ab"])
    vocab = list(model_client.metadata.vocab)
    probs = _next_char_probs(model_client, text[:5])  # the distribution before character 5
    assert [vocab[i] for i in out["top_ids"][0, 5, :3]] == [vocab[i] for i in np.argsort(-probs)[:3]]
    assert (out["top_ids"][1, 2:] == -1).all() and (out["top_log_probs"][1, 2:] == 0).all()  # past its length


def test_unknown_characters_are_reported_and_empty_prompt_works(model_client):
    texts, state, unknown = generate(model_client, ["ROMEO\u2603 says {hi}", ""], 20)
    assert unknown[0].decode("utf-8") == "\u2603{}" and texts[0] == ""
    assert unknown[1] == b"" and len(texts[1]) == 20
    assert state.shape[1] > 0


def test_bad_sampling_values_raise(model_client):
    for kwargs, message in [(dict(temperature=-0.5), "temperature"), (dict(top_p=1.5), "top_p"),
                            (dict(top_k=-1), "top_k"), (dict(min_p=1.5), "min_p"), (dict(logprobs=21), "logprobs")]:
        with pytest.raises(InputRejected, match=message):
            generate(model_client, ["a"], 5, validate=False, **kwargs)
    with pytest.raises(InputRejected, match="num_chars"):
        generate(model_client, ["a"], MAX_CHARS_PER_CALL + 1)
    with pytest.raises(InputRejected, match="columns"):
        generate(model_client, ["a"], 5, state=np.zeros([1, 3], np.float32))


def test_activations_match_the_returned_state(model_client, trained_run):
    config, _ = trained_run
    acts = model_client.activations(["To be, or not", "ab"])
    batch, steps, layers, hidden = acts["cell"].shape
    assert (batch, steps, layers, hidden) == (2, 13, config.num_layers, config.hidden_size)
    assert list(acts["lengths"]) == [13, 2]
    state = acts["state"]
    np.testing.assert_allclose(acts["hidden"][0, -1, -1], state[0, -hidden * 2 - 1: -hidden - 1], atol=1e-6)
    np.testing.assert_allclose(acts["cell"][1, 1, -1], state[1, -hidden - 1: -1], atol=1e-6)
    for gate in ("input_gate", "forget_gate", "output_gate"):
        assert 0.0 <= acts[gate].min() and acts[gate].max() <= 1.0
    assert np.abs(acts["cell_candidate"]).max() <= 1.0


def test_next_versions_and_if_changed(trained_run, tmp_path):
    config, _ = trained_run
    first = export_version(Path(config.run_dir), tmp_path, "m")
    second = export_version(Path(config.run_dir), tmp_path, "m", checkpoint="last")
    same = export_version(Path(config.run_dir), tmp_path, "m", checkpoint="last", if_changed=True)
    assert (first.name, second.name, same.name) == ("1", "2", "2")


def test_export_cli_refuses_a_missing_run(tmp_path, capsys):
    assert main(["--run-dir", str(tmp_path / "nothing"), "--export-dir", str(tmp_path)]) == 1
    assert "nothing/config.json: not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--run-dir", str(tmp_path), "--model-name", "../escape"])
    assert "--model-name" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_export_leaves_no_version(trained_run, tmp_path):
    config, _ = trained_run
    argv = [sys.executable, "-m", "training.export", "--run-dir", config.run_dir, "--export-dir", str(tmp_path)]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "charlm").glob(".build-*/saved_model.pb")):
        assert proc.poll() is None and time.monotonic() < deadline, "export ended before it was caught mid-build"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not [p for p in (tmp_path / "charlm").iterdir() if p.name.isdigit()]
    version = export_version(Path(config.run_dir), tmp_path, "charlm")  # sweeps the abandoned build
    assert version.name == "1" and [p.name for p in (tmp_path / "charlm").iterdir()] == ["1"]


@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm"])
def test_every_cell_type_exports_what_keras_computes(cell):
    """Untrained weights are enough: the exported graph must compute the Keras model's function."""
    vocab = Vocab(tuple("abcdefgh \n"))
    config = TrainConfig(cell=cell, embedding_size=6, hidden_size=12, num_layers=2, dropout=0.0)
    model = CharRNN(len(vocab), config)
    module = CharLMGraph(ModelShape.of(model), vocab.chars)
    module.assign_weights(model)
    text = "abc defg\nhab cd"
    ids = vocab.encode(text)
    logits, _ = model(tf.constant(ids[None, :-1]), model.zero_state(1))
    keras_loss = float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(ids[None, 1:], logits)))
    primed = module.score(tf.constant([text[0]]), tf.zeros([1, 0]))["state"]
    scored = module.score(tf.constant([text[1:]]), primed)
    assert float(scored["bits_per_char"][0]) * math.log(2) == pytest.approx(keras_loss, abs=1e-5)
    for batch in (1, 6):  # both LSTM paths: one fused op per layer for small batches, separate ops for large
        out = module.generate(**generate_inputs(["ab"] * batch, fresh_states(batch), [20] * batch,
                                                [SamplingSettings(top_k=1)] * batch))
        assert out["text"].numpy()[0].decode() == greedy_keras(model, vocab, "ab", 20)


def test_scoring_in_chunks_carrying_the_state_equals_one_pass(model_client, corpus_slice):
    """torch-rnn's stateful check, for the exported graph: a text read whole, and in chunks passing the state."""
    text = corpus_slice.read_text()[1000:1600]
    whole = model_client.score([text])
    state, pieces = None, []
    for start in range(0, len(text), 150):
        out = model_client.score([text[start:start + 150]], state)
        state = out["state"]
        pieces.append(out["log_probs"][0])
    np.testing.assert_allclose(np.concatenate(pieces), whole["log_probs"][0], atol=1e-5)
    np.testing.assert_allclose(state, whole["state"], atol=1e-5)


def test_rows_ending_in_different_pieces_read_as_each_alone(model_client, corpus_slice):
    """Texts are read in pieces of SEQUENCE_PIECE characters: a row that ends in the first piece, one that ends
    mid-way and one that runs to the last piece, in one call, each equal to the row read alone."""
    from training.graph import SEQUENCE_PIECE
    source = corpus_slice.read_text()[3000:]
    texts = [source[:5], source[100:100 + SEQUENCE_PIECE + 7], source[400:400 + 3 * SEQUENCE_PIECE + 1]]
    together = model_client.score(texts)
    acts = model_client.activations(texts)
    for row, text in enumerate(texts):
        alone = model_client.score([text])
        np.testing.assert_allclose(together["log_probs"][row, :len(text)], alone["log_probs"][0], atol=1e-5)
        np.testing.assert_allclose(together["state"][row], alone["state"][0], atol=1e-5)
        alone_acts = model_client.activations([text])
        np.testing.assert_allclose(acts["cell"][row, :len(text)], alone_acts["cell"][0], atol=1e-5)
        np.testing.assert_allclose(acts["state"][row], alone["state"][0], atol=1e-5)


def test_the_version_carries_its_corpus_chat_template(model_client):
    """tiny-shakespeare is a play: the template writes speeches and stops at the next speaker."""
    from model_interface.chat import ChatTemplate

    metadata = model_client.metadata
    assert metadata.chat_template == ChatTemplate.layout("play").source and metadata.chat_stop == ("\n\n",)


def test_a_chat_template_the_vocabulary_cannot_write_is_refused_at_export(trained_run, tmp_path, capsys):
    config, _ = trained_run
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}\u2603 {{ m.content }}{% endfor %}", encoding="utf-8")
    argv = ["--run-dir", config.run_dir, "--export-dir", str(tmp_path / "out")]
    assert main(argv + ["--chat-template", str(template)]) == 1
    assert "outside the vocabulary: '\u2603'" in capsys.readouterr().err
    assert main(argv + ["--chat-template", str(tmp_path / "missing.jinja")]) == 1
    assert "missing.jinja: cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "out" / "charlm").exists() or not list((tmp_path / "out" / "charlm").iterdir())
