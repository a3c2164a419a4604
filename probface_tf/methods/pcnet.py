"""PCNet (face-uncertainty-pytorch): a :class:`ProbabilityHead` on the frozen backbone whose pair confidence
``c_ij = min(c_i, c_j)`` regresses the pair's cosine: ``mean_pos (cos_ij - c_ij)^2`` (``pc_loss_type`` 'L1':
``|cos_ij - c_ij|``). The uncertainty is ``p = 1 - c``."""
from __future__ import annotations

import tensorflow as tf

from probface_tf.losses import LossInputError
from probface_tf.methods.registry import HEAD_STAGE, Method, register_method
from probface_tf.models.probability_head import confidence_watch, cosine_and_pair_confidence, positive_mean, \
    probability_model

PC_KINDS = ("L2", "L1")


def pc_loss(labels, mu, p, kind: str = "L2") -> tf.Tensor:
    """PCNet: ``mean_pos (cos_ij - c_ij)^2`` (``kind='L1'``: ``|cos_ij - c_ij|``); 0 without positive pairs."""
    if kind not in PC_KINDS:
        raise LossInputError(f"pc_loss kind must be one of {list(PC_KINDS)}, got {kind!r}")
    cos, pair_conf = cosine_and_pair_confidence(mu, p)
    error = cos - pair_conf
    return positive_mean(tf.square(error) if kind == "L2" else tf.abs(error), labels)


def loss(cfg, labels, mu, p, regu):
    """``(total, watch)``: ``total = pc_loss + regu`` (``regu`` = the original SGD's weight decay); the watch list
    has ``a`` (total), ``loss``, ``regu``, ``pconf``/``pconf_max``/``pconf_min`` and ``cos``."""
    value = pc_loss(labels, mu, p, cfg.pc_loss_type)
    total = value + regu
    return total, {"a": total, "loss": value, "regu": regu, **confidence_watch(labels, mu, p)}


register_method(Method(
    name="pcnet", stage=HEAD_STAGE, summary="PCNet: probability head, pair confidence regresses the cosine",
    build_model=lambda spec, backbone: probability_model(spec, backbone, "PCNet"), loss=loss,
    uncertainty=lambda outputs: outputs["uncertainty"]))
