"""Training throughput (chars/s) of the medium LSTM shape beside PyTorch's nn.LSTM, in the same run.

    python -m benchmarks.bench_train [--steps 12 --warmup 2 --rounds 2] [--precision both|fp32|bf16]
                                     [--layer project|fast|keras] [--jit]

Times the project's own train step (training.train.make_train_step on training.model.CharRNN) and the
PyTorch reference ../shared/bench/torch_reference_train.py (from its own venv, .venv-torch, created if
missing), alternating them (charlm, torch, charlm, torch, ...): figures on a shared 2-core machine drift,
so only a ratio measured side by side means anything. Same work on both sides: embedding 64, 2x512 LSTM,
batch 64, sequence 100, vocabulary 65, random ids, Adam 2e-3, global gradient-norm clip 5, state
carried from step to step, warm-up steps not timed. In each precision: fp32, and bf16 (charlm with
--precision bf16, Keras' mixed_bfloat16; PyTorch under torch.autocast("cpu", dtype=torch.bfloat16) through
benchmarks/bench_train_torch_bf16.py, which runs the shared reference unchanged). With both, every round
measures both precisions of both sides.

Prints one JSON line per measurement, {"impl": "charlm"|"pytorch", "precision": ..., "chars_per_s": ...},
then one line per precision with "ratio" (median charlm / median pytorch, {"precision": "bf16", "ratio": ...}),
and appends a dated section to docs/results.md. Each line
says how many cores other processes kept busy meanwhile ("others_cores"): PyTorch's OpenMP threads
collapse on a busy machine, so a run with others_cores above 0.25 is flagged as unreliable.
--layer keras swaps the LSTM layers for stock keras.layers.LSTM (the baseline FastLSTM is measured
against); --compare-keras adds that baseline to every round as impl "charlm-keras-lstm".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.machine import machine

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
TORCH_SCRIPT = ROOT.parent / "shared" / "bench" / "torch_reference_train.py"
TORCH_VENV = ROOT / ".venv-torch"
TORCH_BF16 = Path(__file__).resolve().with_name("bench_train_torch_bf16.py")  # the reference under autocast
TORCH_VERSION = "2.13.0"
BUSY_CORES = 0.25  # other processes' load above which a measurement is flagged as unreliable


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--vocab", type=int, default=65)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, XLA compiling)")
    p.add_argument("--rounds", type=int, default=2, help="charlm/pytorch pairs, alternated")
    p.add_argument("--precision", choices=["both", "fp32", "bf16"], default="both",
                   help="fp32, bf16 (charlm's --precision bf16, PyTorch's bf16 autocast), or both in every round")
    p.add_argument("--layer", choices=["project", "fast", "keras"], default="project",
                   help="LSTM layer class: the one training.model builds, FastLSTM, or keras.layers.LSTM")
    p.add_argument("--jit", action="store_true", help="XLA-compile the whole train step (jit_compile=True)")
    p.add_argument("--compare-keras", action="store_true",
                   help="also time stock keras.layers.LSTM in every round (impl charlm-keras-lstm)")
    p.add_argument("--torch-script", type=Path, default=TORCH_SCRIPT)
    p.add_argument("--torch-python", type=Path, default=TORCH_VENV / "bin" / "python")
    p.add_argument("--no-record", action="store_true", help="do not append to docs/results.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one charlm measurement
    return p.parse_args(argv)


# ---------------------------------------------------------------- charlm side (run in a child process)

def build_model(vocab_size: int, config, layer: str):
    """CharRNN as training.model builds it, or with its LSTM layers swapped for another class."""
    import keras

    from training import model as model_lib

    if layer == "project":
        return model_lib.CharRNN(vocab_size, config)
    from training.fast_lstm import FastLSTM

    cls = {"fast": FastLSTM, "keras": keras.layers.LSTM}[layer]
    original = model_lib.recurrent_layer
    model_lib.recurrent_layer = lambda cell, units, name, dtype="float32": cls(
        units, return_sequences=True, return_state=True, name=name, dtype=dtype)
    try:
        return model_lib.CharRNN(vocab_size, config)
    finally:
        model_lib.recurrent_layer = original


def measure_charlm(args) -> dict:
    import keras
    import tensorflow as tf

    from training.config import TrainConfig
    from training.precision import effective_precision
    from training.strategy import choose_strategy
    from training.train import make_train_step

    precision, fallback = effective_precision(args.precision)  # what training would run in on this machine
    if fallback:
        print(fallback, file=sys.stderr, flush=True)
    config = TrainConfig(cell="lstm", embedding_size=args.embedding, hidden_size=args.hidden,
                         num_layers=args.layers, dropout=0.0, batch_size=args.batch, seq_length=args.seq,
                         learning_rate=2e-3, lr_schedule="constant", warmup_steps=0, grad_clip=5.0,
                         precision=precision)
    strategy = choose_strategy("default")
    keras.utils.set_random_seed(0)
    model = build_model(args.vocab, config, args.layer)
    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(model.trainable_variables)
    train_step = make_train_step(model, optimizer, config, strategy)
    if args.jit:
        train_step = tf.function(train_step.python_function, jit_compile=True)

    x = tf.random.uniform((args.batch, args.seq), 0, args.vocab, tf.int32, seed=1)
    y = tf.random.uniform((args.batch, args.seq), 0, args.vocab, tf.int32, seed=2)
    states = model.zero_state(args.batch)
    for _ in range(args.warmup):
        loss, states = train_step(x, y, states)
        float(loss)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, states = train_step(x, y, states)
        float(loss)  # as the training loop does: every step ends with its loss on the host
    elapsed = time.perf_counter() - start
    return {"impl": "charlm", "precision": precision, "layer": type(model.recurrent[0]).__name__, "jit": args.jit,
            "chars_per_s": round(args.batch * args.seq * args.steps / elapsed),
            "ms_per_step": round(elapsed / args.steps * 1000, 1), "loss": round(float(loss), 4)}


# ---------------------------------------------------------------- the parent: alternate and report

def shape_flags(args) -> list[str]:
    return ["--hidden", str(args.hidden), "--layers", str(args.layers), "--embedding", str(args.embedding),
            "--vocab", str(args.vocab), "--batch", str(args.batch), "--seq", str(args.seq),
            "--steps", str(args.steps), "--warmup", str(args.warmup)]


def json_lines(cmd: list[str]) -> dict:
    """The JSON lines a measurement prints, merged in order."""
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of our finished children) so far."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
            children.ru_utime + children.ru_stime)


def measured(run) -> dict:
    """run() in a child process, plus how many cores *other* processes kept busy meanwhile: PyTorch's
    OpenMP threads slow down several-fold when a core is taken, TensorFlow's far less, so a ratio
    measured on a busy machine flatters charlm."""
    machine_before, children_before = cpu_seconds()
    start = time.perf_counter()
    result = run()
    machine_after, children_after = cpu_seconds()
    elapsed = time.perf_counter() - start
    others = (machine_after - machine_before - (children_after - children_before)) / elapsed
    return {**result, "others_cores": round(max(others, 0.0), 2)}


def run_charlm(args, layer: str, precision: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_train", "--worker", "--layer", layer, "--precision", precision,
           *shape_flags(args)]
    return json_lines(cmd + (["--jit"] if args.jit else []))


def run_torch(args, precision: str) -> dict:
    if precision == "bf16":
        cmd = [str(args.torch_python), str(TORCH_BF16), "--reference", str(args.torch_script), *shape_flags(args)]
    else:
        cmd = [str(args.torch_python), str(args.torch_script), *shape_flags(args)]
    return {**json_lines(cmd), "precision": precision}


def ensure_torch_venv(python: Path) -> None:
    """PyTorch lives in its own venv: it is the peer measured against, never a requirement of charlm."""
    if python.exists():
        return
    venv = python.parent.parent
    print(f"creating {venv} with torch=={TORCH_VERSION} (once)", file=sys.stderr, flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={TORCH_VERSION}"], check=True)


def versions(torch_python: Path) -> dict:
    tf_keras = subprocess.run([sys.executable, "-c", "import tensorflow as tf, keras; "
                               "print(tf.__version__, keras.__version__)"],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    torch = subprocess.run([str(torch_python), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True)
    tf_version, keras_version = (tf_keras.stdout.split() + ["?", "?"])[:2]
    return {"tensorflow": tf_version, "keras": keras_version,
            "torch": (torch.stdout.strip().splitlines() or ["?"])[-1]}


def record(args, runs: dict[str, dict[str, list[dict]]], summaries: list[dict], info: dict) -> None:
    """runs[precision][impl]: that impl's measurements in that precision; summaries: one per precision."""
    command = "python -m benchmarks.bench_train " + " ".join(sys.argv[1:])
    rows = "".join(f"| {impl} | {summary['precision']} | {', '.join(format(r['chars_per_s'], ',') for r in rs)} | "
                   f"{summary['medians'][impl]:,} | {', '.join(str(r['others_cores']) for r in rs)} |\n"
                   for summary in summaries for impl, rs in runs[summary["precision"]].items())
    ratios = "; ".join(
        f"{s['precision']} **{s['ratio']:.2f}**"
        + (f" (stock keras.layers.LSTM / PyTorch: {s['keras_lstm_ratio']:.2f})" if "keras_lstm_ratio" in s else "")
        for s in summaries)
    speedups = [s for s in summaries if "speedup_over_fp32" in s]
    busy = max(s["max_others_cores"] for s in summaries) > BUSY_CORES
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(f"\n### Training throughput, {time.strftime('%Y-%m-%d %H:%M')}\n\n"
                f"`{command.strip()}`: {machine()}; TensorFlow {info['tensorflow']}, "
                f"Keras {info['keras']}, torch {info['torch']}. Shape: embedding {args.embedding}, "
                f"{args.layers}x{args.hidden} LSTM, batch {args.batch}, sequence {args.seq}, vocabulary {args.vocab}, "
                f"{' and '.join(s['precision'] for s in summaries)} (bf16: charlm --precision bf16, PyTorch bf16 "
                f"autocast), Adam 2e-3, clip 5; {args.warmup} warm-up + {args.steps} timed steps per measurement, "
                f"{args.rounds} alternated rounds. charlm layer: {summaries[0]['layer']}"
                f"{', XLA-compiled step' if args.jit else ''}.\n\n"
                f"| impl | precision | chars/s, each round | median | cores busy with other processes |\n"
                f"| --- | --- | --- | --- | --- |\n{rows}\n"
                f"charlm / PyTorch (ratio of medians): {ratios}."
                + "".join(f" bf16 / fp32 speed: charlm {s['speedup_over_fp32']['charlm']:.2f}x, PyTorch "
                          f"{s['speedup_over_fp32']['pytorch']:.2f}x." for s in speedups)
                + (" **Unreliable: other processes were busy during the run.**" if busy else "") + "\n")


