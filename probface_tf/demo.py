"""The embedded CPU demo: synthetic identities -> stage-1 backbone -> ProbFace head -> uncertainty evaluation.

``python train.py configs/demo.py`` runs every stage into ``log/demo/<timestamp>/``:
``backbone/`` (ArcFace-trained ResFace), ``head/`` (the frozen backbone + UncertaintyModule, with its SavedModel
export), ``eval/`` (the evaluator's results.json / results.md / figures on the held-out identities) and
``demo_results.json`` with what the demo is meant to show: predicted sigma^2 tracks the known degradation
severity (Spearman), rejecting the riskiest pairs raises verification accuracy, FastMLS is as accurate as cosine.

A finished run is recorded in ``log/demo/LATEST`` (the run folder's name), so other recipes (the baseline
configs) and scripts can name "the latest demo run" through :func:`latest_run`.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

from probface_tf.atomic import atomic_open
from probface_tf.calibration import Calibration
from probface_tf.config import from_dict
from probface_tf.data.ensure import ensure_synthetic
from probface_tf.data.identification_protocol import write_identification_protocol
from probface_tf.eval.identification_run import run_protocol_folder
from probface_tf.eval.model_loader import load_model
from probface_tf.eval.runner import evaluate_bins
from probface_tf.train import backbone, loop
from probface_tf.train.logs import create_run_dir

STAGE_KEYS = ("stage", "name", "backbone_config", "head_config")
LATEST_FILE = "LATEST"


class DemoRunMissing(FileNotFoundError):
    """No finished demo run to build on; the message says how to make one."""


def mark_latest(run_dir: str) -> str:
    """Record ``run_dir`` as the latest finished run in ``<its parent>/LATEST``. The folder name only (relative,
    so a moved log folder still resolves), written to a temporary file and renamed: a reader never sees a
    half-written pointer, and a failed run never replaces the previous pointer."""
    base, name = os.path.split(os.path.abspath(run_dir))
    path = os.path.join(base, LATEST_FILE)
    with atomic_open(path) as f:
        f.write(name + "\n")
    return path


def latest_run(log_base_dir: str = "./log/", name: str = "demo", part: str = "") -> str:
    """The latest finished demo run (``part``: a path inside it, e.g. 'backbone'); raises DemoRunMissing."""
    base = os.path.join(os.path.expanduser(log_base_dir), name)
    hint = "run `python train.py configs/demo.py` first"
    try:
        with open(os.path.join(base, LATEST_FILE), encoding="utf-8") as f:
            run = f.read().strip()
    except FileNotFoundError:
        raise DemoRunMissing(f"no finished demo run: {os.path.join(base, LATEST_FILE)} not found; {hint}") from None
    path = os.path.join(base, run, part) if part else os.path.join(base, run)
    if not run or not os.path.exists(path):
        raise DemoRunMissing(f"{os.path.join(base, LATEST_FILE)} names {run!r}, but {path} does not exist; {hint}")
    return path


def stage_config(cfg, stage: str, overrides: dict | None, **fixed):
    """A stage's config: the demo's shared keys, the stage's overrides, then the fixed wiring."""
    shared = {k: v for k, v in cfg.explicit().items() if k not in STAGE_KEYS}
    return from_dict({**shared, **(overrides or {}), **fixed, "stage": stage}, source=f"demo {stage} stage")


SEVERITY_BUCKETS = ((0.0, 0.1), (0.1, 0.4), (0.4, 0.7), (0.7, 1.0))


