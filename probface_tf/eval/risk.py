"""Rejecting uncertain pairs: the original risk-controlled table, face-uncertainty-pytorch's error-versus-reject
table (EER / FMR100 / FMR1000, AUERC), and ScaleFace's TAR@FAR-versus-rejected-portion curves.

A pair's uncertainty is the fusion (max by default) of its two images' sigma_sq. For a reject fraction r the
kept pairs are those with ``fused <= percentile(fused, (1 - r) * 100)``; ties at the threshold are all kept,
which is why the original keeps 6301 rather than 6300 of 7000 CFP-FP pairs at r = 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probface_tf.eval.metrics import auerc_family, eer_stats, split_genuine_impostor, tar_at_far
from probface_tf.eval.verification import ten_fold_accuracy

RISK_FACTORS = (0.0, 0.1, 0.2, 0.3)
REJECT_FACTORS = np.arange(0, 1.0, 0.01)  # face-uncertainty-pytorch's 100 reject fractions
REJECT_PRINT_POINTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
REJECTED_PORTIONS = tuple(np.round(np.arange(0, 0.51, 0.05), 2))  # ScaleFace-style curves, 0 ... 0.5
FARS = (1e-4, 1e-3, 1e-2, 1e-1)


def legacy_percentile(values, q):
    """``np.percentile`` (linear) as NumPy <= 1.19 computed it, which the original ran: index q/100*(n-1),
    result ``x[below]*(1 - w) + x[above]*w`` in float64. Newer NumPy interpolates in another order and can
    differ in the last digit of the printed risk threshold."""
    x = np.sort(np.asarray(values).ravel())
    if x.size == 0:
        raise ValueError("percentile of an empty array")
    index = np.true_divide(np.asarray(q, dtype=np.float64), 100) * (x.size - 1)
    below = np.floor(index).astype(np.intp)
    above = np.minimum(below + 1, x.size - 1)
    w_above = index - below
    return x[below] * (1 - w_above) + x[above] * w_above


def keep_mask(fused: np.ndarray, risk_threshold) -> np.ndarray:
    # The original compared a float32 array with a float64 scalar under NumPy's old value-based casting,
    # i.e. in the array's own precision; the cast reproduces that.
    fused = np.asarray(fused)
    threshold = fused.dtype.type(risk_threshold) if np.issubdtype(fused.dtype, np.floating) else risk_threshold
    return fused <= threshold


@dataclass
class RiskRow:
    risk_factor: float
    risk_threshold: float
    kept: int
    total: int
    results: dict = field(default_factory=dict)  # score name -> FoldResult

    def to_dict(self) -> dict:
        return {"risk_factor": self.risk_factor, "risk_threshold": self.risk_threshold, "kept": self.kept,
                "total": self.total, **{k: v.to_dict() for k, v in self.results.items()}}


def risk_controlled_table(scores: dict, issame, fused, risk_factors=RISK_FACTORS) -> list[RiskRow]:
    """10-fold accuracy of each score on the pairs kept at each risk factor (folds re-made on the subset).

    ``scores`` maps a name (e.g. 'cosine', 'fastmls') to per-pair scores. As the original, an empty subset
    falls back to all pairs and ends the table. ``fused`` is ``[P]`` or ``[P, D]``: with D columns (a D-dim
    sigma_sq, the original's ``verification_risk``) the percentile is taken over all P x D values and a pair is
    kept once per column under the threshold (``np.where(fused <= t)[0]`` repeats row indices), so ``kept``
    counts values and the 10 folds run over the repeated pairs.
    """
    issame = np.asarray(issame, dtype=bool)
    fused = np.asarray(fused)
    fused = fused.reshape(fused.shape[0], -1)
    rows = []
    for r in risk_factors:
        threshold = float(legacy_percentile(fused, (1 - r) * 100))
        keep = np.nonzero(keep_mask(fused, threshold))[0]
        row = RiskRow(float(r), threshold, int(keep.size), int(fused.shape[0]))
        subset = keep if keep.size else slice(None)
        for name, s in scores.items():
            row.results[name] = ten_fold_accuracy(np.asarray(s)[subset], issame[subset])
        rows.append(row)
        if not keep.size:
            break
    return rows


@dataclass
class RejectTable:
    """face-uncertainty-pytorch's table: per reject fraction, EER and FNMR at the decision thresholds that
    gave FMR = 1 % / 0.1 % without rejection (fixed thresholds)."""
    reject_factors: np.ndarray = field(repr=False)
    rows: list = field(default_factory=list)  # dicts at REJECT_PRINT_POINTS
    errors: np.ndarray = field(default=None, repr=False)  # FNMR@FMR1e-3 (fixed threshold) per reject factor
    areas: dict = field(default_factory=dict)
    stopped_at: float | None = None  # first reject factor whose kept pairs lack genuine or impostor pairs

    @property
    def mean_error(self) -> float:
        return float(np.mean(self.errors))

    def to_dict(self) -> dict:
        return {"rows": self.rows, "fmr1000_mean": self.mean_error, **self.areas, "stopped_at": self.stopped_at,
                "reject_factors": [float(r) for r in self.reject_factors[: len(self.errors)]],
                "fmr1000_fixed_threshold": [float(e) for e in self.errors]}


def reject_error_table(scores, issame, fused, reject_factors=REJECT_FACTORS,
                       print_points=REJECT_PRINT_POINTS) -> RejectTable:
    scores = np.asarray(scores).ravel()
    issame = np.asarray(issame, dtype=bool)
    fused = np.asarray(fused).ravel()
    table = RejectTable(np.asarray(reject_factors, dtype=np.float64))
    errors, fixed = [], None
    for r in table.reject_factors:
        threshold = float(legacy_percentile(fused, (1 - r) * 100))
        keep = np.flatnonzero(keep_mask(fused, threshold))
        subset = keep if keep.size else slice(None)
        genuine, impostor = split_genuine_impostor(scores[subset], issame[subset])
        if not (genuine.size and impostor.size):  # only on tiny sets: the table ends where a class runs out
            table.stopped_at = float(r)
            break
        stats = eer_stats(genuine, impostor)
        if fixed is None:  # r = 0: the operating thresholds that later rows keep fixed
            fixed = (stats.fmr100_th, stats.fmr1000_th)
            fmr100, fmr1000 = stats.fmr100, stats.fmr1000
        else:
            fmr100, fmr1000 = stats.fnmr_near(fixed[0]), stats.fnmr_near(fixed[1])
        if r in print_points:
            table.rows.append({"reject_factor": float(r), "risk_threshold": threshold, "kept": int(keep.size),
                               "total": int(fused.size), "eer": stats.eer, "fmr100": fmr100, "fmr1000": fmr1000})
        errors.append(fmr1000)
        if not keep.size:
            break
    table.errors = np.asarray(errors)
    table.areas = auerc_family(table.reject_factors[: len(errors)], table.errors)
    return table


def reject_verification_curves(scores, issame, uncertainty, rejected_portions=REJECTED_PORTIONS,
                               fars=FARS) -> dict:
    """ScaleFace's reject verification: pairs sorted by uncertainty (stable, most certain first), the first
    ``int(n * (1 - r))`` kept, TAR@FAR on them. Returns {far: [TAR per rejected portion]} (NaN where the kept
    pairs lack genuine or impostor pairs)."""
    scores = np.asarray(scores).ravel()
    issame = np.asarray(issame, dtype=bool)
    order = np.argsort(np.asarray(uncertainty).ravel(), kind="stable")
    scores, issame = scores[order], issame[order]
    curves = {float(far): [] for far in fars}
    for r in rejected_portions:
        n = int(scores.size * (1 - r))
        if issame[:n].all() or not issame[:n].any():  # tiny sets only: no TAR@FAR without both classes
            tars = [float("nan")] * len(fars)
        else:
            tars, _, _ = tar_at_far(scores[:n], issame[:n], fars)
        for far, tar in zip(fars, tars):
            curves[float(far)].append(float(tar))
    return curves
