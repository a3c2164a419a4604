"""ScaleFace: an ArcFace margin whose scale ``s(x)`` a ``ScaleHead`` predicts per image (stage 1); a low scale
marks an uncertain face, so ``1 / s(x)`` is the uncertainty.

A ScaleFace run directory (stage-1 training) holds ``backbone.keras`` and ``scale_head.keras``
(features of one backbone end point -> positive scale ``s(x)``). :func:`scaleface_model` joins them into a
model with the baselines' outputs ``{'mu', 'uncertainty'}``, ``uncertainty = 1 / s(x)`` (a low scale marks an
uncertain face), so the evaluator compares it with the other methods through the same interface.
"""
from __future__ import annotations

import os

import keras

from probface_tf.config import load_config
from probface_tf.methods.registry import BACKBONE_STAGE, Method, register_method
from probface_tf.models.heads import BACKBONE_FILE, SCALE_HEAD_FILE, ScaleFace, uncertainty_from_scale
from probface_tf.models.layers import PACKAGE
from probface_tf.models.probability_head import BaselineHeadError



def is_scaleface_run(path: str) -> bool:
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in (BACKBONE_FILE, SCALE_HEAD_FILE))


@keras.saving.register_keras_serializable(package=PACKAGE)
class InverseScale(keras.layers.Layer):
    """``1 / scale``: ScaleFace's uncertainty (larger = riskier)."""

    def call(self, scale):
        return uncertainty_from_scale(scale)


def _configured_end_point(run_dir: str) -> str | None:
    """``uncertainty_module_input`` of the run's recorded config.py (None when there is none)."""
    path = os.path.join(run_dir, "config.py")
    if not os.path.isfile(path):
        return None
    return load_config(path).uncertainty_module_input


def _feature_end_point(backbone: keras.Model, scale_head: keras.Model, source: str) -> str:
    """The backbone end point feeding the scale head: the run's configured ``uncertainty_module_input`` when its
    shape fits, else the one end point of the scale head's input shape (conv_final first, mu last)."""
    want = tuple(scale_head.inputs[0].shape[1:])
    shapes = {n: tuple(t.shape[1:]) for n, t in backbone.output.items()}
    configured = _configured_end_point(source)
    if configured in shapes and shapes[configured] == want:
        return configured
    names = sorted((n for n, shape in shapes.items() if shape == want),
                   key=lambda n: (n != "conv_final", n == "mu", n))
    if not names:
        raise BaselineHeadError(f"{source}: the scale head takes features of shape {want}, which no backbone "
                                f"end point has ({shapes})")
    return names[0]


def scaleface_model(run_dir: str, name: str = "ScaleFace") -> keras.Model:
    """Load a ScaleFace run's backbone and scale head; returns a model ``images -> {'mu', 'uncertainty'}``."""
    if not is_scaleface_run(run_dir):
        raise BaselineHeadError(f"{run_dir}: not a ScaleFace run directory (needs {BACKBONE_FILE} and "
                                f"{SCALE_HEAD_FILE})")
    backbone = keras.saving.load_model(os.path.join(run_dir, BACKBONE_FILE), compile=False)
    scale_head = keras.saving.load_model(os.path.join(run_dir, SCALE_HEAD_FILE), compile=False)
    end_point = _feature_end_point(backbone, scale_head, run_dir)
    images = keras.Input(backbone.input.shape[1:], name="images")
    end_points = backbone(images)
    scale = scale_head(end_points[end_point])
    outputs = {"mu": keras.layers.Identity(name="mu_out", dtype="float32")(end_points["mu"]),
               "uncertainty": InverseScale(name="uncertainty", dtype="float32")(scale)}
    return keras.Model(images, outputs, name=name)


register_method(Method(
    name="scaleface", stage=BACKBONE_STAGE, summary="ScaleFace: ArcFace margin with a predicted per-image scale",
    build_head=lambda num_classes, s, m: ScaleFace(num_classes, m=m), scale_head=True,
    uncertainty=lambda outputs: uncertainty_from_scale(outputs["scale"])))
