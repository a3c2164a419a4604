"""The original's other preprocessing ops (registered in its ``imageprocessing.py``), as TensorFlow ops.

Each takes and returns a float32 batch ``[N, H, W, C]`` holding pixel values, with the original's arguments:

* ``random_shift(max_ratio)``: pad by ``int(size * max_ratio) + 1`` and crop at offsets
  ``int(size * max_ratio * u)`` (the content moves up/left only; the original's padding quirk kept).
* ``random_downsample(min_ratio)``: resize to ``round(r * size)`` with ``r`` uniform in ``[min_ratio, 1)``, then
  back (both with the package's Pillow-exact resize).
* ``random_interpolate()``: image ``k`` of the output blends inputs ``2k`` and ``2k+1`` with a uniform weight,
  truncated to integers; the batch halves.
* ``expand_flip()``: every image followed by its mirror; the batch doubles.
* ``five_crop(size)`` / ``ten_crop(size)``: corners (top-left, top-right, bottom-left, bottom-right) and center;
  ten adds each crop's mirror right after it; the batch grows 5 / 10 times.
* ``cutout(length_ratio=0.3, n_holes=1)``: zero a ``int(H * ratio)`` square (half-length ``l // 2`` each side of
  a uniform center, clipped to the image) per hole.
* ``rotate(level=3, p=0.5)``: with probability ``p``, rotate by ``int(level * 3)`` degrees, clockwise or
  counter-clockwise with even odds, as Pillow's ``rotate(resample=BILINEAR)`` (about the center, black fill).
* ``gaussian_blur(radius=5.0, p=0.5)``: with probability ``p``, Pillow's ``GaussianBlur(radius)``: three
  extended box blurs per axis, each rounded to 8 bits. (The original registers the one-image function under
  this name, which fails on a batch; this is the per-image ``gaussian_blur_images`` it evidently meant.)

Random ops take ``seed``: None (stateful), ``[2]`` for the batch or ``[N, 2]`` per image (``follow_batch``
keeps a per-image seed in step with a batch that grows or halves). Only ``training``
applies the random ones (as ``random_flip`` here); the deterministic ones always run.
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from probface_tf.data.errors import PreprocessError

# name -> (min, max) number of arguments
AUGMENT_ARITY = {"random_shift": (1, 1), "random_interpolate": (0, 0), "random_downsample": (1, 1),
                 "expand_flip": (0, 0), "five_crop": (1, 1), "ten_crop": (1, 1), "cutout": (0, 2),
                 "rotate": (0, 2), "gaussian_blur": (0, 2)}
RANDOM_OPS = ("random_shift", "random_interpolate", "random_downsample", "cutout", "rotate", "gaussian_blur")
DEFAULTS = {"cutout": (0.3, 1), "rotate": (3, 0.5), "gaussian_blur": (5.0, 0.5)}


def check_args(name: str, args: tuple, pos: int) -> tuple:
    """Validated arguments with defaults filled in; errors name the op and its position."""
    low, high = AUGMENT_ARITY[name]
    if not low <= len(args) <= high:
        raise PreprocessError(f"preprocessing op #{pos} '{name}' takes {low}..{high} argument(s), got {list(args)!r}")
    args = tuple(args) + DEFAULTS.get(name, ())[len(args):]
    if name in ("five_crop", "ten_crop"):
        size = args[0]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise PreprocessError(f"preprocessing op #{pos} '{name}': expected 2 integers >= 1, got {size!r}")
        return (tuple(size),)
    numbers = [a for a in args if not isinstance(a, bool) and isinstance(a, (int, float))]
    if len(numbers) != len(args) or any(a < 0 for a in args):
        raise PreprocessError(f"preprocessing op #{pos} '{name}': arguments must be non-negative numbers, got "
                              f"{list(args)!r}")
    if name == "random_downsample" and not 0 < args[0] <= 1:
        raise PreprocessError(f"preprocessing op #{pos} 'random_downsample': min_ratio must be in (0, 1], "
                              f"got {args[0]}")
    if name == "cutout" and int(args[1]) != args[1]:
        raise PreprocessError(f"preprocessing op #{pos} 'cutout': n_holes must be an integer, got {args[1]!r}")
    return args


def apply(name: str, x: tf.Tensor, args: tuple, training: bool, seed, resize_fn) -> tf.Tensor:
    """Run op ``name``. ``resize_fn(images, (h, w))`` is the pipeline's resize (random_downsample)."""
    if name in RANDOM_OPS and not training:
        return x
    if name == "expand_flip":
        return _interleave([x, tf.reverse(x, [2])])
    if name == "five_crop":
        return _interleave(five_crops(x, args[0]))
    if name == "ten_crop":
        flipped = five_crops(tf.reverse(x, [2]), args[0])
        return _interleave([c for pair in zip(five_crops(x, args[0]), flipped) for c in pair])
    if name == "random_interpolate":
        return random_interpolate(x, seed)
    if name == "random_shift":
        return random_shift(x, args[0], seed)
    if name == "random_downsample":
        return random_downsample(x, args[0], resize_fn, seed)
    if name == "cutout":
        return cutout(x, args[0], int(args[1]), seed)
    if name == "rotate":
        return random_rotate(x, args[0], args[1], seed)
    return random_gaussian_blur(x, args[0], args[1], seed)


