"""A code corpus every machine has: the Python standard library's own source.

The paper's second corpus was the Linux kernel source, where it found cells for bracket depth, indentation,
comments and quotes. The standard library plays that part here:

    python -m analysis.code_corpus --out data/python-stdlib.txt [--chars 1000000]
    python -m training.train --corpus data/python-stdlib.txt --run-dir runs/stdlib ...

Files are taken in sorted path order (the same interpreter version gives the same corpus), ASCII files only
(a few files with non-ASCII text would add rarely seen characters to the vocabulary), whole files until the
size is reached.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import sysconfig
from pathlib import Path

SKIPPED_DIRS = {"site-packages", "__pycache__", "dist-packages"}


def stdlib_sources(root: Path | None = None) -> list[Path]:
    root = Path(root or sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts))


def build_corpus(max_chars: int = 1_000_000, root: Path | None = None) -> str:
    parts, size = [], 0
    for path in stdlib_sources(root):
        try:
            source = path.read_bytes().decode("ascii")
        except (UnicodeDecodeError, OSError):
            continue
        if size + len(source) > max_chars and parts:
            break
        parts.append(source)
        size += len(source)
    if not parts:
        raise ValueError(f"no ASCII .py files under {root or sysconfig.get_paths()['stdlib']}")
    return "".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.code_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the corpus file to write")
    parser.add_argument("--chars", type=int, default=1_000_000, help="about this many characters (default: 1000000)")
    args = parser.parse_args(argv)
    if args.chars < 1000:
        parser.error(f"--chars must be at least 1000, got {args.chars}")
    text = build_corpus(args.chars)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(text):,} characters, {len(set(text))} distinct, Python {sys.version.split()[0]}, "
          f"sha256 {hashlib.sha256(text.encode()).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
