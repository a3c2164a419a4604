"""Class-balanced training batches as a tf.data pipeline.

Each step draws ``P = batch_format['num_classes']`` distinct identities and ``K = size / P`` images of each
(the original: 32 x 4). An identity with fewer than K images contributes consecutive random permutations of its
images, as the original. With ``double_batch`` (the original's default) the batch is the augmented images
followed by the same images with test preprocessing, labels repeated: 256 images per step.

Batch ``k`` is a pure function of ``(base_random_seed, k)``: identities and images come from a NumPy generator
seeded with both, augmentation from stateless TF ops seeded with both. The sampler's whole state is therefore
the global step: ``make_train_dataset(..., start_step=step)`` after restoring a checkpoint reproduces the batch
sequence of an uninterrupted run.

Unreadable images (truncated, not an image, missing) are skipped: the next readable image of the same identity
takes the place, a warning names the file once, and a count is logged at the end of each epoch
(``DecodeStats``). With ``strict`` the first one stops training with an error naming the file.
"""
from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import tensorflow as tf
from absl import logging

from probface_tf.data.dataset import FaceDataset
from probface_tf.data.errors import DataError, DatasetFormatError, UnreadableImageError
from probface_tf.data.preprocess import parse_ops, preprocess_batch, preprocess_train_and_test

_UNBOUNDED = 2 ** 62


class DecodeStats:
    """Unreadable images met by a training pipeline; safe to read from the training loop at any time."""

    def __init__(self, epoch_size: int | None = None):
        self.epoch_size = epoch_size
        self.bad_files: dict[int, str] = {}  # image index -> message
        self.error: DataError | None = None  # set in strict mode before the pipeline fails
        self._skips = Counter()  # step -> images passed over
        self._lock = threading.Lock()

    @property
    def total_skipped(self) -> int:
        with self._lock:
            return sum(self._skips.values())

    def skipped_between(self, first_step: int, end_step: int) -> int:
        with self._lock:
            return sum(n for step, n in self._skips.items() if first_step <= step < end_step)

    def record(self, index: int, message: str, step: int) -> None:
        with self._lock:
            new = index not in self.bad_files
            self.bad_files[index] = message
            self._skips[step] += 1
        if new:
            logging.warning("skipping unreadable image: %s", message)

    def count_known(self, step: int) -> None:
        with self._lock:
            self._skips[step] += 1

    def end_epoch(self, epoch: int) -> int:
        """Log and return the number of images skipped during ``epoch`` (1-based, ``epoch_size`` steps each)."""
        size = self.epoch_size or 1
        n = self.skipped_between((epoch - 1) * size, epoch * size)
        log = logging.warning if n else logging.info
        log("epoch %d: %d unreadable image(s) skipped (%d distinct unreadable files so far)",
            epoch, n, len(self.bad_files))
        return n

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


