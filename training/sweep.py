"""The paper's Table 1 as a sweep: cell type x layers x size, sizes matched by parameter count, every
configuration trained by `python -m training.train` on the same corpus and split to the same budget.

    python -m training.sweep run --grid small --sweep-dir runs/sweep-small     # every configuration, in turn
    python -m training.sweep run-one --grid small --index 3 --sweep-dir ...    # one (a Kubernetes Job index)
    python -m training.sweep table --sweep-dir runs/sweep-small                # table.md, table.json, figure.png
    python -m training.sweep list --grid paper                                  # the configurations, no training

Each configuration trains in a subprocess in its own run directory, <sweep-dir>/<name>/, so a kill is a kill
and the run's own exact resume does the rest: a run with a backup continues with --resume, and a finished one
(result.json, written here once training exits 0 having run out its epochs) is skipped. docs/sweep.md has more.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from training.config import CELLS, ConfigError, build_parser, config_from_args
from training.corpus import TINYSHAKESPEARE_PATH, CorpusError, Vocab, ensure_tinyshakespeare, read_corpus, sha256_of

ROOT = Path(__file__).resolve().parents[1]
TRAIN_COMMAND = [sys.executable, "-m", "training.train"]  # tests put a stand-in here
LN2 = math.log(2.0)
# The paper's best test-set cross-entropy (an LSTM on each corpus), in nats per character: char-rnn's loss, which
# the paper reports, is the natural-log cross-entropy. Other corpora than ours, so a scale, not a target.
PAPER_BEST = {"War and Peace": 1.077, "Linux kernel": 0.84}


@dataclass(frozen=True)
class Grid:
    cells: tuple[str, ...]
    layers: tuple[int, ...]
    lstm_sizes: tuple[int, ...]  # the LSTM's hidden size of each column; the other cells get its parameter count
    train_args: tuple[str, ...]  # the budget and the rest of the recipe, the same for every configuration

    def __len__(self) -> int:
        return len(self.cells) * len(self.layers) * len(self.lstm_sizes)


GRIDS = {
    # For tests and a quick look: the tiny preset, one size, seconds per configuration.
    "tiny": Grid(CELLS, (1,), (32,), ("--preset", "tiny", "--epochs", "1")),
    # Fits a 2-core CPU in under an hour on tiny-shakespeare (docs/sweep.md: an estimate from measured step times).
    # No dropout: models this small trained this briefly underfit, they do not overfit. fp32, no moving average,
    # no weight decay: the table in docs/results.md was measured so.
    "small": Grid(CELLS, (1, 2), (64, 128), ("--preset", "small", "--epochs", "3", "--dropout", "0",
                                                "--precision", "fp32", "--ema-momentum", "0", "--weight-decay", "0")),
    # The paper's whole grid, 36 configurations: for a cluster (k8s/sweep/), not a laptop.
    "paper": Grid(CELLS, (1, 2, 3), (64, 128, 256, 512), ("--preset", "medium", "--epochs", "30")),
}


@dataclass(frozen=True)
class Configuration:
    index: int
    cell: str
    num_layers: int
    hidden_size: int
    lstm_size: int  # the column: the LSTM hidden size whose parameter count this configuration matches
    parameters: int

    @property
    def name(self) -> str:
        return f"{self.cell}-{self.num_layers}x{self.hidden_size}"


class SweepError(ValueError):
    """A bad command-line value; the message starts with the flag."""

    def __init__(self, flag: str, message: str):
        self.flag = flag
        super().__init__(f"{flag} {message}")


# --- sizes matched by parameter count --------------------------------------------------------------------------

def recurrent_parameters(cell: str, inputs: int, hidden: int) -> int:
    """One layer of training.model.recurrent_layer: input kernel, recurrent kernel and biases of each gate."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    biases = 2 if cell == "gru" else 1  # Keras' GRU with reset_after=True has an input and a recurrent bias
    return gates * hidden * (inputs + hidden + biases)


def parameter_count(cell: str, num_layers: int, hidden: int, vocab_size: int, embedding_size: int) -> int:
    """training.model.CharRNN's parameters: embedding, the stacked layers, the dense head (dropout has none)."""
    count = vocab_size * embedding_size
    inputs = embedding_size
    for _ in range(num_layers):
        count += recurrent_parameters(cell, inputs, hidden)
        inputs = hidden
    return count + hidden * vocab_size + vocab_size


