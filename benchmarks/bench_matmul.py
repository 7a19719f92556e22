"""bf16 against fp32 for one matmul at the shapes a 2x512 LSTM runs, through TensorFlow's oneDNN kernels.

    python -m benchmarks.bench_matmul [--rounds 7] [--no-record]

The figure issue 14 starts from, and the one that decides whether bf16 can pay on a CPU: with bfloat16 units
(AVX512-BF16, AMX) oneDNN multiplies bf16 natively and the product is faster than fp32; without them it converts
every operand in software, and training (training/precision.py) falls back to fp32. fp32 and bf16 alternate
round by round; bf16 / fp32 is the median of each round's speed ratio. Prints one JSON line per shape and appends
a table to docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.machine import machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
SHAPES = {  # name: (rows, inner, columns) of (rows, inner) @ (inner, columns)
    "one stream's step, 2x512 (1 x 1024 @ 1024 x 2048)": (1, 1024, 2048),
    "a training step, batch 32 (32 x 1024 @ 1024 x 2048)": (32, 1024, 2048),
    "the input projection of a 32 x 128 batch (4096 x 512 @ 512 x 2048)": (4096, 512, 2048),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_matmul", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="fp32/bf16 pairs per shape, alternated")
    p.add_argument("--seconds", type=float, default=0.5, help="timed time per measurement")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    return p.parse_args(argv)


def products_per_s(matmul, seconds: float) -> float:
    matmul()  # the first call traces and picks oneDNN's kernel
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul()
        count += 1
    return count / (time.perf_counter() - start)


def product(x, w):
    import tensorflow as tf

    return tf.function(lambda: tf.matmul(x, w))


def main(argv=None) -> None:
    args = parse_args(argv)
    import tensorflow as tf

    results = {}
    for name, (rows, inner, columns) in SHAPES.items():
        a, b = tf.random.normal((rows, inner), seed=1), tf.random.normal((inner, columns), seed=2)
        matmuls = {dtype: product(tf.cast(a, dtype), tf.cast(b, dtype)) for dtype in (tf.float32, tf.bfloat16)}
        rates = {"fp32": [], "bf16": []}
        for r in range(args.rounds):
            for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                dtype = tf.float32 if precision == "fp32" else tf.bfloat16
                # .numpy(): each product ends before the next starts, as each step of a recurrence does
                rates[precision].append(products_per_s(lambda m=matmuls[dtype]: m().numpy(), args.seconds))
        flops = 2 * rows * inner * columns
        ratio = statistics.median(b / f for f, b in zip(rates["fp32"], rates["bf16"]))
        results[name] = {"fp32_gflop_s": statistics.median(rates["fp32"]) * flops / 1e9,
                         "bf16_gflop_s": statistics.median(rates["bf16"]) * flops / 1e9, "bf16_over_fp32": ratio,
                         "rounds": [round(b / f, 2) for f, b in zip(rates["fp32"], rates["bf16"])]}
        print(json.dumps({"shape": [rows, inner, columns], **{k: (round(v, 2) if isinstance(v, float) else v)
                                                              for k, v in results[name].items()}}), flush=True)
    if not args.no_record:
        rows = "".join(f"| {name} | {r['fp32_gflop_s']:.1f} | {r['bf16_gflop_s']:.1f} | {r['bf16_over_fp32']:.2f} "
                       f"({min(r['rounds']):.2f} … {max(r['rounds']):.2f}) |\n" for name, r in results.items())
        with open(RESULTS, "a") as f:
            f.write(f"\n### One matmul, fp32 and bf16, {time.strftime('%Y-%m-%d')}\n\n"
                    f"`python -m benchmarks.bench_matmul`, {machine()}, TensorFlow {tf.__version__} (oneDNN); "
                    f"medians of {args.rounds} rounds of {args.seconds} s each, fp32 and bf16 alternated; "
                    f"bf16 / fp32 is the median (and range) of each round's ratio.\n\n"
                    f"| product | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |\n| --- | --- | --- | --- |\n{rows}")


if __name__ == "__main__":
    main()
