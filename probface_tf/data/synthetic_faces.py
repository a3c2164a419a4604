"""Face-like identities of the synthetic dataset, rendered clean (no degradation).

Each identity is a fixed random drawing (face outline and jaw, hair, ears, eyes, brows, nose, mouth, skin
texture, moles, optional glasses/beard). Each image of it adds a nuisance (roll, yaw, shift, scale,
illumination, background) that does not change who it is.

Every random draw comes from a generator keyed by ``(seed, stream, identity[, image])``, so an image is the
same whatever process renders it. Only NumPy is used (no TensorFlow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from probface_tf.data.errors import DataError

# Random streams: one generator per (seed, stream, identity[, image]).
IDENTITY_STREAM, NUISANCE_STREAM, SEVERITY_STREAM, DEGRADE_STREAM, PAIRS_STREAM = range(5)


class SyntheticDataError(DataError):
    """Invalid synthetic-dataset arguments, or an output folder that is not ours to overwrite."""


def stream_rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """The generator of one random stream, keyed by identity / image."""
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
    r = stream_rng(seed, IDENTITY_STREAM, identity)
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
    r = stream_rng(seed, NUISANCE_STREAM, identity, index)
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
