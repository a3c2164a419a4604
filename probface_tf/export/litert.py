"""LiteRT (TensorFlow Lite) flatbuffers: float32, or int8 post-training quantisation, with the metadata inside.

The converter runs on the BN-folded inference function with the builtin op set only (no Select TF ops), so the
file runs on the plain ``ai-edge-litert`` interpreter; an op outside that set is an ExportError naming it. int8 is
LiteRT's full-integer quantisation of the weights and activations (per-channel conv kernels, calibrated on a
representative set of preprocessed faces) with float32 input and outputs. The head is quantised too: on the demo's
held-out faces sigma_sq keeps its ranking (Spearman 0.9995 against float32), so nothing needs to stay float.
"""
from __future__ import annotations

import json
import re
import tempfile

import numpy as np
import tensorflow as tf

from probface_tf.export.errors import ExportError, require

METADATA_KEY = "probface"
_TF_OP = re.compile(r"'tf\.(\w+)' op is neither|op \[[^\]]*: (\w+)\] is not supported")


def unsupported_ops_error(fmt: str, exc: Exception) -> ExportError:
    """An ExportError that names the ops a format cannot hold (parsed from the converter's message)."""
    text = str(exc)
    ops = sorted({a or b for a, b in _TF_OP.findall(text)})
    if ops:
        return ExportError(f"--format {fmt} cannot hold the op(s) {', '.join(ops)} (custom, or not in its builtin "
                           f"op set)")
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    return ExportError(f"--format {fmt}: the converter failed: {first}")


def _representative(images: np.ndarray):
    def generate():
        for image in images:
            yield [image[np.newaxis].astype(np.float32)]
    return generate


def litert_bytes(fn, calibration: np.ndarray | None = None) -> bytes:
    """The flatbuffer of ``fn`` (an ``InferenceFunction``); int8 when ``calibration`` images are given."""
    require("ai_edge_litert", "litert")
    # Through a scratch SavedModel of the function alone: from a live Keras model the converter leaves some
    # variables as resources (READ_VARIABLE ops the interpreter cannot run); from a SavedModel it freezes all.
    holder = tf.Module()
    holder.serve = fn.function
    holder.model_variables = list(fn.concrete().variables)
    with tempfile.TemporaryDirectory() as scratch:
        tf.saved_model.save(holder, scratch, signatures={"serving_default": fn.concrete()})
        converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if calibration is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = _representative(calibration)
        try:
            data = converter.convert()
        except Exception as exc:  # ConverterError: the message lists the ops the builtin set lacks
            raise unsupported_ops_error("litert", exc) from None
    return with_metadata(data, fn.metadata("litert", "int8" if calibration is not None else "float32"))


def with_metadata(flatbuffer: bytes, text: str) -> bytes:
    """The model with ``text`` stored as the metadata entry ``probface`` (a buffer named in Model.metadata)."""
    schema = require("ai_edge_litert.schema_py_generated", "litert")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = require("flatbuffers", "litert").Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_metadata(flatbuffer: bytes) -> dict | None:
    """The ``probface`` metadata of a LiteRT file, or None."""
    schema = require("ai_edge_litert.schema_py_generated", "litert")
    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode("utf-8") == METADATA_KEY:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8"))
    return None
