"""Evaluate a model on insightface .bin verification sets: extract features in batches, then every metric.

``evaluate_features`` is pure NumPy (features in, result dict out); ``extract_features`` streams a .bin through a
model (``probface_tf.eval.extraction``: decode and preprocessing run in a tf.data pipeline beside the model, so
only a few batches of float images exist at any time); ``evaluate_bins`` runs both for several files and
``report_results`` writes every output.
"""
from __future__ import annotations

import os
import time

import numpy as np

from probface_tf import pair_uncertainty, scoring
from probface_tf.eval import report, risk
from probface_tf.eval.extraction import EvaluationError, extract_bin, image_pipeline  # noqa: F401 - public here
from probface_tf.eval.report import PERCENTILES
from probface_tf.eval.verification import ten_fold_accuracy

# The insightface verification sets run_eval.sh looks for, in the README's column order.
KNOWN_TARGETS = ("lfw", "cfp_ff", "cfp_fp", "agedb_30", "calfw", "cplfw", "vgg2_fp")

# ScaleFace-style (distance, pair uncertainty fusion) combinations drawn as reject-verification curves.
REJECT_COMBOS = (("cosine", "max"), ("cosine", "sum"), ("mls", "sum"), ("mls", "max"))


def pair_score_arrays(mu, sigma_sq) -> dict:
    """Per-pair scores of the .bin layout (pair k = rows 2k, 2k+1): cosine, and fastmls (1-d sigma) or mls
    (D-dim sigma) with their attention-only variant."""
    mu1, mu2 = pair_uncertainty.pair_rows(mu)
    out = {"cosine": scoring.cosine_scores(mu1, mu2)}
    kind = scoring.uncertainty_kind(sigma_sq)
    if kind != "none":
        s1, s2 = pair_uncertainty.pair_rows(np.asarray(sigma_sq).reshape(len(mu), -1))
        out[kind] = scoring.probabilistic_scores(mu1, s1, mu2, s2)
        out["attention_only"] = scoring.probabilistic_scores(mu1, s1, mu2, s2, attention_only=True)
    return out


def _check_features(mu, sigma_sq, issame, name, gaussian: bool = True) -> tuple[np.ndarray, np.ndarray | None,
                                                                                 np.ndarray]:
    mu = np.asarray(mu)
    issame = np.asarray(issame, dtype=bool).ravel()
    if mu.ndim != 2 or mu.shape[0] != 2 * issame.size:
        raise EvaluationError(f"{name}: mu has shape {mu.shape}, expected [{2 * issame.size}, D] for "
                              f"{issame.size} pairs")
    if sigma_sq is not None:
        sigma_sq = np.asarray(sigma_sq).reshape(mu.shape[0], -1)
        if np.any(~np.isfinite(sigma_sq)) or np.any(sigma_sq <= 0 if gaussian else sigma_sq < 0):
            what = "sigma_sq must be finite and > 0" if gaussian else "the uncertainty must be finite and >= 0"
            bad = int(np.sum(~np.isfinite(sigma_sq)))
            raise EvaluationError(f"{name}: {what}; got {bad} non-finite value(s) and min "
                                  f"{np.nanmin(np.where(np.isinf(sigma_sq), np.nan, sigma_sq))!r}")
    return mu, sigma_sq, issame


SIGMA_DIMS = ("full", "original")
SIGMA_DIMS_NOTES = {
    "full": "D-dim sigma_sq: D-dim MLS; risk table on the per-image harmonic mean 1/mean(1/sigma_sq)",
    "original": "D-dim sigma_sq as the original: FastMLS on sigma_sq[:, 0]; risk table percentile over all "
                "P x D fused values, pairs repeated once per kept value"}


