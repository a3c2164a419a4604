"""The console script ``probface-export``: a .keras model or TF1 checkpoint -> SavedModel, LiteRT, ONNX or
frozen graph.

    probface-export --model run/model.keras --out serving/            # SavedModel, serving/<version>/
    probface-export --model run/model.keras --format litert --out m.tflite [--quantize int8 --representative_data DIR]
    probface-export --model run/model.keras --format onnx --out m.onnx [--quantize int8 --representative_data DIR]

Every format takes ``--calibration calibration.json`` (written by evaluate.py): its decision thresholds travel in
the metadata, so ``probface_tf.load`` of the export answers same / different / uncertain.
    probface-export --model run/model.keras --format frozen_pb --out m.pb
"""
from __future__ import annotations

import json
import os
import sys

import keras
from absl import flags

import probface_tf.models.probface  # noqa: F401 - registers the custom layers for deserialisation
from probface_tf.calibration import Calibration
from probface_tf.config import load_config
from probface_tf.convert import load_tf1_checkpoint
from probface_tf.export.errors import ExportError
from probface_tf.export.formats import FILE_OUTPUTS, FORMATS, export_file
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


USAGE = ("usage: probface-export --model PATH --out OUT [--format saved_model|litert|onnx|frozen_pb] "
         "[--quantize int8 --representative_data DIR|.bin|.npy] [--calibration calibration.json] [--version N] "
         "[--overwrite] [--config CFG]")


def _define_flags():
    # A private FlagValues: importing this module never adds flags to a caller's absl.flags.FLAGS.
    fv = flags.FlagValues()
    flags.DEFINE_string("model", None, "a .keras ProbFace model, or an original TF1 run dir / checkpoint "
                        "(with --config)", flag_values=fv)
    flags.DEFINE_enum("format", "saved_model", list(FORMATS), "saved_model (TF Serving), litert (.tflite), onnx, "
                      "or frozen_pb (a TF1 GraphDef: input:0 -> mu:0, sigma_sq:0)", flag_values=fv)
    flags.DEFINE_string("out", None, "saved_model: export base, the model goes to OUT/<version>/; other formats: "
                        "the file to write (e.g. model.tflite)", flag_values=fv)
    flags.DEFINE_enum("quantize", None, ["int8"], "litert / onnx: int8 post-training quantisation; needs "
                      "--representative_data", flag_values=fv)
    flags.DEFINE_string("representative_data", None, "int8 calibration images: a folder of face images (searched "
                        "recursively), a .bin verification set or a .npy of preprocessed images", flag_values=fv)
    flags.DEFINE_string("calibration", None, "a calibration.json written by evaluate.py: its decision thresholds "
                        "are stored in the export's metadata", flag_values=fv)
    flags.DEFINE_integer("version", None, "version number (default: largest existing + 1, or 1)", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing version directory", flag_values=fv)
    flags.DEFINE_string("config", None, "config file: preprocess_test, resize_method and eval_contrast_stretch "
                        "for from_image_bytes (default: resize to the model input + mean_scale)", flag_values=fv)
    return fv


def main(argv=None) -> int:
    """``probface-export --model PATH --out OUT [--format F] [--quantize int8 --representative_data D]
    [--calibration FILE] [--version N]
    [--overwrite] [--config CFG]``; 0 on success, 2 on a bad model / option, 1 when the output cannot be written."""
    fv = _define_flags()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(USAGE + "\n")
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
        if fv.calibration:
            kwargs["extra_metadata"] = Calibration.load(fv.calibration).to_metadata()
        model = load_model_for_export(fv.model, cfg)
        path = _export(model, fv, kwargs)
    except ValueError as exc:  # ExportError, ConfigError, CheckpointError: messages name the file or key
        print(f"probface-export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished directory: nothing was published
        print(f"probface-export: error: cannot write {fv.out}: {exc.strerror or exc} (nothing was written)",
              file=sys.stderr)
        return 1
    print(f"exported {path}")
    _print_summary(path, fv.format)
    return 0


def _export(model, fv, kwargs) -> str:
    if fv.format == "saved_model":
        if fv.quantize:
            raise ExportError("--quantize int8 is available for --format litert and onnx, not saved_model")
        return export_saved_model(model, fv.out, version=fv.version, overwrite=fv.overwrite, **kwargs)
    if fv.version is not None:
        raise ExportError(f"--version applies to --format saved_model only; --format {fv.format} writes --out")
    return export_file(model, fv.out, fv.format, quantize=fv.quantize, representative_data=fv.representative_data,
                       overwrite=fv.overwrite, **kwargs)


def _print_summary(path: str, fmt: str) -> None:
    if fmt == "saved_model":
        with open(os.path.join(path, "assets", METADATA_FILE), encoding="utf-8") as f:
            for name, spec in json.load(f)["signatures"].items():
                print(f"  {name}: {spec['inputs']} -> {spec['outputs']}")
    else:
        print(f"  {fmt}: {{'input': float32 [None, H, W, 3]}} -> {list(FILE_OUTPUTS)} ({os.path.getsize(path)} bytes)")


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()