"""The original ProbFace image preprocessing, as TensorFlow ops.

Everything here is graph-safe (tf.data map functions, ``tf.function``, SavedModel signatures) and reproduces the
original NumPy/SciPy pipeline number for number:

* ``resize`` (``probface_tf.data.resize``) = ``scipy.misc.imresize`` = Pillow ``BILINEAR`` on uint8 RGB: a separable triangle filter widened by
  the scale factor when down-scaling (antialiasing), 22-bit fixed-point coefficients, a horizontal pass rounded
  to uint8, then a vertical pass rounded to uint8. ``resize_method='pil_bilinear'`` rebuilds exactly those
  integer coefficients and applies them with matrix products whose sums stay exact integers, so the
  result is bit-identical to the Pillow of the original (Pillow 13 runs the vertical pass first when the
  height shrinks much more than the width; there it can differ by one level). ``'bilinear'`` is plain
  ``tf.image.resize`` (no antialias), rounded.
* The quirk of ``imresize`` on non-uint8 input: the image is first "bytescaled", a per-image min-max stretch
  over all channels, ``uint8((x - min) * 255 / (max - min) + 0.5)`` (``max == min`` gives all zeros). The
  original's evaluation images (.bin) are float32 and so are stretched; its training images are uint8 and are
  not. ``contrast_stretch=False`` switches the quirk off (float input is then rounded and clipped to [0, 255]).
* ``random_flip`` (left-right with probability 1/2 per image), ``standardize`` (``'mean_scale'``:
  ``(x - 128) / 128``, ``'scale'``: ``x / 255``), ``center_crop``, ``random_crop`` and ``padding``.

The original's other registered ops (``random_shift``, ``random_downsample``, ``random_interpolate``,
``expand_flip``, ``five_crop``, ``ten_crop``, ``cutout``, ``rotate``, ``gaussian_blur``) are in
``probface_tf.data.augment``.

An op list is the original config form, e.g. ``[['resize', (96, 96)], ['random_flip'], ['standardize',
'mean_scale']]``, applied in order.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from probface_tf.data import augment
from probface_tf.data.errors import PreprocessError
from probface_tf.data.resize import RESIZE_METHODS, bytescale, resize

STANDARDIZE_MODES = ("mean_scale", "scale")
# name -> number of arguments after the name
_OP_ARITY = {"resize": 1, "random_flip": 0, "standardize": 1, "center_crop": 1, "random_crop": 1, "padding": 1}
# The original's other registered ops (used by none of its recipes): probface_tf.data.augment.



def decode_image(encoded, channels: int = 3) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes to ``uint8 [H, W, channels]`` (RGB for 3; first frame of a GIF).

    JPEGs use the accurate integer DCT: TensorFlow's default (the fast DCT) differs from Pillow, the original's
    decoder, by up to ~12 levels; the accurate one gives Pillow's pixels exactly.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=channels, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8, expand_animations=False))
    return tf.ensure_shape(image, [None, None, channels])


# ---------------------------------------------------------------------------------------------- op parsing
def parse_ops(ops) -> list[tuple[str, tuple]]:
    """Validate an op list and return ``[(name, args), ...]``; errors name the op and its position."""
    if ops is None:
        raise PreprocessError("preprocessing op list is None")
    parsed = []
    for pos, op in enumerate(ops):
        if isinstance(op, str):
            op = [op]
        if not isinstance(op, (list, tuple)) or not op or not isinstance(op[0], str):
            raise PreprocessError(f"preprocessing op #{pos} must be ['name', args...], got {op!r}")
        name, args = op[0], tuple(op[1:])
        if name in augment.AUGMENT_ARITY:
            parsed.append((name, augment.check_args(name, args, pos)))
            continue
        if name not in _OP_ARITY:
            raise PreprocessError(f"unknown preprocessing op #{pos} '{name}'; supported: "
                                  f"{sorted(_OP_ARITY) + sorted(augment.AUGMENT_ARITY)}")
        if len(args) != _OP_ARITY[name]:
            raise PreprocessError(f"preprocessing op #{pos} '{name}' takes {_OP_ARITY[name]} argument(s), "
                                  f"got {list(args)!r}")
        parsed.append((name, _check_args(name, args, pos)))
    return parsed


def _check_args(name: str, args: tuple, pos: int) -> tuple:
    if name in ("resize", "center_crop", "random_crop"):
        return (_int_tuple(args[0], (2,), name, pos),)
    if name == "padding":
        return (_int_tuple(args[0], (2, 4), name, pos, minimum=0),)
    if name == "standardize" and args[0] not in STANDARDIZE_MODES:
        raise PreprocessError(f"preprocessing op #{pos} 'standardize': mode must be one of "
                              f"{list(STANDARDIZE_MODES)}, got {args[0]!r}")
    return args


def _int_tuple(value, lengths, name, pos, minimum=1) -> tuple:
    ok = isinstance(value, (list, tuple)) and len(value) in lengths and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum for v in value)
    if not ok:
        raise PreprocessError(f"preprocessing op #{pos} '{name}': expected {' or '.join(map(str, lengths))} "
                              f"integers >= {minimum}, got {value!r}")
    return tuple(int(v) for v in value)


# ---------------------------------------------------------------------------------------------- pipeline
def preprocess_batch(images, ops, training: bool = False, contrast_stretch: bool = True,
                     resize_method: str = "pil_bilinear", seed=None) -> tf.Tensor:
    """Apply the original op list to a batch; returns ``float32 [N, h, w, C]``.

    ``images``: uint8 or float ``[N, H, W, C]`` (float images hold values in [0, 255]). Random ops
    (``random_flip``, ``random_crop``) act only when ``training``; otherwise a flip is skipped and a random crop
    is a center crop. ``seed``: optional int tensor making the random ops stateless (deterministic), either
    ``[2]`` for the batch or ``[N, 2]`` per image (image ``i`` then gets exactly the draws it would get alone
    with ``seed[i]``, so batched and one-by-one processing agree). Op ``k`` draws from ``fold_in(seed, k)``.
    """
    steps = parse_ops(ops)
    x, holds_uint8, seed = _prepare(images, resize_method, seed)
    return _run(x, holds_uint8, steps, 0, training, contrast_stretch, resize_method, seed)[0]


# Ops whose result does not depend on ``training`` or a seed, so a prefix of them can be shared.
_DETERMINISTIC = ("resize", "center_crop", "padding")


def preprocess_train_and_test(images, train_ops, test_ops, seed=None, contrast_stretch: bool = True,
                              resize_method: str = "pil_bilinear") -> tuple[tf.Tensor, tf.Tensor]:
    """Both halves of the original's doubled training batch: ``(train-preprocessed, test-preprocessed)``.

    Equal to ``preprocess_batch(images, train_ops, True, seed=seed)`` and ``preprocess_batch(images, test_ops,
    False)``, but the resize/crop/padding ops both lists start with are computed once.
    """
    train, test = parse_ops(train_ops), parse_ops(test_ops)
    shared = 0
    while (shared < min(len(train), len(test)) and train[shared] == test[shared]
           and train[shared][0] in _DETERMINISTIC):
        shared += 1
    x, holds_uint8, seed = _prepare(images, resize_method, seed)
    common = (contrast_stretch, resize_method)
    x, holds_uint8 = _run(x, holds_uint8, train[:shared], 0, False, *common, None)
    augmented = _run(x, holds_uint8, train[shared:], shared, True, *common, seed)[0]
    plain = _run(x, holds_uint8, test[shared:], shared, False, *common, None)[0]
    return augmented, plain


def _prepare(images, resize_method: str, seed):
    if resize_method not in RESIZE_METHODS:
        raise PreprocessError(f"resize_method must be one of {list(RESIZE_METHODS)}, got {resize_method!r}")
    images = tf.convert_to_tensor(images)
    if images.shape.rank is not None and images.shape.rank != 4:
        raise PreprocessError(f"images must be a batch [N, H, W, C], got shape {images.shape.as_list()}")
    if not (images.dtype == tf.uint8 or images.dtype.is_floating):
        raise PreprocessError(f"images must be uint8 or float, got {images.dtype.name}")
    if seed is not None:
        seed = tf.cast(seed, tf.int64)
        if seed.shape.rank not in (1, 2) or seed.shape[-1] != 2:
            raise PreprocessError(f"seed must have shape [2] or [N, 2], got {seed.shape.as_list()}")
    # The original keeps the array's dtype through resize/flip/crop; only non-uint8 arrays get stretched.
    return tf.cast(images, tf.float32), images.dtype == tf.uint8, seed


def _run(x, holds_uint8: bool, steps, first_index: int, training: bool, contrast_stretch: bool,
         resize_method: str, seed):
    """Apply parsed ops; op ``first_index + i`` of the full list draws from ``fold_in(seed, first_index + i)``."""
    for offset, (name, args) in enumerate(steps):
        op_seed = None if seed is None else _fold_in(seed, first_index + offset)
        resize_fn = _original_resize(holds_uint8, contrast_stretch, resize_method)
        if name == "resize":
            x = resize_fn(x, args[0])
        elif name in augment.AUGMENT_ARITY:
            x = augment.apply(name, x, args, training, op_seed, resize_fn)
            seed = augment.follow_batch(name, seed, training)
        elif name == "random_flip":
            if training:
                x = random_flip(x, op_seed)
        elif name == "standardize":
            x = standardize(x, args[0])
            holds_uint8 = False
        elif name == "center_crop":
            x = center_crop(x, args[0])
        elif name == "random_crop":
            x = random_crop(x, args[0], op_seed) if training else center_crop(x, args[0])
        elif name == "padding":
            x = padding(x, args[0])
    return x, holds_uint8


def _original_resize(holds_uint8: bool, contrast_stretch: bool, resize_method: str):
    """``imresize`` as the original calls it on an array of this dtype."""
    def resize_fn(x, size):
        if not holds_uint8:
            # Still a float array afterwards in the original, so a later resize stretches again.
            x = bytescale(x) if contrast_stretch else tf.clip_by_value(tf.round(x), 0.0, 255.0)
        return resize(x, size, resize_method)
    return resize_fn


def preprocess_from_config(images, cfg, training: bool, seed=None) -> tf.Tensor:
    """``preprocess_batch`` with ``cfg.preprocess_train`` / ``cfg.preprocess_test``, ``cfg.eval_contrast_stretch``
    and ``cfg.resize_method``. Pass .bin images as float32 to reproduce the original's evaluation stretch."""
    ops = cfg["preprocess_train"] if training else cfg["preprocess_test"]
    return preprocess_batch(images, ops, training=training, contrast_stretch=cfg["eval_contrast_stretch"],
                            resize_method=cfg["resize_method"], seed=seed)


