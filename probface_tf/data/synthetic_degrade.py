"""The degradation model of the synthetic dataset: severity draws and the image damage they control.

An image of recorded severity ``s`` in [0, 1] gets occluding patches, Gaussian blur, down- then up-scaling,
colour wash and noise, all growing with ``s`` so that at ``s`` near 1 the identity is essentially gone. The
severity is the ground truth the predicted sigma^2 is compared with.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from probface_tf.data.synthetic_faces import (DEGRADE_STREAM, SEVERITY_STREAM, SyntheticDataError, render_clean,
                                              stream_rng)

SEVERITY_MODES = ("mixed", "uniform", "clean")
IMAGE_FORMATS = ("png", "jpg")


# ---------------------------------------------------------------------------------------------- degradation

def draw_severity(seed: int, identity: int, index: int, mode: str | float = "mixed") -> float:
    """Severity of image ``index``. 'mixed': half clean (s < 0.1), half uniform in [0, 1];
    'uniform': uniform in [0, 1]; 'clean': 0; a number: that constant."""
    if not isinstance(mode, str):
        return float(mode)
    r = stream_rng(seed, SEVERITY_STREAM, identity, index)
    if mode == "clean":
        return 0.0
    if mode == "uniform":
        return float(r.uniform())
    return float(r.uniform(0, 0.1) if r.uniform() < 0.5 else r.uniform())


def _occlude(img: np.ndarray, s: float, r: np.random.Generator) -> None:
    """Patches of random colour and texture covering about 0.6 * s^1.5 of the central face region."""
    size = img.shape[0]
    coverage = 0.6 * s ** 1.5
    if coverage < 0.01:
        return
    n = 1 + int(r.integers(0, 1 + int(3 * s)))
    area = coverage * (0.8 * size) ** 2 / n
    for _ in range(n):
        aspect = r.uniform(0.5, 2.0)
        w = int(min(size, max(2, round(math.sqrt(area * aspect)))))
        h = int(min(size, max(2, round(math.sqrt(area / aspect)))))
        x0 = int(np.clip(r.normal(size / 2, size * 0.15) - w / 2, 0, size - w))
        y0 = int(np.clip(r.normal(size / 2, size * 0.15) - h / 2, 0, size - h))
        patch = r.uniform(0, 255, 3).astype(np.float32) + r.normal(0, 25, (h, w, 1)).astype(np.float32)
        img[y0:y0 + h, x0:x0 + w] = patch


def degrade(image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Apply occlusion, blur, down/up-scaling, colour wash and noise of strength ``severity`` in [0, 1] to a
    square float [S, S, 3] image in [0, 255]; returns uint8."""
    s = float(severity)
    size = image.shape[0]
    k = size / 112.0
    img = image.astype(np.float32, copy=True)
    _occlude(img, s, rng)
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    sigma = 4.0 * k * s * rng.uniform(0.6, 1.0)
    if sigma > 0.3:
        pil = pil.filter(ImageFilter.GaussianBlur(sigma))
    factor = 1.0 + 8.0 * s ** 1.5 * rng.uniform(0.6, 1.0)
    if factor > 1.15:
        small = max(4, int(round(size / factor)))
        up = (Image.Resampling.NEAREST, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[rng.integers(3)]
        pil = pil.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), up)
    img = np.asarray(pil, np.float32)
    # Colour wash: lower contrast and a random colour cast destroy the skin/hair colour cues.
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + (img - mean) * (1.0 - 0.6 * s * rng.uniform(0.6, 1.0))
    img = img * rng.uniform(1 - 0.35 * s, 1 + 0.35 * s, 3).astype(np.float32) + rng.uniform(-40, 40) * s
    # Fine noise plus coarse blotches, which survive the down-scaling to a small network input.
    img += rng.normal(0, 45.0 * s ** 1.5 + 1.0, img.shape).astype(np.float32)
    coarse = rng.normal(0, 35.0 * s ** 1.5, (max(2, size // 14), max(2, size // 14), 3)).astype(np.float32)
    img += np.repeat(np.repeat(coarse, -(-size // coarse.shape[0]), 0), -(-size // coarse.shape[1]), 1)[:size, :size]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def render_image(seed: int, identity: int, index: int, image_size: int = 112,
                 severity: str | float = "mixed") -> tuple[np.ndarray, float]:
    """Image ``index`` of ``identity`` with its degradation: (uint8 [S, S, 3] RGB, severity).

    ``severity`` is a mode of ``draw_severity`` or a fixed value; the nuisance does not depend on it, so the
    same (seed, identity, index) at two severities differs only by the degradation."""
    s = draw_severity(seed, identity, index, severity)
    if not 0.0 <= s <= 1.0:
        raise SyntheticDataError(f"severity must be in [0, 1], got {s}")
    clean = render_clean(seed, identity, index, image_size)
    return degrade(clean, s, stream_rng(seed, DEGRADE_STREAM, identity, index)), s


def encode_image(image: np.ndarray, image_format: str = "jpg") -> bytes:
    """PNG (lossless) or JPEG quality 95 (what face datasets ship; 3x smaller, 10x faster to encode)."""
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()
