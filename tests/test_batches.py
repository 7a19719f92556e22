"""Stream-contiguous batches: row i of batch k+1 continues row i of batch k."""
import numpy as np
import pytest

from training.batches import chars_needed, corpus_chars_needed, num_batches, stream_batches
from training.corpus import CorpusError, Vocab, read_corpus
from training.train import main


def test_batches_rebuild_the_text_stream_by_stream(corpus_slice):
    text = read_corpus(corpus_slice)[:10_000]
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    batch, seq = 4, 50
    batches = [(x.numpy(), y.numpy()) for x, y in stream_batches(ids, batch, seq)]
    assert len(batches) == num_batches(len(ids), batch, seq) == (10_000 // batch - 1) // seq
    stream_length = len(text) // batch
    for row in range(batch):
        rebuilt = "".join(vocab.decode(x[row]) for x, _ in batches)
        stream = text[row * stream_length: (row + 1) * stream_length]
        assert rebuilt == stream[: len(rebuilt)]
        targets = "".join(vocab.decode(y[row]) for _, y in batches)
        assert targets == stream[1: len(rebuilt) + 1]
    assert all(x.shape == (batch, seq) and x.dtype == np.int32 for x, _ in batches)


def test_starting_mid_epoch_gives_the_same_later_batches():
    ids = np.arange(2000, dtype=np.int32)
    full = [x.numpy() for x, _ in stream_batches(ids, 4, 10)]
    later = [x.numpy() for x, _ in stream_batches(ids, 4, 10, start=7)]
    assert len(later) == len(full) - 7
    assert all((a == b).all() for a, b in zip(full[7:], later))


def test_batches_run_without_the_tf_data_autotuner():
    # With it, deleting an iterator read to its end sometimes waited up to a minute for the autotuner's thread
    # (docs/results.md, 2026-12-03): the training loop did that twice an epoch, after its batches and validation's.
    ids = np.arange(2000, dtype=np.int32)
    assert stream_batches(ids, 4, 10).options().autotune.enabled is False
    assert stream_batches(ids, 4, 10, start=7).options().autotune.enabled is False


def test_corpus_chars_needed_is_the_exact_minimum():
    for batch, seq, fraction in [(8, 32, 0.1), (32, 128, 0.1), (3, 7, 0.5), (5, 11, 0.25)]:
        n = corpus_chars_needed(batch, seq, fraction)
        need = chars_needed(batch, seq)
        assert int(n * (1 - fraction)) >= need and n - int(n * (1 - fraction)) >= need
        smaller = n - 1
        assert int(smaller * (1 - fraction)) < need or smaller - int(smaller * (1 - fraction)) < need


def test_too_short_corpus_is_refused_saying_how_many_chars(tmp_path, capsys):
    path = tmp_path / "short.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 20)
    code = main(["--corpus", str(path), "--preset", "tiny", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "short.txt: too short" in err
    assert f"at least {corpus_chars_needed(8, 32, 0.1):,} characters" in err


def test_empty_split_cannot_make_a_batch():
    with pytest.raises(CorpusError):
        stream_batches(np.arange(10, dtype=np.int32), 4, 10)
