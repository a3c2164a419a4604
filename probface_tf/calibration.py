"""Decision thresholds measured on evaluated pairs: 'same' / 'different' / 'uncertain' for a new pair.

A score threshold at false-match rate (FMR) ``f`` is the value above which at most a fraction ``f`` of the
evaluated impostor pairs score: the ``floor(f * n)``-th largest impostor score (0-based), so accepting
``score > threshold`` matches at most ``floor(f * n)`` impostors. Fewer than ``1 / f`` impostors cannot measure
``f``; such a threshold is kept (the largest impostor score) and flagged ``"measured": false``.

A pair's risk is its fused sigma^2, ``sigma_sq_1 + sigma_sq_2`` (the denominator of FastMLS; averaged over the
dimensions of a D-dim sigma^2). Rejecting a fraction ``r`` of the riskiest pairs means refusing to decide above
the ``1 - r`` quantile of the evaluated pairs' fused sigma^2.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from probface_tf.atomic import atomic_open

FMRS = (1e-2, 1e-3, 1e-4)
REJECT_FRACTIONS = (0.1, 0.2, 0.3)
SCORES = ("fastmls", "cosine")
METADATA_KEY = "calibration"


class CalibrationError(ValueError):
    """A calibration that cannot be built, read or used; the message names the file, key or value."""


def _key(value: float) -> str:
    return f"{float(value):g}"


def fused_sigma_sq(sigma_sq_1, sigma_sq_2) -> np.ndarray:
    """Per pair ``sigma_sq_1 + sigma_sq_2`` (mean over dimensions for D-dim sigma^2)."""
    s1, s2 = (np.asarray(s, dtype=np.float64) for s in (sigma_sq_1, sigma_sq_2))
    n = s1.shape[0] if s1.ndim else 1
    return (s1.reshape(n, -1) + s2.reshape(n, -1)).mean(1)


def fmr_threshold(impostor_scores, fmr: float) -> float:
    """The score above which at most ``fmr`` of ``impostor_scores`` lie (see the module docstring)."""
    ranked = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())[::-1]
    if ranked.size == 0:
        raise CalibrationError("no impostor (different-identity) pairs to set an FMR threshold from")
    return float(ranked[min(int(np.floor(fmr * ranked.size)), ranked.size - 1)])


@dataclass
class Calibration:
    """``thresholds[score][fmr]`` and ``reject[fraction]`` (fused sigma^2 above which to abstain)."""
    thresholds: dict
    reject: dict
    pairs: int
    impostors: int
    source: str = ""

    @classmethod
    def from_pairs(cls, issame, scores: dict, sigma_sq_1=None, sigma_sq_2=None, source: str = "",
                   fmrs=FMRS, reject_fractions=REJECT_FRACTIONS) -> "Calibration":
        """From evaluated pairs: labels, ``{'fastmls': [...], 'cosine': [...]}`` and both sides' sigma^2."""
        issame = np.asarray(issame, dtype=bool).ravel()
        thresholds = {}
        for name, values in scores.items():
            values = np.asarray(values, dtype=np.float64).ravel()
            if values.shape != issame.shape:
                raise CalibrationError(f"{source}: {name} has {values.size} pair scores for {issame.size} labels")
            thresholds[name] = {_key(f): fmr_threshold(values[~issame], f) for f in fmrs}
        reject = {}
        if sigma_sq_1 is not None:
            fused = fused_sigma_sq(sigma_sq_1, sigma_sq_2)
            reject = {_key(r): float(np.quantile(fused, 1.0 - r)) for r in reject_fractions}
        return cls(thresholds, reject, int(issame.size), int((~issame).sum()), source)

    @classmethod
    def from_score_arrays(cls, arrays: list[dict], source: str = "") -> "Calibration":
        """Pooled over datasets, from each one's per-pair arrays (the ``scores.npz`` columns: ``issame``,
        ``cosine``, ``fastmls`` or ``mls``, ``sigma_sq_1``, ``sigma_sq_2``)."""
        if not arrays:
            raise CalibrationError(f"{source}: no evaluated pairs to calibrate on")
        names = [k for k in ("fastmls", "mls", "cosine") if all(k in a for a in arrays)]
        pooled = {k: np.concatenate([np.asarray(a[k]).reshape(len(a["issame"]), -1) if k.startswith("sigma")
                                     else np.ravel(a[k]) for a in arrays])
                  for k in ("issame", *names, "sigma_sq_1", "sigma_sq_2") if all(k in a for a in arrays)}
        scores = {("fastmls" if k == "mls" else k): pooled[k] for k in names}  # one key for the MLS score
        return cls.from_pairs(pooled["issame"], scores, pooled.get("sigma_sq_1"), pooled.get("sigma_sq_2"), source)

    # -------------------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict:
        measured = {_key(f): self.impostors * float(f) >= 1.0 for f in next(iter(self.thresholds.values()), {})}
        return {"fmr_thresholds": self.thresholds, "reject_sigma_sq": self.reject, "pairs": self.pairs,
                "impostors": self.impostors, "measured": measured, "source": self.source,
                "rule": "same if score > fmr_thresholds[score][fmr]; uncertain if sigma_sq_1 + sigma_sq_2 > "
                        "reject_sigma_sq[fraction]"}

    @classmethod
    def from_dict(cls, data: dict, name: str = "calibration") -> "Calibration":
        try:
            thresholds = {s: {_key(f): float(t) for f, t in v.items()} for s, v in data["fmr_thresholds"].items()}
            reject = {_key(r): float(t) for r, t in data.get("reject_sigma_sq", {}).items()}
            return cls(thresholds, reject, int(data["pairs"]), int(data["impostors"]), data.get("source", name))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(f"{name}: not a calibration ({type(exc).__name__}: {exc}); expected the "
                                   f"calibration.json evaluate.py writes") from None

    def save(self, path: str) -> None:
        with atomic_open(path) as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Calibration":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read the calibration ({exc.strerror or exc})") from None
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path}: not JSON ({exc})") from None
        return cls.from_dict(data, path)

    def to_metadata(self) -> dict:
        """The entry an export's metadata carries (``metadata.update(calibration.to_metadata())``)."""
        return {METADATA_KEY: self.to_dict()}

    @classmethod
    def from_metadata(cls, metadata: dict | None, name: str = "export metadata") -> "Calibration | None":
        if not metadata or METADATA_KEY not in metadata:
            return None
        return cls.from_dict(metadata[METADATA_KEY], f"{name}: '{METADATA_KEY}'")

    # -------------------------------------------------------------------------------------------- decisions
    def threshold(self, score: str, fmr: float) -> float:
        table = self.thresholds.get(score)
        if table is None:
            raise CalibrationError(f"{self.source}: no {score} thresholds (has {sorted(self.thresholds)})")
        if _key(fmr) not in table:
            raise CalibrationError(f"{self.source}: no {score} threshold at FMR {fmr:g} (has {sorted(table)})")
        return table[_key(fmr)]

    def risk_threshold(self, reject: float) -> float | None:
        if not reject:
            return None
        if _key(reject) not in self.reject:
            raise CalibrationError(f"{self.source}: no sigma^2 threshold for rejecting {reject:g} "
                                   f"(has {sorted(self.reject) or 'none: the model had no sigma^2'})")
        return self.reject[_key(reject)]

    def decide(self, score: str, value: float, fused: float | None, fmr: float = 1e-3, reject: float = 0.0) -> str:
        """'same' / 'different' at ``fmr``, or 'uncertain' when the pair's fused sigma^2 is among the riskiest
        ``reject`` fraction of the evaluated pairs."""
        risk = self.risk_threshold(reject)
        if risk is not None and fused is not None and fused > risk:
            return "uncertain"
        return "same" if value > self.threshold(score, fmr) else "different"
