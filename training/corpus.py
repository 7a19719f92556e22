"""The corpus: fetch and verify tiny-shakespeare, read UTF-8 text, build the vocabulary, split it; and the
paper's two corpora, built into data/ (docs/analysis.md):

    python -m training.corpus linux [--kernel-src DIR|TARBALL] [--out data/linux-kernel.txt] [--chars N] [--seed N]
    python -m training.corpus warandpeace [--local pg2600.txt] [--out data/warandpeace.txt]
"""
from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import lzma
import os
import sys
import tarfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_PATH = Path("data/tinyshakespeare.txt")


class CorpusError(ValueError):
    """A corpus that cannot be used; the message names the file and what is wrong."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: Path, otherwise: str) -> Path:
    """url -> a temporary file beside path, to be renamed over it once checked. Its name holds the process id:
    the pods of a sweep may all fetch the corpus at once into the same volume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    print(f"downloading {url} -> {path}", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CorpusError(f"could not download {url}: {e}. {otherwise}") from None
    return tmp


def ensure_tinyshakespeare(path: Path = TINYSHAKESPEARE_PATH, url: str = TINYSHAKESPEARE_URL) -> Path:
    """Download tiny-shakespeare once (to a temporary name, renamed when verified); always verify it."""
    path = Path(path)
    if not path.exists():
        tmp = download(url, path, "Pass CORPUS=path (or --corpus) to use a local file.")
        try:
            check_sha256(tmp, TINYSHAKESPEARE_SHA256, shown_as=path)
        finally:
            if sha256_of(tmp) != TINYSHAKESPEARE_SHA256:
                tmp.unlink()
        tmp.replace(path)
    check_sha256(path, TINYSHAKESPEARE_SHA256)
    return path


def check_sha256(path: Path, expected: str, shown_as: Path | None = None) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise CorpusError(f"{shown_as or path}: sha256 is {actual}, expected {expected} (tiny-shakespeare "
                          f"from the char-rnn repository). Delete the file to download it again.")


def read_corpus(path: Path) -> str:
    """The whole file as text; refuses a missing, empty or non-UTF-8 file, naming the byte offset."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}: not UTF-8 text: byte offset {e.start} ({data[e.start:e.start + 1]!r}) "
                          f"cannot be decoded ({e.reason})") from None
    if not text:
        raise CorpusError(f"{path}: the file is empty")
    return text


@dataclass(frozen=True)
class Vocab:
    """Unicode code points of the corpus, sorted by code point so the same text gives the same ids."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise CorpusError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: Path) -> None:
        from training.config import write_text_atomic

        write_text_atomic(path, json.dumps({"chars": list(self.chars)}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Vocab":
        return cls(tuple(json.loads(Path(path).read_text(encoding="utf-8"))["chars"]))


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training text first, validation taken from the end (nanoGPT's shakespeare_char split)."""
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


def write_atomic(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a reader never sees half a corpus."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_corpus(out: Path, text: str, facts: dict) -> dict:
    """OUT (the text) and OUT with .json (its sha256, size and how it was made), each atomically. The JSON names
    the text's sha256, so one left from an earlier corpus is recognisable (the report checks it)."""
    data = text.encode("utf-8")
    facts = {"sha256": hashlib.sha256(data).hexdigest(), "chars": len(text), "bytes": len(data),
             "distinct_chars": len(set(text)), "non_ascii_chars": sum(1 for c in text if ord(c) > 127), **facts}
    write_atomic(out, data)
    write_atomic(Path(out).with_suffix(".json"), (json.dumps(facts, indent=1, ensure_ascii=False) + "\n").encode())
    return facts


# --- the Linux kernel corpus (the paper's second corpus) ------------------------------------------------------
# The paper's Linux corpus: all .c and .h files of the kernel, shuffled, concatenated, ~6.2M characters.
KERNEL_PACKAGE = "linux-source-6.1"
KERNEL_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")  # what Debian's linux-source-6.1 installs
KERNEL_CORPUS_PATH = Path("data/linux-kernel.txt")
KERNEL_CHARS = 6_200_000
KERNEL_SEED = 1337
# Files longer than this are left out: the largest files of the tree are generated register tables (amdgpu's
# *_offset.h and *_sh_mask.h run to 1M characters of #define lines each); with them two files were 39% of the
# corpus and most of its validation split, where the analyses found no bracket or indentation to track.
KERNEL_MAX_FILE_CHARS = 200_000
C_SUFFIXES = (".c", ".h")


def shuffle_key(seed: int, path: str) -> int:
    """The files' order: by a keyed hash of their path. A shuffle with a fixed seed that needs no list of all
    files first (so a tarball is read once, in its own order), and gives a directory and a tarball of the same
    tree the same corpus."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest(), "big")


def kernel_tree_files(source: Path):
    """(path relative to the tree's top, bytes) of every regular .c/.h file of a directory or a tarball (any
    compression tarfile reads), streamed: the tarball is never unpacked to disk. A tarball whose first entry is a
    directory (linux-source-6.1/, as kernel tarballs are made) has that directory taken off its paths."""
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix in C_SUFFIXES and path.is_file() and not path.is_symlink():
                yield path.relative_to(source).as_posix(), path.read_bytes()
        return
    top = None
    with tarfile.open(source, "r|*") as archive:
        for member in archive:
            name = member.name.removeprefix("./")
            if top is None:
                top = name.rstrip("/") + "/" if member.isdir() else ""
            if member.isfile() and name.endswith(C_SUFFIXES):
                yield name.removeprefix(top), archive.extractfile(member).read()


def build_kernel_corpus(source: Path, max_chars: int = KERNEL_CHARS, seed: int = KERNEL_SEED,
                        flag: str = "--kernel-src", max_file_chars: int = KERNEL_MAX_FILE_CHARS
                        ) -> tuple[str, list[tuple[str, int]]]:
    """(text, (path, characters) of each file in order): the tree's non-empty, valid UTF-8 .c/.h files of at
    most max_file_chars (0: any size) in shuffled order, whole files up to max_chars (stopping before the first
    that would pass it; at least one).

    Only the smallest-keyed files that can make the cut are kept while the tree streams past (a max-heap on the
    key): memory is about max_chars, not the kernel's ~1 GB of C."""
    source = Path(source)
    if not source.exists():
        raise CorpusError(f"{flag} {source}: no such file or directory")
    kept, kept_chars, c_files = [], 0, 0  # kept: a heap of (-key, path, text), the last file in order on top
    try:
        for path, data in kernel_tree_files(source):
            c_files += 1
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not text or 0 < max_file_chars < len(text):
                continue
            heapq.heappush(kept, (-shuffle_key(seed, path), path, text))
            kept_chars += len(text)
            # The last-keyed file is not needed when the others already pass max_chars.
            while len(kept) > 1 and kept_chars - len(kept[0][2]) > max_chars:
                kept_chars -= len(heapq.heappop(kept)[2])
    except (tarfile.TarError, lzma.LZMAError, zlib.error, EOFError, OSError) as e:
        raise CorpusError(f"{flag} {source}: cannot read it as a kernel source tree or tarball "
                          f"({type(e).__name__}: {e})") from None
    if not c_files:
        raise CorpusError(f"{flag} {source}: no .c or .h files in it")
    if not kept:
        raise CorpusError(f"{flag} {source}: none of its {c_files} .c/.h files is non-empty UTF-8 text")
    files = sorted(kept, reverse=True)
    if kept_chars > max_chars and len(files) > 1:
        files.pop()  # the file that would pass max_chars
    return "".join(text for _, _, text in files), [(path, len(text)) for _, path, text in files]


def make_kernel_corpus(source: Path | None, out: Path = KERNEL_CORPUS_PATH, max_chars: int = KERNEL_CHARS,
                       seed: int = KERNEL_SEED, max_file_chars: int = KERNEL_MAX_FILE_CHARS) -> dict:
    if source is None:
        if not KERNEL_TARBALL.is_file():
            raise CorpusError(f"{KERNEL_TARBALL} is not there: install Debian's kernel source (as root: apt-get "
                              f"install {KERNEL_PACKAGE}; `make corpus-linux` does that itself as root), or name a "
                              f"kernel tree: --kernel-src DIR or a .tar.xz")
        source = KERNEL_TARBALL
    source = Path(source)
    text, files = build_kernel_corpus(source, max_chars, seed, max_file_chars=max_file_chars)
    facts = {"source": str(source), "language": "c", "seed": seed, "max_chars": max_chars,
             "max_file_chars": max_file_chars,
             "order": "sha256 of f'{seed}:{path}', paths relative to the tree's top", "file_count": len(files)}
    if source.is_file():
        facts["source_sha256"] = sha256_of(source)
    return write_corpus(out, text, {**facts, "files": [path for path, _ in files],
                                    "file_chars": [chars for _, chars in files]})


# --- War and Peace (the paper's first corpus) -------------------------------------------------------------------
WARANDPEACE_URL = "https://www.gutenberg.org/cache/epub/2600/pg2600.txt"  # Project Gutenberg ebook #2600
# The download's sha256, to be pinned at the first download on a machine with internet: it was written on one
# without any, so nothing has been checked yet. Until then the sha256 is printed (pin it here) and not checked.
WARANDPEACE_SHA256: str | None = None
WARANDPEACE_DOWNLOAD_PATH = Path("data/pg2600.txt")  # the Gutenberg file as downloaded, header and licence included
WARANDPEACE_PATH = Path("data/warandpeace.txt")
GUTENBERG_START, GUTENBERG_END = "*** START OF", "*** END OF"


def strip_gutenberg(raw: str, shown_as: Path | str = "the file") -> str:
    """The book between Project Gutenberg's "*** START OF ..." and "*** END OF ..." lines (both left out), with
    CRLF line ends made LF (Gutenberg's are CRLF; a \\r before every newline is nothing a model should learn) and
    the blank lines around it dropped."""
    text = raw.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.find(GUTENBERG_START)
    end = text.find(GUTENBERG_END, start + 1)
    if start < 0 or end < 0:
        missing = GUTENBERG_START if start < 0 else GUTENBERG_END
        raise CorpusError(f"{shown_as}: no '{missing}' line: not a Project Gutenberg plain-text file")
    body_start = text.find("\n", start)
    body = text[body_start + 1:text.rfind("\n", 0, end) + 1] if body_start >= 0 else ""
    body = body.strip("\n")
    if not body:
        raise CorpusError(f"{shown_as}: nothing between the '{GUTENBERG_START}' and '{GUTENBERG_END}' lines")
    return body + "\n"


def check_pinned_sha256(path: Path, expected: str | None, what: str) -> str:
    actual = sha256_of(path)
    if expected is None:
        print(f"{path}: sha256 {actual}. No sha256 is pinned for {what} yet: check the file, then pin it "
              f"(WARANDPEACE_SHA256 in training/corpus.py).", flush=True)
    elif actual != expected:
        raise CorpusError(f"{path}: sha256 is {actual}, expected {expected} ({what}). Delete the file to download "
                          f"it again; Project Gutenberg sometimes re-issues its files, and then the pin needs "
                          f"renewing.")
    return actual


def make_warandpeace(local: Path | None = None, out: Path = WARANDPEACE_PATH, url: str = WARANDPEACE_URL,
                     download_to: Path = WARANDPEACE_DOWNLOAD_PATH,
                     expected_sha256: str | None = WARANDPEACE_SHA256) -> dict:
    """War and Peace from a local copy of pg2600.txt, or downloaded once to download_to; checked against the
    pinned sha256, stripped of Gutenberg's header and licence, written to out with its .json."""
    what = f"Project Gutenberg's War and Peace, {url}"
    if local is not None:
        raw_path = Path(local)
        if not raw_path.is_file():
            raise CorpusError(f"CORPUS={raw_path}: no such file (a local copy of {url})")
    else:
        raw_path = Path(download_to)
        if not raw_path.exists():
            tmp = download(url, raw_path, "Fetch it on a machine with internet and use the copy: "
                                          "make corpus-warandpeace CORPUS=path/to/pg2600.txt")
            try:
                raw_sha256 = check_pinned_sha256(tmp, expected_sha256, what)
            except CorpusError:
                tmp.unlink()  # a wrong download is not kept
                raise
            tmp.replace(raw_path)
            return finish_warandpeace(raw_path, raw_sha256, out, url, expected_sha256)
    return finish_warandpeace(raw_path, check_pinned_sha256(raw_path, expected_sha256, what), out, url,
                              expected_sha256)


def finish_warandpeace(raw_path: Path, raw_sha256: str, out: Path, url: str, expected_sha256: str | None) -> dict:
    book = strip_gutenberg(read_corpus(raw_path), shown_as=raw_path)
    return write_corpus(out, book, {"source": str(raw_path), "url": url, "language": "prose",
                                    "source_sha256": raw_sha256, "source_sha256_pinned": expected_sha256 is not None})


# --- python -m training.corpus ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.corpus",
                                     description="Build one of the paper's corpora into data/.")
    commands = parser.add_subparsers(dest="command", required=True)
    linux = commands.add_parser("linux", help="the Linux kernel's .c/.h files, shuffled, ~6.2M characters")
    linux.add_argument("--kernel-src", type=Path, help=f"a kernel tree: a directory or a tarball (default: "
                                                        f"{KERNEL_TARBALL}, from Debian's {KERNEL_PACKAGE})")
    linux.add_argument("--out", type=Path, default=KERNEL_CORPUS_PATH, help=f"default: {KERNEL_CORPUS_PATH}")
    linux.add_argument("--chars", type=int, default=KERNEL_CHARS, help=f"about this many characters, whole files "
                                                                      f"(default: {KERNEL_CHARS})")
    linux.add_argument("--seed", type=int, default=KERNEL_SEED, help=f"the shuffle's seed (default: {KERNEL_SEED})")
    linux.add_argument("--max-file-chars", type=int, default=KERNEL_MAX_FILE_CHARS,
                       help=f"leave out files longer than this, generated tables (default: {KERNEL_MAX_FILE_CHARS}; "
                            f"0: keep every size)")
    book = commands.add_parser("warandpeace", help="War and Peace from Project Gutenberg (ebook #2600)")
    book.add_argument("--local", type=Path, help="a local copy of pg2600.txt instead of downloading it "
                                                 "(make corpus-warandpeace CORPUS=path)")
    book.add_argument("--out", type=Path, default=WARANDPEACE_PATH, help=f"default: {WARANDPEACE_PATH}")
    args = parser.parse_args(argv)
    try:
        if args.command == "linux":
            if args.chars < 1000:
                parser.error(f"--chars must be at least 1000, got {args.chars}")
            if args.max_file_chars < 0:
                parser.error(f"--max-file-chars must be 0 (no limit) or more, got {args.max_file_chars}")
            facts = make_kernel_corpus(args.kernel_src, args.out, args.chars, args.seed, args.max_file_chars)
            made = f"{facts['file_count']:,} files from {facts['source']} (seed {facts['seed']})"
        else:
            facts = make_warandpeace(args.local, args.out)
            made = f"from {facts['source']} (sha256 {facts['source_sha256']})"
    except CorpusError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {facts['chars']:,} characters, {facts['distinct_chars']} distinct "
          f"({facts['non_ascii_chars']:,} non-ASCII), sha256 {facts['sha256']}, {made}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
