"""The original per-epoch evaluation during head training (``verification_risk.eval_images``).

For each configured ``.bin`` (``test_targets`` found in ``test_data_dir_mx``, plus ``test_bin_paths``): stream
the images through the model, then print the sigma-percentile line and the risk-factor lines (cosine 10-fold
accuracy on the pairs kept at risk 0 / 0.1 / 0.2 / 0.3, pair sigma fused by max), in the original format.
As the original, the decoded ``.bin`` images are treated as float arrays, so ``preprocess_test`` applies the
contrast stretch before resizing (``eval_contrast_stretch``).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from probface_tf.data.binfile import read_bin
from probface_tf.data.preprocess import preprocess_from_config
from probface_tf.eval.report import percentile_line, risk_line
from probface_tf.eval.runner import evaluate_features


def training_bin_paths(cfg) -> list[str]:
    paths = []
    if cfg.test_data_dir_mx:
        for name in cfg.test_targets:
            path = os.path.join(cfg.test_data_dir_mx, name + ".bin")
            if os.path.exists(path):  # the original silently evaluates only the targets it finds
                paths.append(path)
    return paths + list(cfg.test_bin_paths or [])


def embed_bin(model, path: str, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma_sq, issame) of a .bin, extracted in batches of ``eval_batch_size``."""
    from probface_tf.models.inference import fold_batch_norm

    fast = fold_batch_norm(model)
    run = tf.function(lambda x: fast(x, training=False), reduce_retracing=True)
    data = read_bin(path, cfg.eval_batch_size)
    mus, sigmas = [], []
    for batch in data.batches(dtype=np.float32):
        out = run(preprocess_from_config(batch, cfg, training=False))
        mus.append(out["mu"].numpy())
        sigmas.append(out["sigma_sq"].numpy())
    return np.concatenate(mus), np.concatenate(sigmas), data.issame


def evaluate_training_bins(model, cfg):
    """Yields (name, original text block, scalars for TensorBoard) per configured .bin."""
    for path in training_bin_paths(cfg):
        name = os.path.splitext(os.path.basename(path))[0]
        mu, sigma_sq, issame = embed_bin(model, path, cfg)
        result, _ = evaluate_features(mu, sigma_sq, issame, name=name)
        lines = [percentile_line(result["sigma_sq_percentiles"])] + [risk_line(r) for r in result["risk"]]
        scalars = {f"acc_risk{r['risk_factor']}": r["cosine"]["accuracy"] for r in result["risk"]}
        scalars[f"{result['sigma']}_acc"] = result["verification"][result["sigma"]]["accuracy"]
        yield name, "\n".join(lines), scalars
