"""Train a character-level language model: stateful truncated BPTT, exact resume, tf.distribute.

    python -m training.train --corpus data/tinyshakespeare.txt --preset small
    python -m training.train --run-dir runs/charlm --resume        # after a kill, at any moment

The loop is ours so that it can stop and resume in the middle of an epoch; what it reports goes
through Keras' own callbacks (progress bar, CSV and TensorBoard logs, early stopping).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import time
from pathlib import Path

from training.checkpoints import BACKUP, BEST_WEIGHTS, DISK_FULL, LAST_WEIGHTS, CheckpointError
from training.config import (ConfigError, TrainConfig, build_parser, config_from_args, flag_overrides,
                             write_text_atomic)
from training.corpus import CorpusError
from training.precision import effective_precision

# Flags that may differ from the saved config when resuming; the others define the run.
RESUMABLE_CHANGES = {"epochs", "stop_after_steps", "verbose", "backup_every", "early_stopping_patience",
                     "sample_length", "sample_temperatures", "strategy"}
LN2 = math.log(2.0)


class TrainingDiverged(RuntimeError):
    pass


def resolve_config(args) -> TrainConfig:
    if not args.resume:
        config = config_from_args(args)
        backup = Path(config.run_dir) / "backup.npz"
        if backup.exists():
            raise ConfigError("run_dir", f"{config.run_dir} already holds a run ({backup}); pass --resume to "
                                         f"continue it, or choose another --run-dir")
        return config
    run_dir = Path(args.run_dir or TrainConfig().run_dir)
    if not (run_dir / BACKUP).exists():
        raise ConfigError("run_dir", f"{run_dir} has no {BACKUP} to resume from")
    config_path = run_dir / "config.json"
    try:
        config = TrainConfig.load(config_path)
    except (OSError, ValueError, TypeError) as e:  # missing, not JSON, or fields of another version
        raise ConfigError("run_dir", f"{config_path} cannot be read as a training config ({e}); is {run_dir} a "
                                     f"charlm run directory?") from None
    config.stop_after_steps = 0  # a limit of the session that set it, not of the run
    config.run_dir = str(run_dir)  # the directory resumed, wherever config.json says the run was started
    # --preset is not compared: `make train` passes one on every run, resumed or not, and the run's config wins
    requested = flag_overrides(args)
    differing = [name for name, value in requested.items()
                 if name not in RESUMABLE_CHANGES and name != "run_dir" and value != getattr(config, name)]
    if differing:
        flags = ["--" + name.replace("_", "-") for name in differing]
        saved = ", ".join(f"{flag} {getattr(config, name)}" for flag, name in zip(flags, differing))
        given = ", ".join(f"{flag} {requested[name]}" for flag, name in zip(flags, differing))
        also = f"(and {', '.join(flags[1:])}) " if len(flags) > 1 else ""
        raise ConfigError(differing[0], f"{also}cannot change on --resume: the run's {config_path} has {saved}; "
                                        f"the command line asks for {given}. Leave "
                                        f"{'them' if also else 'it'} out to continue this run, or start a new run "
                                        f"with another --run-dir; nothing in {run_dir} was changed")
    for name, value in requested.items():
        if name in RESUMABLE_CHANGES:
            setattr(config, name, value)
    config.validate()
    return config


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int):
    import keras

    if config.lr_schedule == "cosine":
        decay_steps = max(1, config.epochs * steps_per_epoch - config.warmup_steps)
        if config.warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                0.0, decay_steps, alpha=config.min_lr_fraction, warmup_target=config.learning_rate,
                warmup_steps=config.warmup_steps)
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps,
                                                      alpha=config.min_lr_fraction)
    if config.lr_schedule == "exponential":
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, steps_per_epoch, config.lr_decay_rate, staircase=True)
    return config.learning_rate


def make_train_step(model, optimizer, config: TrainConfig, strategy):
    """A compiled step (x, y, states) -> (mean loss in nats/char over the global batch, new states)."""
    import tensorflow as tf

    replicas = strategy.num_replicas_in_sync
    chars_per_batch = float(config.batch_size * config.seq_length)

    def replica_step(x, y, states):
        with tf.GradientTape() as tape:
            logits, new_states = model(x, states, training=True)  # (rows, time, vocab)
            losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)  # (rows, time)
            loss = tf.reduce_sum(losses) / chars_per_batch  # this replica's share of the global mean
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        if replicas > 1:
            # Clip the global gradient, as on one device: Keras' optimizer would clip each replica's
            # part before summing. It sums again, so hand it 1/replicas of the clipped total.
            grads = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, config.grad_clip)
            grads = [g / replicas for g in grads]
        else:
            grads, _ = tf.clip_by_global_norm(grads, config.grad_clip)
        optimizer.apply(grads, model.trainable_variables)
        return loss, [tf.stop_gradient(s) for s in new_states]

    @tf.function
    def train_step(x, y, states):
        loss, new_states = strategy.run(replica_step, args=(x, y, states))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), new_states

    return train_step


def build_optimizer(config: TrainConfig, model, steps_per_epoch: int):
    """Adam on the schedule, with the moving average and decoupled weight decay the config asks for."""
    import keras

    optimizer = keras.optimizers.Adam(learning_rate_schedule(config, steps_per_epoch),
                                      weight_decay=config.weight_decay or None,
                                      use_ema=config.ema_momentum > 0, ema_momentum=config.ema_momentum or 0.99)
    # Decay pulls matrices toward zero; a bias has no scale to regularise (nanoGPT's split).
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    optimizer.build(model.trainable_variables)
    return optimizer


def make_eval_step(model, config: TrainConfig, strategy):
    import tensorflow as tf

    chars_per_batch = float(config.batch_size * config.seq_length)

    def replica_step(x, y, states):
        logits, new_states = model(x, states, training=False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        return tf.reduce_sum(losses) / chars_per_batch, new_states

    @tf.function
    def eval_step(x, y, states):
        loss, new_states = strategy.run(replica_step, args=(x, y, states))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None), new_states

    return eval_step


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Run (or continue) training; returns a summary. Raises CorpusError, ConfigError, TrainingDiverged."""
    import numpy as np

    from training.strategy import choose_strategy

    strategy = choose_strategy(config.strategy)  # first: multi-worker setup must precede other TF work
    precision, fallback = effective_precision(config.precision)
    if fallback:  # bf16 on a CPU without bf16 units: config.json records the fp32 trained in
        if config.fp32_fallback and not resume:  # a resumed run keeps its shape and schedule
            config = dataclasses.replace(config, **config.fp32_fallback)
            fallback += ", with " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in config.fp32_fallback.items()) \
                + " (the preset's fp32 settings: fp32 does less work in the same time)"
        print(fallback, file=sys.stderr, flush=True)
        config = dataclasses.replace(config, precision=precision, fp32_fallback={})

    import keras
    import tensorflow as tf

    from training import checkpoints
    from training.batches import check_split_sizes, num_batches, stream_batches
    from training.corpus import Vocab, ensure_tinyshakespeare, read_corpus, sha256_of, split_ids
    from training.model import CharRNN
    from training.sampling import SampleEachEpoch
    from training.strategy import distribute_rows, gather_rows, is_chief, rows_per_replica, worker_index

    run_dir = Path(config.run_dir)
    corpus_path = Path(config.corpus) if config.corpus else ensure_tinyshakespeare()
    text = read_corpus(corpus_path)
    corpus_sha256 = sha256_of(corpus_path)
    chief = is_chief(strategy)
    if resume:
        vocab, facts = read_run_facts(run_dir)
        if facts["sha256"] != corpus_sha256:
            raise CorpusError(f"{corpus_path}: sha256 {corpus_sha256} differs from {run_dir / 'corpus.json'} "
                              f"({facts['sha256']}): the run was started on other text. Resume needs the text it "
                              f"was started on; nothing in {run_dir} was changed")
        if vocab != Vocab.from_text(text):
            raise CorpusError(f"{run_dir / 'vocab.json'}: {len(vocab)} characters, not the {len(set(text))} of "
                              f"{corpus_path}, which {run_dir / 'corpus.json'} says this run was started on: the "
                              f"vocabulary is another run's. Nothing in {run_dir} was changed")
    else:
        vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    train_ids, val_ids = split_ids(ids, config.val_fraction)
    check_split_sizes(str(corpus_path), len(train_ids), len(val_ids), config.batch_size, config.seq_length,
                      config.val_fraction)
    rows_per_replica(strategy, config.batch_size)
    steps_per_epoch = num_batches(len(train_ids), config.batch_size, config.seq_length)
    val_steps = num_batches(len(val_ids), config.batch_size, config.seq_length)

    # Non-chief workers write beside the run, never into it (TF's multi-worker convention).
    out_dir = run_dir if chief else run_dir / f"worker-{worker_index(strategy)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    if chief and not resume:
        config.save(run_dir / "config.json")
        vocab.save(run_dir / "vocab.json")
        write_text_atomic(run_dir / "corpus.json", json.dumps({
            "path": str(corpus_path), "sha256": corpus_sha256, "chars": len(text),
            "train_chars": len(train_ids), "val_chars": len(val_ids), "val_fraction": config.val_fraction,
        }, indent=2) + "\n")

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = CharRNN(len(vocab), config)
        optimizer = build_optimizer(config, model, steps_per_epoch)
        model.compile(optimizer=optimizer)  # callbacks (TensorBoard's learning-rate log) look for it here

    progress = checkpoints.Progress()
    carried = None  # per-replica recurrent state carried into the next batch
    if resume:
        for weights in dict.fromkeys([run_dir / BEST_WEIGHTS, out_dir / BEST_WEIGHTS, out_dir / LAST_WEIGHTS]):
            if weights.exists():
                checkpoints.check_weights(weights)  # refuse now, not when the run ends
        states, progress = checkpoints.load_backup(out_dir / BACKUP, model, optimizer, config.batch_size)
        carried = distribute_rows(strategy, [tf.constant(s) for s in states])
        if config.verbose:
            print(f"resumed {run_dir} at epoch {progress.epoch + 1}, batch {progress.step_in_epoch}/"
                  f"{steps_per_epoch} (global step {progress.global_step})", flush=True)

    train_step = make_train_step(model, optimizer, config, strategy)
    eval_step = make_eval_step(model, config, strategy)

    def zero_state():
        return distribute_rows(strategy, model.zero_state(config.batch_size))

    def backup():
        states = gather_rows(strategy, carried) if carried is not None else []  # collective: all workers
        checkpoints.save_backup(out_dir / checkpoints.BACKUP, model, optimizer, states, progress)

    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.early_stopping_patience or config.epochs + 1)
    callbacks = [early_stopping, SampleEachEpoch(model, vocab, config) if chief else None]
    if chief:
        callbacks += [keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
                      keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False)]
    callback_list = keras.callbacks.CallbackList(
        [c for c in callbacks if c is not None], add_progbar=config.verbose > 0 and chief, model=model,
        verbose=config.verbose, epochs=config.epochs, steps=steps_per_epoch)

    stop_signal = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stop_signal.append(signum))

    callback_list.on_train_begin()
    early_stopping.wait, early_stopping.best = progress.epochs_without_improvement, progress.best_val_loss
    session_steps, started = 0, time.perf_counter()
    stopped_early = False
    for epoch in range(progress.epoch, config.epochs):
        if progress.step_in_epoch == 0 or carried is None:
            carried = zero_state()  # each epoch starts every stream afresh
        callback_list.on_epoch_begin(epoch)
        for x, y in stream_batches(train_ids, config.batch_size, config.seq_length, start=progress.step_in_epoch):
            callback_list.on_train_batch_begin(progress.step_in_epoch)
            loss, carried = train_step(*distribute_rows(strategy, (x, y)), carried)
            loss = float(loss)
            check_divergence(loss, progress, config)
            progress.step_in_epoch += 1
            progress.global_step += 1
            progress.epoch_loss_sum += loss
            session_steps += 1
            callback_list.on_train_batch_end(progress.step_in_epoch - 1, {"loss": loss, "bpc": loss / LN2})
            if config.backup_every and progress.global_step % config.backup_every == 0:
                backup()
            if stop_signal or (config.stop_after_steps and session_steps >= config.stop_after_steps):
                backup()
                reason = f"signal {stop_signal[0]}" if stop_signal else f"--stop-after-steps {session_steps}"
                print(f"\nstopped on {reason} at global step {progress.global_step}; "
                      f"continue with: python -m training.train --run-dir {run_dir} --resume", flush=True)
                return summary(run_dir, progress, session_steps, started, stopped=True)

        with averaged_weights(model, optimizer):  # validated, kept and sampled: the average, if there is one
            val_loss, val_states = 0.0, zero_state()
            for x, y in stream_batches(val_ids, config.batch_size, config.seq_length):
                loss, val_states = eval_step(*distribute_rows(strategy, (x, y)), val_states)
                val_loss += float(loss) / val_steps
            train_loss = progress.epoch_loss_sum / max(1, steps_per_epoch)
            logs = {"loss": train_loss, "bpc": train_loss / LN2, "val_loss": val_loss, "val_bpc": val_loss / LN2,
                    "learning_rate": float(optimizer.learning_rate)}
            improved = val_loss < progress.best_val_loss
            if improved:
                progress.best_val_loss, progress.best_epoch = val_loss, epoch
                if chief:
                    checkpoints.save_weights(model, run_dir / checkpoints.BEST_WEIGHTS)
            callback_list.on_epoch_end(epoch, logs)
        progress.epochs_without_improvement = 0 if improved else progress.epochs_without_improvement + 1
        progress.epoch, progress.step_in_epoch, progress.epoch_loss_sum = epoch + 1, 0, 0.0
        backup()
        if model.stop_training:
            stopped_early = True
            if config.verbose:
                print(f"early stopping: no better validation loss for {config.early_stopping_patience} epochs")
            break
    callback_list.on_train_end()
    with averaged_weights(model, optimizer):
        checkpoints.save_weights(model, out_dir / checkpoints.LAST_WEIGHTS)
    return summary(run_dir, progress, session_steps, started, stopped=False, stopped_early=stopped_early)