# ---------------------------------------------------------------------------------------------- ops
def _fold_in(seed: tf.Tensor, index: int) -> tf.Tensor:
    if seed.shape.rank == 1:
        return tf.random.experimental.stateless_fold_in(seed, index)
    # Same dtype as the single-seed path (fold_in returns int32): stateless_split draws in its seed's dtype.
    return tf.map_fn(lambda s: tf.random.experimental.stateless_fold_in(s, index), seed,
                     fn_output_signature=tf.int32)


def _uniform(n, seed, minval=0, maxval=None, dtype=tf.float32) -> tf.Tensor:
    """``n`` uniform draws: stateful, from one ``[2]`` seed, or one draw per row of an ``[n, 2]`` seed."""
    if seed is None:
        return tf.random.uniform([n], minval, maxval, dtype=dtype)
    if seed.shape.rank == 1:
        return tf.random.stateless_uniform([n], seed, minval, maxval, dtype=dtype)
    return tf.map_fn(lambda s: tf.random.stateless_uniform([1], s, minval, maxval, dtype=dtype)[0], seed,
                     fn_output_signature=dtype)


def random_flip(x: tf.Tensor, seed=None) -> tf.Tensor:
    """Flip each image left-right when its uniform draw is >= 0.5 (the original's test)."""
    draw = _uniform(tf.shape(x)[0], seed)
    return tf.where((draw >= 0.5)[:, None, None, None], tf.reverse(x, axis=[2]), x)