def severity_correlation(sigma_sq: np.ndarray, severity: np.ndarray) -> float:
    """Spearman rank correlation between each image's sigma^2 (mean over dims) and its degradation severity."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(sigma_sq).reshape(len(severity), -1).mean(1), severity).statistic)


def accuracy_by_severity(cosine, issame, threshold: float, pair_severity) -> list[dict]:
    """Cosine accuracy at the all-pairs threshold within each band of pair severity (the worse image's)."""
    rows = []
    for lo, hi in SEVERITY_BUCKETS:
        inside = (pair_severity >= lo) & ((pair_severity < hi) if hi < 1.0 else (pair_severity <= hi))
        correct = (cosine[inside] >= threshold) == issame[inside]
        rows.append({"pair_severity": [lo, hi], "pairs": int(inside.sum()),
                     "cosine_accuracy": float(correct.mean()) if inside.any() else None})
    return rows


def image_sigma_sq(scores: dict, count: int) -> np.ndarray:
    """Per-image sigma^2 [count, S] in .bin order (pair k = images 2k, 2k+1) from a scores.npz's pair columns."""
    return np.stack([scores["sigma_sq_1"], scores["sigma_sq_2"]], 1).reshape(count, -1)


def summarize(result: dict, scores: dict, severity) -> dict:
    """The demo's claims as numbers, from one evaluator result and its per-pair scores on the held-out .bin."""
    severity = np.asarray(severity, np.float64)
    sigma_sq = image_sigma_sq(scores, len(severity))
    risk = {row["risk_factor"]: row["cosine"]["accuracy"] for row in result["risk"]}
    verification = result["verification"]
    return {
        "pairs": result["pairs"],
        "spearman_sigma_sq_vs_severity": severity_correlation(sigma_sq, severity),
        "cosine_accuracy": verification["cosine"]["accuracy"],
        "fastmls_accuracy": verification[result["sigma"]]["accuracy"],
        "accuracy_by_rejected_fraction": {str(k): v for k, v in sorted(risk.items())},
        "accuracy_gain_rejecting_20pct": risk[0.2] - risk[0.0],
        "accuracy_by_pair_severity": accuracy_by_severity(
            scores["cosine"], scores["issame"].astype(bool), verification["cosine"]["threshold"],
            np.maximum(severity[0::2], severity[1::2])),
    }


def plot_sigma_vs_severity(sigma_sq, severity, path: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.scatter(severity, np.asarray(sigma_sq).reshape(len(severity), -1).mean(1), s=4, alpha=0.4)
    ax.set_xlabel("degradation severity (known)")
    ax.set_ylabel("predicted sigma^2")
    ax.set_title("held-out identities")
    fig.savefig(path, dpi=100)
    return path


def evaluate_demo(export_base: str, bin_path: str, severity_path: str, out_dir: str, cfg) -> dict:
    """Evaluate the exported SavedModel on the held-out .bin exactly as ``evaluate.py --save-scores`` would."""
    model = load_model(export_base, config=cfg)
    result = evaluate_bins(model, [bin_path], out_dir=out_dir, batch_size=cfg.eval_batch_size, save_scores=True)[0]
    with np.load(os.path.join(out_dir, result["name"], "scores.npz")) as npz:
        scores = dict(npz)
    # as evaluate.py does: the decision thresholds for pf.load(..., calibration=...) and probface verify
    Calibration.from_score_arrays([scores], result["name"]).save(os.path.join(out_dir, "calibration.json"))
    severity = np.load(severity_path)
    summary = summarize(result, scores, severity)
    sigma_sq = image_sigma_sq(scores, len(severity))
    summary["figures"] = {"sigma_vs_severity": plot_sigma_vs_severity(
        sigma_sq, severity, os.path.join(out_dir, "sigma_vs_severity.png")),
        "reject_verification": os.path.join(out_dir, "%s_reject_verification.png" % result["name"])}
    return summary


def identify_heldout(export_base: str, heldout_dir: str, out_dir: str, cfg) -> dict:
    """Open-set 1:N on the held-out identities: half of them enrolled with 3 images each, every other image a
    probe (mated or not), exactly as ``evaluate.py --gallery_protocol OUT/protocol`` would score it."""
    protocol = os.path.join(out_dir, "protocol")
    write_identification_protocol(heldout_dir, protocol, enrolled_fraction=0.5, gallery_images=3)
    result = run_protocol_folder(load_model(export_base, config=cfg), protocol, None, out_dir,
                                 batch_size=cfg.eval_batch_size, echo=lambda text: None)
    return {"protocol": result["protocol"], "rows": result["rows"]}


def train(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
          max_steps: int | None = None) -> dict:
    start = time.time()
    manifest = ensure_synthetic(cfg)
    if manifest is None:
        raise ValueError("the demo config needs a 'synthetic' dataset spec")
    run_dir = run_dir or create_run_dir(cfg, config_path)
    print(f"demo: synthetic data in {manifest.root} ({manifest.num_train_identities} training identities, "
          f"{manifest.num_pairs} held-out pairs); run in {run_dir}", flush=True)
    b_cfg = stage_config(cfg, "backbone", cfg.backbone_config, name=cfg.name + "-backbone",
                         train_dataset_path=manifest.train_dir)
    stage1 = backbone.train(b_cfg, resume=resume, run_dir=os.path.join(run_dir, "backbone"), max_steps=max_steps)
    h_cfg = stage_config(cfg, "probface", cfg.head_config, name=cfg.name + "-head",
                         train_dataset_path=manifest.train_dir, restore_model=stage1["run_dir"],
                         exclude_restore_scopes=["UncertaintyModule"], test_bin_paths=[manifest.bin_path])
    stage2 = loop.train(h_cfg, resume=resume, run_dir=os.path.join(run_dir, "head"), max_steps=max_steps)
    summary = evaluate_demo(os.path.join(stage2["run_dir"], "saved_model"), manifest.bin_path,
                            manifest.bin_severity_path, os.path.join(run_dir, "eval"), h_cfg)
    summary["identification"] = identify_heldout(os.path.join(stage2["run_dir"], "saved_model"),
                                                 manifest.heldout_dir, os.path.join(run_dir, "identification"), h_cfg)
    summary["minutes"] = (time.time() - start) / 60.0
    with open(os.path.join(run_dir, "demo_results.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    mark_latest(run_dir)  # only a finished run becomes the one baseline recipes build on
    print(_summary_text(summary), flush=True)
    return {"run_dir": run_dir, "summary": summary}


def _summary_text(s: dict) -> str:
    rejected = "  ".join(f"{float(k):.0%}: {v:.4f}" for k, v in s["accuracy_by_rejected_fraction"].items())
    bands = "  ".join("%.1f-%.1f: %s (%d pairs)" % (*b["pair_severity"], "-" if b["cosine_accuracy"] is None
                                                    else "%.4f" % b["cosine_accuracy"], b["pairs"])
                      for b in s["accuracy_by_pair_severity"])
    return ("\n=== demo results (held-out identities, %d pairs) ===\n" % s["pairs"]
            + "Spearman(sigma^2, degradation severity): %.3f\n" % s["spearman_sigma_sq_vs_severity"]
            + "verification accuracy, cosine: %.4f   FastMLS: %.4f\n" % (s["cosine_accuracy"], s["fastmls_accuracy"])
            + "cosine accuracy after rejecting the riskiest pairs: " + rejected + "\n"
            + "cosine accuracy by pair severity: " + bands + "\n"
            + "1:N on held-out identities, rank-1 cosine: %.4f   FastMLS: %.4f   (identification/results.md)\n"
            % (s["identification"]["rows"]["cosine"]["rank1"], s["identification"]["rows"]["fastmls"]["rank1"])
            + "total time: %.1f min" % s["minutes"])
