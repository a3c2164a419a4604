"""5-point similarity alignment onto the insightface ArcFace 112x112 template.

MS1M-ArcFace and the LFW / CFP / AgeDB ``.bin`` files were aligned this way, so a photo aligned here looks to a
model trained or evaluated on them like its own data: same eye height, face scale and black border. A model sees
a differently aligned face as a different, harder image, and its scores and calibrated thresholds no longer hold.

The transform is the least-squares similarity (rotation, uniform scale, translation; no reflection) of Umeyama
(1991), the same estimate as ``skimage.transform.SimilarityTransform`` and insightface's ``norm_crop``.
"""
from __future__ import annotations

import cv2
import numpy as np

# (x, y) of left eye, right eye, nose tip, left and right mouth corner in the image (left = smaller x).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
CROP_SIZE = 112
# Points closer than this (in pixels, RMS about their mean) carry no scale or rotation: refuse them.
_MIN_SPREAD = 1e-6


class AlignmentError(ValueError):
    """Landmarks that cannot define a similarity transform; the message says why."""


def _points(value, name: str) -> np.ndarray:
    points = np.asarray(value, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 2:
        raise AlignmentError(f"{name} must be [K, 2] (x, y) points with K >= 2, got shape {list(points.shape)}")
    if not np.all(np.isfinite(points)):
        raise AlignmentError(f"{name} holds non-finite coordinates: {points.tolist()}")
    return points


def similarity_transform(src, dst=ARCFACE_TEMPLATE) -> np.ndarray:
    """The 2x3 matrix ``M`` of the similarity minimising ``sum |M @ [src_k, 1] - dst_k|^2``."""
    src, dst = _points(src, "landmarks"), _points(dst, "template")
    if src.shape != dst.shape:
        raise AlignmentError(f"landmarks {list(src.shape)} and template {list(dst.shape)} differ in shape")
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float(np.mean(np.sum(src_c ** 2, axis=1)))
    if np.sqrt(src_var) < _MIN_SPREAD:
        raise AlignmentError(f"the landmarks coincide ({src.tolist()}): no scale or rotation can be estimated")
    cov = dst_c.T @ src_c / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(cov) < 0:  # the best fit would mirror: take the best rotation instead
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float(np.sum(d * sign)) / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - matrix[:, :2] @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks, size: int = CROP_SIZE) -> np.ndarray:
    """The ``size`` x ``size`` uint8 crop of ``image`` [H, W, 3] with ``landmarks`` [5, 2] moved onto the
    template (scaled with ``size`` / 112); outside the photo is black, as in the ``.bin`` files."""
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / CROP_SIZE))
    return cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderValue=0)