class BalancedBatchPlanner:
    """Which images (and labels) make up batch ``step``: ``P`` identities x ``K`` images, from ``(seed, step)``."""

    def __init__(self, data: FaceDataset, num_classes: int, images_per_class: int, seed: int = 0):
        self.members = data.class_indices()
        self.present = np.array([c for c, m in enumerate(self.members) if len(m)], np.int64)
        if num_classes <= 0 or images_per_class <= 0:
            raise DatasetFormatError(f"batch_format: need num_classes > 0 and size >= num_classes, got "
                                     f"{num_classes} identities x {images_per_class} images")
        if len(self.present) < num_classes:
            raise DatasetFormatError(f"{data.root}: {len(self.present)} identities with images, fewer than the "
                                     f"{num_classes} per batch of batch_format['num_classes']")
        self.num_classes, self.images_per_class = num_classes, images_per_class
        self.seed = int(seed) % 2 ** 32

    def __call__(self, step) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(step)])
        classes = self.present[rng.choice(len(self.present), self.num_classes, replace=False)]
        k = self.images_per_class
        indices = np.empty(self.num_classes * k, np.int64)
        for slot, c in enumerate(classes):
            members = self.members[c]
            # Original: permutations of the identity's images appended until K are available.
            order = np.concatenate([rng.permutation(len(members)) for _ in range(-(-k // len(members)))])
            indices[slot * k:(slot + 1) * k] = members[order[:k]]
        return indices, np.repeat(classes, k)


class ImageLoader:
    """Reads and decodes image ``index``; an unreadable one is replaced by the next image of its identity."""

    def __init__(self, data: FaceDataset, stats: DecodeStats, strict: bool, channels: int):
        self.data, self.stats, self.strict, self.channels = data, stats, strict, channels
        self.members = data.class_indices()
        self.position = np.empty(len(data), np.int64)
        for m in self.members:
            self.position[m] = np.arange(len(m))

    def __call__(self, index, step) -> np.ndarray:
        index, step = int(index), int(step)
        members = self.members[self.data.labels[index]]
        start = self.position[index]
        for j in range(len(members)):
            candidate = int(members[(start + j) % len(members)])
            if candidate in self.stats.bad_files:
                self.stats.count_known(step)
                continue
            try:
                return self.data.decode(candidate, self.channels)
            except UnreadableImageError as exc:
                if self.strict:
                    self.stats.error = exc
                    raise
                self.stats.record(candidate, str(exc), step)
        label = int(self.data.labels[index])
        error = DatasetFormatError(f"identity '{self.data.class_names[label]}' of {self.data.root}: none of its "
                                   f"{len(members)} images can be decoded")
        self.stats.error = error
        raise error


def make_train_dataset(data: FaceDataset, cfg, start_step: int = 0, num_steps: int | None = None,
                       stats: DecodeStats | None = None) -> tf.data.Dataset:
    """Training batches ``(images float32 [B, h, w, C], labels int32 [B])`` from step ``start_step`` on.

    ``B = batch_format['size']``, doubled when ``cfg.double_batch``. ``num_steps=None`` never ends (the loop
    counts ``epoch_size`` steps per epoch). Unreadable-image counts are in ``stats`` (or a new ``DecodeStats``),
    also available as ``dataset.decode_stats``; an epoch summary is logged every ``epoch_size`` batches.
    """
    fmt = cfg["batch_format"]
    size, per_batch = int(fmt["size"]), int(fmt["num_classes"])
    if per_batch <= 0 or size % per_batch:
        raise DatasetFormatError(f"batch_format: size {size} is not a multiple of num_classes {per_batch}")
    train_ops, test_ops = cfg["preprocess_train"], cfg["preprocess_test"]
    parse_ops(train_ops), parse_ops(test_ops)  # report a bad op list now, not from inside tf.data
    planner = BalancedBatchPlanner(data, per_batch, size // per_batch, cfg["base_random_seed"])
    stats = stats or DecodeStats(cfg["epoch_size"])
    stats.epoch_size = stats.epoch_size or cfg["epoch_size"]
    strict = bool(cfg["strict_data"] or data.strict)
    channels, double = int(cfg["channels"]), bool(cfg["double_batch"])
    loader = ImageLoader(data, stats, strict, channels)
    seed = int(cfg["base_random_seed"])
    prep = dict(contrast_stretch=cfg["eval_contrast_stretch"], resize_method=cfg["resize_method"])

    def plan(step):
        indices, labels = planner(step)
        seeds = np.stack([np.full(size, seed, np.int64), step * size + np.arange(size, dtype=np.int64)], 1)
        return indices, labels, seeds, np.full(size, step, np.int64)

    @tf.autograph.experimental.do_not_convert  # plain trace-time Python: nothing to convert
    def plan_op(step):
        out = tf.numpy_function(plan, [step], (tf.int64, tf.int64, tf.int64, tf.int64), stateful=False)
        for t, shape in zip(out, ([size], [size], [size, 2], [size])):
            t.set_shape(shape)
        return tf.data.Dataset.from_tensor_slices(tuple(out))

    @tf.autograph.experimental.do_not_convert
    def load(index, label, image_seed, step):
        image = tf.py_function(loader, [index, step], tf.uint8)
        return tf.ensure_shape(image, [None, None, channels]), tf.cast(label, tf.int32), image_seed, step

    def preprocess(images, seeds):
        """(augmented, plain) halves; plain is only used with ``double_batch``."""
        def pair(x, s):
            if double:
                return preprocess_train_and_test(x, train_ops, test_ops, seed=s, **prep)
            return preprocess_batch(x, train_ops, training=True, seed=s, **prep), tf.zeros([0, *out_shape])

        def batched():  # the usual case: every image of the batch has the same size
            return pair(images.to_tensor(), seeds)

        def one_by_one():  # sources of different sizes: each image on its own, same per-image seeds
            def single(i):
                a, p = pair(images[i].to_tensor()[None], seeds[i][None])
                return a[0], (p[0] if double else tf.zeros(out_shape))
            return tf.map_fn(single, tf.range(size), fn_output_signature=(out_spec, out_spec))
        heights, widths = images.nested_row_lengths()  # per image, and per image row
        uniform = tf.logical_and(tf.reduce_all(heights == heights[0]), tf.reduce_all(widths == widths[0]))
        augmented, plain = tf.cond(uniform, batched, one_by_one)
        return tf.ensure_shape(augmented, [size, *out_shape]), plain

    @tf.autograph.experimental.do_not_convert
    def join(images, labels, seeds, steps):
        report = tf.py_function(lambda s: _after_batch(stats, int(s)), [steps[0]], tf.int64)
        augmented, plain = preprocess(images, seeds)
        with tf.control_dependencies([report]):
            if double:
                plain = tf.ensure_shape(plain, [size, *out_shape])
                return tf.concat([augmented, plain], 0), tf.concat([labels, labels], 0)
            return tf.identity(augmented), tf.identity(labels)

    out_shape = _output_shape(cfg, train_ops, test_ops if double else None, channels)
    out_spec = tf.TensorSpec(out_shape, tf.float32)
    end = _UNBOUNDED if num_steps is None else start_step + int(num_steps)
    workers = int(cfg["data_workers"]) or tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(start_step, end).flat_map(plan_op)
    ds = ds.map(load, num_parallel_calls=workers, deterministic=True)
    ds = ds.ragged_batch(size, drop_remainder=True)
    ds = ds.map(join, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    ds.decode_stats = stats
    return ds


def _after_batch(stats: DecodeStats, step: int) -> int:
    if stats.epoch_size and (step + 1) % stats.epoch_size == 0:
        stats.end_epoch((step + 1) // stats.epoch_size)
    return step


def _output_shape(cfg, train_ops, test_ops, channels: int) -> list:
    """The op lists must produce ``image_size`` images (or batches could not be stacked); checked on a dummy."""
    want = [*cfg["image_size"], channels]
    for key, ops in (("preprocess_train", train_ops), ("preprocess_test", test_ops)):
        if ops is None:
            continue
        probe = tf.function(lambda x: preprocess_batch(x, ops, training=False, contrast_stretch=False,
                                                       resize_method=cfg["resize_method"]), autograph=False)
        got = probe.get_concrete_function(tf.TensorSpec([1, None, None, channels], tf.uint8)).output_shapes
        if got.as_list()[1:] != want:
            raise DatasetFormatError(f"config key '{key}' produces images of shape {got.as_list()[1:]}, but "
                                     f"image_size/channels ask for {want}; end the op list with a resize or crop")
    return want


def iterate_batches(dataset: tf.data.Dataset):
    """Iterate a training dataset, turning a strict-mode pipeline failure into its clean ``DataError``."""
    stats = getattr(dataset, "decode_stats", None)
    iterator = iter(dataset)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError:
            if stats is not None:
                stats.raise_if_failed()
            raise
