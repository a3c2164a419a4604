"""Input pipeline vs head training: can the tf.data sampler feed ProbFace head training on this machine?

Renders a synthetic identity folder (112x112 JPEGs, like decoded MS1M), then measures in the same process:
  - pipeline: images/s delivered by ``make_train_dataset`` under the original recipe (32 ids x 4, doubled to 256,
    resize 96 + flip + standardize), iterated on its own;
  - training: images/s consumed by ``HeadTrainer.image_step`` (frozen ResFace64 forward + head update) on a batch
    already in memory;
  - fed: images/s of the same training step fed by the live pipeline (both compete for the CPU).
Prints JSON with the rates, ``ratio`` = pipeline / training (goal >= 3) and ``fed_vs_in_memory`` = fed / training
(about 1 when the pipeline is not what limits training).

    python benchmarks/input_pipeline.py [--identities 200] [--batches 12] [--steps 3] [--image_size 96]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from probface_tf.config import load_config  # noqa: E402
from probface_tf.data.dataset import open_dataset  # noqa: E402
from probface_tf.data.sampler import make_train_dataset  # noqa: E402
from probface_tf.data.synthetic import synthesize  # noqa: E402
from probface_tf.train.loop import HeadTrainer, build_model  # noqa: E402

RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "resface64_msarcface.py")
GOAL = 3.0


def _rate(iterator, warmup: int, count: int, images_of) -> float:
    """Images/s over ``count`` items after ``warmup`` untimed ones (tracing, autotuning, thread start-up)."""
    for _ in range(warmup):
        next(iterator)
    images, start = 0, time.perf_counter()
    for _ in range(count):
        images += images_of(next(iterator))
    return images / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--images_per_identity", type=int, default=10)
    parser.add_argument("--batches", type=int, default=12, help="timed pipeline batches")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps (each ~256 images)")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--backbone", default="resface64_relu")
    parser.add_argument("--root", default=None, help="synthetic folder to (re)use; default: a temporary one")
    args = parser.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="probface_pipeline_")
    try:
        start = time.perf_counter()
        manifest = synthesize(root, args.identities, args.images_per_identity, bin_pairs=0, split=0.0)
        synth_seconds = time.perf_counter() - start
        side = args.image_size
        resize, standardize = ["resize", (side, side)], ["standardize", "mean_scale"]
        cfg = load_config(RECIPE, [f"image_size=[{side}, {side}]", f"train_dataset_path={manifest.train_dir}",
                                   f"embedding_network={args.backbone}",
                                   f"preprocess_train={[resize, ['random_flip'], standardize]}",
                                   f"preprocess_test={[resize, standardize]}"])
        data = open_dataset(manifest.train_dir, max_identities=cfg.max_identities)
        count = lambda images: int(images.shape[0])  # noqa: E731

        pipeline = (x for x, _ in make_train_dataset(data, cfg, num_steps=2 + args.batches))
        pipeline_rate = _rate(pipeline, 2, args.batches, count)

        images, labels = next(iter(make_train_dataset(data, cfg, num_steps=1)))
        trainer = HeadTrainer(build_model(cfg), cfg, cfg.lr)

        def train_in_memory():
            while True:
                trainer.image_step(images, labels, 0)
                yield images

        def train_fed():
            for x, y in make_train_dataset(data, cfg, start_step=1, num_steps=1 + args.steps):
                trainer.image_step(x, y, 0)
                yield x

        training_rate = _rate(train_in_memory(), 1, args.steps, count)
        fed_rate = _rate(train_fed(), 1, args.steps, count)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    ratio = pipeline_rate / training_rate
    result = {
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
        "dataset": {"identities": args.identities, "images": args.identities * args.images_per_identity,
                    "format": "112x112 jpg", "synthesize_seconds": round(synth_seconds, 1)},
        "recipe": {"backbone": args.backbone, "image_size": side, "batch": int(images.shape[0]),
                   "batch_format": cfg.batch_format, "double_batch": cfg.double_batch},
        "timed": {"pipeline_batches": args.batches, "training_steps": args.steps},
        "pipeline_images_per_s": round(pipeline_rate, 1),
        "training_images_per_s": round(training_rate, 1),
        "training_fed_by_pipeline_images_per_s": round(fed_rate, 1),
        "ratio": round(ratio, 2),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "fed_vs_in_memory": round(fed_rate / training_rate, 2),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
