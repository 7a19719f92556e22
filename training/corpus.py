"""The corpus: fetch and verify tiny-shakespeare, read UTF-8 text, build the vocabulary, split it."""
from __future__ import annotations

import hashlib
import json
import urllib.request
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


def ensure_tinyshakespeare(path: Path = TINYSHAKESPEARE_PATH, url: str = TINYSHAKESPEARE_URL) -> Path:
    """Download tiny-shakespeare once (to a temporary name, renamed when verified); always verify it."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        print(f"downloading {url} -> {path}", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                out.write(response.read())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CorpusError(f"could not download {url}: {e}. Pass CORPUS=path (or --corpus) to use a local file.")
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