def summarize(args, precision: str, impl_runs: dict[str, list[dict]]) -> dict:
    medians = {impl: round(statistics.median(r["chars_per_s"] for r in rs)) for impl, rs in impl_runs.items()}
    summary = {"precision": precision, "ratio": round(medians["charlm"] / medians["pytorch"], 3),
               "medians": medians, "layer": impl_runs["charlm"][0].get("layer"), "jit": args.jit,
               "max_others_cores": max(r["others_cores"] for rs in impl_runs.values() for r in rs)}
    if "charlm-keras-lstm" in medians:
        summary["keras_lstm_ratio"] = round(medians["charlm-keras-lstm"] / medians["pytorch"], 3)
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure_charlm(args)), flush=True)
        return
    if not args.torch_script.exists():
        sys.exit(f"PyTorch reference not found at {args.torch_script} (pass --torch-script)")
    ensure_torch_venv(args.torch_python)

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    impls = ["charlm", "pytorch"] + (["charlm-keras-lstm"] if args.compare_keras else [])
    runs = {precision: {impl: [] for impl in impls} for precision in precisions}
    for _ in range(args.rounds):
        for precision in precisions:
            for impl in impls:
                if impl == "pytorch":
                    result = measured(lambda: run_torch(args, precision))
                else:
                    layer = "keras" if impl == "charlm-keras-lstm" else args.layer
                    result = {**measured(lambda: run_charlm(args, layer, precision)), "impl": impl}
                    if result["precision"] != precision:  # no bf16 units: training would fall back, so did this
                        print(f"warning: {impl} ran in {result['precision']}, not {precision}", file=sys.stderr)
                runs[precision][impl].append(result)
                print(json.dumps(result), flush=True)

    summaries = [summarize(args, precision, runs[precision]) for precision in precisions]
    if len(summaries) == 2:
        fp32, bf16 = (s["medians"] for s in summaries)
        summaries[1]["speedup_over_fp32"] = {impl: round(bf16[impl] / fp32[impl], 3) for impl in fp32}
    for summary in summaries:
        print(json.dumps(summary), flush=True)
    busiest = max(s["max_others_cores"] for s in summaries)
    if busiest > BUSY_CORES:
        print(f"warning: other processes kept up to {busiest} cores busy during a measurement; "
              f"the ratio is not trustworthy (PyTorch suffers more from a busy machine)", file=sys.stderr)
    if not args.no_record:
        record(args, runs, summaries, versions(args.torch_python))


if __name__ == "__main__":
    main()
