"""ResFace64 backbones of the original ProbFace (``models/resface64*_relu*.py``) as Keras functional models.

Every layer is named after its original TF1 variable scope below ``Resface/`` with ``/`` written as ``.``
(Keras forbids ``/`` in names), e.g. ``Conv3.Conv_3.Conv_3_16.Conv_1`` and its ``….BatchNorm``; the checkpoint
converter relies on that one-to-one mapping (see ``tf1_variable_name``).

The model's outputs are the original ``end_points`` dict: ``Conv1``..``Conv4`` (stage outputs), ``conv_final``
(the head's input: the flattened last stage, plus global-average-pooled stage outputs for the fusion ``_m``
variants) and ``mu`` (L2-normalised bottleneck).
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from probface_tf.models.layers import L2Normalize

SCOPE = "Resface"
BN_DECAY = 0.995
BN_EPSILON = 1e-3
STAGE_NAMES = ("Conv1", "Conv2", "Conv3", "Conv4")


@dataclass(frozen=True)
class BackboneSpec:
    filters: tuple = (64, 128, 256, 512)
    blocks: tuple = (3, 8, 16, 3)
    fusion: bool = False


# The original config's ``embedding_network`` file names map to these specs.
BACKBONES = {
    "resface64_relu": BackboneSpec(),
    "resface64_relu_m": BackboneSpec(fusion=True),
    "resface64s2_relu": BackboneSpec(filters=(32, 64, 128, 256)),
    "resface64s2_relu_m": BackboneSpec(filters=(32, 64, 128, 256), fusion=True),
    # resface64s2_relu_v3.py is referenced by an original config but missing from its repository;
    # it is read as the 0.5-width network.
    "resface64s2_relu_v3": BackboneSpec(filters=(32, 64, 128, 256)),
}


def backbone_spec(embedding_network: str, filters=None, blocks=None) -> BackboneSpec:
    """Resolve an original ``embedding_network`` value ('models/resface64_relu.py' or 'resface64_relu')."""
    key = embedding_network.replace("\\", "/").rsplit("/", 1)[-1]
    key = key[:-3] if key.endswith(".py") else key
    if key not in BACKBONES:
        raise ValueError(f"unknown embedding_network {embedding_network!r}; known: {sorted(BACKBONES)}")
    spec = BACKBONES[key]
    return BackboneSpec(filters=tuple(filters or spec.filters), blocks=tuple(blocks or spec.blocks),
                        fusion=spec.fusion)


def _conv_bn_relu(x, filters, name, stride=1, initializer="glorot_uniform", folded=False):
    # slim.conv2d with a batch_norm normalizer: no bias, conv -> BN -> ReLU. ``folded``: BN folded into
    # the conv's kernel and bias (inference only; see probface_tf.models.inference).
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=folded,
                            kernel_initializer=initializer, name=name)(x)
    if not folded:
        x = keras.layers.BatchNormalization(momentum=BN_DECAY, epsilon=BN_EPSILON, name=name + ".BatchNorm")(x)
    return keras.layers.ReLU(name=name + ".Relu")(x)


def _resface_block(x, filters, name, folded=False):
    # Two convs with truncated-normal(0.01) weights; the sum is not followed by a ReLU.
    init = keras.initializers.TruncatedNormal(stddev=0.01)
    y = _conv_bn_relu(x, filters, name + ".Conv", initializer=init, folded=folded)
    y = _conv_bn_relu(y, filters, name + ".Conv_1", initializer=init, folded=folded)
    return keras.layers.Add(name=name + ".add")([x, y])


def _check_image_size(image_size) -> tuple[int, int]:
    h, w = (int(s) for s in image_size)
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise ValueError(f"image_size must be positive multiples of 16 (four stride-2 stages), got {image_size}")
    return h, w


def build_resface(spec: BackboneSpec | str = "resface64_relu", image_size=(96, 96), embedding_size: int = 256,
                  keep_prob: float = 1.0, channels: int = 3, name: str = SCOPE,
                  folded: bool = False) -> keras.Model:
    """Build a ResFace backbone; outputs the original end_points dict.

    ``folded`` builds the inference-only form whose convs and bottleneck carry a bias in place of BN.
    """
    if isinstance(spec, str):
        spec = backbone_spec(spec)
    h, w = _check_image_size(image_size)
    images = keras.Input((h, w, channels), name="images")
    end_points = {}
    x = images
    for k, (stage, filters, blocks) in enumerate(zip(STAGE_NAMES, spec.filters, spec.blocks), start=1):
        x = _conv_bn_relu(x, filters, f"{stage}.{stage}_pre", stride=2, folded=folded)
        for b in range(1, blocks + 1):  # slim.repeat names: Conv_k/Conv_k_1 .. Conv_k_n
            x = _resface_block(x, filters, f"{stage}.Conv_{k}.Conv_{k}_{b}", folded)
        end_points[stage] = keras.layers.Identity(name=stage)(x)
    flat = keras.layers.Flatten(name="Logits.Flatten")(x)  # row-major NHWC, as tf.reshape
    flat = keras.layers.Dropout(1.0 - keep_prob, name="Logits.Dropout")(flat)
    conv_final = flat
    if spec.fusion:
        pooled = [keras.layers.GlobalAveragePooling2D(name=f"{s}.AvgPool_1a_8x8")(end_points[s])
                  for s in STAGE_NAMES]
        conv_final = keras.layers.Concatenate(name="conv_final.concat")([flat] + pooled)
    end_points["conv_final"] = keras.layers.Identity(name="conv_final")(conv_final)
    z = keras.layers.Dense(embedding_size, use_bias=folded, kernel_initializer="glorot_uniform",
                           name="Bottleneck")(flat)
    if not folded:
        z = keras.layers.BatchNormalization(momentum=BN_DECAY, epsilon=BN_EPSILON, name="Bottleneck.BatchNorm")(z)
    end_points["mu"] = L2Normalize(name="mu", dtype="float32")(z)
    return keras.Model(images, end_points, name=name)


def conv_final_size(spec: BackboneSpec | str, image_size=(96, 96)) -> int:
    """Width of conv_final: H/16 * W/16 * C4 (+ sum of stage widths for fusion)."""
    if isinstance(spec, str):
        spec = backbone_spec(spec)
    h, w = _check_image_size(image_size)
    size = (h // 16) * (w // 16) * spec.filters[-1]
    return size + (sum(spec.filters) if spec.fusion else 0)


_KERAS_TO_TF1 = {"kernel": "weights", "gamma": "gamma", "beta": "beta",
                 "moving_mean": "moving_mean", "moving_variance": "moving_variance"}


def tf1_variable_name(layer_name: str, variable_name: str, scope: str = SCOPE) -> str:
    """Original TF1 name of a backbone variable, e.g. ('Conv1.Conv1_pre', 'kernel') -> 'Resface/Conv1/Conv1_pre/weights'."""
    return f"{scope}/{layer_name.replace('.', '/')}/{_KERAS_TO_TF1[variable_name]}"


def tf1_variable_map(backbone: keras.Model, scope: str = SCOPE) -> dict[str, tf.Variable]:
    """{original TF1 variable name: Keras variable} for every backbone variable (325 for ResFace64)."""
    out = {}
    for layer in backbone.layers:
        for var in layer.weights:
            out[tf1_variable_name(layer.name, var.name, scope)] = var
    return out
