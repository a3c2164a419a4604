"""Restore a backbone (and optionally a head) into a ProbFace model from what ``restore_model`` names.

Accepted: an original TF1 run directory / checkpoint prefix (variables by original name, filtered by
``restore_scopes`` / ``exclude_restore_scopes`` as the original does), a ``.keras`` file (a ProbFace model or a
stage-1 backbone), or one of our run directories (its ``model.keras`` or ``backbone.keras``).
"""
from __future__ import annotations

import os

from probface_tf.convert import CheckpointError, assign_checkpoint, find_checkpoint, read_checkpoint
from probface_tf.models.probface import backbone_of, head_of


def _copy_layers(src_layers, dst_model, skip_head: bool, source: str) -> int:
    copied = 0
    for layer in src_layers:
        if not layer.weights or (skip_head and layer.name == "UncertaintyModule"):
            continue
        try:
            target = dst_model.get_layer(layer.name)
        except ValueError:
            raise CheckpointError(f"{source}: layer {layer.name!r} has no counterpart in the model") from None
        for dst, src in zip(target.weights, layer.weights):
            if tuple(dst.shape) != tuple(src.shape):
                raise CheckpointError(f"{source}: {layer.name}/{src.name} has shape {tuple(src.shape)}, the model "
                                      f"expects {tuple(dst.shape)}")
            dst.assign(src.numpy())
            copied += 1
    return copied


def _restore_keras(model, path: str, exclude) -> str:
    import keras

    loaded = keras.saving.load_model(path, compile=False)
    names = {layer.name for layer in loaded.layers}
    skip_head = any("UncertaintyModule" in s for s in (exclude or ()))
    if "Resface" in names:  # a ProbFace model
        _copy_layers(backbone_of(loaded).layers, backbone_of(model), True, path)
        if "UncertaintyModule" in names and not skip_head:
            _copy_layers([head_of(loaded)], model, False, path)
    else:  # a stage-1 backbone (its layers are the Resface layers)
        _copy_layers(loaded.layers, backbone_of(model), True, path)
    return f"restored {path}"


def restore(model, restore_model: str, restore_scopes=None, exclude_restore_scopes=None) -> str:
    """Load weights named by ``restore_model``; returns a one-line description of what was restored."""
    path = os.path.expanduser(restore_model)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise CheckpointError(f"restore_model file not found: {path}")
        return _restore_keras(model, path, exclude_restore_scopes)
    for candidate in ("model.keras", "backbone.keras"):
        if os.path.isfile(os.path.join(path, candidate)):
            return _restore_keras(model, os.path.join(path, candidate), exclude_restore_scopes)
    prefix = find_checkpoint(path)
    values = read_checkpoint(prefix)
    allow_missing_head = any("UncertaintyModule" in s for s in (exclude_restore_scopes or ()))
    names = assign_checkpoint(model, values, allow_missing_head, restore_scopes, exclude_restore_scopes,
                              source=prefix)
    return f"Restoring {len(names)} variables from {prefix} ..."
