"""1:N identification metrics from a probe x gallery score matrix, with open-set probes and risk rejection.

``mate[p]`` is the gallery column of probe p's identity, or -1 for a probe of a person not enrolled. Ranks
order a probe's gallery columns by score (larger first, ties by column), as ``probface_tf.search`` returns them.

* CMC rank-r: fraction of mated probes whose mate is among the r best columns.
* TPIR at FPIR f (open-set, NIST/IJB-C): the threshold t is the smallest with at most f of the non-mated probes'
  best scores >= t; TPIR is the fraction of mated probes whose best column is the mate and scores >= t. BLUFR's
  "rank-1 detection and identification rate at FAR" is the same quantity.
* insightface's ``ijb_1n.py`` variant (``tpir_insightface``): t is the ceil(f * P)-th largest of all
  non-mate (probe, column) scores, TPIR the fraction of mated probes whose mate score is > t.
* Risk rejection: the same metrics on the probes left after the riskiest fraction (largest sigma_sq) is set
  aside.
"""
from __future__ import annotations

import math

import numpy as np

from probface_tf.search.decision import threshold_at_fpir

RANKS = (1, 5, 10)
FPIRS = (0.01, 0.1)
REJECT_FRACTIONS = (0.1, 0.2, 0.3)


class IdentificationError(ValueError):
    """Scores and labels of a 1:N run do not fit together; the message says how."""


def _check(scores, mate) -> tuple[np.ndarray, np.ndarray]:
    scores, mate = np.asarray(scores, np.float64), np.asarray(mate, np.int64).ravel()
    if scores.ndim != 2 or scores.shape[0] != mate.shape[0]:
        raise IdentificationError(f"scores must be [probes, gallery] with one mate per probe: scores "
                                  f"{scores.shape}, mates {mate.shape}")
    if np.any(mate >= scores.shape[1]):
        raise IdentificationError(f"a mate column is beyond the gallery's {scores.shape[1]} columns")
    return scores, mate


def mate_columns(probe_labels, gallery_labels) -> np.ndarray:
    """Column of each probe's identity in the gallery, -1 when not enrolled."""
    column = {str(label): i for i, label in enumerate(gallery_labels)}
    if len(column) != len(gallery_labels):
        raise IdentificationError("gallery labels repeat: one column per identity is needed")
    return np.array([column.get(str(label), -1) for label in probe_labels], np.int64)


def mate_ranks(scores, mate) -> np.ndarray:
    """0-based rank of the mate of each mated probe (ties before it: smaller columns with equal score)."""
    scores, mate = _check(scores, mate)
    rows = np.flatnonzero(mate >= 0)
    own = scores[rows, mate[rows]][:, None]
    columns = np.arange(scores.shape[1])[None, :]
    above = (scores[rows] > own) | ((scores[rows] == own) & (columns < mate[rows][:, None]))
    return above.sum(axis=1)


def cmc(scores, mate, ranks=RANKS) -> dict:
    ranked = mate_ranks(scores, mate)
    if ranked.size == 0:
        raise IdentificationError("no mated probe: CMC needs probes of enrolled identities")
    return {f"rank{r}": float(np.mean(ranked < r)) for r in ranks}


def tpir_at_fpir(scores, mate, fpirs=FPIRS) -> dict:
    scores, mate = _check(scores, mate)
    best = scores.max(axis=1)
    top1 = np.argmax(scores, axis=1)  # first column among equal maxima, as the ranking order
    mated = mate >= 0
    out = {}
    for f in fpirs:
        t = threshold_at_fpir(best[~mated], f)
        hit = (top1[mated] == mate[mated]) & (best[mated] >= t)
        out[f"tpir@fpir={f:g}"] = float(np.mean(hit))
        out[f"threshold@fpir={f:g}"] = t
    return out


def tpir_insightface(scores, mate, fpirs=FPIRS) -> dict:
    scores, mate = _check(scores, mate)
    rows = np.flatnonzero(mate >= 0)
    pos = scores[rows, mate[rows]]
    neg = scores[rows].copy()
    neg[np.arange(rows.size), mate[rows]] = -np.inf
    neg = np.sort(neg[np.isfinite(neg)])[::-1]
    out = {}
    for f in fpirs:
        t = neg[min(neg.size, max(1, math.ceil(rows.size * f))) - 1]
        out[f"tpir_insightface@far={f:g}"] = float(np.mean(pos > t))
    return out


def identification_metrics(scores, mate) -> dict:
    scores, mate = _check(scores, mate)
    out = {"probes": int(mate.size), "mated": int(np.sum(mate >= 0)), "nonmated": int(np.sum(mate < 0))}
    out.update(cmc(scores, mate))
    if out["nonmated"]:
        out.update(tpir_at_fpir(scores, mate))
    out.update(tpir_insightface(scores, mate))
    return out


def keep_least_risky(probe_sigma_sq, reject_fraction: float) -> np.ndarray:
    """Mask of the probes kept when the riskiest ``reject_fraction`` (largest sigma_sq) is rejected."""
    s = np.asarray(probe_sigma_sq, np.float64).reshape(len(probe_sigma_sq), -1).mean(axis=1)
    keep = int(round(len(s) * (1 - reject_fraction)))
    mask = np.zeros(len(s), bool)
    mask[np.argsort(s, kind="stable")[:keep]] = True
    return mask


def evaluate_identification(cosine, fastmls, mate, probe_sigma_sq=None,
                            reject_fractions=REJECT_FRACTIONS) -> dict:
    """The protocol's table: cosine ranking, FastMLS ranking and FastMLS after risk rejection."""
    rows = {"cosine": identification_metrics(cosine, mate)}
    if fastmls is not None:
        rows["fastmls"] = identification_metrics(fastmls, mate)
        for fraction in reject_fractions:
            keep = keep_least_risky(probe_sigma_sq, fraction)
            rows[f"fastmls_reject{int(round(fraction * 100))}"] = \
                identification_metrics(np.asarray(fastmls)[keep], np.asarray(mate)[keep])
    return rows


def det_curve(scores, mate, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) over thresholds: FNIR = 1 - TPIR (open-set DET curve)."""
    scores, mate = _check(scores, mate)
    best, top1, mated = scores.max(axis=1), np.argmax(scores, axis=1), mate >= 0
    thresholds = np.unique(np.quantile(best, np.linspace(0, 1, points)))
    fpir = np.array([np.mean(best[~mated] >= t) for t in thresholds]) if (~mated).any() else None
    fnir = np.array([1 - np.mean((top1[mated] == mate[mated]) & (best[mated] >= t)) for t in thresholds])
    return fpir, fnir
