"""PCNet / IDQ losses and MC-dropout uncertainty vs explicit numpy loops."""
import math

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.methods.idq import IDQ_EPSILON, idq_loss
from probface_tf.methods.mc_dropout import mc_dropout_uncertainty
from probface_tf.methods.pcnet import pc_loss
from probface_tf.losses import LossInputError

LABELS = np.array([0, 1, 0, 2, 1, 0, 2, 3])


def positive_pairs(labels):
    n = len(labels)
    return [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]


def pair_terms(mu, p, i, j):
    mu = np.asarray(mu, np.float64)
    cos = mu[i] @ mu[j] / (np.linalg.norm(mu[i]) * np.linalg.norm(mu[j]))
    c_i, c_j = 1 - np.mean(p[i]), 1 - np.mean(p[j])
    return cos, min(c_i, c_j)


def reference_pc(labels, mu, p, kind):
    values = []
    for i, j in positive_pairs(labels):
        cos, c = pair_terms(mu, p, i, j)
        values.append((cos - c) ** 2 if kind == "L2" else abs(cos - c))
    return np.mean(values)


def reference_idq(labels, mu, p, s, m, target):
    values = []
    for i, j in positive_pairs(labels):
        cos, c = pair_terms(mu, p, i, j)
        t = 1 / (1 + math.exp(-s * (cos - m))) if target == "soft" else float(cos > m)
        values.append(-t * math.log(max(c, IDQ_EPSILON)) - (1 - t) * math.log(max(1 - c, IDQ_EPSILON)))
    return np.mean(values)


@pytest.mark.parametrize("kind", ["L2", "L1"])
@pytest.mark.parametrize("width", [1, 3])
def test_pc_loss_matches_loops(kind, width, rng):
    mu = rng.normal(size=(8, 6)) * 3.0  # not unit: the loss normalises
    p = rng.uniform(0.05, 0.95, (8, width))
    got = float(pc_loss(LABELS, mu, p, kind))
    assert got == pytest.approx(reference_pc(LABELS, mu, p, kind), rel=1e-5)


@pytest.mark.parametrize("target", ["soft", "hard"])
@pytest.mark.parametrize("width", [1, 3])
def test_idq_loss_matches_loops(target, width, rng):
    mu = rng.normal(size=(8, 4))
    p = rng.uniform(0.05, 0.95, (8, width))
    got = float(idq_loss(LABELS, mu, p, s=16.0, m=0.1, target=target))
    assert got == pytest.approx(reference_idq(LABELS, mu, p, 16.0, 0.1, target), rel=1e-5)


def test_idq_loss_is_finite_at_saturated_probabilities(rng):
    mu = rng.normal(size=(8, 4))
    p = np.where(rng.uniform(size=(8, 1)) > 0.5, 0.0, 1.0)  # c in {0, 1}: the logs need the clip
    got = float(idq_loss(LABELS, mu, p, target="soft"))
    assert math.isfinite(got)
    assert got == pytest.approx(reference_idq(LABELS, mu, p, 16.0, 0.4, "soft"), rel=1e-4)


@pytest.mark.parametrize("loss_fn, reference", [
    (lambda l, m, p: pc_loss(l, m, p, "L2"), lambda l, m, p: reference_pc(l, m, p, "L2")),
    (lambda l, m, p: idq_loss(l, m, p, 8.0, 0.2), lambda l, m, p: reference_idq(l, m, p, 8.0, 0.2, "soft")),
])
def test_gradient_reaches_p_only(loss_fn, reference, rng):
    mu_var = tf.Variable(rng.normal(size=(8, 4)), dtype=tf.float32)
    p0 = rng.uniform(0.1, 0.9, (8, 2))
    p_var = tf.Variable(p0, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = loss_fn(LABELS, mu_var, p_var)
    grad_mu, grad_p = tape.gradient(loss, [mu_var, p_var])
    assert grad_mu is None
    mu = mu_var.numpy().astype(np.float64)
    h, fd = 1e-6, np.zeros_like(p0)
    for idx in np.ndindex(*p0.shape):
        up, down = p0.copy(), p0.copy()
        up[idx] += h
        down[idx] -= h
        fd[idx] = (reference(LABELS, mu, up) - reference(LABELS, mu, down)) / (2 * h)
    np.testing.assert_allclose(grad_p.numpy(), fd, atol=1e-4)


def test_no_positive_pair_gives_zero(rng):
    labels = np.arange(4)
    assert float(pc_loss(labels, rng.normal(size=(4, 3)), rng.uniform(size=(4, 1)))) == 0.0
    assert float(idq_loss(labels, rng.normal(size=(4, 3)), rng.uniform(size=(4, 1)))) == 0.0


def test_mc_dropout_uncertainty_matches_numpy(rng):
    samples = rng.normal(size=(5, 3, 4)) + np.array([2.0, 0, 0, 0])
    mu, unc = mc_dropout_uncertainty(samples)
    t, n, _ = samples.shape
    for i in range(n):
        normed = [samples[k, i] / np.linalg.norm(samples[k, i]) for k in range(t)]
        mean_dir = np.mean(normed, axis=0)
        mean_dir /= np.linalg.norm(mean_dir)
        np.testing.assert_allclose(mu.numpy()[i], mean_dir, rtol=1e-5, atol=1e-6)
        cosines = [v @ mean_dir for v in normed]
        spread = math.sqrt(sum((c - np.mean(cosines)) ** 2 for c in cosines) / t)
        assert unc.numpy()[i, 0] == pytest.approx(spread, rel=1e-4, abs=1e-6)
    assert unc.shape == (3, 1)


def test_mc_dropout_identical_samples_have_no_uncertainty(rng):
    one = rng.normal(size=(1, 4, 6))
    _, unc = mc_dropout_uncertainty(np.repeat(one, 7, axis=0))
    np.testing.assert_allclose(unc.numpy(), 0.0, atol=1e-6)


@pytest.mark.parametrize("call, fragment", [
    (lambda: pc_loss([0, 0], np.zeros((2, 3)), np.zeros((2, 1)), "L3"), "'L3'"),
    (lambda: idq_loss([0, 0], np.zeros((2, 3)), np.zeros((2, 1)), target="medium"), "'medium'"),
    (lambda: pc_loss([0, 0, 1], np.ones((3, 3)), np.zeros((2, 1))), "batch size"),
    (lambda: pc_loss([0, 0], np.ones((2, 3)), np.zeros(2)), r"p must have shape \[N, K\]"),
    (lambda: mc_dropout_uncertainty(np.ones((3, 4))), r"\[T, N, D\]"),
])
def test_bad_input_is_named(call, fragment):
    with pytest.raises(LossInputError, match=fragment):
        call()
