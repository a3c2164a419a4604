"""Semi-hard triplet loss on a given distance matrix vs an explicit-loop numpy reference."""
import numpy as np
import pytest
import tensorflow as tf

from probface_tf.losses import LossInputError, pairwise_attention_and_mls, triplet_semihard_loss


def reference_triplet(labels, dist, margin):
    """tf.contrib semantics written as loops over anchors, positives and negatives (float64)."""
    labels, dist = np.asarray(labels), np.asarray(dist, np.float64)
    n = len(labels)
    total, count = 0.0, 0
    for a in range(n):
        negatives = [dist[a, k] for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d for d in negatives if d > dist[a, p]]
            if farther:
                d_neg = min(farther)
            elif negatives:
                d_neg = max(negatives)
            else:  # no negative at all: the masked maximum over an empty mask is the row minimum
                d_neg = min(dist[a, k] for k in range(n))
            total += max(margin + dist[a, p] - d_neg, 0.0)
            count += 1
    return total / count if count else 0.0


def numeric_gradient(labels, dist, margin, h=1e-6):
    grad = np.zeros_like(dist)
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            up, down = dist.copy(), dist.copy()
            up[i, j] += h
            down[i, j] -= h
            grad[i, j] = (reference_triplet(labels, up, margin) - reference_triplet(labels, down, margin)) / (2 * h)
    return grad


def tf_loss_and_grad(labels, dist, margin):
    d = tf.constant(dist, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(d)
        loss = triplet_semihard_loss(tf.constant(labels), d, margin)
    return float(loss), tape.gradient(loss, d).numpy()


CASES = {
    "balanced": np.repeat(np.arange(4), 3),
    "with_singletons": np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5]),
    "one_class": np.zeros(6, np.int64),
    "two_classes": np.array([1, 0, 1, 0, 1, 1, 0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("margin", [0.5, 3.0])
def test_value_matches_loops_on_random_matrices(case, margin, rng):
    labels = CASES[case]
    for _ in range(3):
        dist = rng.uniform(0.0, 4.0, size=(len(labels), len(labels)))
        loss, _ = tf_loss_and_grad(labels, dist, margin)
        assert loss == pytest.approx(reference_triplet(labels, dist, margin), rel=1e-5, abs=1e-6)


def test_all_negatives_closer_than_positives_uses_farthest_negative(rng):
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    same = labels[:, None] == labels[None, :]
    dist = np.where(same, rng.uniform(5.0, 6.0, (7, 7)), rng.uniform(0.0, 1.0, (7, 7)))
    loss, _ = tf_loss_and_grad(labels, dist, 3.0)
    # By hand: every (a, p) uses the largest negative of a.
    expected = np.mean([3.0 + dist[a, p] - dist[a][~same[a]].max()
                        for a in range(7) for p in range(7) if same[a, p] and a != p])
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss == pytest.approx(reference_triplet(labels, dist, 3.0), rel=1e-5)


def test_no_negatives_falls_back_to_row_minimum(rng):
    labels = np.zeros(5, np.int64)
    dist = rng.uniform(1.0, 2.0, (5, 5))
    loss, _ = tf_loss_and_grad(labels, dist, 1.0)
    expected = np.mean([max(1.0 + dist[a, p] - dist[a].min(), 0) for a in range(5) for p in range(5) if a != p])
    assert loss == pytest.approx(expected, rel=1e-5)


def test_no_positive_pair_gives_zero(rng):
    labels = np.arange(6)
    loss, grad = tf_loss_and_grad(labels, rng.uniform(0, 4, (6, 6)), 3.0)
    assert loss == 0.0 and np.all(grad == 0)


@pytest.mark.parametrize("case", ["balanced", "with_singletons", "one_class"])
def test_gradient_matches_finite_differences(case, rng):
    labels = CASES[case]
    dist = rng.uniform(0.0, 3.0, size=(len(labels), len(labels)))
    _, grad = tf_loss_and_grad(labels, dist, 1.0)
    expected = numeric_gradient(labels, dist, 1.0)
    np.testing.assert_allclose(grad, expected, atol=2e-5)
    # Both the positive entries and the chosen negatives receive gradient.
    same = labels[:, None] == labels[None, :]
    assert np.any(grad[same & ~np.eye(len(labels), dtype=bool)] > 0)
    if not np.all(same):
        assert np.any(grad[~same] < 0)


def test_on_attention_matrix_with_duplicate_images(rng):
    """ProbFace batches hold exact twins (un-flipped copies): distances tie; the value must still match."""
    base_mu = rng.normal(size=(8, 16))
    base_mu /= np.linalg.norm(base_mu, axis=1, keepdims=True)
    mu = np.concatenate([base_mu, base_mu]).astype(np.float32)
    sigma_sq = np.tile(rng.uniform(0.2, 0.6, (8, 1)), (2, 1)).astype(np.float32)
    labels = np.tile(np.repeat(np.arange(4), 2), 2)
    attention, _ = pairwise_attention_and_mls(mu, sigma_sq)
    loss = triplet_semihard_loss(labels, attention, 3.0)
    assert float(loss) == pytest.approx(reference_triplet(labels, attention.numpy(), 3.0), rel=1e-5)


def test_unknown_batch_size_in_tf_function(rng):
    fn = tf.function(triplet_semihard_loss, input_signature=[tf.TensorSpec([None], tf.int32),
                                                              tf.TensorSpec([None, None], tf.float32)])
    for labels in (CASES["balanced"], CASES["with_singletons"]):
        dist = rng.uniform(0, 4, (len(labels), len(labels)))
        got = float(fn(tf.constant(labels, tf.int32), tf.constant(dist, tf.float32)))
        assert got == pytest.approx(reference_triplet(labels, dist, 3.0), rel=1e-5)


def test_half_precision_input_is_computed_in_float32(rng):
    labels = CASES["balanced"]
    dist = rng.uniform(0, 4, (12, 12)).astype(np.float16)
    loss = triplet_semihard_loss(labels, tf.constant(dist))
    assert loss.dtype == tf.float32
    assert float(loss) == pytest.approx(reference_triplet(labels, dist.astype(np.float64), 3.0), rel=1e-5)


@pytest.mark.parametrize("labels, dist, fragment", [
    (np.zeros(4, np.int32), np.zeros((4, 3)), "square"),
    (np.zeros(4, np.int32), np.zeros((5, 5)), "batch size"),
    (np.zeros((4, 2), np.int32), np.zeros((4, 4)), "labels must have shape"),
    (np.zeros(4, np.float32), np.zeros((4, 4)), "integer"),
    (np.zeros(4, np.int32), np.zeros(4), "distances must have shape"),
])
def test_bad_shapes_are_named(labels, dist, fragment):
    with pytest.raises(LossInputError, match=fragment):
        triplet_semihard_loss(labels, dist)
