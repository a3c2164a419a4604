"""Scale-out with TensorFlow's own engine: the ``distribute_strategy`` config key -> a ``tf.distribute`` strategy.

* ``'default'``: one device (TensorFlow's default strategy; no replica machinery).
* ``'mirrored'``: ``MirroredStrategy`` over all local GPUs (or the configured logical CPU devices).
* ``'multi_worker_mirrored'``: ``MultiWorkerMirroredStrategy`` over the cluster that ``TF_CONFIG`` describes.

How a global batch is split. The pairwise ProbFace losses need every positive and negative pair of the global
batch, and the original's class-balanced batches put an identity's images (and the un-augmented twins of a
doubled batch) anywhere in it. So each replica takes a contiguous slice of the batch (for a doubled batch: its
slice of the augmented half *and* the same slice of the test-preprocessed half, so the twin-reuse shortcut still
works per replica), runs the expensive frozen backbone on it, and the features are then all-gathered back into
the single-device order. Every replica computes the head and the losses on the whole gathered batch — identical
to one device, batch-norm statistics included — and the gradients are divided by the number of replicas because
the optimizer sums them across replicas. The head is a few GFLOP per step next to the backbone's TFLOPs, so
repeating it per replica costs little and buys exact equality with single-device training.

Stage-1 backbone training shards the batch the same way; its per-image softmax terms are averaged over the
global batch (each replica's sum divided by the global size, summed by the optimizer's all-reduce), the
UniformFace term is taken over the gathered labels, and batch norm can be synchronised across replicas
(``sync_batch_norm``) so its statistics are those of the global batch.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")


class DistributeError(ValueError):
    """The strategy cannot be built as configured (unknown name, bad TF_CONFIG, batch not divisible)."""


def _check_tf_config() -> dict:
    """TF_CONFIG must describe a cluster with this task in it; say what is wrong before TensorFlow hangs on it."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise DistributeError("distribute_strategy 'multi_worker_mirrored' needs the TF_CONFIG environment variable "
                              "(JSON: {\"cluster\": {\"worker\": [\"host:port\", ...]}, \"task\": {\"type\": "
                              "\"worker\", \"index\": i}}); see docs/distributed.md")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DistributeError(f"TF_CONFIG is not valid JSON: {exc}") from None
    workers = (config.get("cluster") or {}).get("worker")
    task = config.get("task") or {}
    if not isinstance(workers, list) or not workers:
        raise DistributeError(f"TF_CONFIG has no cluster.worker list: {raw}")
    if task.get("type") not in ("worker", "chief") or not isinstance(task.get("index"), int):
        raise DistributeError(f"TF_CONFIG task must be {{'type': 'worker', 'index': i}}, got {task!r}")
    if task["type"] == "worker" and not 0 <= task["index"] < len(workers):
        raise DistributeError(f"TF_CONFIG task index {task['index']} is outside the {len(workers)} workers")
    return config


def split_cpu(count: int) -> list[str]:
    """Split the CPU into ``count`` logical devices (before TensorFlow initialises its devices) and name them.
    This is how mirrored training is exercised, and measured, on a machine without GPUs."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * count
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:  # already initialised: fine if it already has that many
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise DistributeError(f"config key 'distribute_cpu_devices' = {count}: TensorFlow's devices were "
                                  f"initialised before the split; set it before any other TensorFlow work") from None
    return [f"/cpu:{i}" for i in range(count)]


def make_strategy(name: str = "default", cpu_devices: int = 0) -> tf.distribute.Strategy:
    """The strategy the config names. ``cpu_devices`` > 0 with 'mirrored' on a machine without GPUs mirrors over
    that many logical CPU devices."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = None
        if cpu_devices and not tf.config.list_physical_devices("GPU"):
            devices = split_cpu(cpu_devices)
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker_mirrored":
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise DistributeError(f"config key 'distribute_strategy' must be one of {list(STRATEGIES)}, got {name!r}")


def strategy_from_config(cfg) -> tf.distribute.Strategy:
    return make_strategy(cfg.distribute_strategy, cfg.distribute_cpu_devices)


def worker_scratch_dir(strategy: tf.distribute.Strategy) -> str:
    """A private folder for a non-chief worker's files (removed at the end of its run)."""
    import tempfile

    resolver = getattr(strategy, "cluster_resolver", None)
    task = f"{resolver.task_type}{resolver.task_id}" if resolver is not None else "worker"
    return tempfile.mkdtemp(prefix=f"probface-{task}-")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and models (worker 0 of a cluster; always, on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0
                                             and "chief" not in resolver.cluster_spec().as_dict())


