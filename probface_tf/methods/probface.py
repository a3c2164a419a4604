"""ProbFace (Chen et al.): the ``UncertaintyModule`` head predicts log sigma^2, 1-d (FastMLS) or D-d
(``uncertainty_module_output_size``), trained with ``mls + w_oc * OC + w_disc * triplet + regu``."""
from __future__ import annotations

from probface_tf.losses import probface_loss
from probface_tf.methods.registry import HEAD_STAGE, Method, register_method
from probface_tf.models.probface import probface_model


def discriminative_metric(cfg) -> str:
    # The original's test of the config key is inverted, so it always trains with triplet_semihard.
    return cfg.discriminat_metric_type if cfg.honour_discriminat_metric_type else "triplet_semihard"


def loss(cfg, labels, mu, log_sigma_sq, regu):
    """The original's weighted losses (``probface_tf.losses.probface_loss``): ``(total, watch)``."""
    return probface_loss(labels, mu, log_sigma_sq, cfg.loss_weights, cfg.output_constraint_type,
                         discriminative_metric(cfg), cfg.triplet_margin, regu)


register_method(Method(
    name="probface", stage=HEAD_STAGE,
    summary="ProbFace: log sigma^2 head (1-d or D-d) on a frozen backbone, MLS + OC + triplet",
    build_model=probface_model, loss=loss, uncertainty=lambda outputs: outputs["sigma_sq"]))
