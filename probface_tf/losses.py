"""ProbFace training losses (original ``utils/tflib.py`` and ``network.py``).

The head is trained on a batch of N images with
``total = w_mls * mls + OC + w_disc * triplet_semihard(A) + regu`` where, for every ordered pair (i, j):

* 1-d sigma (FastMLS): ``A_ij = 2(1 - cos_ij) / (1e-10 + s_i + s_j)``, ``L_ij = A_ij + log(s_i + s_j)``;
* D-dim sigma: ``A_ij = mean_d (mu_id - mu_jd)^2 / (1e-10 + s_id + s_jd)``,
  ``L_ij = mean_d [(mu_id - mu_jd)^2 / (1e-10 + s_id + s_jd) + log(s_id + s_jd)]``;

``mls`` is the mean of L over positive pairs (same label, i != j), ``A`` ("attention") feeds the
identification-preserving loss, and the output constraint (OC) is a *sum* over the batch of
``(s / stop_gradient(mean s) - 1)^2`` (or ``|.|``) times its weight. ``mu`` never receives gradients here.

Everything is computed in float32 whatever the input dtype (mixed-precision safety), uses only TensorFlow ops
on dynamic batch sizes (works in ``tf.function`` and in a ``tf.distribute`` replica context on globally
gathered tensors, whose static shapes may be lost: the 1-d or D-dim form is then chosen at run time).

Where the original would divide by zero (a batch with no positive or no negative pair gives NaN), these
functions return 0 for that mean instead, so one degenerate batch cannot poison the weights.
"""
from __future__ import annotations

import numbers

import tensorflow as tf

from probface_tf import mls

DEFAULT_MARGIN = 3.0
LOSS_WEIGHT_KEYS = ("mls_loss", "output_constraint_loss", "discriminate_loss")
OUTPUT_CONSTRAINT_TYPES = ("L2", "L1")
DISCRIMINATE_METRICS = ("triplet_semihard", "contrastive")


class LossInputError(ValueError):
    """A loss received a tensor of the wrong rank/shape or an invalid option; the message names it."""


# ---------------------------------------------------------------------------------------------------------------
# input checks (static shapes only: the batch dimension may be unknown)


def _float32(x, name: str) -> tf.Tensor:
    try:
        return tf.cast(tf.convert_to_tensor(x), tf.float32)
    except (TypeError, ValueError) as err:
        raise LossInputError(f"{name} must be a numeric tensor, got {type(x).__name__}: {err}") from None


def _check_rank(x: tf.Tensor, rank: int, name: str, what: str) -> None:
    if x.shape.rank is not None and x.shape.rank != rank:
        raise LossInputError(f"{name} must have shape {what}, got shape {tuple(x.shape)}")


def _labels_vector(labels, name: str = "labels") -> tf.Tensor:
    """Labels as a rank-1 tensor; [N, 1] columns are accepted (as the original's placeholders)."""
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating or labels.dtype == tf.bool:
        raise LossInputError(f"{name} must be integer class ids, got dtype {labels.dtype.name}")
    rank = labels.shape.rank
    if rank == 2 and labels.shape[1] == 1:
        return tf.reshape(labels, [-1])
    if rank is not None and rank != 1:
        raise LossInputError(f"{name} must have shape [N] or [N, 1], got shape {tuple(labels.shape)}")
    return labels


def _check_batch(name_a: str, a: tf.Tensor, name_b: str, b: tf.Tensor) -> None:
    na, nb = a.shape[0] if a.shape.rank else None, b.shape[0] if b.shape.rank else None
    if na is not None and nb is not None and na != nb:
        raise LossInputError(f"{name_a} (shape {tuple(a.shape)}) and {name_b} (shape {tuple(b.shape)}) "
                             f"disagree on the batch size")


# ---------------------------------------------------------------------------------------------------------------
# masks and masked means


