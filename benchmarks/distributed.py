"""Head-training throughput under tf.distribute: a MirroredStrategy over N logical CPU devices versus one device,
same process, same doubled batch, same weights; and feature extraction likewise.

On a CPU the logical devices share the same cores, so the ratio mostly shows the strategy's overhead (it need not
exceed 1 here; on N GPUs the backbone forward, the bulk of a step, is split N ways). The losses of both runs are
compared, so a fast but wrong configuration cannot pass unnoticed.

    python benchmarks/distributed.py [--devices 2] [--image_size 96] [--batch 64] [--steps 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="logical CPU devices of the mirrored strategy")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64, help="images per step before doubling (P x 4)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the two engines; best counts")
    parser.add_argument("--half_width", action="store_true", help="ResFace64(0.5) instead of ResFace64")
    args = parser.parse_args(argv)

    from probface_tf.train.distribute import make_strategy

    mirrored = make_strategy("mirrored", cpu_devices=args.devices)  # before TensorFlow initialises its devices
    import keras
    import numpy as np
    import tensorflow as tf

    from probface_tf.config import from_dict
    from probface_tf.models.probface import build_probface
    from probface_tf.train.loop import HeadTrainer

    network = "resface64s2_relu" if args.half_width else "resface64_relu"
    size = [args.image_size, args.image_size]
    cfg = from_dict({"embedding_network": network, "image_size": size, "batch_size": args.batch,
                     "learning_rate_schedule": {0: 0.01}})
    keras.utils.set_random_seed(0)
    weights = build_probface(network, size).get_weights()
    rng = np.random.default_rng(0)
    augmented = rng.normal(0, 1, (args.batch, *size, 3)).astype(np.float32)
    twins = augmented.copy()
    twins[::2] = twins[::2, :, ::-1]  # half the images mirrored, as random_flip does
    images = np.concatenate([augmented, twins])
    labels = np.tile(np.repeat(np.arange(args.batch // 4), 4), 2)

    def trainer(strategy):
        with strategy.scope():
            model = build_probface(network, size)
        model.set_weights(weights)
        return HeadTrainer(model, cfg, 0.01, strategy)

    engines = {"one_device": trainer(tf.distribute.get_strategy()), "mirrored": trainer(mirrored)}
    first = {name: t.image_step(images, labels, 0) for name, t in engines.items()}  # trace + warm up
    best = {name: float("inf") for name in engines}
    extract = {name: float("inf") for name in engines}
    for _ in range(args.rounds):  # interleaved, so load changes on a shared machine hit both alike
        for name, t in engines.items():
            start = time.perf_counter()
            for step in range(args.steps):
                t.image_step(images, labels, 1 + step)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
            start = time.perf_counter()
            t.extract(images)[0].numpy()
            extract[name] = min(extract[name], time.perf_counter() - start)
    n = len(images)
    result = {
        "network": network, "image_size": args.image_size, "images_per_step": n, "replicas": args.devices,
        "cpu_count": os.cpu_count(),
        "one_device_images_per_s": round(n / best["one_device"], 2),
        "mirrored_images_per_s": round(n / best["mirrored"], 2),
        "ratio_mirrored_vs_one_device": round(best["one_device"] / best["mirrored"], 3),
        "extract_ratio_mirrored_vs_one_device": round(extract["one_device"] / extract["mirrored"], 3),
        "first_step_max_abs_loss_diff": max(abs(first["one_device"][k] - first["mirrored"][k])
                                            for k in first["one_device"]),
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
