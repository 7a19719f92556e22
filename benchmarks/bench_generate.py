"""Characters per second of the exported `generate` signature, in-process, for the 2x512 shape, fp32 and bf16.

    python -m benchmarks.bench_generate [--hidden 512 --layers 2 --chars 2000 --batch 64] [--no-record]

Exports a model of the shape twice from the same random weights (the same work as trained ones), as an fp32
and a bf16 version (training/export.py --precision), then times one stream and a batch of streams on each,
alternating the two call by call so the machine's drift falls on both alike, and gives bf16 / fp32 per setting.
Beside them, how fast the cores re-read a buffer the size of each version's weights: at batch 1 every
character reads every weight once, so that rate / weight bytes is the ceiling one stream can reach. Prints one
JSON line per measurement and appends them to docs/results.md.
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


def generate_rate(client: ModelClient, batch: int, chars: int, top_p: float = 0.95) -> float:
    """Characters per second of one `generate` call producing `chars` characters in each of `batch` rows
    (temperature 1, row i on seed i)."""
    prompts = [" "] * batch
    settings = [SamplingSettings(top_p=top_p, seed=i) for i in range(batch)]
    t = time.perf_counter()
    texts = client.generate(prompts, chars, settings)["text"]
    elapsed = time.perf_counter() - t
    assert all(len(text) == chars for text in texts), "generated fewer characters than asked"
    return batch * chars / elapsed


def warm_up(client: ModelClient, batch: int, top_p: float = 0.95) -> None:
    """The first call of a batch size and settings pays for graph optimisation: not timed."""
    client.generate([" "] * batch, 8, [SamplingSettings(top_p=top_p, seed=i) for i in range(batch)])


def time_generate(client: ModelClient, batch: int, chars: int, repeats: int, top_p: float = 0.95) -> float:
    """Median characters per second of `repeats` calls (generate_rate), after an untimed warm-up call."""
    warm_up(client, batch, top_p)
    return statistics.median(generate_rate(client, batch, chars, top_p) for _ in range(repeats))


def weight_bytes_read(hidden: int, layers: int, embedding: int, vocab: int, precision: str) -> int:
    """Bytes of weights one character's step reads: the layer kernels (bf16: 2 bytes each) and the head,
    which a bf16 version widens to float32 once per call and reads as float32 (training/graph.py)."""
    kernels = (embedding + hidden) * 4 * hidden + (layers - 1) * 2 * hidden * 4 * hidden
    return (2 if precision == "bf16" else 4) * kernels + 4 * hidden * vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=65)
    parser.add_argument("--chars", type=int, default=2000, help="characters per stream per timed call")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per setting and precision")
    parser.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    args = parser.parse_args()
    if not 1 <= args.chars <= MAX_CHARS_PER_CALL:
        parser.error(f"--chars must be in 1..{MAX_CHARS_PER_CALL} (one generate call), got {args.chars}")

    import tensorflow as tf

    from training.config import TrainConfig
    from training.export import export_untrained
    from model_interface.cpu import cpu_bf16_flags

    config = dataclasses.replace(TrainConfig(), hidden_size=args.hidden, num_layers=args.layers,
                                 embedding_size=args.embedding, dropout=0.0)
    precisions = ("fp32", "bf16")
    # (name in results.md, batch, characters per row, top_p)
    settings = [("one stream", 1, args.chars, 0.95), ("one stream, top_p 1 (no filtering)", 1, args.chars, 1.0),
                (f"batch {args.batch}, aggregate", args.batch, max(200, args.chars // 4), 0.95)]
    rates = {(name, p): [] for name, *_ in settings for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        # Random weights, exported as every model is: the same graph and work as a trained model. The same
        # seed gives both versions the same weights, bf16 rounded.
        chars = [chr(32 + i) for i in range(args.vocab)]
        clients = {p: ModelClient.open(model=export_untrained(config, chars, Path(tmp) / p, "charlm", precision=p))
                   for p in precisions}
        bytes_read = {p: weight_bytes_read(args.hidden, args.layers, args.embedding, args.vocab, p) for p in precisions}
        bandwidth = {p: read_bandwidth_gb_s(bytes_read[p]) for p in precisions}
        for _, batch, _, top_p in settings:
            for client in clients.values():
                warm_up(client, batch, top_p)
        for r in range(args.repeats):
            for name, batch, n, top_p in settings:
                # Alternated call by call, and which goes first swaps each round: drift hits both alike.
                for p in (precisions if r % 2 == 0 else precisions[::-1]):
                    rates[name, p].append(generate_rate(clients[p], batch, n, top_p))
        for client in clients.values():
            client.close()
    shape = dict(hidden=args.hidden, layers=args.layers, embedding=args.embedding, vocab=args.vocab)
    median = {key: statistics.median(values) for key, values in rates.items()}
    # Each round's two calls ran back to back: their ratio is what the machine's drift touches least, and the
    # median of the rounds' ratios is the figure (the ratio of the two medians can pair a fast moment with a slow one).
    paired = {name: [b / f for f, b in zip(rates[name, "fp32"], rates[name, "bf16"])] for name, *_ in settings}
    ratio = {name: statistics.median(paired[name]) for name, *_ in settings}
    ceiling = {p: bandwidth[p] * 1e9 / bytes_read[p] for p in precisions}
    lines = []
    for name, batch, _, top_p in settings:
        for p in precisions:
            lines.append({"impl": "charlm-generate", "precision": p, "batch": batch, "chars_per_s": round(median[name, p]),
                          "top_p": top_p, "rounds": [round(x) for x in rates[name, p]], **shape})
        lines.append({"setting": name, "batch": batch, "top_p": top_p, "bf16_over_fp32": round(ratio[name], 2),
                      "rounds_bf16_over_fp32": [round(x, 2) for x in paired[name]]})
    for p in precisions:
        lines.append({"precision": p, "weight_read_gb_s": round(bandwidth[p], 1),
                      "weight_mb_per_char": round(bytes_read[p] / 1e6, 2), "batch1_ceiling_chars_per_s": round(ceiling[p]),
                      "batch1_fraction_of_ceiling": round(median["one stream", p] / ceiling[p], 3)})
    lines.append({"cpu_bf16_units": bool(cpu_bf16_flags())})  # without them oneDNN emulates bf16, and bf16 loses
    for line in lines:
        print(json.dumps(line), flush=True)
    if not args.no_record:
        RESULTS.parent.mkdir(exist_ok=True)
        rows = "".join(f"| {name} | {round(median[name, 'fp32']):,} | {round(median[name, 'bf16']):,} | "
                       f"{ratio[name]:.2f} ({min(paired[name]):.2f} … {max(paired[name]):.2f}) |\n"
                       for name, *_ in settings)
        rows += (f"| one-stream ceiling: all cores re-reading the weights of a character ({bandwidth['fp32']:.1f} GB/s "
                 f"over {bytes_read['fp32'] / 1e6:.1f} MB; {bandwidth['bf16']:.1f} GB/s over "
                 f"{bytes_read['bf16'] / 1e6:.1f} MB) | {round(ceiling['fp32']):,} | {round(ceiling['bf16']):,} | "
                 f"{ceiling['bf16'] / ceiling['fp32']:.2f} |\n")
        with open(RESULTS, "a") as f:
            f.write(f"\n### Generation throughput, fp32 and bf16, {time.strftime('%Y-%m-%d')}\n\n"
                    f"`make bench-generate` (`python -m benchmarks.bench_generate`), {machine()}, "
                    f"TensorFlow {tf.__version__}, in-process SavedModel `generate`, "
                    f"{args.layers}x{args.hidden} LSTM, the same random weights exported at each precision, "
                    f"temperature 1, top_p 0.95 unless said; medians of {args.repeats} calls, fp32 and bf16 "
                    f"alternated call by call; bf16 / fp32 is the median (and range) of each round's two calls' "
                    f"ratio.\n\n"
                    f"| measurement (chars/s) | fp32 | bf16 | bf16 / fp32 |\n| --- | --- | --- | --- |\n{rows}\n"
                    f"One stream runs at {median['one stream', 'fp32'] / ceiling['fp32']:.0%} (fp32) and "
                    f"{median['one stream', 'bf16'] / ceiling['bf16']:.0%} (bf16) of the ceiling set by reading "
                    f"every weight once per character.\n"
                    + ("" if cpu_bf16_flags() else
                       "This CPU has no bfloat16 units: oneDNN emulates the bf16 products here, so the bf16 column "
                       "is what a bf16 version costs on such a CPU, not what it gains on one with AVX512-BF16 or "
                       "AMX.\n"))


if __name__ == "__main__":
    main()