def replicas(strategy: tf.distribute.Strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def _check_divisible(size: int, parts: int, what: str) -> int:
    if size % parts:
        raise DistributeError(f"{what} of {size} cannot be split evenly over {parts} replicas; choose a batch size "
                              f"that is a multiple of {parts}")
    return size // parts


def replica_slice(batch: np.ndarray, replica: int, num_replicas: int, halves: bool = False) -> np.ndarray:
    """Replica ``replica``'s part of a global batch: a contiguous slice, or with ``halves`` the same slice of each
    half (a doubled batch: augmented images, then their test-preprocessed twins)."""
    if not halves:
        n = _check_divisible(len(batch), num_replicas, "a batch")
        return batch[replica * n:(replica + 1) * n]
    half = _check_divisible(len(batch), 2, "a doubled batch")
    n = _check_divisible(half, num_replicas, "each half of a doubled batch")
    return np.concatenate([batch[replica * n:(replica + 1) * n], batch[half + replica * n:half + (replica + 1) * n]])


def distribute_batch(strategy: tf.distribute.Strategy, arrays, halves: bool = False):
    """Per-replica values of each global array (host memory -> each replica's device). One replica: unchanged."""
    if replicas(strategy) == 1:
        return tuple(tf.convert_to_tensor(a) for a in arrays)
    arrays = [np.asarray(a) for a in arrays]

    def part(ctx, array):
        return tf.convert_to_tensor(replica_slice(array, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync,
                                                  halves))

    return tuple(strategy.experimental_distribute_values_from_function(lambda ctx, a=a: part(ctx, a))
                 for a in arrays)


def gather(x: tf.Tensor, halves: bool = False) -> tf.Tensor:
    """Inside a replica: the global batch in single-device order, from every replica's ``replica_slice``."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    gathered = ctx.all_gather(x, axis=0)
    if not halves:
        return gathered
    # [r0 aug, r0 twins, r1 aug, r1 twins, ...] -> [all aug, all twins]
    tail = tf.shape(x)[1:]
    parts = tf.reshape(gathered, tf.concat([[ctx.num_replicas_in_sync, 2, tf.shape(x)[0] // 2], tail], 0))
    perm = tf.concat([[1, 0], tf.range(2, tf.rank(parts))], 0)
    return tf.reshape(tf.transpose(parts, perm), tf.concat([[-1], tail], 0))


def run(strategy: tf.distribute.Strategy, fn, args=()):
    """``strategy.run(fn, args)``, with one fix: a cluster worker with a single local device traces its replica
    without a device scope, and TensorFlow's collectives then refuse tensors that carry no device ("destinations
    can not be empty"). There, the replica's inputs and ops are placed on that device explicitly."""
    if strategy.num_replicas_in_sync == 1 or len(strategy.extended.worker_devices) != 1:
        return strategy.run(fn, args=args)
    devices = strategy.extended.worker_devices

    def placed(*inputs):
        with tf.device(devices[0]):
            return fn(*tf.nest.map_structure(tf.identity, inputs))

    return strategy.run(placed, args=args)


def replica_sum(x: tf.Tensor) -> tf.Tensor:
    """Inside a replica: the sum of ``x`` over every replica (``x`` itself on one device)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def first_replica(strategy: tf.distribute.Strategy, value):
    """A replica-identical value (e.g. the losses computed on the gathered batch) as local tensors."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)


def distributed_function(strategy: tf.distribute.Strategy, fn, jit: bool = False):
    """``fn(images)`` (a tensor, tuple or dict of per-image outputs) for a batch of any size, each replica running
    its contiguous slice; the outputs come back whole and in input order. A batch that does not divide evenly is
    padded with copies of its last image, whose outputs are dropped."""
    inner = tf.function(fn, jit_compile=jit, reduce_retracing=True)

    def replica(images):
        return tf.nest.map_structure(gather, inner(images))

    compiled = tf.function(lambda images: run(strategy, replica, (images,)), reduce_retracing=True)

    def call(images):
        images = np.asarray(images)
        n, pad = len(images), (-len(images)) % replicas(strategy)
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        out = first_replica(strategy, compiled(*distribute_batch(strategy, (images,))))
        return tf.nest.map_structure(lambda t: t[:n], out)

    return call
