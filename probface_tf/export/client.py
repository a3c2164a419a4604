"""Loading an exported SavedModel from Python: ``load_export(path)`` -> ``ExportedModel``, whose calls check
dtypes and shapes before they reach the graph and return NumPy arrays."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from probface_tf.export.errors import ExportError, ExportInputError
from probface_tf.export.publishing import list_versions
from probface_tf.export.saved_model import read_metadata
from probface_tf.export.signatures import COMPARE, COMPARE_ALL, FROM_IMAGE_BYTES, SERVING_DEFAULT, SIGNATURES


def resolve_export(path: str) -> str:
    """A SavedModel directory, or an export base (its largest version with a ``saved_model.pb``)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    complete = [v for v in list_versions(path) if os.path.isfile(os.path.join(path, str(v), "saved_model.pb"))]
    if not complete:
        raise ExportError(f"{path} is neither a SavedModel directory nor an export base with version directories")
    return os.path.join(path, str(complete[-1]))


def _as_float_array(value, signature: str, name: str, spec: tf.TensorSpec) -> np.ndarray:
    expected = f"float32 {_shape_text(spec.shape)}"
    array = np.asarray(value)
    if array.dtype.kind != "f":
        hint = " (encoded images go to from_image_bytes; serving_default takes preprocessed floats)" \
            if signature == SERVING_DEFAULT else ""
        raise ExportInputError(f"{signature}: input {name!r} must be {expected}, got dtype {array.dtype}{hint}")
    if not spec.shape.is_compatible_with(array.shape):
        raise ExportInputError(f"{signature}: input {name!r} must be {expected}, got shape {list(array.shape)}")
    return array.astype(np.float32, copy=False)


def _as_bytes_array(value, signature: str, name: str) -> np.ndarray:
    if isinstance(value, (bytes, str)) or not hasattr(value, "__len__"):
        raise ExportInputError(f"{signature}: input {name!r} must be a list of encoded images (string [None]), "
                               f"got {type(value).__name__}")
    items = list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise ExportInputError(f"{signature}: input {name!r} must be string [None], got shape {list(value.shape)}")
    for i, item in enumerate(items):
        if not isinstance(item, (bytes, np.bytes_)):
            raise ExportInputError(f"{signature}: element {i} of {name!r} must be bytes (an encoded image), "
                                   f"got {type(item).__name__}")
    return np.array(items, dtype=object)


def _check_score_rows(signature: str, rows: dict) -> None:
    for k in ("1", "2"):
        if rows["mu" + k] != rows["sigma_sq" + k]:
            raise ExportInputError(f"{signature}: mu{k} has {rows['mu' + k]} rows but sigma_sq{k} has "
                                   f"{rows['sigma_sq' + k]}")
    if signature == COMPARE and rows["mu1"] != rows["mu2"]:
        raise ExportInputError(f"compare is element-wise and needs as many rows in set 2 as in set 1 "
                               f"({rows['mu2']} vs {rows['mu1']}); use compare_all for all pairs")


def _shape_text(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + "]"


class ExportedModel:
    """A loaded export whose calls check dtypes and shapes first and return NumPy arrays.

    ``ExportedModel(path)`` takes a version directory or an export base (latest complete version).
    """

    def __init__(self, path: str):
        self.path = resolve_export(path)
        self.loaded = tf.saved_model.load(self.path)
        self.metadata = read_metadata(self.loaded, self.path)
        missing = [s for s in SIGNATURES if s not in self.loaded.signatures]
        if missing:
            raise ExportError(f"{self.path} lacks the signatures {missing}; was it written by export_saved_model?")

    def input_specs(self, signature: str) -> dict:
        return self.loaded.signatures[signature].structured_input_signature[1]

    def __call__(self, signature: str, **inputs) -> dict[str, np.ndarray]:
        if signature not in SIGNATURES:
            raise ExportInputError(f"unknown signature {signature!r}; choose one of {list(SIGNATURES)}")
        specs = self.input_specs(signature)
        if set(inputs) != set(specs):
            raise ExportInputError(f"{signature} takes inputs {sorted(specs)}, got {sorted(inputs)}")
        feed = {}
        for name, spec in specs.items():
            if spec.dtype == tf.string:
                feed[name] = tf.constant(_as_bytes_array(inputs[name], signature, name), tf.string)
            else:
                feed[name] = tf.constant(_as_float_array(inputs[name], signature, name, spec))
        if signature in (COMPARE, COMPARE_ALL):
            _check_score_rows(signature, {k: int(v.shape[0]) for k, v in feed.items()})
        return {k: v.numpy() for k, v in self.loaded.signatures[signature](**feed).items()}

    def embed(self, images) -> dict[str, np.ndarray]:
        """Preprocessed float images [N, H, W, 3] -> mu, sigma_sq, log_sigma_sq, embeddings_with_sigma."""
        return self(SERVING_DEFAULT, input=images)

    def embed_image_bytes(self, encoded) -> dict[str, np.ndarray]:
        """Encoded JPEG/PNG/GIF/BMP byte strings -> the same outputs as ``embed``."""
        return self(FROM_IMAGE_BYTES, image_bytes=encoded)

    def compare(self, mu1, sigma_sq1, mu2, sigma_sq2) -> dict[str, np.ndarray]:
        """Element-wise scores [N]: row i of set 1 against row i of set 2."""
        return self(COMPARE, mu1=mu1, sigma_sq1=sigma_sq1, mu2=mu2, sigma_sq2=sigma_sq2)

    def compare_all(self, mu1, sigma_sq1, mu2, sigma_sq2) -> dict[str, np.ndarray]:
        """All-pairs scores [N1, N2]."""
        return self(COMPARE_ALL, mu1=mu1, sigma_sq1=sigma_sq1, mu2=mu2, sigma_sq2=sigma_sq2)


def load_export(path: str) -> ExportedModel:
    """Load a SavedModel written by ``export_saved_model`` (a version directory or the export base)."""
    return ExportedModel(path)
