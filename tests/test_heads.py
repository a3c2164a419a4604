"""Margin-softmax heads, ScaleFace scale head and UniformFace term vs numpy references."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from probface_tf.methods import BACKBONE_STAGE, MethodError, get_method, method_names
from probface_tf.models import heads
from probface_tf.models.heads import ArcFace, CosFace, HeadInputError, ScaleFace, ScaleHead


def unit(x, axis):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def reference_cosines(emb, centers):
    return np.clip(unit(emb, 1) @ unit(centers, 0), -1, 1)


def reference_arcface(emb, centers, labels, s, m, easy_margin=False):
    """Angles from arccos, margin by the rule (theta + m <= pi: cos(theta + m), else cos - sin(pi - m) m)."""
    cos = reference_cosines(emb, centers)
    out = cos.copy()
    for i, y in enumerate(labels):
        if y < 0:
            continue
        theta = math.acos(cos[i, y])
        if easy_margin:
            out[i, y] = math.cos(theta + m) if cos[i, y] > 0 else cos[i, y]
        elif theta + m <= math.pi:
            out[i, y] = math.cos(theta + m)
        else:
            out[i, y] = cos[i, y] - math.sin(math.pi - m) * m
    return s * out


def make_head(cls, rng, dim=6, classes=5, **kw):
    head = cls(classes, **kw)
    head.build((None, dim))
    centers = rng.normal(size=(dim, classes))
    head.centers.assign(centers)
    return head, centers


def embeddings_with_obtuse_targets(rng, centers, labels):
    """Half of the rows point almost opposite their target centre, so theta + m > pi."""
    emb = rng.normal(size=(len(labels), centers.shape[0]))
    for i in range(0, len(labels), 2):
        emb[i] = -unit(centers[:, labels[i]], 0) + 0.05 * rng.normal(size=centers.shape[0])
    return emb


@pytest.mark.parametrize("m, easy", [(0.5, False), (0.3, False), (0.5, True)])
def test_arcface_logits_match_reference(m, easy, rng):
    head, centers = make_head(ArcFace, rng, s=32.0, m=m, easy_margin=easy)
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    emb = embeddings_with_obtuse_targets(rng, centers, labels)
    cos = reference_cosines(emb, centers)
    assert np.any(np.arccos(cos[np.arange(8), labels]) + m > math.pi)  # the fallback branch is exercised
    got = head(tf.constant(emb, tf.float32), labels).numpy()
    np.testing.assert_allclose(got, reference_arcface(emb, centers, labels, 32.0, m, easy), atol=2e-4)


def test_arcface_ignores_negative_labels(rng):
    head, centers = make_head(ArcFace, rng)
    labels = np.array([2, -1, 0])
    emb = rng.normal(size=(3, 6))
    got = head(tf.constant(emb, tf.float32), labels).numpy()
    np.testing.assert_allclose(got, reference_arcface(emb, centers, labels, 64.0, 0.5), atol=5e-4)
    np.testing.assert_allclose(got[1], 64.0 * reference_cosines(emb, centers)[1], atol=5e-4)


def test_cosface_logits_match_reference(rng):
    head, centers = make_head(CosFace, rng, s=30.0, m=0.35)
    labels = np.array([4, 3, 2, 1, 0, 0])
    emb = rng.normal(size=(6, 6))
    expected = 30.0 * reference_cosines(emb, centers)
    expected[np.arange(6), labels] -= 30.0 * 0.35
    np.testing.assert_allclose(head(tf.constant(emb, tf.float32), labels).numpy(), expected, atol=2e-4)


def test_scaleface_multiplies_per_sample_scale(rng):
    head, centers = make_head(ScaleFace, rng, m=0.5)
    labels = np.array([0, 1, 2, 3, 4, 4])
    emb = embeddings_with_obtuse_targets(rng, centers, labels)
    scale = rng.uniform(1.0, 64.0, size=(6, 1))
    got = head(tf.constant(emb, tf.float32), labels, tf.constant(scale, tf.float32)).numpy()
    np.testing.assert_allclose(got, scale * reference_arcface(emb, centers, labels, 1.0, 0.5), rtol=1e-5, atol=1e-4)


def test_softmax_cross_entropy_matches_numpy(rng):
    logits = rng.normal(scale=5.0, size=(7, 5))
    labels = rng.integers(0, 5, size=7)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -np.mean(log_prob[np.arange(7), labels])
    assert float(heads.softmax_cross_entropy(labels, logits)) == pytest.approx(expected, rel=1e-5)


def test_gradients_finite_when_embedding_equals_its_centre(rng):
    head, centers = make_head(ArcFace, rng)
    emb = tf.Variable(unit(centers[:, [1, 3]].T, 1), dtype=tf.float32)  # cos = 1 exactly
    with tf.GradientTape() as tape:
        loss = heads.softmax_cross_entropy([1, 3], head(emb, np.array([1, 3])))
    grads = tape.gradient(loss, [emb, head.centers])
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def reference_scale_head(features, head):
    x = features.reshape(len(features), -1).astype(np.float64)
    w1 = head.hidden.kernel.numpy()
    w2 = head.out.kernel.numpy()
    mean, var = head.norm.moving_mean.numpy(), head.norm.moving_variance.numpy()
    hidden = np.maximum((x @ w1 - mean) / np.sqrt(var + 1e-5), 0)
    return hidden @ w2


@pytest.mark.parametrize("activation", ["sigm_mul", "exp", "softplus"])
def test_scale_head_inference_matches_numpy(activation, rng):
    head = ScaleHead(hidden_units=8, activation=activation, coefficient=64.0)
    features = rng.normal(size=(5, 2, 2, 3)).astype(np.float32)
    got = head(features, training=False).numpy()
    z = reference_scale_head(features, head)
    expected = {"sigm_mul": 64.0 / (1 + np.exp(-z)), "exp": np.exp(z), "softplus": np.log1p(np.exp(z))}[activation]
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_scaleface_loss_trains_the_scale(rng):
    """CE gradient reaches the scale head; for a well-classified sample a larger scale lowers the loss."""
    head, centers = make_head(ScaleFace, rng, m=0.1)
    scale_head = ScaleHead(hidden_units=4)
    features = rng.normal(size=(3, 10)).astype(np.float32)
    labels = np.array([0, 1, 2])
    emb = unit(centers[:, labels].T, 1).astype(np.float32)  # each sample sits on its own centre
    with tf.GradientTape() as tape:
        scale = scale_head(features, training=True)
        loss = heads.softmax_cross_entropy(labels, head(emb, labels, scale))
    grads = tape.gradient(loss, scale_head.trainable_variables)
    assert len(grads) == 2 and all(np.abs(g.numpy()).sum() > 0 for g in grads)
    low = heads.softmax_cross_entropy(labels, head(emb, labels, np.full((3, 1), 2.0)))
    high = heads.softmax_cross_entropy(labels, head(emb, labels, np.full((3, 1), 40.0)))
    assert float(high) < float(low)
    np.testing.assert_allclose(heads.uncertainty_from_scale([[2.0], [4.0]]).numpy(), [[0.5], [0.25]])


def reference_uniform(centers):
    c = len(centers)
    values = [1.0 / (np.linalg.norm(centers[i] - centers[j]) + 1.0) for i in range(c) for j in range(c) if i != j]
    return np.mean(values) if values else 0.0


def test_uniform_loss_matches_pairs(rng):
    centers = rng.normal(size=(7, 5))
    assert float(heads.uniform_loss(centers)) == pytest.approx(reference_uniform(centers), rel=1e-5)
    normalized = unit(centers, 1)
    assert float(heads.uniform_loss(normalized)) == pytest.approx(reference_uniform(normalized), rel=1e-5)


def test_uniform_loss_on_batch_classes_only(rng):
    centers = rng.normal(size=(9, 4))
    labels = np.array([3, 1, 3, 7, 1, 0])
    expected = reference_uniform(centers[[0, 1, 3, 7]])
    assert float(heads.uniform_loss(centers, labels)) == pytest.approx(expected, rel=1e-5)
    assert float(heads.uniform_loss(centers, [4, 4])) == 0.0  # one class: no pair


def test_uniform_loss_on_head_centres_and_its_gradient(rng):
    head, centers = make_head(ArcFace, rng, dim=4, classes=6)
    with tf.GradientTape() as tape:
        loss = heads.uniform_loss(head.normalized_centers())
    assert float(loss) == pytest.approx(reference_uniform(unit(centers, 0).T), rel=1e-5)
    grad = tape.gradient(loss, head.centers).numpy()
    # Finite differences of the numpy reference on the raw centres.
    h, fd = 1e-6, np.zeros_like(centers)
    for idx in np.ndindex(*centers.shape):
        up, down = centers.copy(), centers.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (reference_uniform(unit(up, 0).T) - reference_uniform(unit(down, 0).T)) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=5e-5)
    # Coincident centres: the distance floor keeps gradients finite.
    same = tf.Variable(np.ones((3, 4)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        value = heads.uniform_loss(same)
    assert float(value) == pytest.approx(1.0, rel=1e-5)
    assert np.all(np.isfinite(tape.gradient(value, same).numpy()))


@pytest.mark.parametrize("layer", [ArcFace(7, s=30.0, m=0.4, easy_margin=True), CosFace(7, s=20.0, m=0.2),
                                   ScaleFace(7, m=0.3)])
def test_config_round_trip_with_weights(layer, rng):
    labels = np.array([0, 6, 3])
    emb = rng.normal(size=(3, 5)).astype(np.float32)
    extra = (np.array([[3.0], [9.0], [1.0]], np.float32),) if isinstance(layer, ScaleFace) else ()
    before = layer(emb, labels, *extra).numpy()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    assert clone.built and clone.centers.shape == (5, 7)  # rebuilt from the serialized build config
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(emb, labels, *extra).numpy(), before, rtol=1e-6)


def test_scale_head_config_round_trip(rng):
    head = ScaleHead(hidden_units=6, activation="exp", coefficient=8.0, batch_norm=False)
    x = rng.normal(size=(4, 12)).astype(np.float32)
    before = head(x).numpy()
    clone = ScaleHead.from_config(head.get_config())
    clone.build((None, 12))
    clone.set_weights(head.get_weights())
    assert clone.norm is None
    np.testing.assert_allclose(clone(x).numpy(), before, rtol=1e-6)


def _margin_head(name, num_classes, s=64.0, m=0.5):
    return get_method(name, BACKBONE_STAGE).build_head(num_classes, s, m)


def test_margin_heads_are_registered_by_their_config_names():
    assert method_names(BACKBONE_STAGE) == ["arcface", "cosface", "scaleface", "softmax"]
    arc = _margin_head("arcface", 3, 64.0, 0.5)
    assert isinstance(arc, ArcFace) and (arc.s, arc.m) == (64.0, 0.5)
    cos = _margin_head("cosface", 3, 30.0, 0.35)
    assert isinstance(cos, CosFace) and (cos.s, cos.m) == (30.0, 0.35)
    soft = _margin_head("softmax", 3, 16.0, 0.5)
    assert isinstance(soft, CosFace) and soft.m == 0.0 and soft.s == 16.0
    assert isinstance(_margin_head("scaleface", 3), ScaleFace) and get_method("scaleface").scale_head
    with pytest.raises(MethodError, match=r"margin_loss must be one of \[.*\], got 'sphereface'"):
        _margin_head("sphereface", 3)
    with pytest.raises(MethodError, match="margin_loss must be one of .* got 'probface'"):  # an uncertainty head
        _margin_head("probface", 3)


@pytest.mark.parametrize("call, fragment", [
    (lambda: ArcFace(0), "num_classes"),
    (lambda: ArcFace(3)(np.zeros((2, 4, 1), np.float32), np.zeros(2, np.int32)), r"\[N, D\]"),
    (lambda: ArcFace(3)(np.zeros((2, 4), np.float32), np.zeros(2, np.float32)), "integer"),
    (lambda: ScaleHead(activation="tanh"), "'tanh'"),
    (lambda: heads.uniform_loss(np.zeros((2, 3, 4))), r"\[num_classes, D\]"),
])
def test_bad_input_is_named(call, fragment):
    with pytest.raises(HeadInputError, match=fragment):
        call()
