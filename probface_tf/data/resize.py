"""``scipy.misc.imresize`` as TensorFlow ops: Pillow's ``BILINEAR`` on uint8 values, bit for bit, and the
``bytescale`` min-max stretch it applies to non-uint8 input (see ``probface_tf.data.preprocess``)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

RESIZE_METHODS = ("pil_bilinear", "bilinear")
_PRECISION_BITS = 22  # Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)


def bytescale(x: tf.Tensor) -> tf.Tensor:
    """Per-image min-max stretch to uint8 values, as ``scipy.misc.bytescale`` with default arguments."""
    x = tf.cast(x, tf.float32)
    lo = tf.reduce_min(x, axis=[1, 2, 3], keepdims=True)
    hi = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
    span = hi - lo
    span = tf.where(span == 0.0, tf.ones_like(span), span)  # scipy: a flat image maps to 0, not NaN
    # scipy computes 255/span in float64 and then multiplies the float32 array by it in float32.
    scale = tf.cast(255.0 / tf.cast(span, tf.float64), tf.float32)
    return tf.floor(tf.clip_by_value((x - lo) * scale, 0.0, 255.0) + 0.5)


def resize(x: tf.Tensor, size, method: str = "pil_bilinear") -> tf.Tensor:
    """Resize ``[N, H, W, C]`` images holding uint8 values to ``size = (h, w)``; uint8 values out (as float32)."""
    h, w = size
    if method == "bilinear":
        y = tf.image.resize(x, (h, w), method="bilinear", antialias=False)
        return tf.clip_by_value(tf.floor(y + 0.5), 0.0, 255.0)
    in_h, in_w = x.shape[1], x.shape[2]
    if in_h == h and in_w == w:  # Pillow returns a copy for an unchanged size
        return x
    x = tf.cast(x, tf.float32)
    if in_w != w:  # Pillow: horizontal pass first, rounded to uint8
        x = _resample_axis(x, 2, w)
    if in_h != h:
        x = _resample_axis(x, 1, h)
    return x


# float32 products stay exact integers (< 2^24) when a coefficient is split in 11-bit halves and a window has at
# most 31 taps, i.e. when the input is at most 15 times the output; beyond that float64 is used.
_MAX_F32_SCALE = 15


def _resample_axis(x: tf.Tensor, axis: int, out_size: int) -> tf.Tensor:
    """One Pillow pass along ``axis`` (1 or 2): ``(sum(pixel * coeff) + 2^21) >> 22`` clipped to [0, 255],
    computed for the whole batch as one ``[out, in] @ [in, rest]`` matrix product with exact integer sums."""
    n_in = x.shape[axis]
    perm = [axis] + [i for i in range(4) if i != axis]
    moved = tf.transpose(x, perm)
    shape = tf.shape(moved)
    flat = tf.reshape(moved, [shape[0], -1])
    if n_in is not None:
        taps, coeffs = _pil_taps(n_in, out_size)
        matrix = _dense(taps, coeffs, n_in)
        product = _split_product if n_in <= _MAX_F32_SCALE * out_size else _wide_product
        y = product(matrix, flat)
    else:
        taps, coeffs = _pil_taps_tf(shape[0], out_size)
        matrix = _dense(taps, coeffs, shape[0])
        y = tf.cond(shape[0] <= _MAX_F32_SCALE * out_size, lambda: _split_product(matrix, flat),
                    lambda: _wide_product(matrix, flat))
    y = tf.reshape(y, tf.concat([[out_size], shape[1:]], 0))
    y = tf.transpose(y, np.argsort(perm))
    static = x.shape.as_list()
    static[axis] = out_size
    return tf.ensure_shape(y, static)


def _dense(taps: tf.Tensor, coeffs: tf.Tensor, n_in) -> tf.Tensor:
    """int32 ``[out, in]`` matrix from the window form (unused taps carry coefficient 0)."""
    return tf.reduce_sum(tf.one_hot(taps, n_in, dtype=tf.int32) * coeffs[:, :, None], axis=1)


def _split_product(matrix: tf.Tensor, flat: tf.Tensor) -> tf.Tensor:
    halves = tf.cast(tf.concat([tf.bitwise.right_shift(matrix, 11), tf.bitwise.bitwise_and(matrix, 2047)], 0),
                     tf.float32)
    acc = tf.cast(tf.matmul(halves, flat), tf.int32)
    high, low = tf.split(acc, 2, axis=0)
    total = high * 2048 + low + (1 << (_PRECISION_BITS - 1))
    return tf.cast(tf.clip_by_value(tf.math.floordiv(total, 1 << _PRECISION_BITS), 0, 255), tf.float32)


def _wide_product(matrix: tf.Tensor, flat: tf.Tensor) -> tf.Tensor:
    acc = tf.matmul(tf.cast(matrix, tf.float64), tf.cast(flat, tf.float64)) + (1 << (_PRECISION_BITS - 1))
    return tf.cast(tf.clip_by_value(tf.floor(acc / _ONE), 0.0, 255.0), tf.float32)


def _pil_taps(in_size: int, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Pillow's bilinear windows: input indices and 22-bit fixed-point coefficients, int32 ``[out, ksize]``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    inv = 1.0 / filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    taps = np.zeros((out_size, ksize), np.int32)
    coeffs = np.zeros((out_size, ksize), np.int32)
    for out in range(out_size):
        center = 0.0 + (out + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        weights = [max(0.0, 1.0 - abs((i - center + 0.5) * inv)) for i in range(first, first + count)]
        total = 0.0
        for wgt in weights:  # summed in Pillow's order so the normalisation rounds identically
            total += wgt
        taps[out] = first  # unused taps point at a valid pixel with coefficient 0
        for j, wgt in enumerate(weights):
            taps[out, j] = first + j
            coeffs[out, j] = int(0.5 + (wgt / total if total != 0.0 else wgt) * _ONE)
    return tf.constant(taps), tf.constant(coeffs)


def _pil_taps_tf(in_size: tf.Tensor, out_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The same windows computed with TF ops, for inputs whose size is only known at run time."""
    n_in = tf.cast(in_size, tf.float64)
    scale = n_in / float(out_size)
    filterscale = tf.maximum(scale, 1.0)
    inv = 1.0 / filterscale
    ksize = tf.cast(tf.math.ceil(filterscale), tf.int32) * 2 + 1
    center = ((tf.range(out_size, dtype=tf.float64) + 0.5) * scale)[:, None]
    first = tf.maximum(tf.floor(center - filterscale + 0.5), 0.0)  # C's truncation, clamped at 0
    stop = tf.minimum(tf.floor(center + filterscale + 0.5), n_in)
    pos = first + tf.cast(tf.range(ksize), tf.float64)[None, :]
    valid = pos < stop
    weights = tf.where(valid, tf.maximum(tf.constant(0.0, tf.float64), 1.0 - tf.abs((pos - center + 0.5) * inv)),
                       tf.zeros_like(pos))
    # A running sum adds the taps left to right, as Pillow does; the unused taps at the end add zeros.
    total = tf.math.cumsum(weights, axis=1)[:, -1:]
    coeffs = tf.cast(tf.floor(0.5 + tf.math.divide_no_nan(weights, total) * _ONE), tf.int32)
    taps = tf.cast(tf.where(valid, pos, first), tf.int32)
    return taps, coeffs