def evaluate_features(mu, sigma_sq, issame, name: str = "", fusion: str = "max",
                      rejected_portions=risk.REJECTED_PORTIONS, fars=risk.FARS, gaussian: bool = True,
                      sigma_dims: str = "full") -> tuple[dict, dict]:
    """All metrics of one dataset. Returns (result dict for the writers, per-pair arrays for scores.npz).

    ``gaussian=False``: ``sigma_sq`` is another per-image uncertainty (larger = riskier; the baselines'
    1 - confidence, MC-dropout spread or 1/scale): no MLS scores, it only drives the risk and reject tables
    (``result['sigma']`` is then 'uncertainty'). ``sigma_dims`` (D-dim Gaussian sigma_sq only, see
    ``SIGMA_DIMS_NOTES``): 'full' (ours) or 'original'; ``result['sigma_dims']`` says which was used."""
    if sigma_dims not in SIGMA_DIMS:
        raise EvaluationError(f"sigma_dims must be one of {list(SIGMA_DIMS)}, got {sigma_dims!r}")
    mu, sigma_sq, issame = _check_features(mu, sigma_sq, issame, name, gaussian)
    original_ddim = (sigma_dims == "original" and gaussian and scoring.uncertainty_kind(sigma_sq) == "mls")
    scores = pair_score_arrays(mu, (sigma_sq[:, :1] if original_ddim else sigma_sq) if gaussian else None)
    kind = scoring.uncertainty_kind(sigma_sq[:, :1] if original_ddim else sigma_sq)
    kind = kind if gaussian or kind == "none" else "uncertainty"
    result = {"name": name, "pairs": int(issame.size), "images": int(mu.shape[0]), "sigma": kind,
              "embedding_size": int(mu.shape[1]),
              "verification": {k: ten_fold_accuracy(s, issame).to_dict() for k, s in scores.items()}}
    if scoring.uncertainty_kind(sigma_sq) == "mls" and gaussian:
        result["sigma_dims"] = {"mode": sigma_dims, "note": SIGMA_DIMS_NOTES[sigma_dims]}
    arrays = {"issame": issame, **{k: v for k, v in scores.items() if k != "attention_only"}}
    if kind == "none":
        return result, arrays
    u1, u2 = pair_uncertainty.pair_rows(pair_uncertainty.image_uncertainty(sigma_sq))
    fused = (pair_uncertainty.fuse_uncertainty(sigma_sq[0::2], sigma_sq[1::2], fusion) if original_ddim
             else pair_uncertainty.fuse_uncertainty(u1, u2, fusion))
    column = "sigma_sq" if gaussian else "uncertainty"
    arrays.update({column + "_1": sigma_sq[0::2], column + "_2": sigma_sq[1::2]})
    result.update(
        fusion=fusion,
        sigma_sq_percentiles=[float(p) for p in risk.legacy_percentile(sigma_sq, PERCENTILES)],
        risk=[row.to_dict() for row in risk.risk_controlled_table(
            {k: scores[k] for k in ("cosine", kind) if k in scores}, issame, fused)],
        reject_fnmr=risk.reject_error_table(scores["cosine"], issame, pair_uncertainty.fuse_uncertainty(u1, u2, "max"))
        .to_dict(),
        reject_verification=_reject_verification(scores, kind, issame, u1, u2, rejected_portions, fars))
    return result, arrays


def _reject_verification(scores, kind, issame, u1, u2, rejected_portions, fars) -> dict:
    from sklearn.metrics import auc

    curves, areas = {}, {}
    for distance, fusion in REJECT_COMBOS:
        distance = kind if distance == "mls" else distance
        if distance not in scores:  # a non-Gaussian uncertainty has no MLS score
            continue
        combo = "%s+%s" % (distance, fusion)
        curve = risk.reject_verification_curves(scores[distance], issame, pair_uncertainty.fuse_uncertainty(u1, u2, fusion),
                                                rejected_portions, fars)
        curves[combo] = curve
        areas[combo] = {far: float(auc(rejected_portions, tars)) for far, tars in curve.items()}
    return {"fars": [float(f) for f in fars], "rejected_portions": [float(p) for p in rejected_portions],
            "curves": curves, "tar_auc": areas}


# ---------------------------------------------------------------------------------------------------- extraction


def extract_features(model, binset, batch_size: int = 128, progress=None) -> tuple[np.ndarray, np.ndarray | None]:
    """(mu [2P, D], sigma_sq [2P, S] or None) for every image of ``binset`` in file order."""
    mu, sigma_sq, _ = extract_bin([model], binset, batch_size, progress)[0]
    return mu, sigma_sq


# ---------------------------------------------------------------------------------------------------- whole runs


