"""Corpus download and check, UTF-8 reading, vocabulary and split."""
import pytest

from training.corpus import (TINYSHAKESPEARE_SHA256, CorpusError, Vocab, ensure_tinyshakespeare, read_corpus,
                             sha256_of, split_ids)
from training.train import main


def test_shared_corpus_is_tinyshakespeare(shakespeare_path):
    assert sha256_of(shakespeare_path) == TINYSHAKESPEARE_SHA256
    assert len(read_corpus(shakespeare_path)) == 1_115_394


def test_download_verifies_then_renames(shakespeare_path, tmp_path):
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    assert ensure_tinyshakespeare(dest, url=shakespeare_path.as_uri()) == dest
    assert sha256_of(dest) == TINYSHAKESPEARE_SHA256
    assert not list(dest.parent.glob("*.part"))


def test_download_with_wrong_checksum_is_refused_and_not_kept(tmp_path):
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not shakespeare")
    dest = tmp_path / "data" / "tinyshakespeare.txt"
    with pytest.raises(CorpusError, match="sha256"):
        ensure_tinyshakespeare(dest, url=wrong.as_uri())
    assert not dest.exists() and not list(dest.parent.glob("*"))


def test_existing_file_with_wrong_checksum_is_refused(tmp_path):
    dest = tmp_path / "tinyshakespeare.txt"
    dest.write_text("edited")
    with pytest.raises(CorpusError, match=r"tinyshakespeare.txt: sha256 is .* expected " + TINYSHAKESPEARE_SHA256):
        ensure_tinyshakespeare(dest, url="file:///nonexistent")


def test_unreachable_download_says_how_to_use_a_local_file(tmp_path):
    with pytest.raises(CorpusError, match="CORPUS=path"):
        ensure_tinyshakespeare(tmp_path / "t.txt", url=(tmp_path / "missing.txt").as_uri())


def test_non_utf8_is_refused_with_file_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("utf-8") + b" na\xefve")
    with pytest.raises(CorpusError) as info:
        read_corpus(path)
    assert "latin1.txt" in str(info.value) and "byte offset 16" in str(info.value)


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        read_corpus(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "empty.txt")


def test_cli_reports_corpus_errors_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe")
    assert main(["--corpus", str(path), "--preset", "tiny", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "bad.txt" in err and "byte offset 0" in err and "Traceback" not in err
    assert main(["--corpus", str(tmp_path / "absent.txt"), "--preset", "tiny",
                 "--run-dir", str(tmp_path / "run")]) == 1
    assert "absent.txt: no such file" in capsys.readouterr().err


def test_vocab_is_unicode_code_points_in_stable_order(tmp_path):
    text = "héllo, wörld — «ça va?» 日本"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    assert Vocab.from_text(text[::-1]) == vocab
    assert vocab.decode(vocab.encode(text)) == text
    vocab.save(tmp_path / "vocab.json")
    assert Vocab.load(tmp_path / "vocab.json") == vocab
    with pytest.raises(CorpusError, match="'Z'"):
        vocab.encode("Zh")


def test_split_takes_validation_from_the_end():
    import numpy as np

    ids = np.arange(1000)
    train, val = split_ids(ids, 0.1)
    assert len(train) == 900 and len(val) == 100 and val[0] == 900
