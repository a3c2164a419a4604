"""Inference-only form of a trained model: batch norm folded into the preceding conv / dense weights.

BN in inference mode is an affine map per channel, so ``conv(x, W) -> BN`` equals ``conv(x, W * k) + b`` with
``k = gamma / sqrt(var + eps)`` and ``b = beta - mean * k``. The folded graph has one op fewer per conv, which
lets TensorFlow's CPU remapper fuse conv + bias + ReLU. Outputs match the unfolded model to float32 round-off.
"""
from __future__ import annotations

import keras
import numpy as np

from probface_tf.models.probface import IMAGES, backbone_of, build_probface, head_of
from probface_tf.models.resface import BackboneSpec, build_resface


def _fold(kernel: np.ndarray, bn: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (w.numpy() for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    k = gamma / np.sqrt(var + bn.epsilon)
    return (kernel * k).astype(np.float32), (beta - mean * k).astype(np.float32)


def _spec_of(backbone: keras.Model) -> BackboneSpec:
    filters, blocks = [], []
    for k in range(1, 5):
        filters.append(backbone.get_layer(f"Conv{k}.Conv{k}_pre").filters)
        blocks.append(sum(1 for l in backbone.layers if l.name.startswith(f"Conv{k}.Conv_{k}.") and
                          l.name.endswith(".add")))
    fusion = any(l.name == "conv_final.concat" for l in backbone.layers)
    return BackboneSpec(tuple(filters), tuple(blocks), fusion)


def fold_backbone(source: keras.Model, compute_dtype: str | None = None) -> keras.Model:
    """An inference copy of a ResFace backbone with every BN folded into the conv / dense before it.

    ``compute_dtype='bfloat16'`` runs it in mixed bfloat16 (fast on CPUs with AMX/AVX512-BF16), 'float16' in
    mixed float16 (GPUs); mu stays float32.
    """
    _, h, w, c = source.input.shape
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy({None: "float32", "float32": "float32", "bfloat16": "mixed_bfloat16",
                                   "float16": "mixed_float16"}[compute_dtype])
    try:
        backbone = build_resface(_spec_of(source), (h, w), int(source.output["mu"].shape[-1]), channels=c,
                                 folded=True)
    finally:
        keras.config.set_dtype_policy(policy)
    for layer in backbone.layers:
        if not layer.weights:
            continue
        kernel, bias = _fold(source.get_layer(layer.name).kernel.numpy(), source.get_layer(layer.name + ".BatchNorm"))
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
    backbone.trainable = False
    return backbone


def fold_batch_norm(model: keras.Model, compute_dtype: str | None = None) -> keras.Model:
    """Return an inference copy of a ProbFace model whose backbone has its BN folded away (head unchanged)."""
    head = head_of(model)
    folded = build_probface(backbone=fold_backbone(backbone_of(model), compute_dtype),
                            uncertainty_module_output_size=head.output_size,
                            uncertainty_module_input=_head_input_name(model), weight_decay=head.weight_decay,
                            name=model.name + "_folded")
    for dst, src in zip(head_of(folded).weights, head.weights):
        dst.assign(src.numpy())
    return folded


def _head_input_name(model: keras.Model) -> str:
    """Which backbone end point feeds the head (conv_final unless configured otherwise), or the images."""
    backbone = backbone_of(model)
    head_input = head_of(model).input
    if tuple(head_input.shape) == tuple(model.input.shape):
        return IMAGES
    for name, tensor in backbone.output.items():
        if tensor.shape == head_input.shape and name != "mu":
            return name
    return "conv_final"