def matched_hidden_size(cell: str, num_layers: int, target: int, vocab_size: int, embedding_size: int) -> int:
    """The hidden size whose model has the parameter count nearest `target` (counts rise with the size)."""
    def count(hidden):
        return parameter_count(cell, num_layers, hidden, vocab_size, embedding_size)

    hidden = 1
    while count(hidden + 1) <= target:
        hidden += 1
    return min((hidden, hidden + 1), key=lambda h: (abs(count(h) - target), h))


def configurations(grid: Grid, vocab_size: int, embedding_size: int) -> list[Configuration]:
    """Every configuration, in a fixed order (layers, then column, then cell): the index a Kubernetes pod gets."""
    found = []
    for num_layers in grid.layers:
        for lstm_size in grid.lstm_sizes:
            target = parameter_count("lstm", num_layers, lstm_size, vocab_size, embedding_size)
            for cell in grid.cells:
                hidden = lstm_size if cell == "lstm" else matched_hidden_size(cell, num_layers, target, vocab_size,
                                                                               embedding_size)
                found.append(Configuration(len(found), cell, num_layers, hidden, lstm_size,
                                           parameter_count(cell, num_layers, hidden, vocab_size, embedding_size)))
    return found


# --- the sweep's facts: grid, budget, corpus -------------------------------------------------------------------

def train_args(grid_name: str, epochs: int | None) -> list[str]:
    args = list(GRIDS[grid_name].train_args)
    return args + ["--epochs", str(epochs)] if epochs is not None else args  # the later flag wins


