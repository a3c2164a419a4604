"""Plain shuffled training batches over every image, for softmax (stage-1) training.

A margin softmax compares each image with all class centres, so it needs no identity-balanced P x K batches:
the stream is simply the images in a random order, pass after pass. Pass ``p`` is the permutation drawn from
``(seed, p)``; batch ``k`` holds stream positions ``k*B .. k*B + B - 1``. Image ``j`` of the stream is augmented
with the stateless seed ``(seed, j)``. So batch ``k`` is a pure function of ``(seed, k)`` and
``make_shuffled_dataset(..., start_step=k)`` after a restore replays what an uninterrupted run would see.

Unreadable images are handled as by the class-balanced sampler: the next readable image of the same identity
takes the place, a warning names the file once, and the count is in ``dataset.decode_stats``; with
``strict_data`` the first one stops training with an error naming the file.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from probface_tf.data.dataset import FaceDataset
from probface_tf.data.errors import DatasetFormatError
from probface_tf.data.preprocess import parse_ops, preprocess_batch
# The sampler's loader already implements "replace an unreadable image by the next one of its identity".
from probface_tf.data.sampler import DecodeStats, ImageLoader

_UNBOUNDED = 2 ** 62


class ShuffledOrder:
    """Which images make up batch ``step``: consecutive slices of a stream of per-pass permutations."""

    def __init__(self, num_images: int, batch_size: int, seed: int = 0):
        if batch_size <= 0:
            raise DatasetFormatError(f"batch_format['size'] must be positive, got {batch_size}")
        if num_images <= 0:
            raise DatasetFormatError("the training set has no images")
        self.num_images, self.batch_size, self.seed = int(num_images), int(batch_size), int(seed) % 2 ** 32

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_images)

    def positions(self, step: int) -> np.ndarray:
        """Stream positions of batch ``step`` (also the per-image augmentation keys)."""
        return int(step) * self.batch_size + np.arange(self.batch_size, dtype=np.int64)

    def __call__(self, step: int) -> np.ndarray:
        positions = self.positions(step)
        passes, offsets = np.divmod(positions, self.num_images)
        indices = np.empty(self.batch_size, np.int64)
        for p in np.unique(passes):  # a batch spans at most a few passes
            here = passes == p
            indices[here] = self.permutation(p)[offsets[here]]
        return indices


def make_shuffled_dataset(data: FaceDataset, cfg, start_step: int = 0, num_steps: int | None = None,
                          stats: DecodeStats | None = None) -> tf.data.Dataset:
    """Batches ``(images float32 [B, h, w, C], labels int32 [B])`` from batch ``start_step`` on.

    ``B = batch_format['size']`` (never doubled: the twin copies only serve pair losses). Each image is decoded
    and preprocessed with ``preprocess_train`` on its own, so sources of different sizes mix freely.
    """
    size = int(cfg["batch_format"]["size"])
    ops = cfg["preprocess_train"]
    parse_ops(ops)  # a bad op list is reported now, not from inside tf.data
    order = ShuffledOrder(len(data), size, cfg["base_random_seed"])
    stats = stats or DecodeStats(cfg["epoch_size"])
    loader = ImageLoader(data, stats, bool(cfg["strict_data"] or data.strict), int(cfg["channels"]))
    channels, seed = int(cfg["channels"]), int(cfg["base_random_seed"])
    labels_table = tf.constant(data.labels.astype(np.int32))
    prep = dict(contrast_stretch=cfg["eval_contrast_stretch"], resize_method=cfg["resize_method"])
    out_shape = [*cfg["image_size"], channels]

    def plan(step):
        return order(step), order.positions(step), np.full(size, step, np.int64)

    @tf.autograph.experimental.do_not_convert  # trace-time Python only
    def plan_op(step):
        out = tf.numpy_function(plan, [step], (tf.int64, tf.int64, tf.int64), stateful=False)
        for t in out:
            t.set_shape([size])
        return tf.data.Dataset.from_tensor_slices(tuple(out))

    @tf.autograph.experimental.do_not_convert
    def load(index, position, step):
        image = tf.ensure_shape(tf.py_function(loader, [index, step], tf.uint8), [None, None, channels])
        image_seed = tf.stack([tf.constant(seed, tf.int64), position])[None]
        x = preprocess_batch(image[None], ops, training=True, seed=image_seed, **prep)[0]
        return tf.ensure_shape(x, out_shape), tf.gather(labels_table, index)

    _check_output_shape(cfg, ops, out_shape)
    end = _UNBOUNDED if num_steps is None else int(start_step) + int(num_steps)
    workers = int(cfg["data_workers"]) or tf.data.AUTOTUNE
    ds = tf.data.Dataset.range(int(start_step), end).flat_map(plan_op)
    ds = ds.map(load, num_parallel_calls=workers, deterministic=True)
    ds = ds.batch(size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    ds.decode_stats = stats
    return ds


def _check_output_shape(cfg, ops, want) -> None:
    """The op list must end at ``image_size`` or batches could not be stacked; checked on a symbolic image."""
    probe = tf.function(lambda x: preprocess_batch(x, ops, training=False, contrast_stretch=False,
                                                   resize_method=cfg["resize_method"]), autograph=False)
    got = probe.get_concrete_function(tf.TensorSpec([1, None, None, want[-1]], tf.uint8)).output_shapes
    if got.as_list()[1:] != list(want):
        raise DatasetFormatError(f"config key 'preprocess_train' produces images of shape {got.as_list()[1:]}, "
                                 f"but image_size/channels ask for {list(want)}; end the op list with a resize "
                                 f"or crop")
