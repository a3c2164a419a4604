"""Feature-extraction speed: the Keras ProbFace model vs the original TF1 graph with the same weights.

Prints JSON: images/s per engine and batch size, and ratios against the TF1 graph measured in the same run.
Engines: the TF1 graph in a Session (baseline); the Keras model under tf.function; the same with XLA
(jit_compile); the inference-folded model (BN folded into conv/dense weights); the folded model in bfloat16;
the exported files of the same weights (``probface-export``): LiteRT float32 / int8 (XNNPACK) and onnxruntime
float32 / int8 (QDQ, MLAS), int8 calibrated on ``--representative_data`` images (default: the benchmark's own random
images). The JSON also lists the CPU's int8/bf16 instructions (VNNI, AMX), which decide what int8 can gain.

    python benchmarks/extract.py [--network resface64_relu] [--image_size 96] [--batches 32,128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# the original TF1 graph is a test reference (tests/tf1_reference.py), not part of the package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from probface_tf.convert import load_tf1_checkpoint  # noqa: E402
from probface_tf.export.errors import ExportError  # noqa: E402
from probface_tf.export.formats import export_file  # noqa: E402
from probface_tf.export.runtimes import open_runtime  # noqa: E402
from probface_tf.models.inference import fold_batch_norm  # noqa: E402
from tf1_reference import TF1ProbFace  # noqa: E402


def _rates(engines: dict, images, repeats: int) -> dict:
    """Best-of-``repeats`` images/s per engine, the engines interleaved round by round so that a change in
    machine load hits all of them alike."""
    for fn in engines.values():
        fn(images)  # warm-up: tracing, XLA compilation
    best = {name: float("inf") for name in engines}
    for _ in range(repeats):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn(images)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: len(images) / seconds for name, seconds in best.items()}


FILE_ENGINES = {"litert_f32": ("litert", None), "litert_int8": ("litert", "int8"),
                "onnx_f32": ("onnx", None), "onnx_int8": ("onnx", "int8")}
CPU_FLAGS = ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu_flags() -> list:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in CPU_FLAGS if f in flags]


def _file_engines(model, folder: str, calibration: np.ndarray) -> tuple[dict, dict]:
    """{name: runtime} of the exported files, and {name: reason} for the formats that could not be built."""
    engines, unavailable = {}, {}
    for name, (fmt, quantize) in FILE_ENGINES.items():
        path = os.path.join(folder, name + (".tflite" if fmt == "litert" else ".onnx"))
        try:
            export_file(model, path, fmt, quantize=quantize, representative_data=calibration if quantize else None)
            engines[name] = open_runtime(path, num_threads=os.cpu_count())
        except (ExportError, ImportError) as exc:
            unavailable[name] = str(exc)
    return engines, unavailable


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resface64_relu")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--representative_data", default=None, help=".npy of preprocessed faces for the int8 engines")
    args = parser.parse_args(argv)
    side = args.image_size
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (4, side, side, 3)).astype(np.float32)
    graph = TF1ProbFace(args.network, (side, side), 256, 1)
    graph.randomize(rng, calibrate_images=calib)
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(os.path.join(tmp, "ckpt"), global_step=0)
        model = load_tf1_checkpoint(tmp)
    files = tempfile.TemporaryDirectory()
    calibration = np.load(args.representative_data) if args.representative_data else rng.normal(0, 1, (64, side, side, 3))
    exported, unavailable = _file_engines(model, files.name, calibration.astype(np.float32))
    folded = fold_batch_norm(model)
    folded_bf16 = fold_batch_norm(model, compute_dtype="bfloat16")
    engines = {
        "tf1_graph": lambda x: graph.run(x),
        "keras_tf_function": tf.function(lambda x: model(x, training=False)),
        "keras_xla": tf.function(lambda x: model(x, training=False), jit_compile=True),
        "keras_folded": tf.function(lambda x: folded(x, training=False)),
        "keras_folded_xla": tf.function(lambda x: folded(x, training=False), jit_compile=True),
        "keras_folded_bf16": tf.function(lambda x: folded_bf16(x, training=False)),
        **exported,
    }
    check = calib[:2]
    ref = graph.run(check)
    parity = {name: float(np.abs(np.asarray(fn(check)["mu"]) - ref["mu"]).max())
              for name, fn in engines.items() if name != "tf1_graph"}
    results = {"network": args.network, "image_size": side, "threads": os.cpu_count(), "cpu_flags": _cpu_flags(),
               "unavailable": unavailable, "max_abs_mu_diff_vs_tf1": parity, "images_per_s": {}, "ratio_vs_tf1": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        images = rng.normal(0, 1, (batch, side, side, 3)).astype(np.float32)
        rates = _rates(engines, images, args.repeats)
        results["images_per_s"][str(batch)] = {k: round(v, 2) for k, v in rates.items()}
        results["ratio_vs_tf1"][str(batch)] = {k: round(v / rates["tf1_graph"], 3)
                                               for k, v in rates.items() if k != "tf1_graph"}
    results["int8_note"] = _int8_note(results)
    files.cleanup()
    json.dump(results, sys.stdout, indent=2)
    print()


def _int8_note(results: dict) -> str:
    """Why an int8 engine does or does not reach 3x the TF1 graph on this CPU."""
    flags = results["cpu_flags"]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    best = {name: max(r.get(name, 0) for r in results["ratio_vs_tf1"].values()) for name in ("litert_int8", "onnx_int8")}
    text = (f"int8 kernels: LiteRT runs XNNPACK qs8 convolutions (the widest int8 kernels the CPU offers), "
            f"onnxruntime runs the QDQ graph as u8 x s8 QLinearConv (MLAS); the CPU {'has' if vnni else 'lacks'} "
            f"VNNI int8 dot products{' and has AMX-INT8' if 'amx_int8' in flags else ''}"
            f"{'' if vnni else ', so int8 gains little over float32'}. Best ratio vs TF1: "
            + ", ".join(f"{k} {v:.2f}x" for k, v in best.items()))
    return text


if __name__ == "__main__":
    main()
