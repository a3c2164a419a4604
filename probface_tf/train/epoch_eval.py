"""The per-epoch evaluation of both training stages (the original's ``verification_risk.eval_images``).

For each configured ``.bin`` (``test_targets`` found in ``test_data_dir_mx``, plus ``test_bin_paths``): stream
the images through the model, then print the sigma-percentile line and the risk-factor lines (cosine 10-fold
accuracy on the pairs kept at risk 0 / 0.1 / 0.2 / 0.3, pair sigma fused by max), in the original format.
As the original, the decoded ``.bin`` images are treated as float arrays, so ``preprocess_test`` applies the
contrast stretch before resizing (``eval_contrast_stretch``).
"""
from __future__ import annotations

import os

from probface_tf.eval.model_loader import wrap_keras_model
from probface_tf.eval.report import percentile_line, risk_line
from probface_tf.eval.runner import evaluate_bin


def training_bin_paths(cfg) -> list[str]:
    paths = []
    if cfg.test_data_dir_mx:
        for name in cfg.test_targets:
            path = os.path.join(cfg.test_data_dir_mx, name + ".bin")
            if os.path.exists(path):  # the original silently evaluates only the targets it finds
                paths.append(path)
    return paths + list(cfg.test_bin_paths or [])


def evaluate_training_bins(model, cfg, cosine_line: bool = False):
    """Yields (name, original text block, scalars for TensorBoard) per configured .bin: with ``cosine_line`` the
    cosine 10-fold accuracy line first (stage 1), then, when the model gives an uncertainty, the sigma-percentile
    line and the risk-factor lines."""
    paths = training_bin_paths(cfg)
    if not paths:
        return
    loaded = wrap_keras_model(model, cfg)  # BN-folded inference copy of the current weights
    for path in paths:
        # as the original training script: a D-dim sigma^2 is read the way its verification_risk.py reads it
        result, _, _ = evaluate_bin(loaded, path, cfg.eval_batch_size, sigma_dims="original")
        lines, scalars = [], {}
        if cosine_line:
            cosine = result["verification"]["cosine"]
            lines.append("Cosine score acc %f threshold %f" % (cosine["accuracy"], cosine["threshold"]))
            scalars["cosine_acc"] = cosine["accuracy"]
        if result.get("risk"):
            lines += [percentile_line(result["sigma_sq_percentiles"])] + [risk_line(r) for r in result["risk"]]
            scalars.update({f"acc_risk{r['risk_factor']}": r["cosine"]["accuracy"] for r in result["risk"]})
        if result.get("sigma") in result["verification"]:  # baselines' uncertainties have no MLS score
            scalars[f"{result['sigma']}_acc"] = result["verification"][result["sigma"]]["accuracy"]
        yield result["name"], "\n".join(lines), scalars
