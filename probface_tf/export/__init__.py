"""Exporting a ProbFace model for serving: TF Serving SavedModel, LiteRT, ONNX and a TF1 frozen graph.

Modules: ``signatures`` (the four serving functions), ``decoding`` (in-graph checks and image decoding),
``publishing`` (atomic, versioned writes), ``saved_model``, ``client`` (``load_export``), ``formats`` (LiteRT,
ONNX, frozen graph, int8), ``runtimes`` (running those files like any evaluated model), ``cli``.
"""
from probface_tf.export.cli import load_model_for_export, main, run
from probface_tf.export.client import ExportedModel, load_export, resolve_export
from probface_tf.export.errors import ExportError, ExportInputError
from probface_tf.export.formats import (FILE_OUTPUTS, FORMATS, InferenceFunction, calibration_images,
                                        export_file)
from probface_tf.export.publishing import list_versions, next_version, publish_file, publish_version
from probface_tf.export.runtimes import RUNTIME_SUFFIXES, open_runtime
from probface_tf.export.saved_model import METADATA_FILE, export_saved_model, write_serving_module
from probface_tf.export.signatures import (COMPARE, COMPARE_ALL, FORMAT, FROM_IMAGE_BYTES, OUTPUT_KEYS, SCORE_KEYS,
                                           SERVING_DEFAULT, SIGNATURES, build_serving_module, default_preprocess_ops,
                                           signature_functions)
