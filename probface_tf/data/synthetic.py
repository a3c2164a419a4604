"""The embedded demo dataset: parametric face-like identities under controlled degradations.

Each identity is a fixed random drawing (face outline and jaw, hair, ears, eyes, brows, nose, mouth, skin
texture, moles, optional glasses/beard). Each image of it adds a nuisance (roll, yaw, shift, scale,
illumination, background) and a degradation of recorded severity ``s`` in [0, 1]: occluding patches, Gaussian
blur, down- then up-scaling, colour wash and noise, all growing with ``s`` so that at ``s`` near 1 the identity
is essentially gone. The severity is the ground truth the predicted sigma^2 is compared with.

Every random draw comes from a generator keyed by ``(seed, stream, identity[, image])``, so the output is the
same whatever the number of worker processes. Only NumPy and Pillow are used (no TensorFlow): rendering runs
in plain worker processes.

``synthesize`` writes::

    root/train/<identity>/<index>.jpg      training identities (folder index = label)
    root/heldout/<identity>/<index>.jpg    held-out identities (never in train)
    root/severity.csv                      path,identity,index,severity,split for every image
    root/synth_val.bin                     insightface .bin: pickled (list of 2P encoded images, list of P bools)
    root/synth_val_severity.npy            float32 [2P]: severity of each .bin image
    root/synth_val_pairs.txt               the .bin's pairs, LFW style ('id a b' / 'id1 a id2 b') in heldout/
    root/manifest.json                     the spec; a matching manifest makes ``synthesize`` a no-op
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageFilter

from probface_tf.data.binfile import write_bin
from probface_tf.data.errors import DataError

# Bump when the rendering changes: a manifest of another version is regenerated.
GENERATOR_VERSION = 2
SEVERITY_MODES = ("mixed", "uniform", "clean")
IMAGE_FORMATS = ("png", "jpg")
MANIFEST = "manifest.json"
TRAIN_DIR, HELDOUT_DIR = "train", "heldout"
SEVERITY_CSV = "severity.csv"
BIN_NAME, BIN_SEVERITY, BIN_PAIRS = "synth_val.bin", "synth_val_severity.npy", "synth_val_pairs.txt"
# synth_val_pairs.csv: written by generator version 1, removed when such a folder is regenerated.
_OUTPUT_NAMES = (MANIFEST, TRAIN_DIR, HELDOUT_DIR, SEVERITY_CSV, BIN_NAME, BIN_SEVERITY, BIN_PAIRS,
                 "synth_val_pairs.csv")

# Random streams: one generator per (seed, stream, identity[, image]).
_IDENTITY, _NUISANCE, _SEVERITY, _DEGRADE, _PAIRS = range(5)


class SyntheticDataError(DataError):
    """Invalid synthetic-dataset arguments, or an output folder that is not ours to overwrite."""


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, *map(int, keys)])


# ----------------------------------------------------------------------------------------------- identities

_HAIR_COLOURS = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 165, 100], [160, 70, 35],
                          [150, 150, 150], [230, 225, 215]], np.float32)
_IRIS_COLOURS = np.array([[70, 45, 25], [40, 90, 160], [60, 120, 70], [110, 115, 120], [20, 15, 15]], np.float32)


@dataclass(frozen=True)
class FaceIdentity:
    """The fixed random geometry, texture and colours of one identity, in canonical units: a face-centred
    frame in which the image spans about [-0.87, 0.87] (see ``_ZOOM``), v pointing down."""
    skin: tuple
    hair: tuple
    iris: tuple
    lips: tuple
    face: tuple          # (cy, half width, half height, jaw narrowing)
    hair_shape: tuple    # (top extension, side length, bald)
    ears: tuple          # (v, half width, half height)
    eyes: tuple          # (v, half separation, half width, aspect, tilt)
    brows: tuple         # (gap above eye, half length, thickness, tilt)
    nose: tuple          # (length, half width, darkness)
    mouth: tuple         # (v, half width, thickness, curvature)
    texture: tuple       # 6x6 skin shading field in [-1, 1]
    texture_amp: float
    moles: tuple         # ((u, v, radius, darkness), ...)
    glasses: tuple | None  # (rim colour rgb, radius factor) or None
    beard: float         # 0 = none, else density


def _floats(values) -> tuple:
    return tuple(float(x) for x in values)


def identity_params(seed: int, identity: int) -> FaceIdentity:
    """Draw the parameters of ``identity`` (deterministic in ``(seed, identity)``)."""
    r = _rng(seed, _IDENTITY, identity)
    tone = r.uniform()
    skin = np.array([95, 62, 45]) + tone * np.array([150, 140, 125]) + r.uniform(-22, 22, 3)
    hair = _HAIR_COLOURS[r.integers(len(_HAIR_COLOURS))] + r.uniform(-20, 20, 3)
    iris = _IRIS_COLOURS[r.integers(len(_IRIS_COLOURS))] + r.uniform(-15, 15, 3)
    lips = skin * r.uniform(0.55, 0.85) + np.array([40, 0, 0]) * r.uniform()
    moles = []
    for _ in range(r.integers(1, 6)):
        moles.append((r.uniform(-0.45, 0.45), r.uniform(-0.35, 0.55), r.uniform(0.015, 0.045), r.uniform(0.4, 0.8)))
    has_glasses = r.uniform() < 0.25
    glasses = (_floats(r.uniform(0, 120, 3)), float(r.uniform(1.3, 1.7))) if has_glasses else None
    return FaceIdentity(
        skin=_floats(np.clip(skin, 0, 255)), hair=_floats(np.clip(hair, 0, 255)),
        iris=_floats(np.clip(iris, 0, 255)), lips=_floats(np.clip(lips, 0, 255)),
        face=(r.uniform(0.0, 0.1), r.uniform(0.48, 0.64), r.uniform(0.64, 0.8), r.uniform(0.0, 0.4)),
        hair_shape=(r.uniform(0.04, 0.3), r.uniform(0.0, 0.9), float(r.uniform() < 0.12)),
        ears=(r.uniform(-0.15, 0.05), r.uniform(0.06, 0.11), r.uniform(0.1, 0.18)),
        eyes=(r.uniform(-0.2, -0.02), r.uniform(0.2, 0.32), r.uniform(0.08, 0.13), r.uniform(0.35, 0.65),
              r.uniform(-0.2, 0.2)),
        brows=(r.uniform(0.09, 0.17), r.uniform(0.09, 0.17), r.uniform(0.018, 0.05), r.uniform(-0.35, 0.35)),
        nose=(r.uniform(0.16, 0.32), r.uniform(0.05, 0.1), r.uniform(0.65, 0.85)),
        mouth=(r.uniform(0.3, 0.48), r.uniform(0.12, 0.24), r.uniform(0.025, 0.07), r.uniform(-0.6, 0.9)),
        texture=tuple(map(_floats, r.uniform(-1, 1, (6, 6)))), texture_amp=r.uniform(0.03, 0.16),
        moles=tuple(moles), glasses=glasses, beard=r.uniform(0.5, 0.9) if r.uniform() < 0.2 else 0.0)


# ------------------------------------------------------------------------------------------------ rendering

@dataclass(frozen=True)
class Nuisance:
    """Per-image variation that does not change the identity."""
    roll: float
    yaw: float
    scale: float
    shift: tuple
    mouth_curve: float
    eye_open: float
    gain: float
    light: tuple        # (strength, direction angle)
    cast: tuple
    background: tuple   # two RGB colours and a gradient angle


def draw_nuisance(seed: int, identity: int, index: int) -> Nuisance:
    r = _rng(seed, _NUISANCE, identity, index)
    return Nuisance(roll=r.uniform(-0.15, 0.15), yaw=r.uniform(-0.4, 0.4), scale=r.uniform(0.93, 1.07),
                    shift=tuple(r.uniform(-0.05, 0.05, 2)), mouth_curve=r.normal(0, 0.2),
                    eye_open=r.uniform(0.7, 1.1), gain=r.uniform(0.8, 1.15),
                    light=(r.uniform(0, 0.25), r.uniform(0, 2 * math.pi)), cast=tuple(r.uniform(0.93, 1.07, 3)),
                    background=(tuple(r.uniform(20, 235, 3)), tuple(r.uniform(20, 235, 3)),
                                r.uniform(0, 2 * math.pi)))


# The face spans about 80 % of the image width, like an aligned 112x112 crop.
_ZOOM = 1.15


class _Canvas:
    """A float RGB image with soft-edged shapes drawn in canonical coordinates (u, v).

    A mask is ``(coverage, window)``: coverage in [0, 1] over the pixel window (a pair of slices) that bounds
    the shape, so small shapes cost only their own pixels."""

    def __init__(self, size: int, nuisance: Nuisance):
        p = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        x, y = np.meshgrid(p, p)
        self.zoom = nuisance.scale * _ZOOM
        self.shift, self.roll, self.size = nuisance.shift, nuisance.roll, size
        x, y = (x - self.shift[0]) / self.zoom, (y - self.shift[1]) / self.zoom
        c, s = math.cos(self.roll), math.sin(self.roll)
        self.u, self.v = c * x + s * y, -s * x + c * y
        self.edge = 2.0 / size / self.zoom  # one pixel in canonical units: the anti-aliasing ramp
        self.image = np.zeros((size, size, 3), np.float32)
        self.full = (slice(None), slice(None))

    def box(self, cx: float, cy: float, radius: float) -> tuple:
        """Pixel window holding the canonical disc of ``radius`` around (cx, cy)."""
        c, s = math.cos(self.roll), math.sin(self.roll)
        x = (c * cx - s * cy) * self.zoom + self.shift[0]
        y = (s * cx + c * cy) * self.zoom + self.shift[1]
        half = self.size / 2.0
        px, py, pr = (x + 1.0) * half, (y + 1.0) * half, radius * self.zoom * half + 2.0
        clamp = lambda t: int(min(max(t, 0), self.size))  # noqa: E731
        return (slice(clamp(py - pr), clamp(py + pr + 1)), slice(clamp(px - pr), clamp(px + pr + 1)))

    def ellipse(self, cx, cy, a, b, angle=0.0, window=None, u=None):
        """Mask of an ellipse with half axes (a, b) rotated by ``angle``."""
        window = self.box(cx, cy, max(a, b)) if window is None else window
        u = (self.u if u is None else u)[window]
        c, s = math.cos(angle), math.sin(angle)
        du, dv = u - cx, self.v[window] - cy
        x, y = (c * du + s * dv) / a, (-s * du + c * dv) / b
        r = np.sqrt(x * x + y * y)
        return np.clip(0.5 - (r - 1.0) * (min(a, b) / self.edge), 0.0, 1.0), window

    def paint(self, mask, colour, times=None):
        """Blend ``colour`` in with the mask's coverage (optionally multiplied by a full-size ``times``)."""
        alpha, window = mask
        if times is not None:
            alpha = alpha * times[window]
        region = self.image[window]
        region += alpha[..., None] * (np.asarray(colour, np.float32) - region)


