"""SavedModel export for TF Serving and for any TensorFlow runtime, without this package.

``export_saved_model(model, EXPORT_BASE)`` writes ``EXPORT_BASE/<version>/`` (the TF Serving layout:
``saved_model.pb``, ``variables/``, ``assets/probface.json``) with the signatures of ``signatures``, published
atomically (``publishing``).
"""
from __future__ import annotations

import json
import os
import tempfile

import tensorflow as tf

from probface_tf.export.publishing import check_export_base, check_version, publish_version
from probface_tf.export.signatures import build_serving_module, signature_functions

METADATA_FILE = "probface.json"


def _write_saved_model(module: tf.Module, path: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        meta_path = os.path.join(scratch, METADATA_FILE)
        with open(meta_path, "w", encoding="utf-8") as f:
            f.write(module.metadata_text)
        # Tracked as an asset, the file is copied to <version>/assets/ and its path is an attribute on load.
        module.metadata_file = tf.saved_model.Asset(meta_path)
        tf.saved_model.save(module, path, signatures=signature_functions(module))


def export_saved_model(model, export_base: str, version: int | None = None, preprocess_ops=None, image_size=None,
                       resize_method: str = "pil_bilinear", contrast_stretch: bool = True,
                       overwrite: bool = False, extra_metadata: dict | None = None) -> str:
    """Export ``model`` (Keras, outputs {mu, sigma_sq[, log_sigma_sq]}) to ``export_base/<version>/``.

    ``preprocess_ops``, ``resize_method`` and ``contrast_stretch`` describe the evaluation preprocessing the
    ``from_image_bytes`` signature reproduces; they are stored in ``assets/probface.json``. See
    ``write_serving_module`` for versions and atomicity. ``extra_metadata`` (e.g. a ``Calibration``'s decision
    thresholds) is merged into that file. Returns the version directory.
    """
    check_version(version)
    check_export_base(export_base)
    module = build_serving_module(model, preprocess_ops, image_size, resize_method, contrast_stretch, extra_metadata)
    return write_serving_module(module, export_base, version, overwrite)


def write_serving_module(module: tf.Module, export_base: str, version: int | None = None,
                         overwrite: bool = False) -> str:
    """Save a ``build_serving_module`` module as ``export_base/<version>/``; returns that path.

    ``version`` defaults to ``next_version(export_base)``. The SavedModel is written to a sibling
    ``.tmp-<version>-<pid>`` directory, fsynced and renamed into place; on any failure the temporary directory
    is removed and no numeric directory is created. An existing version is an error unless ``overwrite``.
    """
    return publish_version(lambda tmp: _write_saved_model(module, tmp), export_base, version, overwrite)


def read_metadata(loaded, path: str) -> dict | None:
    """The ``probface.json`` metadata of a loaded SavedModel export (its asset file, else its ``metadata_json``
    function), or None for a SavedModel that is not ours: the one reader of an export's metadata."""
    asset = os.path.join(path, "assets", METADATA_FILE)
    if os.path.isfile(asset):
        with open(asset, encoding="utf-8") as f:
            return json.load(f)
    if hasattr(loaded, "metadata_json"):
        return json.loads(loaded.metadata_json().numpy().decode("utf-8"))
    return None
