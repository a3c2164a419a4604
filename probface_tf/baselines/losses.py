"""Losses of the face-uncertainty-pytorch baselines (PCNet, IDQ) and the MC-dropout uncertainty.

The probability heads output ``p`` [N, K] in (0, 1) (an "uncertainty probability"); their confidence is
``c = 1 - mean_k p`` and a pair's confidence is ``c_ij = min(c_i, c_j)``. Both losses average over positive pairs
(same label, i != j, ordered) and treat ``mu`` as a constant: rows are L2-normalised and gradients stop there.
Everything runs in float32; an empty positive set gives 0 (the original would give NaN).
"""
from __future__ import annotations

import tensorflow as tf

from probface_tf.losses import LossInputError, masked_mean, pair_masks

IDQ_EPSILON = 1e-7  # floor of c_ij and 1 - c_ij inside the logs (the original has none: p = 0 or 1 gives inf)
PC_KINDS = ("L2", "L1")
IDQ_TARGETS = ("soft", "hard")


def _float32(x, name: str, rank: int, what: str) -> tf.Tensor:
    x = tf.cast(tf.convert_to_tensor(x), tf.float32)
    if x.shape.rank is not None and x.shape.rank != rank:
        raise LossInputError(f"{name} must have shape {what}, got shape {tuple(x.shape)}")
    return x


def _cosine_and_pair_confidence(mu, p) -> tuple[tf.Tensor, tf.Tensor]:
    mu = tf.stop_gradient(tf.math.l2_normalize(_float32(mu, "mu", 2, "[N, D]"), axis=1))
    p = _float32(p, "p", 2, "[N, K]")
    if mu.shape[0] is not None and p.shape[0] is not None and mu.shape[0] != p.shape[0]:
        raise LossInputError(f"mu (shape {tuple(mu.shape)}) and p (shape {tuple(p.shape)}) disagree on the batch size")
    confidence = 1.0 - tf.reduce_mean(p, axis=1, keepdims=True)
    return tf.matmul(mu, mu, transpose_b=True), tf.minimum(confidence, tf.transpose(confidence))


def pc_loss(labels, mu, p, kind: str = "L2") -> tf.Tensor:
    """PCNet: ``mean_pos (cos_ij - c_ij)^2`` (``kind='L1'``: ``|cos_ij - c_ij|``)."""
    if kind not in PC_KINDS:
        raise LossInputError(f"pc_loss kind must be one of {list(PC_KINDS)}, got {kind!r}")
    cos, pair_conf = _cosine_and_pair_confidence(mu, p)
    error = cos - pair_conf
    positive, _ = pair_masks(labels)
    return masked_mean(tf.square(error) if kind == "L2" else tf.abs(error), positive)


def idq_loss(labels, mu, p, s: float = 16.0, m: float = 0.4, target: str = "soft") -> tf.Tensor:
    """IDQ: binary cross-entropy of ``c_ij`` against ``t = sigmoid(s (cos_ij - m))`` ('hard': ``cos_ij > m``).

    ``mean_pos [-t log c_ij - (1 - t) log(1 - c_ij)]``, ``t`` a constant; both log arguments are floored at
    ``IDQ_EPSILON`` (flooring ``1 - c`` itself rather than capping ``c`` at ``1 - eps``, which rounds in float32).
    """
    if target not in IDQ_TARGETS:
        raise LossInputError(f"idq_loss target must be one of {list(IDQ_TARGETS)}, got {target!r}")
    cos, pair_conf = _cosine_and_pair_confidence(mu, p)
    if target == "soft":
        t = tf.sigmoid(s * (cos - m))
    else:
        t = tf.cast(cos > m, tf.float32)
    t = tf.stop_gradient(t)
    cross_entropy = (-t * tf.math.log(tf.maximum(pair_conf, IDQ_EPSILON))
                     - (1.0 - t) * tf.math.log(tf.maximum(1.0 - pair_conf, IDQ_EPSILON)))
    positive, _ = pair_masks(labels)
    return masked_mean(cross_entropy, positive)


def mc_dropout_uncertainty(samples) -> tuple[tf.Tensor, tf.Tensor]:
    """``(mu, uncertainty)`` from T dropout passes ``samples`` [T, N, D].

    Each sample is L2-normalised; ``mu`` [N, D] is their mean direction (re-normalised); ``uncertainty`` [N, 1] is
    the standard deviation over T (population, ddof 0) of the cosine between each sample and ``mu``.
    """
    samples = tf.math.l2_normalize(_float32(samples, "samples", 3, "[T, N, D]"), axis=2)
    mu = tf.math.l2_normalize(tf.reduce_mean(samples, axis=0), axis=1)
    cos = tf.reduce_sum(samples * mu[None], axis=2)  # [T, N]
    return mu, tf.math.reduce_std(cos, axis=0)[:, None]
