"""``load(path)``: the one way to open a face model, whatever form it was saved in.

Accepted: a ``.keras`` file; a SavedModel directory or export base (its newest version); an original TF1 run
directory or checkpoint prefix (converted on the fly); a ScaleFace run directory; or a training run directory
(its ``model.keras``). The evaluator's loader (``probface_tf.eval.model_loader``) does the work; this adds the
run-directory lookup, the calibration and the face detector.
"""
from __future__ import annotations

import os

from probface_tf.calibration import Calibration
from probface_tf.eval.model_loader import ModelLoadError, load_model
from probface_tf.face_model import FaceModel

# Where a training run keeps its final model (a demo run: under head/).
RUN_MODEL_FILES = ("model.keras", os.path.join("head", "model.keras"))


def resolve_model_path(path: str) -> str:
    """A training run directory -> its ``model.keras``; anything else unchanged."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "saved_model.pb")):
        for name in RUN_MODEL_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
    return path


def load(path, calibration=None, detector="mtcnn", config=None, compute_dtype: str = "float32",
         batch_size: int = 64) -> FaceModel:
    """Open a face model as a ``FaceModel``.

    ``calibration``: a ``calibration.json`` path (written by ``evaluate.py``) or a ``Calibration``; default: the
    one stored in an export's metadata, if any. ``detector``: 'mtcnn', a ``FaceDetector``, or None (embedding
    aligned crops only). ``config``: a config (file) giving the evaluation preprocessing and, for TF1
    checkpoints, the architecture.
    """
    engine = load_model(resolve_model_path(path), config, compute_dtype)
    if isinstance(calibration, (str, os.PathLike)):
        calibration = Calibration.load(os.fspath(calibration))
    elif calibration is None:
        calibration = Calibration.from_metadata(engine.metadata, f"{path}: metadata")
    elif not isinstance(calibration, Calibration):
        raise ModelLoadError(f"calibration must be a calibration.json path or a Calibration, got "
                             f"{type(calibration).__name__}")
    return FaceModel(engine, detector, calibration, batch_size)
