"""Uncertainty of evaluation pairs: one value per image (1-d sigma_sq, or the harmonic mean of a D-dim one), the
.bin pair layout (rows 2k, 2k+1) and the fusion of the two images' values into the pair's risk."""
from __future__ import annotations

import numpy as np

from probface_tf.scoring import ScoringError

HARMONIC_EPSILON = 1e-6  # face-uncertainty-pytorch's guard in 1/mean(1/(sigma_sq + eps))
FUSIONS = ("max", "sum", "min", "mean", "harmonic")


def pair_rows(x) -> tuple[np.ndarray, np.ndarray]:
    """The .bin layout: pair k is rows 2k and 2k+1."""
    x = np.asarray(x)
    if x.shape[0] % 2:
        raise ScoringError(f"pair layout needs an even number of rows, got {x.shape[0]}")
    return x[0::2], x[1::2]


def image_uncertainty(sigma_sq) -> np.ndarray:
    """One uncertainty per image: the 1-d sigma_sq itself, or for D-dim sigma_sq the harmonic mean
    ``1/mean_d(1/(sigma_sq + 1e-6))`` (face-uncertainty-pytorch)."""
    s = np.asarray(sigma_sq)
    if s.ndim == 1:
        return s
    if s.ndim != 2:
        raise ScoringError(f"sigma_sq must be [N] or [N, k], got shape {s.shape}")
    if s.shape[1] == 1:
        return s[:, 0]
    return 1 / np.mean(1 / (s + HARMONIC_EPSILON), axis=-1)


def fuse_uncertainty(u1, u2, fusion: str = "max") -> np.ndarray:
    """Pair uncertainty from the two images' uncertainties: max (original default), sum, min, mean or the
    harmonic mean ``2/(1/u1 + 1/u2)``."""
    u1, u2 = np.asarray(u1), np.asarray(u2)
    if u1.shape != u2.shape:
        raise ScoringError(f"pair uncertainties differ in shape: {u1.shape} and {u2.shape}")
    if fusion == "max":
        return np.maximum(u1, u2)
    if fusion == "sum":
        return u1 + u2
    if fusion == "min":
        return np.minimum(u1, u2)
    if fusion == "mean":
        return (u1 + u2) / 2
    if fusion == "harmonic":
        return 2 / (1 / u1 + 1 / u2)
    raise ScoringError(f"unknown uncertainty fusion {fusion!r}; choose one of {list(FUSIONS)}")


def pair_uncertainty(sigma_sq, fusion: str = "max") -> np.ndarray:
    """Fused uncertainty of every .bin pair (rows 2k, 2k+1) as a [P] vector."""
    u1, u2 = pair_rows(image_uncertainty(sigma_sq))
    return fuse_uncertainty(u1, u2, fusion)
