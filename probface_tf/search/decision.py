"""Open-set decisions: each probe is 'identified', 'unknown' or 'uncertain'.

* ``uncertain``: the probe's own sigma_sq is above the risk threshold (a face too degraded to decide on);
* ``identified``: otherwise, when its best gallery score reaches the score threshold;
* ``unknown``: otherwise (the person is taken as not enrolled).

The score threshold is set for a target FPIR (false positive identification rate: the fraction of probes of
non-enrolled people whose best score reaches it), from the best scores of such probes in a 1:N evaluation run;
the risk threshold rejects a chosen fraction of the riskiest probes. Both are stored with the gallery
(``Gallery.thresholds``).
"""
from __future__ import annotations

import numpy as np

IDENTIFIED, UNKNOWN, UNCERTAIN = "identified", "unknown", "uncertain"


class CalibrationError(ValueError):
    """Thresholds cannot be set from the given scores; the message says why."""


def threshold_at_fpir(nonmated_best, fpir: float) -> float:
    """Smallest threshold t with ``mean(nonmated_best >= t) <= fpir``."""
    best = np.sort(np.asarray(nonmated_best, np.float64).ravel())[::-1]
    if best.size == 0:
        raise CalibrationError("no non-mated probe scores: FPIR needs probes of people who are not enrolled")
    if not 0 <= fpir < 1:
        raise CalibrationError(f"FPIR must be in [0, 1), got {fpir}")
    allowed = int(np.floor(fpir * best.size + 1e-9))
    return float(np.nextafter(best[allowed], np.inf))  # strictly above the (allowed+1)-th best


def risk_threshold(probe_sigma_sq, reject_fraction: float) -> float:
    """sigma_sq above which the riskiest ``reject_fraction`` of these probes lie (inf: reject none)."""
    s = np.asarray(probe_sigma_sq, np.float64).ravel()
    if reject_fraction <= 0 or s.size == 0:
        return float("inf")
    return float(np.quantile(s, 1.0 - reject_fraction))


def calibrate(nonmated_best, fpir: float, probe_sigma_sq=None, reject_fraction: float = 0.0,
              score: str = "fastmls") -> dict:
    """The thresholds dict stored with a gallery."""
    return {"score": score, "fpir": float(fpir), "score_threshold": threshold_at_fpir(nonmated_best, fpir),
            "reject_fraction": float(reject_fraction),
            "sigma_sq_threshold": risk_threshold([] if probe_sigma_sq is None else probe_sigma_sq,
                                                 reject_fraction)}


def decide(best_scores, probe_sigma_sq, thresholds: dict) -> list[str]:
    """One decision per probe from its best score and its sigma_sq."""
    if "score_threshold" not in thresholds:
        raise CalibrationError("the gallery has no calibrated thresholds: run a 1:N evaluation and calibrate, "
                               "or pass --threshold")
    best = np.asarray(best_scores, np.float64).ravel()
    limit = thresholds.get("sigma_sq_threshold")  # None: JSON's spelling of "no risk threshold" (inf)
    risky = np.asarray(probe_sigma_sq, np.float64).ravel() > (np.inf if limit is None else limit)
    return [UNCERTAIN if r else (IDENTIFIED if b >= thresholds["score_threshold"] else UNKNOWN)
            for b, r in zip(best, risky)]
