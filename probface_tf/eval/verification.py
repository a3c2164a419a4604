"""The original 10-fold verification protocol (``calculate_roc`` + ``metrics.accuracy``), number for number.

* Folds are contiguous and unshuffled; the first ``n % 10`` folds hold one pair more (the original's own KFold).
* There is no threshold grid: the candidates are the sorted scores of the *positive* pairs of the nine training
  folds; a pair is predicted "same" when ``score >= t``; the chosen threshold is the mean of every candidate
  that reaches the best training accuracy.
* Fold thresholds and accuracies are kept in float32 arrays, as the original, so the test fold is judged with the
  float32-rounded threshold and the reported means are float32 means.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_FOLDS = 10


class VerificationError(ValueError):
    """The pairs cannot be evaluated (too few pairs, no positive pair in a training split, bad shapes)."""


@dataclass
class FoldResult:
    accuracy: float  # mean of the fold accuracies (float32 mean, as the original)
    threshold: float  # mean of the fold thresholds
    fold_accuracies: np.ndarray = field(repr=False)
    fold_thresholds: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"accuracy": float(self.accuracy), "threshold": float(self.threshold),
                "fold_accuracies": [float(a) for a in self.fold_accuracies],
                "fold_thresholds": [float(t) for t in self.fold_thresholds]}


def fold_sizes(n: int, n_folds: int = N_FOLDS) -> np.ndarray:
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return sizes


def kfold_splits(n: int, n_folds: int = N_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of the original's unshuffled contiguous KFold."""
    if n < n_folds:
        raise VerificationError(f"{n_folds}-fold verification needs at least {n_folds} pairs, got {n}")
    bounds = np.concatenate([[0], np.cumsum(fold_sizes(n, n_folds))])
    index = np.arange(n)
    splits = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        test = index[start:stop]
        train = np.concatenate([index[:start], index[stop:]])
        splits.append((train, test))
    return splits


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold) -> float:
    """Fraction of pairs whose prediction ``score >= threshold`` equals the label."""
    return float(np.mean((scores >= threshold) == labels))


def best_threshold(scores, labels) -> tuple[float, object]:
    """Best accuracy over the positive-score candidates and the mean of the candidates that reach it.

    Vectorised form of the original loop: for a candidate t, the correct predictions are the positives with
    score >= t plus the negatives with score < t, both counted by binary search in the sorted scores.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, dtype=bool)
    candidates = np.sort(scores[labels])
    if candidates.size == 0:
        raise VerificationError("no positive pair to take threshold candidates from")
    negatives = np.sort(scores[~labels])
    true_pos = candidates.size - np.searchsorted(candidates, candidates, side="left")
    true_neg = np.searchsorted(negatives, candidates, side="left")
    accuracies = (true_pos + true_neg) / scores.size
    best = accuracies.max()
    return float(best), np.mean(candidates[accuracies == best])


def _check_pairs(scores, issame) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    labels = np.asarray(issame)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise VerificationError(f"scores and issame must be 1-D of equal length, got {scores.shape} and "
                                f"{labels.shape}")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise VerificationError(f"{bad} of {scores.size} scores are not finite (NaN/inf); check sigma_sq > 0")
    return scores, labels.astype(bool)


def ten_fold_accuracy(scores, issame, n_folds: int = N_FOLDS) -> FoldResult:
    """Mean test accuracy and mean threshold of the original ``n_folds``-fold protocol."""
    scores, labels = _check_pairs(scores, issame)
    accuracies = np.zeros(n_folds, dtype=np.float32)
    thresholds = np.zeros(n_folds, dtype=np.float32)
    for k, (train, test) in enumerate(kfold_splits(scores.size, n_folds)):
        try:
            _, thresholds[k] = best_threshold(scores[train], labels[train])
        except VerificationError as exc:
            raise VerificationError(f"fold {k + 1}/{n_folds} of {scores.size} pairs: {exc} in the training "
                                    f"folds") from None
        accuracies[k] = accuracy_at(scores[test], labels[test], thresholds[k])
    return FoldResult(float(np.mean(accuracies)), float(np.mean(thresholds)), accuracies, thresholds)