BATCH_FACTOR = {"expand_flip": 2, "five_crop": 5, "ten_crop": 10}


def follow_batch(name: str, seed, training: bool):
    """A per-image ``[N, 2]`` seed after op ``name``: repeated with the images when the batch grows, every
    other row when random_interpolate halves it; a ``[2]`` seed or None unchanged."""
    if seed is None or seed.shape.rank == 1:
        return seed
    if name in BATCH_FACTOR:
        return tf.repeat(seed, BATCH_FACTOR[name], axis=0)
    return seed[0::2] if name == "random_interpolate" and training else seed


# ---------------------------------------------------------------------------------------------- draws
def uniform_draws(x: tf.Tensor, seed, count: int = 1) -> tf.Tensor:
    """``[N, count]`` uniform draws in [0, 1): stateful, from one ``[2]`` seed, or per image from ``[N, 2]``."""
    n = tf.shape(x)[0]
    if seed is None:
        return tf.random.uniform([n, count])
    if seed.shape.rank == 1:
        return tf.random.stateless_uniform([n, count], seed)
    return tf.map_fn(lambda s: tf.random.stateless_uniform([count], s), seed, fn_output_signature=tf.float32)


def _interleave(parts: list) -> tf.Tensor:
    """``[a0, b0, c0, a1, b1, c1, ...]`` from equally shaped batches ``[a, b, c]``."""
    stacked = tf.stack(parts, axis=1)
    shape = tf.shape(stacked)
    return tf.reshape(stacked, tf.concat([[shape[0] * len(parts)], shape[2:]], 0))


def _static_hw(x: tf.Tensor, op: str) -> tuple[int, int]:
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:
        raise PreprocessError(f"{op}: needs images of a known size, got shape {x.shape.as_list()}")
    return h, w


