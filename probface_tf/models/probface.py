"""Backbone + uncertainty head composed into one model with outputs {mu, log_sigma_sq, sigma_sq}."""
from __future__ import annotations

import keras

from probface_tf.models.resface import SCOPE as BACKBONE_SCOPE, backbone_spec, build_resface
from probface_tf.models.uncertainty import SCOPE as HEAD_SCOPE, UncertaintyModule

OUTPUT_KEYS = ("mu", "log_sigma_sq", "sigma_sq")


def attach_backbone(backbone: keras.Model | None, head_input: str, freeze_backbone: bool,
                    embedding_network: str, image_size, embedding_size: int, keep_prob: float, backbone_filters,
                    backbone_blocks, error=ValueError):
    """The model's image input, the backbone and its end points on that input. The backbone is built from the
    architecture keys unless given; ``head_input`` must name an end point (``error`` is raised otherwise)."""
    if backbone is None:
        spec = backbone_spec(embedding_network, backbone_filters, backbone_blocks)
        backbone = build_resface(spec, image_size, embedding_size, keep_prob)
    if head_input not in backbone.output:
        raise error(f"uncertainty_module_input {head_input!r} is not a backbone end point; "
                    f"choose one of {sorted(backbone.output)}")
    backbone.trainable = not freeze_backbone
    images = keras.Input(backbone.input.shape[1:], name="images")
    return images, backbone, backbone(images)


def build_probface(embedding_network: str = "resface64_relu", image_size=(96, 96), embedding_size: int = 256,
                   uncertainty_module_output_size: int = 1, uncertainty_module_input: str = "conv_final",
                   weight_decay: float = 5e-4, keep_prob: float = 1.0, backbone_filters=None,
                   backbone_blocks=None, freeze_backbone: bool = True, backbone: keras.Model | None = None,
                   name: str = "ProbFace") -> keras.Model:
    """Build the ProbFace model. With ``freeze_backbone`` the backbone's weights are not trainable and its BN
    layers run in inference mode, as in the original head training."""
    images, _, end_points = attach_backbone(backbone, uncertainty_module_input, freeze_backbone, embedding_network,
                                            image_size, embedding_size, keep_prob, backbone_filters,
                                            backbone_blocks)
    head = UncertaintyModule(uncertainty_module_output_size, weight_decay=weight_decay)
    log_sigma_sq = keras.layers.Identity(name="log_sigma_sq", dtype="float32")(head(end_points[uncertainty_module_input]))
    sigma_sq = keras.layers.Activation("exponential", name="sigma_sq", dtype="float32")(log_sigma_sq)
    mu = keras.layers.Identity(name="mu_out", dtype="float32")(end_points["mu"])
    return keras.Model(images, {"mu": mu, "log_sigma_sq": log_sigma_sq, "sigma_sq": sigma_sq}, name=name)


def from_config(cfg, freeze_backbone: bool = True) -> keras.Model:
    """Build the model a config file describes (original keys; ``head_type`` picks a baseline head)."""
    if cfg.get("head_type", "probface") != "probface":
        from probface_tf.baselines.models import from_config as baseline_from_config

        return baseline_from_config(cfg, freeze_backbone)
    return build_probface(cfg.embedding_network, cfg.image_size, cfg.embedding_size,
                          cfg.uncertainty_module_output_size, cfg.uncertainty_module_input, cfg.weight_decay,
                          cfg.keep_prob, cfg.backbone_filters, cfg.backbone_blocks, freeze_backbone)


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_SCOPE)


def head_of(model: keras.Model) -> UncertaintyModule:
    return model.get_layer(HEAD_SCOPE)


def expected_image_shape(model: keras.Model) -> tuple[int, int, int]:
    _, h, w, c = model.input.shape
    return int(h), int(w), int(c)


def check_images(images, model: keras.Model):
    """Raise a ValueError naming the expected shape unless ``images`` is [N, H, W, C] for this model."""
    h, w, c = expected_image_shape(model)
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or tuple(int(d) for d in shape[1:]) != (h, w, c):
        raise ValueError(f"{model.name} expects preprocessed images of shape [N, {h}, {w}, {c}] "
                         f"(float32, e.g. (x - 128) / 128); got shape {shape}")
    return images


def predict(model: keras.Model, images, batch_size: int = 128) -> dict:
    """Run ``model`` in inference mode over ``images`` in batches; returns numpy arrays per output."""
    import numpy as np
    import tensorflow as tf

    check_images(images, model)
    step = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    parts = [step(tf.convert_to_tensor(images[i:i + batch_size], tf.float32))
             for i in range(0, len(images), batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in OUTPUT_KEYS}
