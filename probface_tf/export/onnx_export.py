"""ONNX files through tf2onnx, float32 or int8 (onnxruntime static quantisation), with the metadata inside.

tf2onnx converts the BN-folded inference function, not the serving SavedModel: ``serving_default`` guards the
convolutions with a ``tf.cond`` (an empty batch returns empty outputs) and in-graph shape asserts, so in the
SavedModel every kernel reaches its Conv2D through the cond's branch function as a captured placeholder, not as
a constant; tf2onnx's Conv2D handler then finds no constant kernel and fails in ``conv_kernel_shape``. The plain
function has constant (frozen) kernels and converts op for op. int8 is onnxruntime's static QDQ quantisation
(per-channel signed int8 weights, unsigned 8-bit activations calibrated on preprocessed faces: on x86 MLAS runs
u8 x s8 convolutions with VNNI, while s8 x s8 ran no faster than float32 here); the uncertainty head stays float32.
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from probface_tf.export.errors import ExportError, require
from probface_tf.export.litert import unsupported_ops_error

METADATA_KEY = "probface"
OPSET = 17
HEAD_SCOPE = "UncertaintyModule"


def onnx_bytes(fn, calibration: np.ndarray | None = None) -> bytes:
    """The serialised ONNX model of ``fn`` (an ``InferenceFunction``); int8 when ``calibration`` is given."""
    tf2onnx = require("tf2onnx", "onnx")
    onnx = require("onnx", "onnx")
    try:
        model, _ = tf2onnx.convert.from_function(fn.function, input_signature=[fn.spec], opset=OPSET)
    except Exception as exc:  # tf2onnx raises on ops it has no handler for, naming them
        raise unsupported_ops_error("onnx", exc) from None
    # tf2onnx keeps an op it cannot map under its TF name: the standard opset does not know it.
    unknown = sorted({node.op_type for node in model.graph.node if not onnx.defs.has(node.op_type, node.domain)})
    if unknown:
        raise ExportError(f"--format onnx cannot hold the op(s) {', '.join(unknown)} (custom or unsupported by "
                          f"the ONNX standard opset {OPSET})")
    if calibration is not None:
        model = _quantize_int8(model, calibration)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, fn.metadata("onnx", "int8" if calibration is not None else "float32")
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one preprocessed face per ``get_next``."""

    def __init__(self, images: np.ndarray, input_name: str):
        self.items = iter([{input_name: image[np.newaxis].astype(np.float32)} for image in images])

    def get_next(self):
        return next(self.items, None)


def _quantize_int8(model, calibration: np.ndarray):
    onnx = require("onnx", "onnx")
    quantization = require("onnxruntime.quantization", "onnx")
    head = [node.name for node in model.graph.node if HEAD_SCOPE in node.name]
    with tempfile.TemporaryDirectory() as scratch:
        source, target = os.path.join(scratch, "float.onnx"), os.path.join(scratch, "int8.onnx")
        onnx.save(model, source)
        quantization.quantize_static(
            source, target, _Calibration(calibration, model.graph.input[0].name),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            nodes_to_exclude=head, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return onnx.load(target)


def read_metadata(model) -> dict | None:
    """The ``probface`` metadata of a loaded ONNX ModelProto, or None."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return None