@contextlib.contextmanager
def averaged_weights(model, optimizer):
    """With --ema-momentum, the optimizer's moving average of the weights in the model for the block, and the
    trained weights back after it: training goes on from them, and backups hold both."""
    if not optimizer.use_ema:
        yield
        return
    trained = [v.numpy() for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)  # Keras' own swap-in of the average
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, trained):
            variable.assign(value)


def read_run_facts(run_dir: Path):
    """The vocabulary and corpus facts a run was started with; CorpusError naming the file if unreadable."""
    from training.corpus import Vocab

    path = run_dir / "vocab.json"
    try:
        vocab = Vocab.load(path)
        path = run_dir / "corpus.json"
        facts = json.loads(path.read_text())
        facts["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CorpusError(f"{path}: cannot be read ({type(e).__name__}: {e}); is {run_dir} a charlm run "
                          f"directory?") from None
    return vocab, facts


def checkpoint_advice(error: CheckpointError, run_dir: Path) -> str:
    """What to do about a checkpoint that could not be written or read, after the message naming it."""
    resume = f"python -m training.train --run-dir {run_dir} --resume"
    if error.kind == "write":
        has_backup = (error.path.parent / BACKUP).exists()
        again = f"continue from the last good backup with: {resume}" if has_backup else \
            "run the same command again (there is no backup yet)"
        first = "Free some space" if error.errno in DISK_FULL else "Fix the cause"
        return f". Training stopped. {first}, then {again}"
    if error.path.name == BACKUP:
        return (f". Nothing was changed. The run's weights files are separate and can still be exported "
                f"(python -m training.export --run-dir {run_dir}). To train again, start a new run with another "
                f"--run-dir, or remove {error.path} and start this one over without --resume")
    if error.path.name in (BEST_WEIGHTS, LAST_WEIGHTS):
        written = ("the next time the validation loss beats the run's best" if error.path.name == BEST_WEIGHTS
                   else "when the run ends")
        return (f". Nothing was changed. Remove it to resume (training writes it again {written}; the run's "
                f"{BACKUP} is separate and intact): {resume}")
    return ""


