"""IDQ (face-uncertainty-pytorch): a :class:`ProbabilityHead` on the frozen backbone trained with the binary
cross-entropy of the pair confidence ``c_ij`` against ``t = sigmoid(s (cos_ij - m))`` ('hard' target:
``cos_ij > m``). The uncertainty is ``p = 1 - c``."""
from __future__ import annotations

import tensorflow as tf

from probface_tf.losses import LossInputError
from probface_tf.methods.registry import HEAD_STAGE, Method, register_method
from probface_tf.models.probability_head import confidence_watch, cosine_and_pair_confidence, positive_mean, \
    probability_model

IDQ_EPSILON = 1e-7  # floor of c_ij and 1 - c_ij inside the logs (the original has none: p = 0 or 1 gives inf)
IDQ_TARGETS = ("soft", "hard")


def _target(cos, s: float, m: float, target: str) -> tf.Tensor:
    return tf.sigmoid(s * (cos - m)) if target == "soft" else tf.cast(cos > m, tf.float32)


def idq_loss(labels, mu, p, s: float = 16.0, m: float = 0.4, target: str = "soft") -> tf.Tensor:
    """IDQ: ``mean_pos [-t log c_ij - (1 - t) log(1 - c_ij)]``, ``t`` a constant; both log arguments are floored
    at ``IDQ_EPSILON`` (flooring ``1 - c`` itself rather than capping ``c`` at ``1 - eps``, which rounds in
    float32). Everything in float32; 0 without positive pairs."""
    if target not in IDQ_TARGETS:
        raise LossInputError(f"idq_loss target must be one of {list(IDQ_TARGETS)}, got {target!r}")
    cos, pair_conf = cosine_and_pair_confidence(mu, p)
    t = tf.stop_gradient(_target(cos, s, m, target))
    cross_entropy = (-t * tf.math.log(tf.maximum(pair_conf, IDQ_EPSILON))
                     - (1.0 - t) * tf.math.log(tf.maximum(1.0 - pair_conf, IDQ_EPSILON)))
    return positive_mean(cross_entropy, labels)


def idq_target_mean(labels, mu, s: float, m: float, target: str) -> tf.Tensor:
    """Mean IDQ target over the positive pairs (the original's ``t_soft`` watch)."""
    unit = tf.math.l2_normalize(tf.cast(mu, tf.float32), axis=1)
    return positive_mean(_target(tf.matmul(unit, unit, transpose_b=True), s, m, target), labels)


def loss(cfg, labels, mu, p, regu):
    """``(total, watch)``: ``total = idq_loss + regu``; the watch list of PCNet plus ``t_soft``."""
    value = idq_loss(labels, mu, p, cfg.idq_s, cfg.idq_m, cfg.idq_target)
    total = value + regu
    return total, {"a": total, "loss": value, "regu": regu, **confidence_watch(labels, mu, p),
                   "t_soft": idq_target_mean(labels, mu, cfg.idq_s, cfg.idq_m, cfg.idq_target)}


register_method(Method(
    name="idq", stage=HEAD_STAGE, summary="IDQ: probability head, pair confidence fits a soft cosine target",
    build_model=lambda spec, backbone: probability_model(spec, backbone, "IDQ"), loss=loss,
    uncertainty=lambda outputs: outputs["uncertainty"]))
