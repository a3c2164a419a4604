"""Semi-hard triplet loss: the sort + searchsorted form in ``probface_tf.losses`` vs a dense [N, N, N] form.

Both compute the same loss (value and gradient are compared); the dense form materialises every
(anchor, positive, negative) triple, O(N^3) memory. Prints JSON: per batch size, milliseconds per
forward+backward step of each and the speed ratio measured in this run.

    python benchmarks/triplet_semihard.py [--sizes 128,256,512] [--repeats 10]
"""
import argparse
import json
import time

import numpy as np
import tensorflow as tf

from probface_tf.losses import triplet_semihard_loss


def dense_triplet(labels, dist, margin=3.0):
    """Baseline: explicit triples by broadcasting (anchor a, positive p, negative n)."""
    same = tf.equal(labels[:, None], labels[None, :])
    negative = tf.logical_not(same)
    positive = tf.logical_and(same, tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool)))
    d_ap, d_an = dist[:, :, None], dist[:, None, :]
    semihard = tf.logical_and(negative[:, None, :], d_an > d_ap)
    big = tf.reduce_max(dist) + 1.0
    nearest_farther = tf.reduce_min(tf.where(semihard, d_an, big), axis=2)
    farthest = tf.reduce_max(tf.where(negative, dist, tf.reduce_min(dist) - 1.0), axis=1, keepdims=True)
    farthest = tf.where(tf.reduce_any(negative, axis=1, keepdims=True), farthest,
                        tf.reduce_min(dist, axis=1, keepdims=True))
    d_neg = tf.where(tf.reduce_any(semihard, axis=2), nearest_farther, farthest)
    hinge = tf.where(positive, tf.nn.relu(margin + dist - d_neg), 0.0)
    return tf.reduce_sum(hinge) / tf.reduce_sum(tf.cast(positive, tf.float32))


def timed_step(loss_fn):
    @tf.function
    def step(labels, dist):
        with tf.GradientTape() as tape:
            tape.watch(dist)
            value = loss_fn(labels, dist)
        return value, tape.gradient(value, dist)
    return step


def measure(step, labels, dist, repeats):
    value, grad = step(labels, dist)  # trace + warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        value, grad = step(labels, dist)
    return (time.perf_counter() - start) / repeats, float(value), grad.numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results = {}
    for n in (int(s) for s in args.sizes.split(",")):
        labels = tf.constant(np.repeat(np.arange(n // 8), 8)[:n])  # 8 images per identity, as doubled batches
        dist = tf.constant(rng.uniform(0.0, 4.0, (n, n)), tf.float32)
        ours = measure(timed_step(triplet_semihard_loss), labels, dist, args.repeats)
        dense = measure(timed_step(dense_triplet), labels, dist, args.repeats)
        results[str(n)] = {"sorted_ms": round(ours[0] * 1e3, 3), "dense_ms": round(dense[0] * 1e3, 3),
                           "speedup_vs_dense": round(dense[0] / ours[0], 2),
                           "abs_value_diff": abs(ours[1] - dense[1]),
                           "max_abs_grad_diff": float(np.abs(ours[2] - dense[2]).max())}
    print(json.dumps({"benchmark": "triplet_semihard_forward_backward", "results": results}))


if __name__ == "__main__":
    main()