def _crop_at(x: tf.Tensor, top: tf.Tensor, left: tf.Tensor, h: int, w: int) -> tf.Tensor:
    rows = top[:, None] + tf.range(h)[None, :]
    cols = left[:, None] + tf.range(w)[None, :]
    return tf.gather(tf.gather(x, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


# ---------------------------------------------------------------------------------------------- geometric
def random_shift(x: tf.Tensor, max_ratio: float, seed=None, draws=None) -> tf.Tensor:
    """``draws``: optional ``[N, 2]`` uniforms (x, y) replacing the random ones (tests)."""
    h, w = _static_hw(x, "random_shift")
    pad_x, pad_y = int(w * max_ratio) + 1, int(h * max_ratio) + 1
    # The original calls padding((pad_x, pad_y)): rows get pad_x, columns pad_y on the left and pad_x on the right.
    padded = tf.pad(x, [[0, 0], [pad_x, pad_x], [pad_y, pad_x], [0, 0]])
    u = uniform_draws(x, seed, 2) if draws is None else tf.convert_to_tensor(draws, tf.float32)
    shift_x = tf.cast(tf.cast(w * max_ratio, tf.float64) * tf.cast(u[:, 0], tf.float64), tf.int32)
    shift_y = tf.cast(tf.cast(h * max_ratio, tf.float64) * tf.cast(u[:, 1], tf.float64), tf.int32)
    return _crop_at(padded, pad_y + shift_y, pad_x + shift_x, h, w)


def five_crops(x: tf.Tensor, size) -> list:
    h, w = size
    in_h, in_w = _static_hw(x, "five_crop")
    if in_h < h or in_w < w:
        raise PreprocessError(f"five_crop/ten_crop: crop {h}x{w} is larger than the images {in_h}x{in_w}")
    top, left = int(round(0.5 * (in_h - h))), int(round(0.5 * (in_w - w)))
    return [x[:, :h, :w], x[:, :h, in_w - w:], x[:, in_h - h:, :w], x[:, in_h - h:, in_w - w:],
            x[:, top:top + h, left:left + w]]


def cutout(x: tf.Tensor, length_ratio: float = 0.3, n_holes: int = 1, seed=None, centers=None) -> tf.Tensor:
    """``centers``: optional int ``[N, n_holes, 2]`` (y, x) replacing the random ones (tests)."""
    h, w = _static_hw(x, "cutout")
    length = int(h * length_ratio)
    if centers is None:
        u = tf.reshape(uniform_draws(x, seed, 2 * n_holes), [-1, n_holes, 2])
        centers = tf.cast(tf.floor(u * tf.constant([h, w], tf.float32)), tf.int32)
    centers = tf.convert_to_tensor(centers, tf.int32)
    lo = tf.clip_by_value(centers - length // 2, 0, [h, w])
    hi = tf.clip_by_value(centers + length // 2, 0, [h, w])
    ys, xs = tf.range(h)[None, None, :], tf.range(w)[None, None, :]
    in_rows = (ys >= lo[..., 0:1]) & (ys < hi[..., 0:1])  # [N, holes, H]
    in_cols = (xs >= lo[..., 1:2]) & (xs < hi[..., 1:2])
    hole = tf.reduce_any(in_rows[..., :, None] & in_cols[..., None, :], axis=1)  # [N, H, W]
    return x * tf.cast(~hole, x.dtype)[..., None]


def random_interpolate(x: tf.Tensor, seed=None, draws=None) -> tf.Tensor:
    left, right = x[0::2], x[1::2]
    tf.debugging.assert_equal(tf.shape(left)[0], tf.shape(right)[0],
                              message="random_interpolate needs an even number of images")
    if draws is None:  # one draw per output image (per-image seeds: those of the even inputs)
        u = uniform_draws(left, seed if seed is None or seed.shape.rank == 1 else seed[0::2], 1)
    else:
        u = tf.convert_to_tensor(draws, tf.float32)[:, None]
    mixed = tf.cast(u[:, :, None, None], tf.float64) * tf.cast(left, tf.float64) + \
        (1.0 - tf.cast(u[:, :, None, None], tf.float64)) * tf.cast(right, tf.float64)
    return tf.cast(tf.clip_by_value(tf.floor(mixed), 0.0, 255.0), tf.float32)  # astype(uint8)


def random_downsample(x: tf.Tensor, min_ratio: float, resize_fn, seed=None, draws=None) -> tf.Tensor:
    """Each image down to ``round(r * size)`` and back up, ``r = min_ratio + (1 - min_ratio) * u``. The
    reachable sizes are few, so each is a static branch of a switch (the resize needs static sizes)."""
    h, w = _static_hw(x, "random_downsample")
    sizes = downsample_sizes(h, w, min_ratio)
    u = uniform_draws(x, seed, 1)[:, 0] if draws is None else tf.convert_to_tensor(draws, tf.float32)
    ratio = min_ratio + (1.0 - min_ratio) * tf.cast(u, tf.float64)
    small_h = tf.cast(tf.round(ratio * h), tf.int32)  # Python's round: halves to even, as tf.round
    small_w = tf.cast(tf.round(ratio * w), tf.int32)
    keys = tf.constant([sh * (w + 1) + sw for sh, sw in sizes], tf.int32)
    branch = tf.argmax(tf.cast(tf.equal(keys[None, :], (small_h * (w + 1) + small_w)[:, None]), tf.int32), axis=1,
                       output_type=tf.int32)

    def one(args):
        image, k = args
        fns = [lambda s=s: resize_fn(resize_fn(image[None], s), (h, w))[0] for s in sizes]
        return tf.switch_case(k, fns)

    return tf.map_fn(one, (x, branch), fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))


def downsample_sizes(h: int, w: int, min_ratio: float) -> list[tuple[int, int]]:
    """Every ``(round(r h), round(r w))`` for r in [min_ratio, 1]: breakpoints of either rounding, midpoints."""
    cuts = sorted({min_ratio, 1.0} | {(k + 0.5) / n for n in (h, w) for k in range(n + 1)
                                     if min_ratio < (k + 0.5) / n < 1.0})
    probes = cuts + [(a + b) / 2 for a, b in zip(cuts[:-1], cuts[1:])]
    return sorted({(max(1, int(np.round(r * h))), max(1, int(np.round(r * w)))) for r in probes})


# ---------------------------------------------------------------------------------------------- Pillow filters
def rotate_degrees(level: float) -> int:
    return int(level * 30 / 10)


def rotate(x: tf.Tensor, degrees) -> tf.Tensor:
    """Pillow ``Image.rotate(degrees, resample=BILINEAR)`` per image (``degrees`` ``[N]``, counter-clockwise):
    inverse affine map about ``(W/2, H/2)``, pixel centers at +0.5, bilinear with edge-clamped neighbours,
    truncated to integers, black where the source point falls outside the image."""
    h, w = _static_hw(x, "rotate")
    theta = -tf.cast(degrees, tf.float64) * math.pi / 180.0
    cos, sin = tf.cos(theta), tf.sin(theta)
    cx, cy = w / 2.0, h / 2.0
    ox = tf.cast(tf.range(w), tf.float64)[None, None, :] + 0.5 - cx
    oy = tf.cast(tf.range(h), tf.float64)[None, :, None] + 0.5 - cy
    c, s = cos[:, None, None], sin[:, None, None]
    xin = c * ox + s * oy + cx - 0.5
    yin = -s * ox + c * oy + cy - 0.5
    # Pillow tests the source point (before the half-pixel shift) against the image, then clamps neighbours.
    inside = (xin + 0.5 >= 0) & (xin + 0.5 < w) & (yin + 0.5 >= 0) & (yin + 0.5 < h)
    x0, y0 = tf.floor(xin), tf.floor(yin)
    dx, dy = xin - x0, yin - y0
    img = tf.cast(x, tf.float64)

    def at(yy, xx):
        yy = tf.clip_by_value(tf.cast(yy, tf.int32), 0, h - 1)
        xx = tf.clip_by_value(tf.cast(xx, tf.int32), 0, w - 1)
        return tf.gather_nd(img, tf.stack([yy, xx], axis=-1), batch_dims=1)

    top = at(y0, x0) + (at(y0, x0 + 1) - at(y0, x0)) * dx[..., None]
    bottom = at(y0 + 1, x0) + (at(y0 + 1, x0 + 1) - at(y0 + 1, x0)) * dx[..., None]
    value = top + (bottom - top) * dy[..., None]
    value = tf.clip_by_value(tf.floor(value), 0.0, 255.0)  # Pillow truncates the interpolated value
    return tf.cast(tf.where(inside[..., None], value, 0.0), tf.float32)


def random_rotate(x: tf.Tensor, level: float = 3, p: float = 0.5, seed=None) -> tf.Tensor:
    u = uniform_draws(x, seed, 2)
    degrees = tf.where(u[:, 1] > 0.5, -rotate_degrees(level), rotate_degrees(level))
    return tf.where((u[:, 0] < p)[:, None, None, None], rotate(x, degrees), x)


def box_radius(radius: float, passes: int = 3) -> float:
    """Pillow's box radius whose ``passes`` box blurs approximate a Gaussian of ``radius`` (float32 math)."""
    f = np.float32
    sigma2 = f(radius) * f(radius) / f(passes)
    big_l = f(np.sqrt(sigma2 * f(12) + f(1)))
    small_l = f(np.floor((big_l - f(1)) / f(2)))
    a = (f(2) * small_l + f(1)) * (small_l * (small_l + f(1)) - f(3) * sigma2)
    a /= f(6) * (sigma2 - (small_l + f(1)) * (small_l + f(1)))
    return float(small_l + a)


def box_matrix(size: int, radius: float) -> np.ndarray:
    """``[size, size]`` integer weights of one Pillow box-blur pass (window ``int(r)`` each side at weight
    ``2^24 / (2r + 1)``, the next pixel each side at the fractional weight; edges clamped)."""
    r_int = int(radius)
    ww = int((1 << 24) / (radius * 2 + 1))
    fw = ((1 << 24) - (r_int * 2 + 1) * ww) // 2
    m = np.zeros((size, size), np.float64)
    for out in range(size):
        for k in range(-r_int, r_int + 1):
            m[out, min(max(out + k, 0), size - 1)] += ww
        for k in (-r_int - 1, r_int + 1):
            m[out, min(max(out + k, 0), size - 1)] += fw
    return m


def gaussian_blur(x: tf.Tensor, radius: float = 5.0, passes: int = 3) -> tf.Tensor:
    """Pillow ``ImageFilter.GaussianBlur(radius)``: ``passes`` horizontal then ``passes`` vertical box blurs,
    each ``(sum + 2^23) >> 24``; float64 products are exact integers."""
    h, w = _static_hw(x, "gaussian_blur")
    r = box_radius(radius, passes)
    y = tf.cast(x, tf.float64)
    for pattern, size in (("nhwc,vw->nhvc", w), ("nhwc,vh->nvwc", h)):
        m = tf.constant(box_matrix(size, r))
        for _ in range(passes):
            y = tf.floor((tf.einsum(pattern, y, m) + (1 << 23)) / (1 << 24))
    return tf.cast(tf.clip_by_value(y, 0.0, 255.0), tf.float32)


def random_gaussian_blur(x: tf.Tensor, radius: float = 5.0, p: float = 0.5, seed=None) -> tf.Tensor:
    u = uniform_draws(x, seed, 1)[:, 0]
    return tf.where((u < p)[:, None, None, None], gaussian_blur(x, radius), x)