def check_divergence(loss: float, progress, config: TrainConfig) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"the training loss became {loss} at global step {progress.global_step + 1}; "
                               f"try a lower --learning-rate (now {config.learning_rate}) or --grad-clip")
    if math.isnan(progress.first_loss):
        progress.first_loss = loss
    elif loss > config.explode_factor * progress.first_loss:
        raise TrainingDiverged(
            f"the training loss exploded to {loss:.3f} at global step {progress.global_step + 1}, more than "
            f"{config.explode_factor}x the first loss ({progress.first_loss:.3f}); try a lower --learning-rate")


def summary(run_dir: Path, progress, session_steps: int, started: float, stopped: bool,
            stopped_early: bool = False) -> dict:
    result = {"run_dir": str(run_dir), "global_step": progress.global_step, "epoch": progress.epoch,
              "session_steps": session_steps, "seconds": round(time.perf_counter() - started, 1),
              "best_val_loss": finite_or_none(progress.best_val_loss),
              "best_val_bpc": finite_or_none(progress.best_val_loss / LN2),
              "stopped": stopped, "stopped_early": stopped_early}
    print("summary " + json.dumps(result), flush=True)
    return result


def finite_or_none(x: float):
    return x if math.isfinite(x) else None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = resolve_config(args)
        train(config, resume=args.resume)
    except ConfigError as e:
        parser.error(str(e))
    except (CorpusError, TrainingDiverged) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    except CheckpointError as e:
        print(f"{parser.prog}: error: {e}{checkpoint_advice(e, Path(config.run_dir))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
