"""The single-file formats: one inference function of the BN-folded model, converted to LiteRT, ONNX or a TF1
frozen graph.

Every format holds one function, ``input`` float32 [N, H, W, 3] (preprocessed faces) -> ``mu`` [N, D],
``sigma_sq`` [N, S], ``log_sigma_sq`` [N, S], and carries the serving metadata (preprocessing, sizes,
quantisation) as JSON under the key ``probface`` (LiteRT: model metadata; ONNX: ``metadata_props``; frozen
graph: a string constant node ``probface_metadata``). The in-graph shape checks, image decoding and scoring of
the SavedModel are not part of these files: their runtimes check shapes themselves and scoring is two lines of
NumPy (``probface_tf.scoring``).
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from probface_tf.data.binfile import read_bin
from probface_tf.data.preprocess import decode_image, preprocess_batch
from probface_tf.export.errors import ExportError
from probface_tf.export.litert import litert_bytes
from probface_tf.export.onnx_export import onnx_bytes
from probface_tf.export.publishing import publish_file
from probface_tf.export.signatures import (check_finite_weights, check_preprocessing, default_preprocess_ops, inference_form, jsonable,
                                           model_input_size, model_output_sizes)

FORMATS = ("saved_model", "litert", "onnx", "frozen_pb")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx", "frozen_pb": ".pb"}
FILE_OUTPUTS = ("mu", "sigma_sq", "log_sigma_sq")
METADATA_KEY = "probface"
METADATA_NODE = "probface_metadata"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class InferenceFunction:
    """The folded model as one ``tf.function`` with named outputs, plus the metadata every format stores."""

    def __init__(self, model, preprocess_ops=None, resize_method: str = "pil_bilinear",
                 contrast_stretch: bool = True, extra_metadata: dict | None = None):
        check_finite_weights(model)
        self.extra_metadata = dict(extra_metadata or {})
        self.model = inference_form(model)
        self.image_size = model_input_size(self.model)
        self.dim, self.sigma_dim = model_output_sizes(self.model)
        self.ops = jsonable(preprocess_ops if preprocess_ops is not None else default_preprocess_ops(self.image_size))
        check_preprocessing(self.ops, self.image_size, resize_method, bool(contrast_stretch))
        self.resize_method, self.contrast_stretch = resize_method, bool(contrast_stretch)
        self.spec = tf.TensorSpec([None, *self.image_size, 3], tf.float32, name="input")
        self.function = tf.function(self.call, input_signature=[self.spec])

    def call(self, input):  # noqa: A002 - the original frozen graph's input name
        out = self.model(input, training=False)
        sigma_sq = tf.cast(out["sigma_sq"], tf.float32)
        log_sigma_sq = tf.cast(out["log_sigma_sq"], tf.float32) if "log_sigma_sq" in out else tf.math.log(sigma_sq)
        return {"mu": tf.identity(tf.cast(out["mu"], tf.float32), name="mu"),
                "sigma_sq": tf.identity(sigma_sq, name="sigma_sq"),
                "log_sigma_sq": tf.identity(log_sigma_sq, name="log_sigma_sq")}

    def concrete(self):
        return self.function.get_concrete_function()

    def frozen(self):
        """The concrete function with every variable folded to a constant (what the converters take)."""
        return convert_variables_to_constants_v2(self.concrete())

    def metadata(self, fmt: str, quantization: str = "float32") -> str:
        h, w = self.image_size
        return json.dumps({
            **self.extra_metadata,
            "format": f"probface_tf.{fmt}/1", "image_size": [h, w], "channels": 3, "embedding_size": self.dim,
            "sigma_size": self.sigma_dim, "preprocess_ops": self.ops, "resize_method": self.resize_method,
            "contrast_stretch": self.contrast_stretch, "quantization": quantization,
            "mls": "FastMLS" if self.sigma_dim == 1 else "D-dim MLS",
            "inputs": {"input": ["float32", [None, h, w, 3]]},
            "outputs": {"mu": [None, self.dim], "sigma_sq": [None, self.sigma_dim],
                        "log_sigma_sq": [None, self.sigma_dim]},
        }, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------------ frozen graph


def frozen_graph_bytes(fn: InferenceFunction) -> bytes:
    """One GraphDef, variables folded to constants: ``input:0`` -> ``mu:0``, ``sigma_sq:0``, ``log_sigma_sq:0``,
    like the original ``freeze_model.pb``; the metadata is the string constant ``probface_metadata:0``."""
    graph_def = fn.frozen().graph.as_graph_def()
    names = {node.name for node in graph_def.node}
    missing = [n for n in ("input", *FILE_OUTPUTS) if n not in names]
    if missing:
        raise ExportError(f"frozen_pb: the graph lacks the nodes {missing}")
    node = graph_def.node.add()
    node.name, node.op = METADATA_NODE, "Const"
    node.attr["dtype"].type = tf.string.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(fn.metadata("frozen_pb")))
    return graph_def.SerializeToString()


# ------------------------------------------------------------------------------------------------ calibration


def calibration_images(path: str, fn: InferenceFunction, limit: int = 256) -> np.ndarray:
    """Up to ``limit`` preprocessed images for int8 calibration, spread evenly over an image folder (searched
    recursively), a ``.bin`` verification set or a ``.npy`` array of preprocessed images [N, H, W, 3]."""
    if path.endswith(".npy"):
        images = np.load(path)
        if images.ndim != 4 or tuple(images.shape[1:]) != (*fn.image_size, 3):
            raise ExportError(f"--representative_data {path}: expected preprocessed images [N, {fn.image_size[0]}, "
                              f"{fn.image_size[1]}, 3], got shape {list(images.shape)}")
        return images[np.linspace(0, len(images) - 1, min(limit, len(images))).astype(int)].astype(np.float32)
    encoded = _encoded_images(path)
    if not encoded:
        raise ExportError(f"--representative_data {path}: no images found (a folder of {'/'.join(IMAGE_SUFFIXES)} "
                          f"files, a .bin or a .npy)")
    picks = np.linspace(0, len(encoded) - 1, min(limit, len(encoded))).astype(int)
    out = [preprocess_batch(decode_image(encoded[i], channels=3)[tf.newaxis], fn.ops, training=False,
                            contrast_stretch=fn.contrast_stretch, resize_method=fn.resize_method)[0].numpy()
           for i in picks]
    return np.stack(out).astype(np.float32)


def _encoded_images(path: str) -> list:
    if path.endswith(".bin"):
        return list(read_bin(path).encoded)
    if not os.path.isdir(path):
        raise ExportError(f"--representative_data {path}: no such directory, .bin or .npy file")
    files = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                   if n.lower().endswith(IMAGE_SUFFIXES))
    out = []
    for name in files:
        with open(name, "rb") as f:
            out.append(f.read())
    return out


# ------------------------------------------------------------------------------------------------ writing


def export_file(model, path: str, fmt: str, quantize: str | None = None, representative_data=None,
                preprocess_ops=None, resize_method: str = "pil_bilinear", contrast_stretch: bool = True,
                overwrite: bool = False, extra_metadata: dict | None = None) -> str:
    """Convert ``model`` to ``fmt`` ('litert', 'onnx', 'frozen_pb') and publish it atomically at ``path``.

    ``quantize='int8'`` (LiteRT, ONNX) calibrates its ranges on ``representative_data``: preprocessed images
    [N, H, W, 3] or a path for ``calibration_images``. ``extra_metadata`` (e.g. the decision thresholds of a
    ``Calibration``) is merged into the metadata the file carries. Returns ``path``.
    """
    if fmt not in SUFFIXES:
        raise ExportError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if quantize not in (None, "float32", "int8"):
        raise ExportError(f"--quantize must be 'int8' (or omitted for float32), got {quantize!r}")
    quantize = None if quantize == "float32" else quantize
    if quantize and fmt == "frozen_pb":
        raise ExportError("--quantize int8 is available for --format litert and onnx, not frozen_pb")
    if quantize and representative_data is None:
        raise ExportError("--quantize int8 needs calibration images (--representative_data DIR|.bin|.npy)")
    if os.path.exists(path) and not overwrite:  # before the conversion: fail fast, lose nothing
        raise ExportError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    fn = InferenceFunction(model, preprocess_ops, resize_method, contrast_stretch, extra_metadata)
    calibration = None
    if quantize:
        calibration = calibration_images(representative_data, fn) if isinstance(representative_data, str) \
            else np.asarray(representative_data, np.float32)
    if fmt == "frozen_pb":
        data = frozen_graph_bytes(fn)
    elif fmt == "litert":
        data = litert_bytes(fn, calibration if quantize else None)
    else:
        data = onnx_bytes(fn, calibration if quantize else None)
    return publish_file(data, path, overwrite)
