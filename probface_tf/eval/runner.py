"""Evaluate a model on insightface .bin verification sets: extract features in batches, then every metric.

``evaluate_features`` is pure NumPy (features in, result dict out); ``extract_features`` streams a .bin through a
model; ``evaluate_bins`` runs both for several files and writes the outputs.
"""
from __future__ import annotations

import numpy as np

from probface_tf import scoring
from probface_tf.eval import risk
from probface_tf.eval.report import PERCENTILES
from probface_tf.eval.verification import ten_fold_accuracy

# ScaleFace-style (distance, pair uncertainty fusion) combinations drawn as reject-verification curves.
REJECT_COMBOS = (("cosine", "max"), ("cosine", "sum"), ("mls", "sum"), ("mls", "max"))


class EvaluationError(ValueError):
    """A dataset or model cannot be evaluated; the message names the file and the problem."""


def pair_score_arrays(mu, sigma_sq) -> dict:
    """Per-pair scores of the .bin layout (pair k = rows 2k, 2k+1): cosine, and fastmls (1-d sigma) or mls
    (D-dim sigma) with their attention-only variant."""
    mu1, mu2 = scoring.pair_rows(mu)
    out = {"cosine": scoring.cosine_scores(mu1, mu2)}
    kind = scoring.uncertainty_kind(sigma_sq)
    if kind != "none":
        s1, s2 = scoring.pair_rows(np.asarray(sigma_sq).reshape(len(mu), -1))
        out[kind] = scoring.probabilistic_scores(mu1, s1, mu2, s2)
        out["attention_only"] = scoring.probabilistic_scores(mu1, s1, mu2, s2, attention_only=True)
    return out


def _check_features(mu, sigma_sq, issame, name) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    mu = np.asarray(mu)
    issame = np.asarray(issame, dtype=bool).ravel()
    if mu.ndim != 2 or mu.shape[0] != 2 * issame.size:
        raise EvaluationError(f"{name}: mu has shape {mu.shape}, expected [{2 * issame.size}, D] for "
                              f"{issame.size} pairs")
    if sigma_sq is not None:
        sigma_sq = np.asarray(sigma_sq).reshape(mu.shape[0], -1)
        if np.any(~np.isfinite(sigma_sq)) or np.any(sigma_sq <= 0):
            raise EvaluationError(f"{name}: sigma_sq must be finite and > 0; got min {np.nanmin(sigma_sq)!r}")
    return mu, sigma_sq, issame


def evaluate_features(mu, sigma_sq, issame, name: str = "", fusion: str = "max",
                      rejected_portions=risk.REJECTED_PORTIONS, fars=risk.FARS) -> tuple[dict, dict]:
    """All metrics of one dataset. Returns (result dict for the writers, per-pair arrays for scores.npz)."""
    mu, sigma_sq, issame = _check_features(mu, sigma_sq, issame, name)
    scores = pair_score_arrays(mu, sigma_sq)
    kind = scoring.uncertainty_kind(sigma_sq)
    result = {"name": name, "pairs": int(issame.size), "images": int(mu.shape[0]), "sigma": kind,
              "embedding_size": int(mu.shape[1]),
              "verification": {k: ten_fold_accuracy(s, issame).to_dict() for k, s in scores.items()}}
    arrays = {"issame": issame, **{k: v for k, v in scores.items() if k != "attention_only"}}
    if kind == "none":
        return result, arrays
    u1, u2 = scoring.pair_rows(scoring.image_uncertainty(sigma_sq))
    fused = scoring.fuse_uncertainty(u1, u2, fusion)
    arrays.update(sigma_sq_1=sigma_sq[0::2], sigma_sq_2=sigma_sq[1::2])
    result.update(
        fusion=fusion,
        sigma_sq_percentiles=[float(p) for p in risk.legacy_percentile(sigma_sq, PERCENTILES)],
        risk=[row.to_dict() for row in risk.risk_controlled_table(
            {"cosine": scores["cosine"], kind: scores[kind]}, issame, fused)],
        reject_fnmr=risk.reject_error_table(scores["cosine"], issame, scoring.fuse_uncertainty(u1, u2, "max"))
        .to_dict(),
        reject_verification=_reject_verification(scores, kind, issame, u1, u2, rejected_portions, fars))
    return result, arrays


def _reject_verification(scores, kind, issame, u1, u2, rejected_portions, fars) -> dict:
    from sklearn.metrics import auc

    curves, areas = {}, {}
    for distance, fusion in REJECT_COMBOS:
        distance = kind if distance == "mls" else distance
        combo = "%s+%s" % (distance, fusion)
        curve = risk.reject_verification_curves(scores[distance], issame, scoring.fuse_uncertainty(u1, u2, fusion),
                                                rejected_portions, fars)
        curves[combo] = curve
        areas[combo] = {far: float(auc(rejected_portions, tars)) for far, tars in curve.items()}
    return {"fars": [float(f) for f in fars], "rejected_portions": [float(p) for p in rejected_portions],
            "curves": curves, "tar_auc": areas}
