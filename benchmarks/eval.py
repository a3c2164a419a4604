"""End-to-end .bin evaluation versus pure feature extraction of the same images, and peak memory.

Generates an LFW-sized .bin (6000 pairs, 12 000 JPEGs of 112x112) and a ResFace64(0.5) ProbFace model
(``resface64s2_relu``: widths 32/64/128/256, 3/8/16/3 blocks) at the original 96x96 input, then runs in two
fresh subprocesses:

* ``extract``: the images are preprocessed beforehand (not timed); timed = the model over them in batches.
* ``evaluate``: timed = the whole evaluation: read the .bin, decode, preprocess, extract, every metric, the
  figures, results.json/md and scores.npz; its peak RSS is read with ``resource.getrusage``.

Prints JSON with both times, their ratio (goal <= 1.15) and the peak RSS (goal <= 2 GB).

    python benchmarks/eval.py [--pairs 6000] [--image_size 96] [--batch_size 128] [--repeats 1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKBONE = dict(embedding_network="resface64s2_relu", backbone_filters=[32, 64, 128, 256],
                backbone_blocks=[3, 8, 16, 3])


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def make_inputs(root: str, pairs: int, image_size: int) -> tuple[str, str]:
    """A .bin of face-like random identities (smooth patterns + per-image noise and contrast) and the model."""
    import keras
    import numpy as np
    import tensorflow as tf

    from probface_tf.data.binfile import write_bin
    from probface_tf.models.probface import build_probface

    rng = np.random.default_rng(0)
    identities = rng.random((pairs // 2, 7, 7, 3)).astype(np.float32)

    def image(identity: int) -> bytes:
        noisy = identities[identity] + rng.normal(0, 0.15, (7, 7, 3))
        big = tf.image.resize(noisy[None], (112, 112), method="bicubic")[0].numpy()
        lo, hi = rng.uniform(0, 80), rng.uniform(170, 255)
        pixels = np.clip(lo + np.clip(big, 0, 1) * (hi - lo), 0, 255).astype(np.uint8)
        return tf.io.encode_jpeg(pixels, quality=90).numpy()

    bin_pairs = []
    for k in range(pairs):
        a = int(rng.integers(len(identities)))
        b = a if k % 2 == 0 else int((a + 1 + rng.integers(len(identities) - 1)) % len(identities))
        bin_pairs.append((image(a), image(b), a == b))
    bin_path = os.path.join(root, "lfw.bin")
    write_bin(bin_path, bin_pairs)
    keras.utils.set_random_seed(0)
    model = build_probface(image_size=(image_size, image_size), **BACKBONE)
    model_path = os.path.join(root, "model.keras")
    model.save(model_path)
    return bin_path, model_path


def _warm_up(model) -> None:
    import numpy as np

    model(np.zeros((2, *model.image_size, 3), np.float32))


def run_extract(model_path: str, bin_path: str, batch_size: int) -> dict:
    from probface_tf.data.binfile import read_bin
    from probface_tf.eval.model_loader import load_model
    from probface_tf.eval.runner import image_pipeline

    model = load_model(model_path)
    binset = read_bin(bin_path)
    batches = [b.numpy() for b in image_pipeline(binset, model.preprocessing, batch_size)]  # not timed
    _warm_up(model)
    start = time.perf_counter()
    count = 0
    for images in batches:
        count += len(model(images)["mu"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": count, "images_per_s": count / seconds,
            "preprocessed_bytes": int(sum(b.nbytes for b in batches))}


def run_evaluate(model_path: str, bin_path: str, batch_size: int, out_dir: str) -> dict:
    import resource

    from probface_tf.eval.model_loader import load_model
    from probface_tf.eval.runner import evaluate_bins

    model = load_model(model_path)
    _warm_up(model)
    start = time.perf_counter()
    results = evaluate_bins(model, [bin_path], out_dir, batch_size, save_scores=True, echo=lambda _: None)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"seconds": seconds, "peak_rss_bytes": peak_kb * 1024, "extract_seconds": results[0]["seconds"]["extract"],
            "metrics_seconds": results[0]["seconds"]["metrics"],
            "cosine_accuracy": results[0]["verification"]["cosine"]["accuracy"]}


def _child(mode: str, *args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode; the fastest counts")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, rest = args.child[0], args.child[1:]
        result = run_extract(rest[0], rest[1], int(rest[2])) if mode == "extract" else \
            run_evaluate(rest[0], rest[1], int(rest[2]), rest[3])
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as root:
        bin_path, model_path = make_inputs(root, args.pairs, args.image_size)
        extract, evaluate = [], []
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            extract.append(_child("extract", model_path, bin_path, str(args.batch_size)))
            evaluate.append(_child("evaluate", model_path, bin_path, str(args.batch_size), os.path.join(root, "out")))
        bin_bytes = os.path.getsize(bin_path)
    best_x = min(extract, key=lambda r: r["seconds"])
    best_e = min(evaluate, key=lambda r: r["seconds"])
    print(json.dumps({
        "images": best_x["images"], "pairs": args.pairs, "bin_bytes": bin_bytes,
        "model": {**BACKBONE, "image_size": [args.image_size] * 2, "embedding_size": 256, "sigma": "1-d"},
        "batch_size": args.batch_size, "cpu_count": os.cpu_count(), "repeats": args.repeats,
        "pure_extraction_seconds": round(best_x["seconds"], 3),
        "end_to_end_seconds": round(best_e["seconds"], 3),
        "ratio_end_to_end_vs_extraction": round(best_e["seconds"] / best_x["seconds"], 4),
        "goal_ratio": 1.15,
        "end_to_end_breakdown": {"extract_stage_seconds": round(best_e["extract_seconds"], 3),
                                 "metrics_seconds": round(best_e["metrics_seconds"], 3)},
        "peak_rss_bytes": best_e["peak_rss_bytes"], "peak_rss_gb": round(best_e["peak_rss_bytes"] / 2 ** 30, 3),
        "goal_peak_rss_gb": 2.0,
        "all_runs": {"extract_seconds": [round(r["seconds"], 3) for r in extract],
                     "evaluate_seconds": [round(r["seconds"], 3) for r in evaluate]},
        "cosine_accuracy": best_e["cosine_accuracy"],
    }, indent=2))


if __name__ == "__main__":
    main()
