"""Running exported files like any evaluated model: LiteRT (``.tflite``), ONNX (``.onnx``), frozen graph (``.pb``).

``open_runtime(path)`` returns a callable with the interface of ``eval.model_loader.LoadedModel``'s function:
preprocessed float32 images [N, H, W, 3] -> ``{'mu', 'sigma_sq', 'log_sigma_sq'}`` NumPy arrays, plus
``image_size``, ``kind``, ``metadata`` and ``preprocessing`` (the evaluation preprocessing the file carries).
Inputs are checked here (dtype, rank, size), because these runtimes abort with terse native errors.
"""
from __future__ import annotations

import json
import os

import numpy as np

from probface_tf.export.errors import ExportError, ExportInputError, require
from probface_tf.export.litert import read_metadata as litert_metadata
from probface_tf.export.onnx_export import read_metadata as onnx_metadata

RUNTIME_SUFFIXES = (".tflite", ".onnx", ".pb")
OUTPUTS = ("mu", "sigma_sq", "log_sigma_sq")


class Runtime:
    """Shared part: metadata, input checks, batching in fixed chunks."""

    kind = ""

    def __init__(self, path: str, metadata: dict | None):
        if not metadata:
            raise ExportError(f"{path}: no 'probface' metadata; was it written by probface-export?")
        self.path, self.metadata = path, metadata
        self.image_size = tuple(int(s) for s in metadata["image_size"])
        self.quantization = metadata.get("quantization", "float32")

    @property
    def preprocessing(self) -> dict:
        return {"ops": self.metadata["preprocess_ops"], "resize_method": self.metadata["resize_method"],
                "contrast_stretch": bool(self.metadata["contrast_stretch"])}

    def check(self, images) -> np.ndarray:
        array = np.asarray(images)
        expected = f"float32 [N, {self.image_size[0]}, {self.image_size[1]}, 3] (preprocessed faces)"
        if array.dtype.kind != "f":
            raise ExportInputError(f"{self.path}: input must be {expected}, got dtype {array.dtype}")
        if array.ndim != 4 or tuple(array.shape[1:]) != (*self.image_size, 3):
            raise ExportInputError(f"{self.path}: input must be {expected}, got shape {list(array.shape)}")
        return np.ascontiguousarray(array, np.float32)

    def __call__(self, images) -> dict[str, np.ndarray]:
        images = self.check(images)
        if len(images) == 0:
            return {k: np.zeros([0, self.metadata["outputs"][k][1]], np.float32) for k in OUTPUTS}
        out = self.run(images)
        return {k: np.asarray(out[k], np.float32) for k in OUTPUTS}

    def run(self, images: np.ndarray) -> dict:
        raise NotImplementedError


class LiteRTModel(Runtime):
    kind = "litert"

    def __init__(self, path: str, num_threads: int | None = None):
        interpreter = require("ai_edge_litert.interpreter", "litert")
        with open(path, "rb") as f:
            data = f.read()
        super().__init__(path, litert_metadata(data))
        self.interpreter = interpreter.Interpreter(model_content=data, num_threads=num_threads or os.cpu_count())
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def run(self, images):
        return self.runner(input=images)


class OnnxModel(Runtime):
    kind = "onnx"

    def __init__(self, path: str, num_threads: int | None = None):
        ort = require("onnxruntime", "onnx")
        onnx = require("onnx", "onnx")
        super().__init__(path, onnx_metadata(onnx.load(path, load_external_data=False)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or os.cpu_count()
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def run(self, images):
        return dict(zip(self.names, self.session.run(None, {self.input_name: images})))


class FrozenGraphModel(Runtime):
    kind = "frozen_pb"

    def __init__(self, path: str, num_threads: int | None = None):
        tf = require("tensorflow", "frozen_pb")
        graph_def = tf.compat.v1.GraphDef()
        with open(path, "rb") as f:
            graph_def.ParseFromString(f.read())
        meta = [n for n in graph_def.node if n.name == "probface_metadata"]
        text = tf.make_ndarray(meta[0].attr["value"].tensor).item().decode("utf-8") if meta else None
        super().__init__(path, json.loads(text) if text else None)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.fetches = {k: self.graph.get_tensor_by_name(f"{k}:0") for k in OUTPUTS}

    def run(self, images):
        return self.session.run(self.fetches, {"input:0": images})


def open_runtime(path: str, num_threads: int | None = None) -> Runtime:
    """The runtime for an exported file, chosen by its suffix (``RUNTIME_SUFFIXES``)."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    for suffix, cls in ((".tflite", LiteRTModel), (".onnx", OnnxModel), (".pb", FrozenGraphModel)):
        if path.endswith(suffix):
            try:
                return cls(path, num_threads)
            except (ExportError, ImportError):
                raise
            except Exception as exc:  # a corrupt or foreign file: name it
                raise ExportError(f"{path}: cannot load as {cls.kind}: {type(exc).__name__}: {exc}") from None
    raise ExportError(f"{path}: unknown suffix; expected one of {list(RUNTIME_SUFFIXES)}")
