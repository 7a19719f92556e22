"""Sample text from an exported model, printing it chunk by chunk as it is generated (char-rnn's sample.lua).

    python -m training.sample --model exported_models/charlm --prime "ROMEO:" --length 500 --temperature 0.8
    python -m training.sample --tfserving localhost:8500 --model-name charlm --prime "ROMEO:"

Reads only the exported version, in-process or through TensorFlow Serving (model_interface's client), never
the training run.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from model_interface.client import ModelClient
from model_interface.errors import ModelInterfaceError
from model_interface.signatures import SamplingSettings, bounds

FIRST_CHUNK = 16  # small, so the first characters appear at once
CHUNK = 256  # then larger calls: fewer round trips, same text (the state carries across)


def sampling_settings(args) -> SamplingSettings:
    """The flags as SamplingSettings; a value out of bounds names its flag."""
    values = {name: getattr(args, name) for name in SamplingSettings.model_fields if hasattr(args, name)}
    try:
        return SamplingSettings(**values)
    except ValidationError as e:
        name = e.errors(include_url=False)[0]["loc"][0]
        raise ValueError(f"--{name.replace('_', '-')} must be {bounds(name)}, got {values[name]}") from None


def stream_text(client: ModelClient, prime: str, length: int, settings: SamplingSettings):
    """Yield the generated text chunk by chunk, carrying the state from one call to the next."""
    state, prompt, done = None, prime, 0
    while done < length:
        n = min(FIRST_CHUNK if done == 0 else CHUNK, length - done)
        out = client.generate([prompt], n, settings, states=state)
        state, prompt, done = out["state"], "", done + n
        yield out["text"][0]


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m training.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="exported_models/charlm", help="model directory or one version's")
    parser.add_argument("--version", type=int, help="version to load (default: the newest)")
    parser.add_argument("--tfserving", metavar="HOST:PORT", help="sample through TensorFlow Serving's gRPC port "
                        "instead of loading --model")
    parser.add_argument("--model-name", default="charlm", help="with --tfserving: the served model's name")
    parser.add_argument("--prime", default="", help="text to start from; it is printed, then continued")
    parser.add_argument("--length", type=int, default=1000, help="characters to generate")
    parser.add_argument("--temperature", type=float, default=1.0, help=f"{bounds('temperature')}; lower is more "
                        "conservative; 0 is greedy (the likeliest character each time)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest characters (0 = off)")
    parser.add_argument("--top-p", type=float, default=1.0, help=f"nucleus sampling mass, {bounds('top_p')}")
    parser.add_argument("--min-p", type=float, default=0.0, help="keep characters at least this fraction as likely "
                        f"as the likeliest, {bounds('min_p')} (0 = off)")
    parser.add_argument("--seed", type=int, help="same seed, same text (default: random, printed to stderr)")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(7), "little")
        print(f"seed {args.seed}", file=sys.stderr)
    try:
        if args.length < 0:
            raise ValueError(f"--length must be zero or more, got {args.length}")
        settings = sampling_settings(args)
        client = ModelClient.open(Path(args.model), args.tfserving, args.model_name, args.version, what="--model")
        unknown = client.metadata.unknown_chars(args.prime)
        if unknown:
            raise ValueError(f"--prime has characters the model never saw: {''.join(unknown)!r}")
    except (ModelInterfaceError, ValueError) as e:
        parser.error(str(e))
    out.write(args.prime)
    out.flush()
    try:
        for chunk in stream_text(client, args.prime, args.length, settings):
            out.write(chunk)
            out.flush()
    except ModelInterfaceError as e:
        print(f"\n{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
