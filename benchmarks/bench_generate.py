"""Characters per second of the exported `generate` signature, in-process, for the 2x512 shape.

    python -m benchmarks.bench_generate [--hidden 512 --layers 2 --chars 2000 --batch 64]

Exports a model of the shape (random weights: the same work as trained ones), then times one stream and a
batch of streams, and beside them how fast the cores re-read a buffer the size of the weights: at batch 1
every character reads every weight once, so that rate / weight bytes is the ceiling one stream can reach. Prints one JSON line
per measurement and appends them to docs/results.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.machine import machine
from model_interface.client import ModelClient
from model_interface.signatures import MAX_CHARS_PER_CALL, SamplingSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"


def read_bandwidth_gb_s(nbytes: int) -> float:
    """How fast every core together re-reads a buffer the size of the weights (each core its own share, from
    whichever cache level holds it), again and again as decoding does; best of 5: the roof for batch 1."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    cores = os.cpu_count() or 1
    shares = np.array_split(np.ones(nbytes // 4, dtype=np.float32), cores)

    def read(share):
        for _ in range(20):
            share.sum()  # numpy releases the GIL: the shares are read in parallel

    best = 0.0
    with ThreadPoolExecutor(cores) as pool:
        for _ in range(5):
            t = time.perf_counter()
            list(pool.map(read, shares))
            best = max(best, 20 * nbytes / (time.perf_counter() - t) / 1e9)
    return best


def time_generate(client: ModelClient, batch: int, chars: int, repeats: int, top_p: float = 0.95) -> float:
    """Median characters per second of one `generate` call producing `chars` characters in each of `batch`
    rows (temperature 1, row i on seed i), after an untimed warm-up call."""
    prompts = [" "] * batch
    settings = [SamplingSettings(top_p=top_p, seed=i) for i in range(batch)]
    client.generate(prompts, 8, settings)  # warm-up: the first call pays for graph optimisation
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        texts = client.generate(prompts, chars, settings)["text"]
        elapsed = time.perf_counter() - t
        assert all(len(text) == chars for text in texts), "generated fewer characters than asked"
        rates.append(batch * chars / elapsed)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--chars", type=int, default=2000, help="characters per stream per timed call")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    args = parser.parse_args()
    if not 1 <= args.chars <= MAX_CHARS_PER_CALL:
        parser.error(f"--chars must be in 1..{MAX_CHARS_PER_CALL} (one generate call), got {args.chars}")

    import tensorflow as tf

    from training.config import TrainConfig
    from training.export import export_untrained

    config = dataclasses.replace(TrainConfig(), hidden_size=args.hidden, num_layers=args.layers,
                                 embedding_size=args.embedding, dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        # Random weights, exported as every model is: the same graph and work as a trained model.
        version = export_untrained(config, [chr(32 + i) for i in range(args.vocab)], Path(tmp), model_name="charlm")
        client = ModelClient.open(model=version)
        weight_bytes = 4 * ((args.embedding + args.hidden) * 4 * args.hidden
                           + (args.layers - 1) * 2 * args.hidden * 4 * args.hidden + args.hidden * args.vocab)
        bandwidth = read_bandwidth_gb_s(weight_bytes)
        single = time_generate(client, 1, args.chars, args.repeats)
        plain = time_generate(client, 1, args.chars, args.repeats, top_p=1.0)  # no top-k/top-p filtering
        batched = time_generate(client, args.batch, max(200, args.chars // 4), args.repeats)
        client.close()
    shape = dict(hidden=args.hidden, layers=args.layers, embedding=args.embedding, vocab=args.vocab)
    ceiling = bandwidth * 1e9 / weight_bytes
    lines = [
        {"impl": "charlm-generate", "batch": 1, "chars_per_s": round(single), "top_p": 0.95, **shape},
        {"impl": "charlm-generate", "batch": 1, "chars_per_s": round(plain), "top_p": 1.0, **shape},
        {"impl": "charlm-generate", "batch": args.batch, "chars_per_s": round(batched), **shape},
        {"weight_read_gb_s": round(bandwidth, 1), "weight_mb_per_char": round(weight_bytes / 1e6, 2),
         "batch1_ceiling_chars_per_s": round(ceiling), "batch1_fraction_of_ceiling": round(single / ceiling, 3)},
    ]
    for line in lines:
        print(json.dumps(line), flush=True)
    if not args.no_record:
        RESULTS.parent.mkdir(exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(f"\n### Generation throughput, {time.strftime('%Y-%m-%d')}\n\n"
                    f"`make bench-generate` (`python -m benchmarks.bench_generate`), {machine()}, "
                    f"TensorFlow {tf.__version__}, in-process SavedModel `generate`, "
                    f"{args.layers}x{args.hidden} LSTM, temperature 1, top_p 0.95 unless said.\n\n"
                    f"| measurement | chars/s |\n| --- | --- |\n"
                    f"| one stream | {round(single):,} |\n| one stream, top_p 1 (no filtering) | {round(plain):,} |\n"
                    f"| batch {args.batch}, aggregate | {round(batched):,} |\n"
                    f"| one-stream ceiling: {bandwidth:.1f} GB/s (all cores re-reading {weight_bytes / 1e6:.1f} MB) / "
                    f"{weight_bytes / 1e6:.1f} MB "
                    f"of weights per character | {round(ceiling):,} |\n\n"
                    f"One stream runs at {single / ceiling:.0%} of the ceiling set by reading every weight once per character.\n")


if __name__ == "__main__":
    main()
