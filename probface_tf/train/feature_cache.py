"""Feature-cache mode: run the frozen backbone once per image (and once per mirrored image), then train the
head from the cache.

With a frozen backbone and the original preprocessing (resize, random flip, standardize), an augmented image
is one of two things: the test-preprocessed image or its mirror. Caching both ``conv_final`` (and ``mu``)
versions gives exactly the head inputs a full forward pass would, so the losses and updates are the same; an
epoch then costs only the head's steps. Other augmentations (random crops...) cannot be cached and are refused.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from probface_tf.data.errors import UnreadableImageError
from probface_tf.data.preprocess import parse_ops, preprocess_batch
from probface_tf.data.sampler import BalancedBatchPlanner

CACHEABLE_TRAIN_OPS = {"resize", "random_flip", "standardize"}


class FeatureCacheError(ValueError):
    """The recipe's training augmentation cannot be served from cached features."""


def check_cacheable(cfg) -> None:
    train_ops = parse_ops(cfg.preprocess_train)
    test_ops = parse_ops(cfg.preprocess_test)
    extra = [name for name, _ in train_ops if name not in CACHEABLE_TRAIN_OPS]
    if extra or [op for op in train_ops if op[0] != "random_flip"] != test_ops:
        raise FeatureCacheError(
            f"feature_cache needs preprocess_train == preprocess_test plus 'random_flip'; got train "
            f"{cfg.preprocess_train} and test {cfg.preprocess_test} (uncacheable ops: {extra or 'none'})")


@tf.function(reduce_retracing=True)
def _flip_draws(image_seeds, flip_op_index):
    # One compiled call per batch: the per-image seeds differ, so each draw is its own stateless op, but they run
    # inside one graph instead of 3 eager ops per image (which cost as much as the head step itself).
    op_seeds = tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, flip_op_index), image_seeds,
                         fn_output_signature=tf.int32)
    return tf.map_fn(lambda s: tf.random.stateless_uniform([1], seed=s)[0], op_seeds,
                     fn_output_signature=tf.float32)


def mirror_flags(seed: int, step: int, size: int, flip_op_index: int) -> np.ndarray:
    """Which images of batch ``step`` the image pipeline mirrors: the same stateless draws as
    ``probface_tf.data.sampler`` (image seed ``[seed, step * size + slot]`` folded with the op's position)."""
    slots = step * size + np.arange(size, dtype=np.int64)
    image_seeds = np.stack([np.full(size, seed, np.int64), slots], 1)
    return _flip_draws(tf.constant(image_seeds), tf.constant(flip_op_index, tf.int32)).numpy() >= 0.5


class FeatureCache:
    """conv_final and mu of every image, un-mirrored [:, 0] and mirrored [:, 1]."""

    def __init__(self, features: np.ndarray, mu: np.ndarray, row_of: np.ndarray, planner, cfg, skipped: list):
        self.features, self.mu, self.row_of = features, mu, row_of  # row_of: image index -> cache row
        self.planner, self.cfg, self.skipped = planner, cfg, skipped
        ops = [name for name, _ in parse_ops(cfg.preprocess_train)]
        self.flip_op_index = ops.index("random_flip") if "random_flip" in ops else None

    @classmethod
    def build(cls, data, cfg, features_fn, batch_size: int | None = None, progress=None):
        """Decode + test-preprocess every image once, run ``features_fn`` on it and on its mirror."""
        check_cacheable(cfg)
        batch_size = batch_size or cfg.eval_batch_size
        readable, skipped, decoded = [], [], []
        feats, mus = [], []

        def flush():
            if not decoded:
                return
            # One image at a time: sources may differ in size until the resize.
            x = tf.concat([preprocess_batch(img[None], cfg.preprocess_test, training=False,
                                            contrast_stretch=cfg.eval_contrast_stretch,
                                            resize_method=cfg.resize_method) for img in decoded], 0)
            for mirrored in (x, tf.reverse(x, axis=[2])):
                f, m = features_fn(mirrored)
                feats.append(np.asarray(f, np.float32))
                mus.append(np.asarray(m, np.float32))
            decoded.clear()

        for i in range(len(data)):
            try:
                decoded.append(data.decode(i))
            except UnreadableImageError as exc:
                if cfg.strict_data:
                    raise
                skipped.append(str(exc))
                continue
            readable.append(i)
            if len(decoded) == batch_size:
                flush()
            if progress is not None:
                progress(i + 1, len(data))
        flush()
        if skipped:
            print(f"feature cache: skipped {len(skipped)} unreadable image(s); first: {skipped[0]}", flush=True)
        # feats alternates [plain batch, mirrored batch]; regroup to [N, 2, ...].
        plain, mirror = np.concatenate(feats[0::2]), np.concatenate(feats[1::2])
        mu_plain, mu_mirror = np.concatenate(mus[0::2]), np.concatenate(mus[1::2])
        row_of = np.full(len(data), -1, np.int64)
        row_of[readable] = np.arange(len(readable))
        fmt = cfg.batch_format
        planner = BalancedBatchPlanner(_readable_subset(data, readable), fmt["num_classes"],
                                       fmt["size"] // fmt["num_classes"], cfg.base_random_seed)
        return cls(np.stack([plain, mirror], 1), np.stack([mu_plain, mu_mirror], 1), row_of, planner, cfg,
                   skipped)

    def batch(self, step: int):
        """(features, mu, labels) for global ``step``: the same batch the image pipeline would build."""
        indices, labels = self.planner(step)
        rows = self.row_of[indices]
        flips = np.zeros(len(rows), np.int64)
        if self.flip_op_index is not None:
            flips = mirror_flags(self.cfg.base_random_seed, step, len(rows), self.flip_op_index).astype(np.int64)
        feats, mu = self.features[rows, flips], self.mu[rows, flips]
        if self.cfg.double_batch:  # the original appends the test-preprocessed (un-mirrored) copies
            feats = np.concatenate([feats, self.features[rows, 0]])
            mu = np.concatenate([mu, self.mu[rows, 0]])
            labels = np.concatenate([labels, labels])
        return tf.constant(feats), tf.constant(mu), tf.constant(labels.astype(np.int32))

    def batches(self, start_step: int = 0):
        step = start_step
        while True:
            yield self.batch(step)
            step += 1


def _readable_subset(data, readable):
    """The dataset restricted to readable images, keeping image indices (the planner draws from these)."""
    import copy

    subset = copy.copy(data)
    keep = np.zeros(len(data), bool)
    keep[readable] = True
    members = [m[keep[m]] for m in data.class_indices()]
    subset._class_indices = members
    return subset
