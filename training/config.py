"""One typed training configuration, its presets, and the command line that overrides them.

Every field has a default (the `small` preset's value unless noted); a preset replaces some of them and
every flag overrides a field by name. The resolved config is saved with the run as config.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from training.precision import PRECISIONS

CELLS = ("lstm", "gru", "rnn")
STRATEGIES = ("auto", "default", "mirrored", "multiworker")
LR_SCHEDULES = ("cosine", "exponential", "constant")


@dataclass
class TrainConfig:
    # --- data ---
    corpus: str = ""  # UTF-8 text file; empty means tiny-shakespeare, downloaded to data/ and checked
    val_fraction: float = 0.1  # validation split taken from the end (nanoGPT's shakespeare_char split)
    batch_size: int = 32  # parallel streams the corpus is cut into (global batch across replicas)
    seq_length: int = 128  # characters per truncated-BPTT window; state carries across windows
    # --- model ---
    cell: str = "lstm"  # lstm | gru | rnn, as in char-rnn's -model
    embedding_size: int = 64  # char-rnn used one-hot; a small embedding is cheaper and as good
    hidden_size: int = 512  # units per recurrent layer
    num_layers: int = 2  # stacked recurrent layers
    dropout: float = 0.25  # after each recurrent layer (char-rnn's placement); 0 disables
    # --- optimisation ---
    learning_rate: float = 3e-3  # Adam's peak learning rate
    lr_schedule: str = "cosine"  # cosine | exponential | constant, after warm-up
    lr_decay_rate: float = 0.97  # exponential only: factor per epoch (char-rnn's learning_rate_decay)
    min_lr_fraction: float = 0.05  # cosine only: final learning rate as a fraction of the peak
    warmup_steps: int = 50  # linear warm-up from 0, steadies Adam's first steps
    grad_clip: float = 5.0  # global gradient-norm clip (char-rnn's grad_clip)
    weight_decay: float = 0.0  # decoupled (AdamW) decay of the matrices, not the biases: w -= lr * this * w each step; 0 = off; small: 0.1
    ema_momentum: float = 0.0  # validate, checkpoint and sample a moving average of the weights (Keras' use_ema), this momentum per step; 0 = off; small: 0.997
    epochs: int = 7  # passes over the training split (small: 9)
    early_stopping_patience: int = 3  # epochs without a better validation loss before stopping; 0 = off
    explode_factor: float = 3.0  # stop when a loss exceeds this many times the first one (char-rnn)
    seed: int = 1337  # weights, dropout and sampling seeds
    strategy: str = "auto"  # auto | default | mirrored | multiworker (tf.distribute)
    precision: str = "fp32"  # fp32 | bf16 (Keras' mixed_bfloat16: bf16 matmuls; fp32 weights, loss, cell state); small: bf16
    fp32_fallback: dict = field(default_factory=dict)  # fields replacing these where bf16 falls back to fp32 (no bf16 units) in a new run; flags win
    # --- checkpoints ---
    run_dir: str = "runs/charlm"  # config, vocab, logs, checkpoints and backups of this run
    backup_every: int = 100  # steps between resumable backups (also at every epoch end)
    stop_after_steps: int = 0  # stop (with a backup) after this many steps in this session; 0 = run out
    # --- output ---
    sample_length: int = 200  # characters sampled after each epoch
    sample_temperatures: list[float] = field(default_factory=lambda: [0.5, 1.0])  # one sample each
    verbose: int = 1  # 0 silent, 1 progress bar, 2 one line per epoch (Keras' verbose)

    def validate(self) -> None:
        """Raise ConfigError naming the flag of the first bad value."""
        positive = ["batch_size", "seq_length", "embedding_size", "hidden_size", "num_layers", "epochs"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be a positive integer, got {getattr(self, name)}")
        for name in ["backup_every", "sample_length", "warmup_steps", "early_stopping_patience",
                     "stop_after_steps"]:
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be zero or more, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in (0, 1), got {self.val_fraction}")
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate", f"must be positive, got {self.learning_rate}")
        if not 0.0 < self.lr_decay_rate <= 1.0:
            raise ConfigError("lr_decay_rate", f"must be in (0, 1], got {self.lr_decay_rate}")
        if not 0.0 <= self.min_lr_fraction <= 1.0:
            raise ConfigError("min_lr_fraction", f"must be in [0, 1], got {self.min_lr_fraction}")
        if not 0.0 <= self.weight_decay < 1.0:
            raise ConfigError("weight_decay", f"must be in [0, 1), got {self.weight_decay}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError("ema_momentum", f"must be in [0, 1), got {self.ema_momentum}")
        if not self.grad_clip > 0:
            raise ConfigError("grad_clip", f"must be positive, got {self.grad_clip}")
        if not self.explode_factor > 1:
            raise ConfigError("explode_factor", f"must be above 1, got {self.explode_factor}")
        if any(not t > 0 for t in self.sample_temperatures):
            raise ConfigError("sample_temperatures", f"must all be positive, got {self.sample_temperatures}")
        fields = {f.name for f in dataclasses.fields(self)} - {"precision", "fp32_fallback", "run_dir"}
        if not isinstance(self.fp32_fallback, dict) or set(self.fp32_fallback) - fields:
            raise ConfigError("fp32_fallback", f"must map fields of the config to values, got {self.fp32_fallback!r}")
        if self.fp32_fallback:  # the values too, now rather than when a CPU without bf16 units meets them
            dataclasses.replace(self, **self.fp32_fallback, fp32_fallback={}).validate()
        for name, allowed in [("cell", CELLS), ("strategy", STRATEGIES), ("lr_schedule", LR_SCHEDULES),
                              ("precision", PRECISIONS)]:
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls(**json.loads(Path(path).read_text()))


# Presets replace the defaults above; flags override presets.
PRESETS: dict[str, dict] = {
    # For tests: trains in seconds and still learns (loss falls well below ln V).
    "tiny": dict(embedding_size=16, hidden_size=32, num_layers=1, dropout=0.0, batch_size=8,
                 seq_length=32, learning_rate=1e-2, warmup_steps=0, epochs=2, backup_every=20,
                 sample_length=40),
    # The CPU default `make train` uses: the best validation loss reachable in ~20 minutes on 2 cores (AVX512-BF16
    # or AMX). bf16 trains this shape 1.75x as fast as fp32 (9 bf16 epochs cost about 5 fp32 ones); the moving
    # average (a horizon of ~330 steps, 1.4 epochs) and decoupled weight decay 0.1 each took ~0.003-0.005 nats off
    # the end of the curve, where 2x512 at this dropout flattens: 9 epochs reached 1.4198 nats/char, 1.4246 without
    # the decay (docs/results.md, issue 14).
    # On a CPU without bf16 units (AMD EPYC Zen 3, AVX2: 2x512 trains at ~3,600 chars/s in fp32, 280 s an epoch) the
    # same time buys about a third of that work, so fp32 gets its own settings: 2x384 (~1.8x as fast) for 5 epochs
    # reached 1.5811 nats/char against 1.5998 for 2x512 in 3, and the moving average, which pays at the flat end of
    # a long curve, lags a 5-epoch one badly (1.6228 with it; docs/results.md, 2026-12-02).
    "small": dict(precision="bf16", epochs=9, ema_momentum=0.997, weight_decay=0.1,
                  fp32_fallback=dict(hidden_size=384, epochs=5, ema_momentum=0.0)),
    # char-rnn's common setting, 2x512; the shape the training benchmark measures.
    "medium": dict(embedding_size=64, hidden_size=512, num_layers=2, dropout=0.25, batch_size=64,
                   seq_length=100, learning_rate=2e-3, epochs=30),
    # For a GPU (cuDNN): 3x1024 with heavy dropout, as char-rnn's large models.
    "large": dict(embedding_size=128, hidden_size=1024, num_layers=3, dropout=0.5, batch_size=64,
                  seq_length=128, learning_rate=1e-3, epochs=50),
}


class ConfigError(ValueError):
    """A bad configuration value; `flag` is the command-line spelling of the field."""

    def __init__(self, name: str, message: str):
        self.flag = "--" + name.replace("_", "-")
        super().__init__(f"{self.flag} {message}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


_GROUPS = {
    "data": ["corpus", "val_fraction", "batch_size", "seq_length"],
    "model": ["cell", "embedding_size", "hidden_size", "num_layers", "dropout"],
    "optimisation": ["learning_rate", "lr_schedule", "lr_decay_rate", "min_lr_fraction", "warmup_steps",
                     "grad_clip", "weight_decay", "ema_momentum", "epochs", "early_stopping_patience", "explode_factor", "seed", "strategy",
                     "precision"],
    "checkpoints": ["run_dir", "backup_every", "stop_after_steps"],
    "output": ["sample_length", "sample_temperatures", "verbose"],
}


def _field_comments() -> dict[str, str]:
    """The comment on each field above, reused as its --help text so the two never drift apart."""
    import inspect

    comments = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith("#"):
            name = stripped.split(":", 1)[0]
            comments[name] = stripped.split("#", 1)[1].strip()
    return comments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train a character-level recurrent language model (char-rnn on Keras 3 / TensorFlow).",
        epilog="Presets: " + ", ".join(PRESETS) + ". Every flag overrides the preset's value.",
    )
    parser.add_argument("--preset", default="small", help="tiny | small | medium | large (default: small)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last backup (its saved config wins, "
                             "except --epochs, --stop-after-steps and --verbose)")
    comments = _field_comments()
    defaults = TrainConfig()
    for group_name, names in _GROUPS.items():
        group = parser.add_argument_group(group_name)
        for name in names:
            default = getattr(defaults, name)
            kwargs: dict = dict(default=None, help=f"{comments.get(name, '')} (default: {default})")
            if isinstance(default, list):
                kwargs.update(type=float, nargs="+")
            else:
                kwargs.update(type=type(default))
            group.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Preset, then flags; raises ConfigError for an unknown preset or a bad value."""
    if args.preset not in PRESETS:
        raise ConfigError("preset", f"must be one of {', '.join(PRESETS)}, got {args.preset!r}")
    values = dataclasses.asdict(TrainConfig())
    values.update(PRESETS[args.preset])
    flags = flag_overrides(args)
    values.update(flags)
    # a flag given is the user's choice at either precision, so the fallback does not touch it
    values["fp32_fallback"] = {k: v for k, v in values["fp32_fallback"].items()
                               if k not in flags and values["precision"] == "bf16"}
    config = TrainConfig(**values)
    config.validate()
    return config


def flag_overrides(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
