"""Head-training speed: our training step vs the original TF1 training graph, same batch, same process.

Prints JSON with steps/s of
  - tf1_graph: the original graph (frozen ResFace64 forward + losses + Momentum update), in a Session;
  - keras_images: HeadTrainer on images (frozen backbone BN-folded), the default image mode;
  - keras_images_bf16_backbone: the same with the frozen backbone in bfloat16 (mixed_precision='mixed_bfloat16');
  - keras_feature_cache: a training step from the feature cache as the loop runs it: ``cache.batch(step)``
    (class-balanced plan, flip draws, gather of the cached features) then ``HeadTrainer.step``; the cache is
    built once beforehand from generated identities, and that one-off build is reported separately
    (``feature_cache_build``: seconds, and seconds per image, since it scales with the dataset);
  - feature_cache_batch_only: ``cache.batch(step)`` alone (the per-step assembly cost inside the figure above);
and the ratios against tf1_graph. The batch is the original's: 128 images doubled to 256 (32 ids x 8).

    python benchmarks/train_step.py [--image_size 96] [--batch 256] [--repeats 3] [--cache_identities 64]
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

from probface_tf.config import load_config  # noqa: E402
from probface_tf.convert import load_tf1_checkpoint  # noqa: E402
from probface_tf.data.dataset import open_dataset  # noqa: E402
from probface_tf.data.synthetic import synthesize  # noqa: E402
from probface_tf.train.feature_cache import FeatureCache  # noqa: E402
from probface_tf.train.loop import HeadTrainer  # noqa: E402
from tf1_reference import TF1ProbFace  # noqa: E402


def _steps_per_s(engines: dict, repeats: int) -> dict:
    """Best-of-``repeats`` steps/s per engine, interleaved round by round (fair under changing load)."""
    for fn in engines.values():
        fn(0)  # trace / compile
    best = {name: float("inf") for name in engines}
    for r in range(repeats):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn(r + 1)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: 1.0 / seconds for name, seconds in best.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=256, help="images per step (after doubling)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache_identities", type=int, default=64,
                        help="generated identities (4 images each) the feature cache is built from")
    args = parser.parse_args(argv)
    side, n = args.image_size, args.batch
    cfg = load_config("configs/resface64_msarcface.py", [f"image_size=[{side}, {side}]"])
    rng = np.random.default_rng(0)
    # A doubled batch as the pipeline builds it: augmented (about half mirrored), then the plain twins.
    plain = rng.normal(0, 1, (n // 2, side, side, 3)).astype(np.float32)
    mirrored = rng.random(n // 2) >= 0.5
    augmented = np.where(mirrored[:, None, None, None], plain[:, :, ::-1], plain)
    images = np.concatenate([augmented, plain])
    labels = np.repeat(np.arange(n // 8), 8).astype(np.int32)
    graph = TF1ProbFace("resface64_relu", (side, side), 256, 1, weight_decay=cfg.weight_decay,
                        loss_weights=cfg.loss_weights, output_constraint="L2", with_train_op=True)
    graph.randomize(rng, calibrate_images=images[:8])
    with tempfile.TemporaryDirectory() as tmp:
        graph.save(os.path.join(tmp, "ckpt"), global_step=0)
        model = load_tf1_checkpoint(tmp)
    trainer = HeadTrainer(model, cfg, 0.01)
    # The frozen backbone in bfloat16 (AMX / AVX512-BF16 CPUs): the head and losses stay float32.
    bf16 = HeadTrainer(model, cfg.replace(mixed_precision="mixed_bfloat16"), 0.01)
    with tempfile.TemporaryDirectory() as tmp:
        data = open_dataset(synthesize(tmp, num_identities=max(args.cache_identities, n // 8), images_per_identity=4,
                                       seed=0, image_size=112, bin_pairs=0, split=0.0).train_dir)
        trainer.extract(images[:8])  # trace the backbone outside the build timing
        start = time.perf_counter()
        cache = FeatureCache.build(data, cfg, trainer.extract)
        build_s = time.perf_counter() - start
    engines = {
        "tf1_graph": lambda i: graph.train_step(images, labels, 0.01),
        "keras_images": lambda i: trainer.image_step(images, labels, i),
        "keras_images_bf16_backbone": lambda i: bf16.image_step(images, labels, i),
        "keras_feature_cache": lambda i: trainer.step(*cache.batch(i), i),
        "feature_cache_batch_only": lambda i: cache.batch(1000 + i),
    }
    rates = _steps_per_s(engines, args.repeats)
    result = {"image_size": side, "batch": n, "threads": os.cpu_count(),
              "steps_per_s": {k: round(v, 4) for k, v in rates.items()},
              "ratio_vs_tf1": {k: round(v / rates["tf1_graph"], 2) for k, v in rates.items()
                               if k not in ("tf1_graph", "feature_cache_batch_only")},
              "feature_cache_step_speedup_vs_image_mode":
                  round(rates["keras_feature_cache"] / rates["keras_images"], 1),
              "feature_cache_build": {"images": len(data), "seconds": round(build_s, 2),
                                      "seconds_per_image": round(build_s / len(data), 5),
                                      "image_mode_steps_of_same_cost": round(build_s * rates["keras_images"], 1)}}
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
