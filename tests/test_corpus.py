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


# --- the Linux kernel corpus ------------------------------------------------------------------------------------
import json
import tarfile

from training import corpus as corpus_module
from training.corpus import (build_kernel_corpus, main as corpus_main, make_warandpeace, shuffle_key,
                             strip_gutenberg)

KERNEL_FILES = {f"kernel/f{i}.c": f"int f{i}(void)\n{{\n\treturn {i};\n}}\n" for i in range(10)}
KERNEL_FILES.update({"include/linux/a.h": "#define A 1 /* é */\n", "arch/x86/b.h": "#ifndef B\n#endif\n",
                     "empty.h": "", "Makefile": "obj-y += f0.o\n", "README": "Linux\n"})


@pytest.fixture
def kernel_tree(tmp_path):
    """A small kernel-like tree: ten .c files, headers (one with a non-ASCII comment, one empty), a latin-1
    .c file that is not UTF-8, and files that are not C."""
    root = tmp_path / "linux-6.1"
    for name, text in KERNEL_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "drivers").mkdir()
    (root / "drivers" / "latin1.c").write_bytes(b"/* Gr\xfc\xdfe */\n")
    return root


def expected_order(seed):
    valid = [name for name, text in KERNEL_FILES.items() if name.endswith((".c", ".h")) and text]
    return sorted(valid, key=lambda name: shuffle_key(seed, name))


def test_kernel_corpus_takes_every_valid_c_and_h_file_in_the_seeds_order(kernel_tree):
    text, files = build_kernel_corpus(kernel_tree, max_chars=10_000, seed=3)
    order = expected_order(3)  # no empty, non-UTF-8 or non-C file; paths relative to the tree's top
    assert files == [(name, len(KERNEL_FILES[name])) for name in order]
    assert text == "".join(KERNEL_FILES[name] for name in order)
    other = [name for name, _ in build_kernel_corpus(kernel_tree, max_chars=10_000, seed=4)[1]]
    assert sorted(other) == sorted(order) and other != order  # 12! orders: a clash would be a bug


def test_kernel_corpus_leaves_out_files_longer_than_max_file_chars(kernel_tree):
    (kernel_tree / "drivers" / "gpu_sh_mask.h").write_text("#define REG_A 0x1\n" * 2000)  # 38,000 characters
    names = [name for name, _ in build_kernel_corpus(kernel_tree, max_chars=100_000, seed=3, max_file_chars=10_000)[1]]
    assert names == expected_order(3)
    names = [name for name, _ in build_kernel_corpus(kernel_tree, max_chars=100_000, seed=3, max_file_chars=0)[1]]
    assert "drivers/gpu_sh_mask.h" in names


def test_kernel_corpus_stops_before_the_file_that_would_pass_the_size(kernel_tree):
    order = expected_order(3)
    first_three = sum(len(KERNEL_FILES[name]) for name in order[:3])

    def taken(max_chars):
        return [name for name, _ in build_kernel_corpus(kernel_tree, max_chars=max_chars, seed=3)[1]]

    assert taken(first_three) == order[:3]
    assert taken(first_three + len(KERNEL_FILES[order[3]]) - 1) == order[:3]
    assert taken(first_three + len(KERNEL_FILES[order[3]])) == order[:4]
    assert taken(1) == order[:1]  # at least one whole file


def test_same_tree_and_seed_give_the_same_corpus_from_a_directory_or_a_tarball(kernel_tree, tmp_path, capsys):
    tarball = tmp_path / "linux-source-6.1.tar.xz"
    with tarfile.open(tarball, "w:xz") as archive:
        archive.add(kernel_tree, arcname="linux-source-6.1")
    from_dir, from_tar = tmp_path / "dir" / "linux.txt", tmp_path / "tar" / "linux.txt"
    assert corpus_main(["linux", "--kernel-src", str(kernel_tree), "--out", str(from_dir), "--seed", "3"]) == 0
    assert corpus_main(["linux", "--kernel-src", str(tarball), "--out", str(from_tar), "--seed", "3"]) == 0
    assert from_dir.read_bytes() == from_tar.read_bytes()
    facts = json.loads(from_tar.with_suffix(".json").read_text(encoding="utf-8"))
    assert facts["sha256"] == sha256_of(from_tar) == json.loads(from_dir.with_suffix(".json").read_text())["sha256"]
    assert facts["files"] == expected_order(3) and facts["file_count"] == 12
    assert facts["file_chars"] == [len(KERNEL_FILES[name]) for name in facts["files"]]
    assert facts["seed"] == 3 and facts["source"] == str(tarball) and facts["language"] == "c"
    assert facts["source_sha256"] == sha256_of(tarball)
    assert facts["chars"] == len(from_tar.read_text(encoding="utf-8")) and facts["non_ascii_chars"] == 1  # the é
    assert facts["sha256"] in capsys.readouterr().out
    assert sorted(p.name for p in from_tar.parent.iterdir()) == ["linux.json", "linux.txt"]  # no temporary left