def resolve_bins(bins=(), bin_dir: str | None = None, targets=KNOWN_TARGETS, skip_missing: bool = False) -> list:
    """.bin paths from explicit files plus ``bin_dir/<target>.bin``; a missing file is an error unless
    ``skip_missing`` (then it is left out)."""
    paths = list(bins)
    if bin_dir is not None:
        if not os.path.isdir(bin_dir):
            raise EvaluationError(f"--bin_dir {bin_dir}: no such directory")
        paths += [os.path.join(bin_dir, t + ".bin") for t in targets]
    found = [p for p in paths if os.path.isfile(p)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing and not skip_missing:
        raise EvaluationError(f".bin file not found: {missing[0]}")
    if not found:
        raise EvaluationError("no .bin file to evaluate" + (f" (looked for {', '.join(paths)})" if paths else ""))
    return found


def evaluate_bin_models(models, path: str, batch_size: int = 128, fusion: str = "max", progress=None,
                        sigma_dims: str = "full") -> list:
    """Read one .bin, decode it once for every model, evaluate each: per model (result dict, per-pair arrays,
    uncertainty or None). ``seconds``: ``extract`` (the dataset's whole extraction), ``forward`` (this model's
    forward passes), ``metrics``."""
    from probface_tf.data.binfile import read_bin

    binset = read_bin(path)
    start = time.perf_counter()
    extracted = extract_bin(models, binset, batch_size, progress)
    extraction = time.perf_counter() - start
    out = []
    for model, (mu, sigma_sq, forward) in zip(models, extracted):
        start = time.perf_counter()
        result, arrays = evaluate_features(mu, sigma_sq, binset.issame, binset.name, fusion, gaussian=model.gaussian,
                                           sigma_dims=sigma_dims)
        result["seconds"] = {"extract": extraction, "forward": forward, "metrics": time.perf_counter() - start}
        result["path"] = path
        out.append((result, arrays, sigma_sq))
    return out


def evaluate_bin(model, path: str, batch_size: int = 128, fusion: str = "max", progress=None,
                 sigma_dims: str = "full") -> tuple:
    """Read, extract and evaluate one .bin: (result dict, per-pair arrays, sigma_sq or None)."""
    return evaluate_bin_models([model], path, batch_size, fusion, progress, sigma_dims)[0]


def evaluate_bins(model, paths, out_dir: str | None = None, batch_size: int = 128, fusion: str = "max",
                  save_scores: bool = False, plots: bool = True, echo=print, sigma_dims: str = "full") -> list[dict]:
    """Evaluate every .bin, echo the original text block of each, and write results.json, results.md, the
    figures and (``save_scores``) ``<name>/scores.npz`` into ``out_dir``."""
    # lazily: echo as each ends
    evaluated = (evaluate_bin(model, path, batch_size, fusion, sigma_dims=sigma_dims) for path in paths)
    return report_results(model, evaluated, out_dir, fusion, save_scores, plots, echo)


def report_results(model, evaluated, out_dir: str | None = None, fusion: str = "max", save_scores: bool = False,
                   plots: bool = True, echo=print) -> list[dict]:
    """Echo and write the outputs of one model from ``(result, per-pair arrays, sigma_sq)`` of each dataset."""
    from probface_tf.eval.plots import dataset_figures

    if not model.has_sigma:
        echo("note: %s: %s; evaluating with cosine only" % (model.path, model.sigma_note))
    results, figures = [], {}
    for result, arrays, sigma_sq in evaluated:
        results.append(result)
        if out_dir:  # only once there is something to write: a refused first .bin leaves no empty folder
            os.makedirs(out_dir, exist_ok=True)
        echo(report.dataset_text(result) + "\n")
        if out_dir and plots:
            figures[result["name"]] = dataset_figures(result, sigma_sq, out_dir)
        if out_dir and save_scores:
            report.write_scores(os.path.join(out_dir, result["name"], "scores.npz"), arrays)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        payload = {"model": model.path, "model_kind": model.kind, "has_sigma": model.has_sigma,
                   "uncertainty": getattr(model, "uncertainty", "sigma_sq"),
                   "image_size": list(model.image_size), "fusion": fusion,
                   "preprocessing": vars(model.preprocessing), "datasets": results,
                   "summary": dict(zip(("header", "rows"), report.summary_rows(results, model.name)))}
        report.write_json(os.path.join(out_dir, "results.json"), payload)
        report.write_markdown(os.path.join(out_dir, "results.md"), results, model.name, figures)
        echo("wrote %s, results.md and the figures" % os.path.join(out_dir, "results.json"))
    echo("\n" + report.summary_table(results, model.name))  # last, like the original README's results table
    return results
