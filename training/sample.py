"""Sample text from an exported model, printing it chunk by chunk as it is generated (char-rnn's sample.lua).

    python -m training.sample --model exported_models/charlm --prime "ROMEO:" --length 500 --temperature 0.8

Reads only the SavedModel (its `generate` signature and assets.extra metadata), never the training run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FIRST_CHUNK = 16  # small, so the first characters appear at once
CHUNK = 256  # then larger calls: fewer round trips, same text (the state carries across)


class SampleError(ValueError):
    pass


def resolve_version(model: Path, version: int | None) -> Path:
    """A model directory (integer version subdirectories) or one version directory -> a version directory."""
    if (model / "saved_model.pb").is_file():
        if version is not None and model.name != str(version):
            raise SampleError(f"--version {version} given, but --model {model} is itself version {model.name}")
        return model
    if not model.is_dir():
        raise SampleError(f"--model {model}: no such directory (run `make train` to export one)")
    versions = sorted(int(p.name) for p in model.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file())
    if not versions:
        raise SampleError(f"--model {model}: holds no exported version (integer subdirectory with saved_model.pb)")
    if version is None:
        return model / str(versions[-1])
    if version not in versions:
        raise SampleError(f"--version {version}: not in {model} (it has {', '.join(map(str, versions))})")
    return model / str(version)


def check_args(args, vocab: list[str]) -> None:
    if args.length < 0:
        raise SampleError(f"--length must be zero or more, got {args.length}")
    if not args.temperature > 0:
        raise SampleError(f"--temperature must be positive, got {args.temperature}")
    if args.top_k < 0:
        raise SampleError(f"--top-k must be zero (off) or more, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise SampleError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.seed is not None and not -(2 ** 63) <= args.seed < 2 ** 63:
        raise SampleError(f"--seed must fit in 64 bits, got {args.seed}")
    unknown = sorted(set(args.prime) - set(vocab))
    if unknown:
        raise SampleError(f"--prime has characters the model never saw: {''.join(unknown)!r}")


def stream_text(version_dir: Path, prime: str, length: int, temperature: float, top_k: int, top_p: float,
                seed: int):
    """Yield the generated text chunk by chunk, carrying the state from one call to the next."""
    import tensorflow as tf

    generate = tf.saved_model.load(str(version_dir)).signatures["generate"]
    state, prompt, done = tf.zeros([1, 0]), prime, 0
    while done < length:
        n = min(FIRST_CHUNK if done == 0 else CHUNK, length - done)
        out = generate(prompt=tf.constant([prompt]), state=state, num_chars=tf.constant([n]),
                       temperature=tf.constant([temperature]), top_k=tf.constant([top_k]),
                       top_p=tf.constant([top_p]), seed=tf.constant([seed], tf.int64))
        state, prompt, done = out["state"], "", done + n
        yield out["text"].numpy()[0].decode("utf-8")


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="exported_models/charlm", help="model directory or one version's")
    parser.add_argument("--version", type=int, help="version to load (default: the newest)")
    parser.add_argument("--prime", default="", help="text to start from; it is printed, then continued")
    parser.add_argument("--length", type=int, default=1000, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest characters (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass, in (0, 1]")
    parser.add_argument("--seed", type=int, help="same seed, same text (default: random, printed to stderr)")
    args = parser.parse_args(argv)
    try:
        version_dir = resolve_version(Path(args.model), args.version)
        info = json.loads((version_dir / "assets.extra" / "charlm.json").read_text(encoding="utf-8"))
        check_args(args, info["vocab"])
    except (SampleError, OSError, KeyError, ValueError) as e:
        parser.error(str(e))
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(7), "little")
        print(f"seed {args.seed}", file=sys.stderr)
    out.write(args.prime)
    out.flush()
    for chunk in stream_text(version_dir, args.prime, args.length, args.temperature, args.top_k, args.top_p,
                             args.seed):
        out.write(chunk)
        out.flush()
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
