"""The console script ``probface-export``: a .keras model or TF1 checkpoint -> SavedModel, LiteRT, ONNX or
frozen graph.

    probface-export --model run/model.keras --out serving/            # SavedModel, serving/<version>/
    probface-export --model run/model.keras --format litert --out m.tflite [--quantize int8 --calibration DIR]
    probface-export --model run/model.keras --format onnx --out m.onnx [--quantize int8 --calibration DIR]
    probface-export --model run/model.keras --format frozen_pb --out m.pb
"""
from __future__ import annotations

import json
import os
import sys

import keras
from absl import flags

import probface_tf.models.probface  # noqa: F401 - registers the custom layers for deserialisation
from probface_tf.config import load_config
from probface_tf.convert import load_tf1_checkpoint
from probface_tf.export.errors import ExportError
from probface_tf.export.saved_model import METADATA_FILE, export_saved_model


def load_model_for_export(path: str, cfg=None):
    """A ``.keras`` ProbFace model, or an original TF1 checkpoint (run dir / prefix) converted on the fly."""
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise ExportError(f"--model {path}: no such file or directory")
    if path.endswith(".keras"):
        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as exc:  # a corrupt or foreign file: report which one
            raise ExportError(f"--model {path}: cannot load the Keras model: {type(exc).__name__}: {exc}") from exc
    return load_tf1_checkpoint(path, cfg)


def _define_flags():
    # A private FlagValues: importing this module never adds flags to a caller's absl.flags.FLAGS.
    fv = flags.FlagValues()
    flags.DEFINE_string("model", None, "a .keras ProbFace model, or an original TF1 run dir / checkpoint "
                        "(with --config)", flag_values=fv)
    flags.DEFINE_string("out", None, "export base: the SavedModel goes to OUT/<version>/", flag_values=fv)
    flags.DEFINE_integer("version", None, "version number (default: largest existing + 1, or 1)", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing version directory", flag_values=fv)
    flags.DEFINE_string("config", None, "config file: preprocess_test, resize_method and eval_contrast_stretch "
                        "for from_image_bytes (default: resize to the model input + mean_scale)", flag_values=fv)
    return fv


def main(argv=None) -> int:
    """``probface-export --model PATH --out EXPORT_BASE [--version N] [--overwrite] [--config CFG]``."""
    fv = _define_flags()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print("usage: probface-export --model PATH --out EXPORT_BASE [--version N] [--overwrite] [--config CFG]\n")
        print(fv.get_help())
        return 0
    try:
        rest = fv(["probface-export", *argv])
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments {rest[1:]}")
        for required in ("model", "out"):
            if fv[required].value is None:
                raise flags.Error(f"--{required} is required")
    except flags.Error as exc:
        print(f"probface-export: error: {exc}", file=sys.stderr)
        return 2
    try:
        kwargs = {}
        cfg = None
        if fv.config:
            cfg = load_config(fv.config)
            kwargs = {"preprocess_ops": cfg.preprocess_test, "resize_method": cfg.resize_method,
                      "contrast_stretch": cfg.eval_contrast_stretch}
        model = load_model_for_export(fv.model, cfg)
        path = export_saved_model(model, fv.out, version=fv.version, overwrite=fv.overwrite, **kwargs)
    except ValueError as exc:  # ExportError, ConfigError, CheckpointError: messages name the file or key
        print(f"probface-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    with open(os.path.join(path, "assets", METADATA_FILE), encoding="utf-8") as f:
        for name, spec in json.load(f)["signatures"].items():
            print(f"  {name}: {spec['inputs']} -> {spec['outputs']}")
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()