@pytest.mark.parametrize("case", ["missing", "no C files", "not a tarball", "truncated tarball"])
def test_bad_kernel_sources_get_a_message_naming_the_flag_and_path(case, kernel_tree, tmp_path, capsys):
    source = tmp_path / "source.tar.xz"
    if case == "no C files":
        source = tmp_path / "docs"
        (source / "Documentation").mkdir(parents=True)
        (source / "Documentation" / "index.rst").write_text("Linux\n")
    elif case == "not a tarball":
        source.write_bytes(b"this is not xz data at all")
    elif case == "truncated tarball":
        with tarfile.open(source, "w:xz") as archive:
            archive.add(kernel_tree, arcname="linux")
        source.write_bytes(source.read_bytes()[:200])
    out = tmp_path / "out" / "linux.txt"
    assert corpus_main(["linux", "--kernel-src", str(source), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"--kernel-src {source}" in err and "Traceback" not in err
    assert {"missing": "no such file or directory", "no C files": "no .c or .h files",
            "not a tarball": "cannot read it", "truncated tarball": "cannot read it"}[case] in err
    assert not out.exists()


@pytest.mark.parametrize("flags, message", [(["--chars", "10"], "--chars must be at least 1000, got 10"),
                                            (["--max-file-chars", "-1"], "--max-file-chars must be 0")])
def test_bad_kernel_corpus_sizes_name_the_flag(flags, message, kernel_tree, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        corpus_main(["linux", "--kernel-src", str(kernel_tree), "--out", str(tmp_path / "k.txt"), *flags])
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_without_kernel_source_it_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus_module, "KERNEL_TARBALL", tmp_path / "linux-source-6.1.tar.xz")
    assert corpus_main(["linux", "--out", str(tmp_path / "linux.txt")]) == 1
    err = capsys.readouterr().err
    assert "apt-get install linux-source-6.1" in err and "--kernel-src" in err and "Traceback" not in err


# --- War and Peace ------------------------------------------------------------------------------------------------
GUTENBERG = ("\ufeffThe Project Gutenberg eBook of War and Peace\r\n\r\nRelease date: April, 2001\r\n\r\n"
             "*** START OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\r\n\r\n\r\nWAR AND PEACE\r\n\r\n"
             "By Leo Tolstoy\r\n\r\n“Well, Prince...”\r\n\r\n\r\n"
             "*** END OF THE PROJECT GUTENBERG EBOOK WAR AND PEACE ***\r\n\r\nSection 1. General Terms\r\n")
BOOK = "WAR AND PEACE\n\nBy Leo Tolstoy\n\n“Well, Prince...”\n"


def test_gutenberg_header_and_licence_are_stripped_and_line_ends_made_lf():
    assert strip_gutenberg(GUTENBERG) == BOOK
    with pytest.raises(CorpusError, match=r"book.txt: no '\*\*\* END OF' line"):
        strip_gutenberg(GUTENBERG.split("*** END OF")[0], shown_as="book.txt")
    with pytest.raises(CorpusError, match=r"no '\*\*\* START OF' line"):
        strip_gutenberg(BOOK)


@pytest.fixture
def gutenberg_file(tmp_path):
    path = tmp_path / "pg2600.txt"
    path.write_bytes(GUTENBERG.encode("utf-8"))
    return path


def test_war_and_peace_is_downloaded_once_checked_and_stripped(gutenberg_file, tmp_path):
    out, raw = tmp_path / "data" / "warandpeace.txt", tmp_path / "data" / "pg2600.txt"
    facts = make_warandpeace(out=out, url=gutenberg_file.as_uri(), download_to=raw,
                             expected_sha256=sha256_of(gutenberg_file))
    assert out.read_text(encoding="utf-8") == BOOK and raw.read_bytes() == gutenberg_file.read_bytes()
    assert facts == json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert facts["source_sha256"] == sha256_of(gutenberg_file) and facts["source_sha256_pinned"]
    assert facts["sha256"] == sha256_of(out)
    # Kept: a second run reads data/pg2600.txt, not the address.
    assert make_warandpeace(out=out, url="file:///nonexistent", download_to=raw,
                            expected_sha256=sha256_of(gutenberg_file))["sha256"] == facts["sha256"]


def test_a_download_with_the_wrong_sha256_is_refused_and_not_kept(gutenberg_file, tmp_path):
    raw = tmp_path / "data" / "pg2600.txt"
    with pytest.raises(CorpusError, match="sha256 is .* expected 0000"):
        make_warandpeace(out=tmp_path / "wp.txt", url=gutenberg_file.as_uri(), download_to=raw,
                         expected_sha256="0" * 64)
    assert not list(raw.parent.iterdir()) and not (tmp_path / "wp.txt").exists()


def test_unpinned_sha256_is_printed_to_be_pinned_and_a_local_copy_is_used(gutenberg_file, tmp_path, capsys):
    out = tmp_path / "wp.txt"
    assert corpus_module.WARANDPEACE_SHA256 is None  # not pinned: written with no internet (docs/analysis.md)
    assert corpus_main(["warandpeace", "--local", str(gutenberg_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sha256_of(gutenberg_file) in printed and "pin it" in printed
    assert out.read_text(encoding="utf-8") == BOOK


def test_no_internet_says_how_to_use_a_local_copy(tmp_path, capsys):
    assert corpus_main(["warandpeace", "--local", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "w.txt")]) == 1
    assert "missing.txt: no such file" in capsys.readouterr().err
    with pytest.raises(CorpusError, match="CORPUS=path"):
        make_warandpeace(out=tmp_path / "w.txt", url=(tmp_path / "absent.txt").as_uri(),
                         download_to=tmp_path / "pg2600.txt")
