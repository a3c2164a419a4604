"""Verification error metrics: pyeer's EER / FMR operating points, TAR@FAR, and the AUERC family.

pyeer (``get_eer_stats(genuine, impostor)``, used by face-uncertainty-pytorch) defines, on similarity scores:

* thresholds = the distinct scores, ascending;
* FNMR(t) = #genuine < t / #genuine, FMR(t) = #impostor >= t / #impostor;
* FMR100 / FMR1000 = FNMR at the first threshold index minimising |FMR - 0.01| (0.001), with that threshold;
* EER: t2 = first index with FMR <= FNMR, t1 = t2 - 1 (unless FMR == FNMR there or t2 == 0); of the two, the
  one with the smaller FMR + FNMR; EER = (FMR + FNMR)/2 there.

TAR@FAR follows the PFE / ScaleFace ``ROC``: the threshold for a FAR is the k-th highest impostor score with
k = round(FAR * #impostor) (just above the highest one when k = 0); TAR = #genuine >= threshold / #genuine.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import auc as trapezoid_auc

FAR_EPSILON = 1e-8  # the step above the highest impostor score when no false accept is allowed


class MetricsError(ValueError):
    """Scores cannot give the metric (no genuine or no impostor pair, mismatched shapes)."""


def split_genuine_impostor(scores, issame) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(issame, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise MetricsError(f"scores and issame differ in length: {scores.shape} and {labels.shape}")
    return scores[labels], scores[~labels]


@dataclass
class EerStats:
    thresholds: np.ndarray = field(repr=False)
    fmr: np.ndarray = field(repr=False)
    fnmr: np.ndarray = field(repr=False)
    eer: float
    eer_threshold: float
    fmr100: float
    fmr100_th: float
    fmr1000: float
    fmr1000_th: float

    def fnmr_near(self, threshold: float) -> float:
        """FNMR at the threshold closest to ``threshold`` (first one on ties): a fixed decision threshold."""
        return float(self.fnmr[np.argmin(np.abs(self.thresholds - threshold))])


def error_rates(genuine, impostor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FMR, FNMR) at every distinct score, thresholds ascending, float64."""
    genuine = np.asarray(genuine, dtype=np.float64).ravel()
    impostor = np.asarray(impostor, dtype=np.float64).ravel()
    if genuine.size == 0 or impostor.size == 0:
        raise MetricsError(f"error rates need genuine and impostor scores, got {genuine.size} genuine and "
                           f"{impostor.size} impostor")
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    genuine.sort()
    impostor.sort()
    false_non_match = np.searchsorted(genuine, thresholds, side="left")
    false_match = impostor.size - np.searchsorted(impostor, thresholds, side="left")
    return thresholds, false_match / impostor.size, false_non_match / genuine.size


def eer_index(fmr: np.ndarray, fnmr: np.ndarray) -> int:
    """pyeer's EER point: the crossing index t2 or the one before it, whichever has smaller FMR + FNMR."""
    diff = fmr - fnmr
    t2 = int(np.flatnonzero(diff <= 0)[0])  # exists: at the top threshold FMR <= FNMR
    t1 = t2 - 1 if diff[t2] != 0 and t2 != 0 else t2
    return t1 if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2] else t2


def fmr_operating_point(fmr: np.ndarray, op: float) -> int:
    """Index of the first threshold whose FMR is closest to ``op``."""
    return int(np.argmin(np.abs(fmr - op)))


def eer_stats(genuine, impostor) -> EerStats:
    """EER and FNMR at FMR = 1 % and 0.1 % (pyeer's ``get_eer_stats`` definitions)."""
    thresholds, fmr, fnmr = error_rates(genuine, impostor)
    e = eer_index(fmr, fnmr)
    i100, i1000 = fmr_operating_point(fmr, 0.01), fmr_operating_point(fmr, 0.001)
    return EerStats(thresholds, fmr, fnmr, eer=float((fmr[e] + fnmr[e]) / 2), eer_threshold=float(thresholds[e]),
                    fmr100=float(fnmr[i100]), fmr100_th=float(thresholds[i100]),
                    fmr1000=float(fnmr[i1000]), fmr1000_th=float(thresholds[i1000]))


def thresholds_at_far(impostor, fars) -> np.ndarray:
    """Score thresholds giving (about) each FAR: the k-th highest impostor score, k = round(FAR * #impostor)."""
    impostor = np.sort(np.asarray(impostor, dtype=np.float64).ravel())[::-1]
    if impostor.size == 0:
        raise MetricsError("TAR@FAR needs at least one impostor pair")
    false_accepts = np.round(impostor.size * np.asarray(fars, dtype=np.float64)).astype(np.int64)
    return np.array([impostor[0] + FAR_EPSILON if k == 0 else impostor[min(k, impostor.size) - 1]
                     for k in false_accepts])


def tar_at_far(scores, issame, fars) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TAR, real FAR, threshold) for every requested FAR."""
    genuine, impostor = split_genuine_impostor(scores, issame)
    if genuine.size == 0:
        raise MetricsError("TAR@FAR needs at least one genuine pair")
    thresholds = thresholds_at_far(impostor, fars)
    tars = np.array([np.mean(genuine >= t) for t in thresholds])
    real_fars = np.array([np.mean(impostor >= t) for t in thresholds])
    return tars, real_fars, thresholds


def auerc_family(reject_rates, errors) -> dict:
    """Area under the error-versus-reject curve and its variants, as face-uncertainty-pytorch defines them:
    AUERC over all points, AUERC30 over the first int(0.3 * n) points, and AUC / AUC30 = those minus the area
    of an ideal rejector's triangle (e0^2/2 and e0*min(e0, 0.3)/2, e0 = the error without rejection)."""
    rates = np.asarray(reject_rates, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if rates.shape != errors.shape or rates.size < 2:
        raise MetricsError(f"AUERC needs matching reject-rate and error lists of >= 2 points, got "
                           f"{rates.shape} and {errors.shape}")
    head = int(rates.size * 0.3)
    whole = float(trapezoid_auc(rates, errors))
    first = float(trapezoid_auc(rates[:head], errors[:head])) if head >= 2 else 0.0
    e0 = float(errors[0])
    return {"AUERC": whole, "AUERC30": first, "AUC": whole - e0 ** 2 / 2, "AUC30": first - e0 * min(e0, 0.3) / 2}
