"""Template fusion: several images of one subject -> one Gaussian (PFE), or one mean embedding (the baseline).

PFE (Shi & Jain, "Probabilistic Face Embeddings", eq. 11-12) treats each image's ``(mu_i, sigma_sq_i)`` as an
independent observation of the subject's feature; the posterior is Gaussian with

* precision-weighted mean ``mu = sum_i mu_i / sigma_sq_i / sum_i 1 / sigma_sq_i`` (per dimension for a D-dim
  sigma_sq, one weight per image for a 1-d sigma_sq), and
* combined variance ``sigma_sq = 1 / sum_i 1 / sigma_sq_i``.

So a blurred or occluded image (large sigma_sq) barely moves the template, and a template of many images is more
certain than any of them. (PFE's released code takes the minimum sigma_sq instead of the combined variance;
this module follows the paper.) The fused mean is re-normalised to unit length, because the cosine and the
FastMLS scores compare unit embeddings (FastMLS reads ``2(1 - cos)`` as the squared distance of unit vectors);
for FastMLS / MLS between templates the fused sigma_sq is each template's sigma_sq. Input rows of ``mu`` are
L2-normalised first (the models' ``mu`` already are).

Everything is NumPy and vectorised over any number of templates: rows carry a template id and the sums are
segment sums over the rows sorted by id.
"""
from __future__ import annotations

import numpy as np


class FusionError(ValueError):
    """Features cannot be fused (empty template, bad shapes, non-positive sigma_sq); the message says which."""


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise FusionError("an embedding (or a fused mean) has zero length and cannot be normalised")
    return x / norm


def _check_mu(mu) -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2:
        raise FusionError(f"mu must be [n, D], got shape {mu.shape}")
    if mu.shape[0] == 0:
        raise FusionError("empty template: no image to fuse")
    return mu


def _check_sigma(sigma_sq, n: int, dim: int | None = None) -> np.ndarray:
    """sigma_sq as [n, 1] or [n, dim] float64 variances (a 1-D [n] vector is one column)."""
    s = np.asarray(sigma_sq, dtype=np.float64)
    s = s[:, None] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[0] != n or (dim is not None and s.shape[1] not in (1, dim)):
        raise FusionError(f"sigma_sq must be [n, 1] or [n, D] = [{n}, 1 or {dim}] to match mu, got "
                          f"{np.shape(sigma_sq)}")
    if s.shape[0] == 0:
        raise FusionError("empty template: no image to fuse")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise FusionError(f"sigma_sq must be finite and > 0 to be a variance, got min {np.nanmin(s)!r}")
    return s


def _segments(template_ids, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, segment index of each row)."""
    ids = np.asarray(template_ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise FusionError(f"template_ids must be one id per row ([{n}]), got shape {ids.shape}")
    return np.unique(ids, return_inverse=True)


def segment_sum(values: np.ndarray, segments: np.ndarray, count: int) -> np.ndarray:
    """Row sums per segment: ``out[k] = sum of values[i] with segments[i] == k`` (every segment non-empty)."""
    order = np.argsort(segments, kind="stable")
    ordered = segments[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    out = np.zeros((count,) + values.shape[1:], values.dtype)
    out[ordered[starts]] = np.add.reduceat(values[order], starts, axis=0)
    return out


def fuse_templates(mu, sigma_sq, template_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PFE fusion of every template at once: ``(ids [T] sorted, mu [T, D] unit, sigma_sq [T, S])`` with S = 1 or D
    as the input's."""
    mu = _check_mu(mu)
    s = _check_sigma(sigma_sq, mu.shape[0], mu.shape[1])
    ids, segments = _segments(template_ids, mu.shape[0])
    precision = 1.0 / s
    total = segment_sum(precision, segments, ids.size)  # [T, S]
    mean = segment_sum(_unit_rows(mu) * precision, segments, ids.size) / total
    return ids, _unit_rows(mean), 1.0 / total


def fuse_template(mu, sigma_sq) -> tuple[np.ndarray, np.ndarray]:
    """PFE fusion of one template: ``mu [n, D], sigma_sq [n, 1 or D] -> (mu [D] unit, sigma_sq [1 or D])``."""
    mu = _check_mu(mu)  # fuse_templates checks sigma_sq against it
    _, fused_mu, fused_s = fuse_templates(mu, sigma_sq, np.zeros(mu.shape[0], np.int64))
    return fused_mu[0], fused_s[0]


