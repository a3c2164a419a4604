"""A ResFace backbone with a baseline head: outputs ``{'mu', 'uncertainty'}`` (uncertainty [N, 1], larger = riskier).

* ``pcnet`` / ``idq``: ``mu`` is the backbone's embedding, ``uncertainty`` the head's ``p`` (= 1 - confidence);
* ``mc_dropout``: ``mu`` is the mean direction of the dropout samples, ``uncertainty`` their cosine spread.

The backbone is the same functional ResFace as ProbFace's (layer ``Resface``) and the head is the layer
``UncertaintyModule``, so restore, checkpoints and the feature cache work unchanged.
"""
from __future__ import annotations

import keras

from probface_tf.baselines.heads import BaselineHeadError, MCDropoutHead, ProbabilityHead
from probface_tf.models.probface import attach_backbone

BASELINE_HEADS = ("pcnet", "idq", "mc_dropout")
MODEL_NAMES = {"pcnet": "PCNet", "idq": "IDQ", "mc_dropout": "MCDropout"}
OUTPUT_KEYS = ("mu", "uncertainty")


def _flat_width(backbone: keras.Model) -> int:
    """Width of the flattened last stage (the bottleneck's input), read off the backbone."""
    return int(backbone.get_layer("Logits.Flatten").output.shape[-1])


def build_baseline(head_type: str, embedding_network: str = "resface64_relu", image_size=(96, 96),
                   embedding_size: int = 256, head_input: str = "conv_final", weight_decay: float = 5e-4,
                   keep_prob: float = 1.0, backbone_filters=None, backbone_blocks=None,
                   freeze_backbone: bool = True, fc1_size: int = 256, mc_dropout_rate: float = 0.5,
                   mc_samples: int = 100, seed: int | None = None, backbone: keras.Model | None = None,
                   name: str | None = None) -> keras.Model:
    """Build a baseline model. The backbone is frozen (BN in inference mode) as in the original head training;
    the MC-dropout head is never trained (call :func:`copy_bottleneck` once the backbone is restored)."""
    if head_type not in BASELINE_HEADS:
        raise BaselineHeadError(f"head_type must be one of {list(BASELINE_HEADS)}, got {head_type!r}")
    images, backbone, end_points = attach_backbone(backbone, head_input, freeze_backbone, embedding_network,
                                                   image_size, embedding_size, keep_prob, backbone_filters,
                                                   backbone_blocks, error=BaselineHeadError)
    if head_type == "mc_dropout":
        # The bottleneck reads the flattened last stage, the first columns of conv_final.
        head = MCDropoutHead(int(backbone.output["mu"].shape[-1]), mc_dropout_rate, mc_samples,
                             flat_size=_flat_width(backbone), seed=seed)
        head.trainable = False
        mu, uncertainty = head(end_points["conv_final"])
    else:
        head = ProbabilityHead(fc1_size, weight_decay)
        mu, uncertainty = end_points["mu"], head(end_points[head_input])
    outputs = {"mu": keras.layers.Identity(name="mu_out", dtype="float32")(mu),
               "uncertainty": keras.layers.Identity(name="uncertainty", dtype="float32")(uncertainty)}
    return keras.Model(images, outputs, name=name or MODEL_NAMES[head_type])


def from_config(cfg, freeze_backbone: bool = True) -> keras.Model:
    """The baseline model a config describes (``head_type`` plus the original architecture keys)."""
    return build_baseline(cfg.head_type, cfg.embedding_network, cfg.image_size, cfg.embedding_size,
                          cfg.uncertainty_module_input, cfg.weight_decay, cfg.keep_prob, cfg.backbone_filters,
                          cfg.backbone_blocks, freeze_backbone, mc_dropout_rate=cfg.mc_dropout_rate,
                          mc_samples=cfg.mc_samples, seed=cfg.base_random_seed)


def copy_bottleneck(model: keras.Model) -> None:
    """MC dropout: copy the (restored) backbone's bottleneck into the head. No-op for other heads."""
    head = model.get_layer("UncertaintyModule")
    if isinstance(head, MCDropoutHead):
        head.copy_bottleneck(model.get_layer("Resface"))


def is_baseline(model: keras.Model) -> bool:
    outputs = getattr(model, "output", None)
    return isinstance(outputs, dict) and "uncertainty" in outputs and "sigma_sq" not in outputs