def resolve_corpus(corpus: str) -> Path:
    if corpus:
        return Path(corpus)
    if TINYSHAKESPEARE_PATH.exists():
        return ensure_tinyshakespeare()  # checks its sha256
    # The pods of a Kubernetes sweep start together on one volume: one downloads, the others wait for it.
    TINYSHAKESPEARE_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(TINYSHAKESPEARE_PATH.parent / ".tinyshakespeare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return ensure_tinyshakespeare()


def sweep_facts(grid_name: str, corpus: str, epochs: int | None) -> dict:
    """What defines a sweep; raises ConfigError (bad budget flags) or CorpusError."""
    args = train_args(grid_name, epochs)
    base = config_from_args(build_parser().parse_args(args))  # the recipe as training will resolve it
    path = resolve_corpus(corpus)
    vocab_size = len(Vocab.from_text(read_corpus(path)))
    found = configurations(GRIDS[grid_name], vocab_size, base.embedding_size)
    return {"grid": grid_name, "train_args": args, "epochs": base.epochs, "corpus": str(path),
            "corpus_sha256": sha256_of(path), "vocab_size": vocab_size, "embedding_size": base.embedding_size,
            "val_fraction": base.val_fraction,
            "configurations": [{"name": c.name, **dataclasses.asdict(c)} for c in found]}


def check_sweep_dir(sweep_dir: Path, facts: dict) -> None:
    """A sweep directory holds one sweep: record its facts the first time, refuse other ones after."""
    path = sweep_dir / "sweep.json"
    if not path.exists():
        write_json_atomic(path, facts)
        return
    saved = json.loads(path.read_text())
    # the corpus path too: training's --resume refuses another path, even to the same text
    for key, flag in (("grid", "--grid"), ("train_args", "--epochs"), ("corpus", "--corpus"),
                      ("corpus_sha256", "--corpus"), ("configurations", "--sweep-dir")):
        if saved.get(key) != facts[key]:
            raise SweepError(flag, f"differs from the sweep already in {sweep_dir} ({path} has {key} "
                                   f"{short(saved.get(key))}, this command {short(facts[key])}); use another "
                                   f"--sweep-dir, or the sweep's own flags to continue it")


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_json_atomic(path: Path, value) -> None:
    """A unique temporary name, then rename: pods writing the same file at once never see half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the machine --------------------------------------------------------------------------------------------------

def machine() -> dict:
    """CPU model, usable cores and bf16 units (AVX512-BF16, AMX-BF16), read from /proc/cpuinfo."""
    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags":
                flags |= set(value.split())
    except OSError:
        pass
    return {"host": platform.node(), "cpu": model, "cores": len(os.sched_getaffinity(0)),
            "bf16": sorted(flags & {"avx512_bf16", "amx_bf16"})}


def describe_machine(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, bf16: {'+'.join(m['bf16']) or 'none'}"


# --- running one configuration -----------------------------------------------------------------------------------

class Stop:
    """A SIGTERM or SIGINT to the sweep: passed on to the training, which writes a backup and exits."""

    def __init__(self):
        self.signum = None
        self.child = None
        self.previous = {}

    def __enter__(self):
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum, frame):
        self.signum = signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def die_with_parent() -> None:
    # Runs in the child before exec: a sweep killed outright (kill -9) must not leave its training running on.
    # The child gets SIGTERM, on which training writes a backup and exits.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_session(run_dir: Path) -> list[dict]:
    """sessions.json: one entry per training session, for the row's wall time and machines. A session left open
    was killed with the sweep: it counts up to its run's last backup, the work that survived it."""
    sessions = read_json(run_dir / "sessions.json") or []
    if sessions and sessions[-1]["seconds"] is None:
        backup = run_dir / "backup.npz"
        last = sessions[-1]
        last["seconds"] = round(max(0.0, backup.stat().st_mtime - last["started"]), 1) if backup.exists() else 0.0
        last["interrupted"] = True
    sessions.append({"started": time.time(), "seconds": None, "machine": machine()})
    write_json_atomic(run_dir / "sessions.json", sessions)
    return sessions


def last_summary(log: Path, offset: int):
    """The `summary {...}` line training printed in this session (its log from `offset` on), or None."""
    found = None
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            if line.startswith("summary {"):
                found = json.loads(line[len("summary "):])
    return found


def last_line(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def is_done(run_dir: Path) -> bool:
    result = read_json(run_dir / "result.json")
    return bool(result) and result["status"] == "done"


def run_configuration(config: dict, facts: dict, sweep_dir: Path, stop: Stop) -> dict:
    """Train (or resume, or skip) one configuration; returns its result (status done, failed or stopped)."""
    run_dir = sweep_dir / config["name"]
    if is_done(run_dir):
        return {**read_json(run_dir / "result.json"), "skipped": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run_dir / "backup.npz").exists()
    flags = ["--cell", config["cell"], "--num-layers", str(config["num_layers"]),
             "--hidden-size", str(config["hidden_size"])]
    command = [*TRAIN_COMMAND, "--run-dir", str(run_dir), "--corpus", facts["corpus"], *facts["train_args"],
               *flags, "--verbose", "2", *(["--resume"] if resume else [])]
    sessions = start_session(run_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(run_dir / "train.log", "ab") as out, open(run_dir / "train.err", "ab") as err:
        offsets = out.tell(), err.tell()
        stop.child = subprocess.Popen(command, stdout=out, stderr=err, env=env, preexec_fn=die_with_parent)
        if stop.signum is not None:  # it came before there was a child to pass it to
            stop.child.send_signal(signal.SIGTERM)
        code = stop.child.wait()
        stop.child = None
    sessions[-1].update(seconds=round(time.time() - sessions[-1]["started"], 1), exit_status=code, resumed=resume)
    write_json_atomic(run_dir / "sessions.json", sessions)

    summary = last_summary(run_dir / "train.log", offsets[0])
    result = {**config, "wall_seconds": round(sum(s["seconds"] for s in sessions), 1), "sessions": len(sessions),
              "machines": list({describe_machine(s["machine"]): None for s in sessions})}
    if code == 0 and summary and summary["stopped"]:
        return {**result, "status": "stopped"}  # a signal: the run has a backup, and the sweep stops here
    if code == 0 and summary:
        result.update(status="done", val_loss=summary["best_val_loss"], val_bpc=summary["best_val_bpc"],
                      epochs=summary["epoch"], steps=summary["global_step"], stopped_early=summary["stopped_early"])
    else:
        message = last_line(run_dir / "train.err", offsets[1])
        if code < 0:  # its stderr stopped wherever the signal found it
            message = f"killed by {signal.Signals(-code).name}" + (f" (last stderr line: {message})" if message else "")
        result.update(status="failed", exit_status=code, error=message or "exited 0 without a summary line")
    write_json_atomic(run_dir / "result.json", result)
    return result


def report_line(position: str, result: dict) -> str:
    name = f"{result['name']} ({result['parameters']:,} parameters)"
    if result["status"] == "done":
        how = "already done" if result.get("skipped") else f"done in {result['wall_seconds']:.0f} s"
        return (f"{position} {name}: {how}: validation {result['val_loss']:.4f} nats/char "
                f"({result['val_bpc']:.4f} bits), epochs {result['epochs']}, steps {result['steps']}")
    if result["status"] == "failed":
        return f"{position} {name}: FAILED (exit status {result['exit_status']}): {result['error']}"
    return f"{position} {name}: stopped by a signal; run the same command again to resume it"


# --- the table ------------------------------------------------------------------------------------------------------

def collect_rows(sweep_dir: Path, facts: dict) -> list[dict]:
    rows = []
    for config in facts["configurations"]:
        run_dir = sweep_dir / config["name"]
        result = read_json(run_dir / "result.json")
        if result is None:
            status = "unfinished" if (run_dir / "backup.npz").exists() else "not run"
            result = {**config, "status": status}
        rows.append(result)
    return rows


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(facts: dict, rows: list[dict]) -> str:
    budget = " ".join(facts["train_args"])
    lines = [f"# Sweep `{facts['grid']}`: validation cross-entropy by cell, layers and size (the paper's Table 1)",
             "",
             f"Corpus `{facts['corpus']}` (sha256 {facts['corpus_sha256'][:12]}..., {facts['vocab_size']} characters), "
             f"validation split: the last {facts['val_fraction']:g} of it. Every configuration: `{budget}`; the "
             f"loss is the best epoch's validation cross-entropy. Sizes: the LSTM's hidden size heads each column; "
             f"the GRU and RNN of a column have the hidden size whose parameter count is nearest the LSTM's.",
             "",
             "The paper's best (an LSTM, *test* set, other corpora): "
             + "; ".join(f"{corpus} {nats} nats/char ({nats / LN2:.3f} bits)" for corpus, nats in PAPER_BEST.items())
             + ".", ""]
    by_key = {(r["cell"], r["num_layers"], r["lstm_size"]): r for r in rows}
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    sizes = list(dict.fromkeys(r["lstm_size"] for r in rows))
    for num_layers in dict.fromkeys(r["num_layers"] for r in rows):
        counts = [by_key[("lstm", num_layers, s)]["parameters"] if ("lstm", num_layers, s) in by_key else None
                  for s in sizes]
        lines += [f"## {num_layers} layer{'s' if num_layers > 1 else ''}: validation nats/char (bits/char)", "",
                  "| cell | " + " | ".join(f"LSTM {s} column ({fmt(n, ',')} params)" for s, n in zip(sizes, counts))
                  + " |", "| --- |" + " --- |" * len(sizes)]
        for cell in cells:
            cells_text = []
            for s in sizes:
                r = by_key.get((cell, num_layers, s), {})
                cells_text.append(f"{r['val_loss']:.4f} ({r['val_bpc']:.4f})" if r.get("status") == "done"
                                  else r.get("status", ""))
            lines.append(f"| {cell.upper()} | " + " | ".join(cells_text) + " |")
        lines.append("")
    lines += ["## Every configuration", "",
              "| configuration | cell | layers | hidden | parameters | status | val nats/char | val bits/char | "
              "epochs | steps | wall time (s) | machine | exit status | last stderr line |",
              "| --- |" + " --- |" * 13]
    for r in rows:
        lines.append("| " + " | ".join([
            r["name"], r["cell"], str(r["num_layers"]), str(r["hidden_size"]), f"{r['parameters']:,}", r["status"],
            fmt(r.get("val_loss"), ".4f"), fmt(r.get("val_bpc"), ".4f"), fmt(r.get("epochs"), "d"),
            fmt(r.get("steps"), "d"), fmt(r.get("wall_seconds"), ".0f"), "; ".join(r.get("machines", [])),
            fmt(r.get("exit_status"), "d"), r.get("error", "").replace("|", "\\|")]) + " |")
    return "\n".join(lines) + "\n"


def draw_figure(facts: dict, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = dict(zip(CELLS, ("tab:blue", "tab:orange", "tab:green")))
    styles = {1: "-", 2: "--", 3: ":"}
    done = [r for r in rows if r["status"] == "done"]
    for cell in dict.fromkeys(r["cell"] for r in done):
        for num_layers in dict.fromkeys(r["num_layers"] for r in done):
            line = sorted((r["parameters"], r["val_loss"]) for r in done
                          if r["cell"] == cell and r["num_layers"] == num_layers)
            if line:
                ax.plot(*zip(*line), styles.get(num_layers, "-."), marker="o", color=colours.get(cell),
                        label=f"{cell.upper()}, {num_layers} layer{'s' if num_layers > 1 else ''}")
    for (corpus, nats), style in zip(PAPER_BEST.items(), ("gray", "silver")):
        ax.axhline(nats, color=style, linestyle="-.", linewidth=1,
                   label=f"paper's best LSTM, {corpus} (test): {nats}")
    ax.set_xscale("log")
    # ticks at the columns' LSTM parameter counts, the counts the other cells were matched to
    ax.set_xticks(sorted({r["parameters"] for r in rows if r["cell"] == "lstm"}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("parameters")
    ax.set_ylabel("validation cross-entropy (nats/char)")
    ax.set_title(f"sweep {facts['grid']}: {Path(facts['corpus']).name}, {' '.join(facts['train_args'])}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_table(sweep_dir: Path) -> list[dict]:
    """table.md, table.json and figure.png from the run directories; returns the rows."""
    facts = read_json(sweep_dir / "sweep.json")
    if facts is None:
        raise SweepError("--sweep-dir", f"{sweep_dir} holds no sweep (no readable sweep.json): start one with "
                                        f"`python -m training.sweep run` or `run-one`")
    rows = collect_rows(sweep_dir, facts)
    write_json_atomic(sweep_dir / "table.json", {"sweep": {k: v for k, v in facts.items() if k != "configurations"},
                                                 "paper_best_test_nats": PAPER_BEST, "rows": rows})
    text = markdown_table(facts, rows)
    fd, tmp = tempfile.mkstemp(dir=sweep_dir, prefix=".table.md.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, sweep_dir / "table.md")
    draw_figure(facts, rows, sweep_dir / "figure.png")
    return rows


# --- the command line ---------------------------------------------------------------------------------------------

def build_sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help: str, grid=True, train=True):
        sub = commands.add_parser(name, help=help, description=help)
        if grid:
            sub.add_argument("--grid", required=True, choices=GRIDS, help="which grid (docs/sweep.md)")
        if train:
            sub.add_argument("--corpus", default="", help="UTF-8 text; default: tiny-shakespeare, downloaded")
            sub.add_argument("--epochs", type=int, default=None, help="override the grid's budget of epochs")
        if name != "list":
            sub.add_argument("--sweep-dir", required=True, type=Path, help="the sweep's directory of runs")
        return sub

    add("run", "train every configuration of the grid in turn, then write the table")
    add("run-one", "train one configuration (a Kubernetes Indexed Job's pod)").add_argument(
        "--index", required=True, type=int, help="the configuration's position in the grid, from 0")
    add("table", "write table.md, table.json and figure.png from the sweep's run directories", grid=False,
        train=False)
    add("list", "print the grid's configurations and their parameter counts")
    return parser


def main(argv=None) -> int:
    parser = build_sweep_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "table":
            rows = write_table(args.sweep_dir)
            print((args.sweep_dir / "table.md").read_text())  # the table Job's log is the table
            print(f"wrote {args.sweep_dir / 'table.md'}, table.json, figure.png")
            return 0 if all(r["status"] == "done" for r in rows) else 1
        if args.command == "run-one" and not 0 <= args.index < len(GRIDS[args.grid]):
            raise SweepError("--index", f"{args.index} is out of range: grid {args.grid} has "
                                        f"{len(GRIDS[args.grid])} configurations, 0 to {len(GRIDS[args.grid]) - 1}")
        facts = sweep_facts(args.grid, args.corpus, args.epochs)
        if args.command == "list":
            for c in facts["configurations"]:
                print(f"{c['index']:3d} {c['name']:14s} {c['parameters']:>10,} parameters (LSTM {c['lstm_size']} "
                      f"column)")
            return 0
        check_sweep_dir(args.sweep_dir, facts)
    except (SweepError, ConfigError) as e:
        parser.error(str(e))
    except CorpusError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1

    todo = facts["configurations"]
    if args.command == "run-one":
        todo = [todo[args.index]]
    results = []
    with Stop() as stop:
        for config in todo:
            position = f"[{config['index'] + 1}/{len(facts['configurations'])}]"
            if not is_done(args.sweep_dir / config["name"]):
                print(f"{position} {config['name']}: training in {args.sweep_dir / config['name']}", flush=True)
            result = run_configuration(config, facts, args.sweep_dir, stop)
            print(report_line(position, result), flush=True)
            results.append(result)
            if stop.signum is not None or result["status"] == "stopped":
                break
    if args.command == "run":
        rows = write_table(args.sweep_dir)
        print(f"wrote {args.sweep_dir / 'table.md'}, table.json, figure.png")
        failed = [r for r in rows if r["status"] == "failed"]
        for r in failed:
            print(f"failed: {r['name']} (exit status {r['exit_status']}): {r['error']}", file=sys.stderr)
    else:
        failed = [r for r in results if r["status"] == "failed"]
    if stop.signum is not None or any(r["status"] == "stopped" for r in results):
        return 128 + (stop.signum or signal.SIGTERM)
    if failed and args.command == "run-one":
        return failure_exit_status(failed[0]["exit_status"])
    return 1 if failed else 0


def failure_exit_status(code: int) -> int:
    """run-one exits as its training did, a death by signal N as a shell reports it (128 + N): the Job's
    podFailurePolicy tells a failure that will recur (1, 2) from one worth retrying (an OOM kill, 137)."""
    return code if code > 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
