"""Feature-extraction speed: the Keras ProbFace model vs the original TF1 graph with the same weights.

Prints JSON: images/s per engine and batch size, and ratios against the TF1 graph measured in the same run.
Engines: the TF1 graph in a Session (baseline); the Keras model under tf.function; the same with XLA
(jit_compile); the inference-folded model (BN folded into conv/dense weights); the folded model in bfloat16.

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", default="resface64_relu")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batches", default="32,128")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    side = args.image_size
    rng = np.random.default_rng(0)
    calib = rng.normal(0, 1, (4, side, side, 3)).astype(np.float32)
    graph = TF1ProbFace(args.network, (side, side), 256, 1)
    graph.randomize(rng, calibrate_images=calib)
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(os.path.join(tmp, "ckpt"), global_step=0)
        model = load_tf1_checkpoint(tmp)
    folded = fold_batch_norm(model)
    folded_bf16 = fold_batch_norm(model, compute_dtype="bfloat16")
    engines = {
        "tf1_graph": lambda x: graph.run(x),
        "keras_tf_function": tf.function(lambda x: model(x, training=False)),
        "keras_xla": tf.function(lambda x: model(x, training=False), jit_compile=True),
        "keras_folded": tf.function(lambda x: folded(x, training=False)),
        "keras_folded_xla": tf.function(lambda x: folded(x, training=False), jit_compile=True),
        "keras_folded_bf16": tf.function(lambda x: folded_bf16(x, training=False)),
    }
    check = calib[:2]
    ref = graph.run(check)
    parity = {name: float(np.abs(np.asarray(fn(check)["mu"]) - ref["mu"]).max())
              for name, fn in engines.items() if name != "tf1_graph"}
    results = {"network": args.network, "image_size": side, "threads": os.cpu_count(),
               "max_abs_mu_diff_vs_tf1": parity, "images_per_s": {}, "ratio_vs_tf1": {}}
    for batch in (int(b) for b in args.batches.split(",")):
        images = rng.normal(0, 1, (batch, side, side, 3)).astype(np.float32)
        rates = _rates(engines, images, args.repeats)
        results["images_per_s"][str(batch)] = {k: round(v, 2) for k, v in rates.items()}
        results["ratio_vs_tf1"][str(batch)] = {k: round(v / rates["tf1_graph"], 3)
                                               for k, v in rates.items() if k != "tf1_graph"}
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