def _sample_field(field: np.ndarray, u: np.ndarray, v: np.ndarray, extent: float = 0.8) -> np.ndarray:
    """Bilinear lookup of a small grid spanning [-extent, extent]^2 (clamped outside)."""
    n = field.shape[0] - 1
    gx = np.clip((u / extent + 1.0) * 0.5 * n, 0, n - 1e-4)
    gy = np.clip((v / extent + 1.0) * 0.5 * n, 0, n - 1e-4)
    ix, iy = gx.astype(np.int32), gy.astype(np.int32)
    fx, fy = gx - ix, gy - iy
    top = field[iy, ix] * (1 - fx) + field[iy, ix + 1] * fx
    bottom = field[iy + 1, ix] * (1 - fx) + field[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(cv: _Canvas, nz: Nuisance) -> None:
    c0, c1, angle = nz.background
    t = np.clip(0.5 + 0.5 * (math.cos(angle) * cv.u + math.sin(angle) * cv.v), 0, 1)[..., None]
    cv.image[:] = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t


def _draw_head(cv: _Canvas, f: FaceIdentity, nz: Nuisance) -> np.ndarray:
    """Hair, ears and the textured face; returns the face coverage (full size)."""
    cy, fa, fb, jaw = f.face
    fa_eff = fa * (1.0 - 0.12 * abs(nz.yaw))
    top, side, bald = f.hair_shape
    if not bald:
        cv.paint(cv.ellipse(0.0, cy - top * 0.5, fa_eff + 0.07, fb + top * 0.5), f.hair)
        if side > 0:  # long hair down both sides
            cv.paint(cv.ellipse(0.0, cy + side * 0.4, fa_eff + 0.1, fb * 0.5 + side * 0.5), f.hair,
                     times=np.abs(cv.u) > fa_eff * 0.6)
    ev, ea, eb = f.ears
    for sign in (-1.0, 1.0):
        cv.paint(cv.ellipse(sign * fa_eff, cy + ev, ea, eb), np.asarray(f.skin) * 0.9)
    # The jaw narrows the lower half of the face ellipse.
    squeeze = 1.0 - jaw * np.clip((cv.v - cy) / fb, 0.0, 1.0) ** 2
    face, _ = cv.ellipse(0.0, cy, fa_eff, fb, window=cv.full, u=cv.u / squeeze)
    shade = 1.0 + f.texture_amp * _sample_field(np.asarray(f.texture, np.float32), cv.u, cv.v - cy)
    cv.image += face[..., None] * (np.asarray(f.skin, np.float32) * shade[..., None] - cv.image)
    if not bald and top > 0.12:  # a fringe over the forehead
        cv.paint(cv.ellipse(0.0, cy - fb * 0.95, fa_eff * 0.9, top * 0.7), f.hair, times=face)
    return face


def _draw_features(cv: _Canvas, f: FaceIdentity, nz: Nuisance, face: np.ndarray) -> None:
    cy = f.face[0]
    # Yaw moves features sideways by their depth: the nose most.
    du_feat, du_nose = nz.yaw * 0.08, nz.yaw * 0.16
    for mu_, mv, radius, dark in f.moles:
        cv.paint(cv.ellipse(mu_ + du_feat, cy + mv, radius, radius), np.asarray(f.skin) * (1 - dark), times=face)
    if f.beard:
        my = cy + f.mouth[0]
        cv.paint((face * np.clip((cv.v - (my - 0.08)) / 0.05, 0, 1) * f.beard, cv.full), f.hair)
    ev, sep, ea, aspect, tilt = f.eyes
    gap, bl, bt, btilt = f.brows
    eb = ea * aspect * nz.eye_open
    for sign in (-1.0, 1.0):
        ex, ey = sign * sep + du_feat, cy + ev
        sclera, window = cv.ellipse(ex, ey, ea, eb, sign * tilt)
        cv.paint((sclera, window), (235, 232, 225))
        for radius, colour in ((eb * 0.95, f.iris), (eb * 0.4, (10, 10, 10))):
            iris, _ = cv.ellipse(ex + nz.yaw * 0.03, ey, radius, radius, window=window)
            cv.paint((iris * sclera, window), colour)
        cv.paint(cv.ellipse(ex, ey - gap, bl, bt, -sign * btilt), np.asarray(f.hair) * 0.7)
        if f.glasses is not None:
            rim, k = f.glasses
            outer, window = cv.ellipse(ex, ey, ea * k, ea * k * 0.8)
            inner, _ = cv.ellipse(ex, ey, ea * k - 0.02, ea * k * 0.8 - 0.02, window=window)
            cv.paint((np.clip(outer - inner, 0, 1), window), rim)
    if f.glasses is not None:
        bridge = max(0.02, sep - f.eyes[2] * f.glasses[1])
        cv.paint(cv.ellipse(du_feat, cy + ev, bridge, 0.012), f.glasses[0])
    length, nw, dark = f.nose
    ny = cy + ev + 0.06 + length * 0.5
    cv.paint(cv.ellipse(du_nose, ny, nw, length * 0.5), np.asarray(f.skin) * dark)
    cv.paint(cv.ellipse(du_nose, ny + length * 0.45, nw * 1.3, nw * 0.6), np.asarray(f.skin) * (dark - 0.15))
    mv, mw, mt, curve = f.mouth
    bend_amp = (curve + nz.mouth_curve) * 0.05
    window = cv.box(du_feat, cy + mv, mw + mt + abs(bend_amp))
    du = (cv.u[window] - du_feat) / mw
    # A smile bends the lip ellipse: its centre line moves up by curvature * u^2.
    dv = (cv.v[window] + bend_amp * du * du - cy - mv) / mt
    lips = np.clip(0.5 - (np.sqrt(du * du + dv * dv) - 1.0) * (mt / cv.edge), 0, 1)
    cv.paint((lips, window), f.lips)


def _illuminate(cv: _Canvas, nz: Nuisance) -> None:
    strength, angle = nz.light
    light = nz.gain * (1.0 + strength * (math.cos(angle) * cv.u + math.sin(angle) * cv.v))
    cv.image *= light[..., None] * np.asarray(nz.cast, np.float32)


def render_clean(seed: int, identity: int, index: int, image_size: int = 112) -> np.ndarray:
    """The undegraded image ``index`` of ``identity``: float32 [image_size, image_size, 3] in [0, 255]."""
    f, nz = identity_params(seed, identity), draw_nuisance(seed, identity, index)
    cv = _Canvas(image_size, nz)
    _background(cv, nz)
    face = _draw_head(cv, f, nz)
    _draw_features(cv, f, nz, face)
    _illuminate(cv, nz)
    return np.clip(cv.image, 0, 255)


# ---------------------------------------------------------------------------------------------- degradation

def draw_severity(seed: int, identity: int, index: int, mode: str | float = "mixed") -> float:
    """Severity of image ``index``. 'mixed': half clean (s < 0.1), half uniform in [0, 1];
    'uniform': uniform in [0, 1]; 'clean': 0; a number: that constant."""
    if not isinstance(mode, str):
        return float(mode)
    r = _rng(seed, _SEVERITY, identity, index)
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
    return degrade(clean, s, _rng(seed, _DEGRADE, identity, index)), s


def encode_image(image: np.ndarray, image_format: str = "jpg") -> bytes:
    """PNG (lossless) or JPEG quality 95 (what face datasets ship; 3x smaller, 10x faster to encode)."""
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- writing

@dataclass(frozen=True)
class SyntheticSpec:
    num_identities: int
    images_per_identity: int
    seed: int = 0
    image_size: int = 112
    severity: str | float = "mixed"
    bin_pairs: int = 1000
    split: float = 0.2
    image_format: str = "jpg"
    version: int = GENERATOR_VERSION

    @property
    def num_heldout(self) -> int:
        return int(round(self.split * self.num_identities))

    @property
    def num_train(self) -> int:
        return self.num_identities - self.num_heldout


@dataclass(frozen=True)
class SyntheticManifest:
    """What ``synthesize`` wrote; paths are absolute."""
    root: str
    spec: SyntheticSpec
    train_dir: str
    heldout_dir: str
    severity_csv: str
    bin_path: str
    bin_severity_path: str
    bin_pairs_path: str
    num_train_identities: int
    num_heldout_identities: int
    num_train_images: int
    num_heldout_images: int
    num_pairs: int

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("root")
        for key in ("train_dir", "heldout_dir", "severity_csv", "bin_path", "bin_severity_path", "bin_pairs_path"):
            d[key] = os.path.relpath(d[key], self.root)
        return d


_INT_KEYS = ("num_identities", "images_per_identity", "seed", "image_size", "bin_pairs")


def _check_spec(spec: SyntheticSpec) -> None:
    def bad(key, value, need):
        raise SyntheticDataError(f"synthesize: {key}={value!r} {need}")
    for key in _INT_KEYS:
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            bad(key, value, "must be an integer")
    if spec.num_identities < 1:
        bad("num_identities", spec.num_identities, "must be >= 1")
    if spec.images_per_identity < 1:
        bad("images_per_identity", spec.images_per_identity, "must be >= 1")
    if spec.seed < 0:
        bad("seed", spec.seed, "must be >= 0")
    if spec.image_size < 16:
        bad("image_size", spec.image_size, "must be >= 16")
    if isinstance(spec.severity, str):
        if spec.severity not in SEVERITY_MODES:
            bad("severity", spec.severity, f"must be one of {list(SEVERITY_MODES)} or a number in [0, 1]")
    elif isinstance(spec.severity, bool) or not isinstance(spec.severity, (int, float, np.integer, np.floating)) \
            or not 0 <= spec.severity <= 1:
        bad("severity", spec.severity, f"must be one of {list(SEVERITY_MODES)} or a number in [0, 1]")
    if spec.image_format not in IMAGE_FORMATS:
        bad("image_format", spec.image_format, f"must be one of {list(IMAGE_FORMATS)}")
    if isinstance(spec.split, bool) or not isinstance(spec.split, (int, float, np.integer, np.floating)) \
            or not 0.0 <= spec.split < 1.0:
        bad("split", spec.split, "(held-out fraction of identities) must be in [0, 1)")
    if spec.bin_pairs < 0:
        bad("bin_pairs", spec.bin_pairs, "must be >= 0")
    if spec.num_train < 1:
        bad("split", spec.split, f"leaves no training identity out of {spec.num_identities}")
    if spec.bin_pairs:
        if spec.num_heldout < 2 or spec.images_per_identity < 2:
            bad("bin_pairs", spec.bin_pairs, f"needs >= 2 held-out identities (split={spec.split} of "
                f"{spec.num_identities} gives {spec.num_heldout}) with >= 2 images each "
                f"(images_per_identity={spec.images_per_identity})")
        same_max = spec.num_heldout * spec.images_per_identity * (spec.images_per_identity - 1) // 2
        if spec.bin_pairs // 2 > same_max:
            bad("bin_pairs", spec.bin_pairs, f"asks for {spec.bin_pairs // 2} distinct same-identity pairs but the "
                f"held-out images only allow {same_max}")


def _image_relpath(spec: SyntheticSpec, identity: int, index: int) -> str:
    folder = TRAIN_DIR if identity < spec.num_train else HELDOUT_DIR
    return f"{folder}/{identity:05d}/{index:03d}.{spec.image_format}"


def _render_identities(root: str, spec: SyntheticSpec, identities) -> None:
    """Render and write every image of ``identities``."""
    for identity in identities:
        folder = os.path.dirname(os.path.join(root, _image_relpath(spec, identity, 0)))
        os.makedirs(folder, exist_ok=True)
        for index in range(spec.images_per_identity):
            image, _ = render_image(spec.seed, identity, index, spec.image_size, spec.severity)
            _atomic_write(os.path.join(root, _image_relpath(spec, identity, index)),
                          encode_image(image, spec.image_format))


def _render_all(root: str, spec: SyntheticSpec, workers: int) -> None:
    """Render with ``workers`` processes, identity i going to worker i % workers.

    Workers are fresh interpreters running this module (``python -m``): unlike fork they are safe when the
    caller already runs TensorFlow threads, and unlike multiprocessing's spawn they never re-import the
    caller's main script."""
    workers = max(1, min(workers, spec.num_identities))
    if workers == 1:
        _render_identities(root, spec, range(spec.num_identities))
        return
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    spec_json = json.dumps(asdict(spec))
    procs, logs = [], []
    try:
        for k in range(workers):
            logs.append(tempfile.TemporaryFile())
            procs.append(subprocess.Popen([sys.executable, "-m", __name__, root, spec_json, str(k), str(workers)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
        failed = [(k, p.wait()) for k, p in enumerate(procs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for (k, code), log in zip(failed, logs):
        log.seek(0)
        tail = log.read()[-3000:].decode(errors="replace")
        log.close()
        if code:
            raise RuntimeError(f"synthesize: rendering worker {k} of {workers} into {root} exited with status "
                               f"{code}:\n{tail}")


def _severity_rows(spec: SyntheticSpec) -> list[tuple]:
    rows = []
    for identity in range(spec.num_identities):
        split = TRAIN_DIR if identity < spec.num_train else HELDOUT_DIR
        for index in range(spec.images_per_identity):
            s = draw_severity(spec.seed, identity, index, spec.severity)
            rows.append((_image_relpath(spec, identity, index), identity, index, s, split))
    return rows


def _draw_pairs(spec: SyntheticSpec) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Balanced pairs over held-out identities, alternating same/different so every contiguous fold of the
    10-fold protocol is balanced; no pair repeats."""
    r = _rng(spec.seed, _PAIRS)
    ids = np.arange(spec.num_train, spec.num_identities)
    n = spec.images_per_identity
    n_same, n_diff = spec.bin_pairs // 2, spec.bin_pairs - spec.bin_pairs // 2
    same, diff, seen = [], [], set()
    while len(same) < n_same:
        i = int(r.choice(ids))
        a, b = sorted(int(x) for x in r.choice(n, 2, replace=False))
        if (i, a, b) not in seen:
            seen.add((i, a, b))
            same.append(((i, a), (i, b), True))
    while len(diff) < n_diff:
        i, j = (int(x) for x in r.choice(ids, 2, replace=False))
        a, b = int(r.integers(n)), int(r.integers(n))
        key = tuple(sorted([(i, a), (j, b)]))
        if key not in seen:  # different-identity pairs are plentiful: retries are rare
            seen.add(key)
            diff.append(((i, a), (j, b), False))
    pairs = []
    for k in range(max(n_same, n_diff)):
        pairs.extend(p[k] for p in (same, diff) if k < len(p))
    return pairs


def _write_bin(root: str, spec: SyntheticSpec, severity: dict) -> None:
    pairs = _draw_pairs(spec)
    files, sev, lines = [], [], []
    for first, second, same in pairs:
        rels = [_image_relpath(spec, *item) for item in (first, second)]
        files.append((*(os.path.join(root, rel) for rel in rels), same))
        sev.extend(severity[rel] for rel in rels)
        (name1, file1), (name2, file2) = (rel.split("/")[1:] for rel in rels)
        lines.append(f"{name1} {file1} {file2}" if same else f"{name1} {file1} {name2} {file2}")
    write_bin(os.path.join(root, BIN_NAME), files)  # the image files' bytes, unchanged
    buf = io.BytesIO()
    np.save(buf, np.asarray(sev, np.float32))
    _atomic_write(os.path.join(root, BIN_SEVERITY), buf.getvalue())
    # LFW-style pairs relative to heldout/: `probface-data make-bin` rebuilds the same .bin from them.
    _atomic_write(os.path.join(root, BIN_PAIRS), ("\n".join(lines) + "\n").encode())


def _csv_bytes(header, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _manifest_for(root: str, spec: SyntheticSpec) -> SyntheticManifest:
    j = lambda name: os.path.join(root, name)  # noqa: E731
    return SyntheticManifest(
        root=root, spec=spec, train_dir=j(TRAIN_DIR), heldout_dir=j(HELDOUT_DIR), severity_csv=j(SEVERITY_CSV),
        bin_path=j(BIN_NAME), bin_severity_path=j(BIN_SEVERITY), bin_pairs_path=j(BIN_PAIRS),
        num_train_identities=spec.num_train, num_heldout_identities=spec.num_heldout,
        num_train_images=spec.num_train * spec.images_per_identity,
        num_heldout_images=spec.num_heldout * spec.images_per_identity, num_pairs=spec.bin_pairs)


def load_manifest(root: str) -> SyntheticManifest | None:
    """The manifest of a synthesized folder, or None if there is none (or it is unreadable/outdated)."""
    root = os.path.abspath(root)
    try:
        with open(os.path.join(root, MANIFEST)) as fh:
            spec = SyntheticSpec(**json.load(fh)["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _manifest_for(root, spec)


def _complete(m: SyntheticManifest) -> bool:
    """Every output of the manifest is still there (one image folder per identity)."""
    files = [m.severity_csv] + ([m.bin_path, m.bin_severity_path, m.bin_pairs_path] if m.num_pairs else [])
    folders = [(m.train_dir, m.num_train_identities), (m.heldout_dir, m.num_heldout_identities)]
    return all(os.path.isfile(f) for f in files) and all(
        n == 0 or (os.path.isdir(d) and len(os.listdir(d)) == n) for d, n in folders)


def _clear_outputs(root: str) -> None:
    """Remove a previous synthesis; refuse to touch a folder holding anything we did not write."""
    foreign = sorted(set(os.listdir(root)) - set(_OUTPUT_NAMES) - {n + ".tmp" for n in _OUTPUT_NAMES})
    if foreign:
        raise SyntheticDataError(f"synthesize: {root} holds files that are not a synthetic dataset "
                                 f"({', '.join(foreign[:5])}); choose an empty or new folder")
    for name in _OUTPUT_NAMES:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def synthesize(root: str, num_identities: int, images_per_identity: int, seed: int = 0, image_size: int = 112,
               severity: str | float = "mixed", bin_pairs: int = 1000, split: float = 0.2,
               image_format: str = "jpg", workers: int | None = None) -> SyntheticManifest:
    """Render the dataset into ``root`` (see the module docstring) and return its manifest.

    ``split`` is the fraction of identities held out of training (the last ones); the ``.bin`` holds
    ``bin_pairs`` pairs of held-out images, half same-identity. If ``root`` already holds a dataset of the
    same spec nothing is rendered. ``workers`` (default: CPU count) only changes the speed, not the bytes."""
    spec = SyntheticSpec(num_identities, images_per_identity, seed, image_size, severity, bin_pairs, split,
                         image_format)
    _check_spec(spec)
    # NumPy scalars -> Python numbers, for the JSON manifest.
    spec = dataclasses.replace(spec, **{k: int(getattr(spec, k)) for k in _INT_KEYS},
                               severity=spec.severity if isinstance(spec.severity, str) else float(spec.severity),
                               split=float(spec.split))
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise SyntheticDataError(f"synthesize: root {root} exists and is not a folder")
    existing = load_manifest(root)
    if existing is not None and existing.spec == spec and _complete(existing):
        return existing
    os.makedirs(root, exist_ok=True)
    _clear_outputs(root)
    _render_all(root, spec, workers or os.cpu_count() or 1)
    rows = _severity_rows(spec)
    _atomic_write(os.path.join(root, SEVERITY_CSV),
                  _csv_bytes(("path", "identity", "index", "severity", "split"),
                             [(p, i, n, repr(s), sp) for p, i, n, s, sp in rows]))
    if spec.bin_pairs:
        _write_bin(root, spec, {row[0]: row[3] for row in rows})
    manifest = _manifest_for(root, spec)
    # Written last: a manifest means the dataset is complete.
    _atomic_write(os.path.join(root, MANIFEST), json.dumps(manifest.to_json(), indent=1).encode())
    return manifest


def read_severity(csv_path: str) -> dict[str, tuple[int, float]]:
    """``severity.csv`` as {relative path: (identity, severity)}."""
    out = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "identity", "severity"} - set(reader.fieldnames or ())
        if missing:
            raise SyntheticDataError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                out[row["path"]] = (int(row["identity"]), float(row["severity"]))
            except (TypeError, ValueError) as exc:
                raise SyntheticDataError(f"{csv_path}:{line}: bad row {row!r}: {exc}") from exc
    return out


def _worker_main(argv: list[str]) -> None:
    root, spec_json, k, workers = argv
    spec = SyntheticSpec(**json.loads(spec_json))
    _render_identities(root, spec, range(int(k), spec.num_identities, int(workers)))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
