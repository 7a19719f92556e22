"""Scale-out with TensorFlow's own engine: pick a tf.distribute strategy, and place batch rows on replicas.

Each replica owns a fixed, contiguous block of the global batch's rows for the whole run, so the
recurrent state a replica carries always belongs to the same streams (stream contiguity survives
data parallelism). Every worker builds the same global batch and takes its replicas' rows.
"""
from __future__ import annotations

import json
import os

import tensorflow as tf


def tf_config_workers() -> list[str]:
    return json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {}).get("worker", [])


def choose_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: several workers in TF_CONFIG -> multi-worker; several GPUs -> mirrored; else one device."""
    if name == "auto":
        if len(tf_config_workers()) > 1:
            name = "multiworker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def worker_index(strategy: tf.distribute.Strategy) -> int:
    resolver = getattr(strategy, "cluster_resolver", None)
    return int(resolver.task_id or 0) if resolver is not None and resolver.task_type == "worker" else 0


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The one process that writes the run directory (worker 0, TF's convention when there is no chief)."""
    return worker_index(strategy) == 0


def rows_per_replica(strategy: tf.distribute.Strategy, batch_size: int) -> int:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        from training.config import ConfigError

        raise ConfigError("batch_size", f"({batch_size}) must divide evenly among {replicas} replicas")
    return batch_size // replicas


def distribute_rows(strategy: tf.distribute.Strategy, tensors):
    """Give each replica its own block of rows of every (global_batch, ...) tensor in `tensors`."""
    if strategy.num_replicas_in_sync == 1:
        return tensors
    def rows(ctx):
        n = tf.shape(tf.nest.flatten(tensors)[0])[0] // ctx.num_replicas_in_sync
        begin = ctx.replica_id_in_sync_group * n
        return tf.nest.map_structure(lambda t: t[begin:begin + n], tensors)

    return strategy.experimental_distribute_values_from_function(rows)


def gather_rows(strategy: tf.distribute.Strategy, tensors):
    """The inverse of distribute_rows, as numpy arrays (a collective: every worker must call it)."""
    if strategy.num_replicas_in_sync == 1:
        return [t.numpy() for t in tensors]
    return [strategy.gather(t, axis=0).numpy() for t in tensors]