def pair_masks(labels) -> tuple[tf.Tensor, tf.Tensor]:
    """Boolean [N, N] masks: ``pos`` = same label and i != j (ordered pairs), ``neg`` = different label."""
    labels = _labels_vector(labels)
    same = tf.equal(labels[:, None], labels[None, :])
    off_diagonal = tf.logical_not(tf.eye(tf.shape(labels)[0], dtype=tf.bool))
    return tf.logical_and(same, off_diagonal), tf.logical_not(same)


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` where ``mask``; 0 when the mask is empty."""
    total = tf.reduce_sum(tf.where(mask, values, tf.zeros_like(values)))
    return tf.math.divide_no_nan(total, tf.reduce_sum(tf.cast(mask, values.dtype)))


# ---------------------------------------------------------------------------------------------------------------
# mutual likelihood score


_TF = mls.tensorflow_ops(tf)


def _fast_mls(mu: tf.Tensor, sigma_sq: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    fused = sigma_sq + tf.transpose(sigma_sq)  # s_i + s_j
    return mls.fastmls_terms(tf.matmul(mu, mu, transpose_b=True), fused, _TF)


def _dim_mls(mu: tf.Tensor, sigma_sq: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    fused = sigma_sq[:, None, :] + sigma_sq[None, :, :]  # [N, N, D]
    return mls.mls_terms(tf.square(mu[:, None, :] - mu[None, :, :]), fused, _TF)


def pairwise_attention_and_mls(mu, sigma_sq) -> tuple[tf.Tensor, tf.Tensor]:
    """``(A, L)``, both [N, N]: the attention term and the negative MLS of every ordered pair of the batch.

    ``mu``: [N, D] unit rows (treated as constants); ``sigma_sq``: [N, 1] (FastMLS) or [N, D] (mean over d).
    """
    mu = tf.stop_gradient(_float32(mu, "mu"))
    sigma_sq = _float32(sigma_sq, "sigma_sq")
    _check_rank(mu, 2, "mu", "[N, D]")
    _check_rank(sigma_sq, 2, "sigma_sq", "[N, 1] or [N, D]")
    _check_batch("mu", mu, "sigma_sq", sigma_sq)
    width, dim = sigma_sq.shape[1], mu.shape[1]
    if width == 1:
        return _fast_mls(mu, sigma_sq)
    if width is not None and dim is not None:
        if width != dim:
            raise LossInputError(f"sigma_sq must have 1 or D={dim} columns, got shape {tuple(sigma_sq.shape)}")
        return _dim_mls(mu, sigma_sq)
    # Width known only at run time (e.g. tensors all-gathered across replicas lose their static shape).
    width, dim = tf.shape(sigma_sq)[1], tf.shape(mu)[1]
    check = tf.debugging.Assert(tf.logical_or(tf.equal(width, 1), tf.equal(width, dim)),
                                ["sigma_sq must have 1 or D columns; sigma_sq shape:", tf.shape(sigma_sq),
                                 "mu shape:", tf.shape(mu)])
    with tf.control_dependencies([check]):
        return tf.cond(tf.equal(width, 1), lambda: _fast_mls(mu, sigma_sq), lambda: _dim_mls(mu, sigma_sq))


def negative_mls_loss(labels, mu, log_sigma_sq) -> dict:
    """The original ``mutual_likelihood_score_loss`` minus the discriminative term.

    Returns ``dict(mls=mean L over positives, att_pos=mean A over positives, att_neg=mean A over negatives,
    attention=A)``; sigma^2 = exp(log_sigma_sq).
    """
    log_sigma_sq = _float32(log_sigma_sq, "log_sigma_sq")
    _check_batch("labels", _labels_vector(labels), "log_sigma_sq", log_sigma_sq)
    attention, neg_mls = pairwise_attention_and_mls(mu, tf.exp(log_sigma_sq))
    pos, neg = pair_masks(labels)
    return {"mls": masked_mean(neg_mls, pos), "att_pos": masked_mean(attention, pos),
            "att_neg": masked_mean(attention, neg), "attention": attention}


# ---------------------------------------------------------------------------------------------------------------
# identification-preserving (discriminative) losses on a given distance matrix


def _check_distances(labels, distances) -> tuple[tf.Tensor, tf.Tensor]:
    labels = _labels_vector(labels)
    distances = _float32(distances, "distances")
    _check_rank(distances, 2, "distances", "[N, N]")
    n_rows, n_cols = distances.shape
    if n_rows is not None and n_cols is not None and n_rows != n_cols:
        raise LossInputError(f"distances must be a square [N, N] matrix, got shape {tuple(distances.shape)}")
    _check_batch("labels", labels, "distances", distances)
    return labels, distances


def semihard_negatives(labels, distances) -> tf.Tensor:
    """[N, N] matrix whose (a, p) entry is the negative distance the semi-hard triplet uses for anchor a.

    tf.contrib / TF-Addons semantics: the smallest ``D[a, n]`` over negatives with ``D[a, n] > D[a, p]``; if there
    is none, the largest ``D[a, n]`` over the negatives of a; if a has no negative at all, the smallest entry of
    row a (their "masked maximum" over an empty mask). The chosen entries are gathered from ``distances``, so
    gradients reach them (on exact ties one of the tied entries receives it; the value is the same).
    """
    labels, distances = _check_distances(labels, distances)
    negative = tf.logical_not(tf.equal(labels[:, None], labels[None, :]))
    n = tf.shape(distances)[0]
    # Each anchor's negative distances in ascending order; non-negatives are pushed past the end as +inf.
    neg_dist = tf.where(negative, distances, tf.fill(tf.shape(distances), float("inf")))
    order = tf.argsort(neg_dist, axis=1, stable=True)
    sorted_neg = tf.stop_gradient(tf.gather(neg_dist, order, batch_dims=1))
    num_neg = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1, keepdims=True)
    # Rank of the first negative strictly farther than D[a, p]; past the negatives -> fall back to the farthest.
    first_farther = tf.searchsorted(sorted_neg, distances, side="right", out_type=tf.int32)
    rank = tf.where(first_farther < num_neg, first_farther, num_neg - 1)
    column = tf.gather(order, tf.clip_by_value(rank, 0, n - 1), batch_dims=1)
    chosen = tf.gather(distances, column, batch_dims=1)
    row_min = tf.reduce_min(distances, axis=1, keepdims=True)
    return tf.where(num_neg > 0, chosen, row_min)


def triplet_semihard_loss(labels, distances, margin: float = DEFAULT_MARGIN) -> tf.Tensor:
    """Semi-hard triplet loss on a given pairwise distance matrix (the original used A, margin 3.0).

    ``sum over positive pairs (a, p) of max(margin + D[a, p] - d_n(a, p), 0) / number of positive pairs``, with
    ``d_n`` from :func:`semihard_negatives`; the averaging counts every ordered positive pair, as TF-Addons.
    """
    labels, distances = _check_distances(labels, distances)
    positive, _ = pair_masks(labels)
    hinge = tf.nn.relu(margin + distances - semihard_negatives(labels, distances))
    return masked_mean(hinge, positive)


def contrastive_attention_loss(labels, attention, margin: float = DEFAULT_MARGIN) -> tf.Tensor:
    """The original's alternative: ``mean_pos(A) + mean_neg(max(margin - A, 0))``."""
    labels, attention = _check_distances(labels, attention)
    positive, negative = pair_masks(labels)
    return masked_mean(attention, positive) + masked_mean(tf.nn.relu(margin - attention), negative)


# ---------------------------------------------------------------------------------------------------------------
# output constraint and the total


def output_constraint_loss(sigma_sq, kind: str = "L2", weight: float = 1.0) -> tf.Tensor:
    """``weight * sum over batch and dims of (s / m0 - 1)^2`` (L2) or ``|s / m0 - 1|`` (L1).

    ``m0 = stop_gradient(mean(s))`` over every entry. A sum, not a mean, as the original (paper: mean).
    """
    if kind not in OUTPUT_CONSTRAINT_TYPES:
        raise LossInputError(f"output_constraint_type must be one of {list(OUTPUT_CONSTRAINT_TYPES)}, got {kind!r}")
    sigma_sq = _float32(sigma_sq, "sigma_sq")
    deviation = sigma_sq / tf.stop_gradient(tf.reduce_mean(sigma_sq)) - 1.0
    per_entry = tf.square(deviation) if kind == "L2" else tf.abs(deviation)
    return _float32(weight, "weight") * tf.reduce_sum(per_entry)


def _loss_weights(loss_weights) -> dict:
    if not isinstance(loss_weights, dict):
        raise LossInputError(f"loss_weights must be a dict with keys {list(LOSS_WEIGHT_KEYS)}, got {loss_weights!r}")
    missing = [k for k in LOSS_WEIGHT_KEYS if k not in loss_weights]
    unknown = [k for k in loss_weights if k not in LOSS_WEIGHT_KEYS]
    if missing or unknown:
        raise LossInputError(f"loss_weights needs exactly the keys {list(LOSS_WEIGHT_KEYS)}; "
                             f"missing {missing}, unknown {unknown}")
    for key, value in loss_weights.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise LossInputError(f"loss_weights['{key}'] must be a non-negative number, got {value!r}")
    return {k: float(v) for k, v in loss_weights.items()}


def probface_loss(labels, mu, log_sigma_sq, loss_weights, output_constraint_type: str = "L2",
                  metric: str = "triplet_semihard", margin: float = DEFAULT_MARGIN,
                  regularization=0.0) -> tuple[tf.Tensor, dict]:
    """The original training objective and its watch list: ``(total, watch)``.

    ``total = w_mls * mls + s_L2|s_L1 + w_disc * atte + regu``; the MLS and discriminative terms are present only
    when their weight is > 0, the OC term whenever ``output_constraint_type`` is 'L2' or 'L1' ('' or None: none).
    ``regularization`` is the weight-decay sum (``regu``), e.g. ``sum(model.losses)``.

    ``watch`` has the original keys: ``a`` (total), ``att_neg``, ``att_pos``, ``atte`` (unweighted, only when
    w_disc > 0), ``mls`` (unweighted, only when w_mls > 0), ``regu``, ``s_L2`` or ``s_L1`` (weighted), ``s_max``,
    ``s_min`` (extremes of sigma^2 over the batch). The loop adds ``lr``.
    """
    weights = _loss_weights(loss_weights)
    if output_constraint_type not in OUTPUT_CONSTRAINT_TYPES + ("", None):
        raise LossInputError(f"output_constraint_type must be 'L2', 'L1' or '' (none), got {output_constraint_type!r}")
    if metric not in DISCRIMINATE_METRICS:
        raise LossInputError(f"discriminate metric must be one of {list(DISCRIMINATE_METRICS)}, got {metric!r}")
    log_sigma_sq = _float32(log_sigma_sq, "log_sigma_sq")
    sigma_sq = tf.exp(log_sigma_sq)
    terms = negative_mls_loss(labels, mu, log_sigma_sq)
    regu = _float32(regularization, "regularization")
    watch = {"att_pos": terms["att_pos"], "att_neg": terms["att_neg"], "regu": regu,
             "s_max": tf.reduce_max(sigma_sq), "s_min": tf.reduce_min(sigma_sq)}
    parts = []
    if weights["mls_loss"] > 0:
        parts.append(weights["mls_loss"] * terms["mls"])
        watch["mls"] = terms["mls"]
    if output_constraint_type:
        oc = output_constraint_loss(sigma_sq, output_constraint_type, weights["output_constraint_loss"])
        parts.append(oc)
        watch["s_" + output_constraint_type] = oc
    if weights["discriminate_loss"] > 0:
        if metric == "triplet_semihard":
            atte = triplet_semihard_loss(labels, terms["attention"], margin)
        else:
            atte = contrastive_attention_loss(labels, terms["attention"], margin)
        parts.append(weights["discriminate_loss"] * atte)
        watch["atte"] = atte
    total = tf.add_n(parts + [regu])
    watch["a"] = total
    return total, watch