def standardize(x: tf.Tensor, mode: str) -> tf.Tensor:
    if mode == "mean_scale":
        return (x - 128.0) / 128.0
    if mode == "scale":
        return x / 255.0
    raise PreprocessError(f"standardize: mode must be one of {list(STANDARDIZE_MODES)}, got {mode!r}")


def center_crop(x: tf.Tensor, size) -> tf.Tensor:
    """Crop at ``round(0.5 * (H - h))`` (Python's round: halves to even), as the original."""
    h, w = size
    in_h, in_w = _checked_spatial(x, size, "center_crop")
    top = tf.cast(tf.round(0.5 * tf.cast(in_h - h, tf.float64)), tf.int32)
    left = tf.cast(tf.round(0.5 * tf.cast(in_w - w, tf.float64)), tf.int32)
    return x[:, top:top + h, left:left + w, :]


def random_crop(x: tf.Tensor, size, seed=None) -> tf.Tensor:
    """Crop each image at its own uniform offset in ``[0, H - h] x [0, W - w]``."""
    h, w = size
    in_h, in_w = _checked_spatial(x, size, "random_crop")
    n = tf.shape(x)[0]
    top_seed = left_seed = None
    if seed is not None and seed.shape.rank == 1:
        top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    elif seed is not None:
        pairs = tf.map_fn(lambda s: tf.random.experimental.stateless_split(s, 2), seed,
                          fn_output_signature=seed.dtype)
        top_seed, left_seed = pairs[:, 0], pairs[:, 1]
    top = _uniform(n, top_seed, 0, in_h - h + 1, tf.int32)
    left = _uniform(n, left_seed, 0, in_w - w + 1, tf.int32)
    rows = top[:, None] + tf.range(h)[None, :]
    cols = left[:, None] + tf.range(w)[None, :]
    x = tf.gather(x, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def padding(x: tf.Tensor, pads) -> tf.Tensor:
    """Zero padding ``(vertical, horizontal)`` or ``(top, bottom, left, right)``.

    Original quirk kept: the new width is ``W + left + bottom``, so the right margin equals the bottom one.
    """
    top, bottom, left = (pads[0], pads[0], pads[1]) if len(pads) == 2 else pads[:3]
    return tf.pad(x, [[0, 0], [top, bottom], [left, bottom], [0, 0]])


def _checked_spatial(x: tf.Tensor, size, op: str):
    h, w = size
    in_h, in_w = x.shape[1], x.shape[2]
    if in_h is not None and in_w is not None:
        if in_h < h or in_w < w:
            raise PreprocessError(f"{op}: crop {h}x{w} is larger than the images {in_h}x{in_w}")
        return in_h, in_w
    shape = tf.shape(x)
    tf.debugging.assert_greater_equal(shape[1:3], tf.constant([h, w]),
                                      message=f"{op}: crop {h}x{w} is larger than the images")
    return shape[1], shape[2]
