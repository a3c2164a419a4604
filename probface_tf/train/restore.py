"""Restore a backbone (and optionally a head) into a ProbFace model from what ``restore_model`` names.

Accepted: an original TF1 run directory / checkpoint prefix, a ``.keras`` file (a ProbFace or baseline model, or
a stage-1 backbone), or one of our run directories (its ``model.keras`` or ``backbone.keras``). Every source is
read as ``{original variable name: array}`` (a Keras source through the same name map the converter uses), so
``restore_scopes`` (keep names containing one of them) and ``exclude_restore_scopes`` (drop names containing
one of them) filter every source kind the same way, by substring, as the original does.
"""
from __future__ import annotations

import os

import numpy as np

from probface_tf.convert import CheckpointError, assign_checkpoint, find_checkpoint, read_checkpoint
from probface_tf.models.probface import backbone_of, head_of
from probface_tf.models.resface import tf1_variable_map


def _keras_values(path: str) -> tuple[dict[str, np.ndarray], bool]:
    """``({original name: array}, has_head)`` of a saved Keras model: a full model or a stage-1 backbone."""
    import keras

    try:
        loaded = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # not a Keras archive, or one saved by an incompatible version
        raise CheckpointError(f"restore_model: cannot load {path}: {type(exc).__name__}: {exc}") from None
    names = {layer.name for layer in loaded.layers}
    if "Resface" in names:  # a ProbFace (or baseline) model: backbone nested under its original scope
        variables = tf1_variable_map(backbone_of(loaded))
        has_head = "UncertaintyModule" in names
        if has_head:
            variables.update(head_of(loaded).tf1_variable_map())
    else:  # a stage-1 backbone: its layers are the Resface layers
        variables, has_head = tf1_variable_map(loaded), False
    return {name: np.asarray(var.numpy()) for name, var in variables.items()}, has_head


def restore(model, restore_model: str, restore_scopes=None, exclude_restore_scopes=None) -> str:
    """Load weights named by ``restore_model``; returns a one-line description of what was restored.

    Variables filtered out by the scopes keep their current (fresh) values. A source without head variables
    (a backbone) leaves the head fresh; a TF1 checkpoint must then exclude 'UncertaintyModule', as the original.
    """
    path = os.path.expanduser(restore_model)
    source = path
    if not path.endswith(".keras"):
        for candidate in ("model.keras", "backbone.keras"):
            if os.path.isfile(os.path.join(path, candidate)):
                source = os.path.join(path, candidate)
                break
    if source.endswith(".keras"):
        if not os.path.isfile(source):
            raise CheckpointError(f"restore_model file not found: {source}")
        values, has_head = _keras_values(source)
        allow_missing_head = not has_head  # a backbone file: there is no head to restore
    else:
        source = find_checkpoint(path)
        values = read_checkpoint(source)
        allow_missing_head = any("UncertaintyModule" in s for s in (exclude_restore_scopes or ()))
    names = assign_checkpoint(model, values, allow_missing_head, restore_scopes, exclude_restore_scopes,
                              source=source)
    return f"Restoring {len(names)} variables from {source} ..."