def fusion_weights(sigma_sq, template_ids) -> np.ndarray:
    """Each image's normalised PFE weight within its template, ``(1/sigma_sq_i) / sum_template 1/sigma_sq``:
    [n, S], summing to 1 over a template's rows (per dimension)."""
    s = _check_sigma(sigma_sq, np.shape(sigma_sq)[0] if np.ndim(sigma_sq) else -1)
    ids, segments = _segments(template_ids, s.shape[0])
    precision = 1.0 / s
    return precision / segment_sum(precision, segments, ids.size)[segments]


def mean_templates(mu, template_ids) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: ``(ids [T] sorted, mu [T, D])``, the plain mean of each template's unit rows, re-normalised."""
    mu = _check_mu(mu)
    ids, segments = _segments(template_ids, mu.shape[0])
    counts = np.bincount(segments, minlength=ids.size)[:, None]
    return ids, _unit_rows(segment_sum(_unit_rows(mu), segments, ids.size) / counts)


def mean_template(mu) -> np.ndarray:
    """Mean pooling of one template: ``mu [n, D] -> [D]`` unit."""
    mu = _check_mu(mu)
    return mean_templates(mu, np.zeros(mu.shape[0], np.int64))[1][0]


# ---------------------------------------------------------------------------------------------- the original's forms
# The original's IJB evaluation (ProbFace ``aggregate_PFE`` / ``aggregate_templates``) fuses differently from the
# PFE paper: attention weights ``exp(log(1/sigma_sq + 1e-6) / T)`` normalised per template (per dimension for a
# D-dim sigma_sq), fused mu = weighted sum re-normalised, fused sigma_sq = the weighted MEAN of sigma_sq (not the
# combined variance), swept over the temperatures T in ORIGINAL_TEMPERATURES; its "mean" baseline averages the
# concatenated ``[mu, sigma_sq]`` rows. Its ``l2_normalize`` divides by ``1e-8 + norm``.
ORIGINAL_TEMPERATURES = (1.0, 0.5, 2.0)
_ORIGINAL_NORM_EPS = 1e-8


def _original_unit_rows(x: np.ndarray) -> np.ndarray:
    return x / (_ORIGINAL_NORM_EPS + np.linalg.norm(x, axis=-1, keepdims=True))


def temperature_weights(sigma_sq, template_ids, temperature: float = 1.0) -> np.ndarray:
    """The original's attention ``exp(log(1/sigma_sq + 1e-6) / T)``, normalised within each template: [n, S]."""
    if not temperature > 0:
        raise FusionError(f"temperature must be > 0, got {temperature!r}")
    s = _check_sigma(sigma_sq, np.shape(sigma_sq)[0] if np.ndim(sigma_sq) else -1)
    ids, segments = _segments(template_ids, s.shape[0])
    attention = np.exp(np.log(1.0 / s + 1e-6) / temperature)
    return attention / segment_sum(attention, segments, ids.size)[segments]


def fuse_templates_temperature(mu, sigma_sq, template_ids, temperature: float = 1.0):
    """The original's uncertainty pooling: ``(ids [T] sorted, mu [T, D] unit, sigma_sq [T, S])`` with fused
    sigma_sq the attention-weighted mean of the images' sigma_sq."""
    mu = _check_mu(mu)
    s = _check_sigma(sigma_sq, mu.shape[0], mu.shape[1])
    weights = temperature_weights(s, template_ids, temperature)
    ids, segments = _segments(template_ids, mu.shape[0])
    fused_mu = segment_sum(mu * weights, segments, ids.size)
    return ids, _original_unit_rows(fused_mu), segment_sum(s * weights, segments, ids.size)


def mean_concat_templates(mu, sigma_sq, template_ids) -> tuple[np.ndarray, np.ndarray]:
    """The original's "mean" pooling: ``(ids [T] sorted, features [T, D + S])``, the mean of the concatenated
    ``[mu, sigma_sq]`` rows, L2-normalised as one vector (sigma_sq included)."""
    mu = _check_mu(mu)
    s = _check_sigma(sigma_sq, mu.shape[0], mu.shape[1])
    ids, segments = _segments(template_ids, mu.shape[0])
    counts = np.bincount(segments, minlength=ids.size)[:, None]
    rows = np.concatenate([mu, s], axis=1)
    return ids, _original_unit_rows(segment_sum(rows, segments, ids.size) / counts)
