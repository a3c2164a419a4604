"""Backbone + uncertainty head composed into one model with outputs {mu, log_sigma_sq, sigma_sq}."""
from __future__ import annotations

import keras

from probface_tf.models.resface import SCOPE as BACKBONE_SCOPE, backbone_spec, build_resface
from probface_tf.models.spec import ModelSpec
from probface_tf.models.uncertainty import SCOPE as HEAD_SCOPE, UncertaintyModule

OUTPUT_KEYS = ("mu", "log_sigma_sq", "sigma_sq")
IMAGES = "images"  # uncertainty_module_input: the head reads the (preprocessed) image itself, as the original allows


def attach_backbone(spec: ModelSpec, backbone: keras.Model | None = None, error=ValueError):
    """The model's image input, the backbone and its end points on that input. The backbone is built from
    ``spec`` unless given; ``spec.head_input`` must name an end point or ``'images'`` (``error`` otherwise).
    With ``'images'`` the end points also hold the image input under that name."""
    if backbone is None:
        arch = backbone_spec(spec.embedding_network, spec.backbone_filters, spec.backbone_blocks)
        backbone = build_resface(arch, spec.image_size, spec.embedding_size, spec.keep_prob)
    if spec.head_input not in backbone.output and spec.head_input != IMAGES:
        raise error(f"uncertainty_module_input {spec.head_input!r} is not a backbone end point; "
                    f"choose one of {sorted(backbone.output) + [IMAGES]}")
    backbone.trainable = not spec.freeze_backbone
    images = keras.Input(backbone.input.shape[1:], name="images")
    return images, backbone, {**backbone(images), IMAGES: images}


def probface_model(spec: ModelSpec, backbone: keras.Model | None = None, name: str = "ProbFace") -> keras.Model:
    """The ProbFace model of ``spec``: outputs ``{mu, log_sigma_sq, sigma_sq}``. With ``spec.freeze_backbone``
    the backbone's weights are not trainable and its BN layers run in inference mode, as in the original head
    training."""
    images, _, end_points = attach_backbone(spec, backbone)
    head = UncertaintyModule(spec.output_size, weight_decay=spec.weight_decay)
    log_sigma_sq = keras.layers.Identity(name="log_sigma_sq", dtype="float32")(head(end_points[spec.head_input]))
    sigma_sq = keras.layers.Activation("exponential", name="sigma_sq", dtype="float32")(log_sigma_sq)
    mu = keras.layers.Identity(name="mu_out", dtype="float32")(end_points["mu"])
    return keras.Model(images, {"mu": mu, "log_sigma_sq": log_sigma_sq, "sigma_sq": sigma_sq}, name=name)


def build_probface(embedding_network: str = "resface64_relu", image_size=(96, 96), embedding_size: int = 256,
                   uncertainty_module_output_size: int = 1, uncertainty_module_input: str = "conv_final",
                   weight_decay: float = 5e-4, keep_prob: float = 1.0, backbone_filters=None,
                   backbone_blocks=None, freeze_backbone: bool = True, backbone: keras.Model | None = None,
                   name: str = "ProbFace") -> keras.Model:
    """:func:`probface_model` from the recipe's key names (the signature callers and converters use)."""
    spec = ModelSpec(embedding_network, tuple(image_size), embedding_size, uncertainty_module_input,
                     uncertainty_module_output_size, weight_decay, keep_prob, backbone_filters, backbone_blocks,
                     freeze_backbone)
    return probface_model(spec, backbone, name)


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
