"""The TF preprocessing against independent NumPy / Pillow implementations of the original math.

References: Pillow decodes (scipy.misc.imread) and resizes (scipy.misc.imresize) real JPEG-encoded photo crops;
bytescale and standardize are re-derived here in NumPy; a separate integer-arithmetic resampler (Pillow <= 12
order: horizontal pass, then vertical) covers the sizes where the installed Pillow 13 changes the pass order.
"""
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_image

from probface_tf.config import from_dict
from probface_tf.data.errors import PreprocessError
from probface_tf.data.preprocess import (decode_image, preprocess_batch, preprocess_from_config,
                                        preprocess_train_and_test, resize)

TRAIN_OPS = [["resize", (96, 96)], ["random_flip"], ["standardize", "mean_scale"]]
TEST_OPS = [["resize", (96, 96)], ["standardize", "mean_scale"]]


def _jpeg_crops(n, size=112, seed=0, quality=90):
    """Real photo crops, JPEG-encoded: the bytes a face folder or a .bin holds."""
    rng = np.random.default_rng(seed)
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    out = []
    for i in range(n):
        photo = photos[i % 2]
        y = int(rng.integers(0, photo.shape[0] - size))
        x = int(rng.integers(0, photo.shape[1] - size))
        buf = io.BytesIO()
        Image.fromarray(photo[y:y + size, x:x + size]).save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def _pil_decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _np_bytescale(img):
    """scipy.misc.bytescale(img) for a float32 array (scipy <= 1.1 under NumPy 1.x casting rules)."""
    img = img.astype(np.float32)
    cmin, cmax = img.min(), img.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scale = np.float32(np.float64(255.0) / np.float64(cscale))
    return (((img - cmin) * scale).clip(0, 255) + np.float32(0.5)).astype(np.uint8)


def _pil_resize(img, size):
    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def _int_resample_1d(line, out_size):
    """Pillow's 8-bit bilinear resampling of axis 0 of ``line`` [n, ...], in integer arithmetic."""
    n = line.shape[0]
    scale = n / out_size
    fscale = max(scale, 1.0)
    out = np.empty((out_size,) + line.shape[1:], np.int64)
    for o in range(out_size):
        c = (o + 0.5) * scale
        lo = max(int(c - fscale + 0.5), 0)
        hi = min(int(c + fscale + 0.5), n)
        w = np.array([max(0.0, 1.0 - abs((i - c + 0.5) / fscale)) for i in range(lo, hi)])
        total = 0.0
        for v in w:
            total += v
        k = np.array([int(0.5 + v / total * (1 << 22)) for v in w], np.int64)
        acc = (1 << 21) + np.tensordot(k, line[lo:hi].astype(np.int64), axes=1)
        out[o] = np.clip(acc >> 22, 0, 255)
    return out


def _int_resize(img, size):
    h, w = size
    x = img
    if img.shape[1] != w:
        x = np.swapaxes(_int_resample_1d(np.swapaxes(x, 0, 1), w), 0, 1)
    if img.shape[0] != h:
        x = _int_resample_1d(x, h)
    return x.astype(np.uint8)


# ------------------------------------------------------------------------------------------------ decode
def test_decode_matches_pillow_exactly_for_jpeg_and_png():
    for data in _jpeg_crops(6, seed=1, quality=75):
        np.testing.assert_array_equal(decode_image(data).numpy(), _pil_decode(data))
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    decoded = decode_image(buf.getvalue()).numpy()
    assert decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=2))


# ------------------------------------------------------------------------------------------------ resize
@pytest.mark.parametrize("in_size,out_size", [((112, 112), (96, 96)), ((250, 250), (112, 112)),
                                              ((64, 64), (96, 96)), ((112, 96), (112, 112))])
def test_pil_bilinear_resize_is_bit_exact_with_pillow(in_size, out_size):
    rng = np.random.default_rng(3)
    photo = load_sample_image("china.jpg")
    for _ in range(3):
        y = int(rng.integers(0, photo.shape[0] - in_size[0]))
        x = int(rng.integers(0, photo.shape[1] - in_size[1]))
        img = np.ascontiguousarray(photo[y:y + in_size[0], x:x + in_size[1]])
        got = resize(tf.constant(img[None], tf.float32), out_size).numpy()[0]
        np.testing.assert_array_equal(got, _pil_resize(img, out_size))


def test_resize_arbitrary_sizes_static_and_dynamic_match_integer_reference():
    rng = np.random.default_rng(4)
    dyn = tf.function(lambda t, size: resize(t, size), autograph=False)
    for _ in range(8):
        h, w = (int(v) for v in rng.integers(7, 90, 2))
        oh, ow = (int(v) for v in rng.integers(5, 120, 2))
        img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        want = _int_resize(img, (oh, ow))
        np.testing.assert_array_equal(resize(tf.constant(img[None], tf.float32), (oh, ow)).numpy()[0], want)
        spec = tf.TensorSpec([None, None, None, 3], tf.float32)
        got = dyn.get_concrete_function(spec, (oh, ow))(tf.constant(img[None], tf.float32)).numpy()[0]
        np.testing.assert_array_equal(got, want)


def _np_bilinear(img, size):
    """Half-pixel-centre bilinear interpolation without antialiasing, in float64."""
    def axis(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, fy = axis(img.shape[0], size[0])
    x0, x1, fx = axis(img.shape[1], size[1])
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return np.floor(top * (1 - fy)[:, None, None] + bottom * fy[:, None, None] + 0.5)


def test_large_downscales_use_the_wide_exact_path():
    rng = np.random.default_rng(14)
    img = rng.integers(0, 256, (340, 250, 3)).astype(np.uint8)  # 340/20 = 17x: beyond the float32 bound
    want = _int_resize(img, (20, 24))
    np.testing.assert_array_equal(resize(tf.constant(img[None], tf.float32), (20, 24)).numpy()[0], want)
    dyn = tf.function(lambda t: resize(t, (20, 24)), autograph=False,
                      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_array_equal(dyn(tf.constant(img[None], tf.float32)).numpy()[0], want)


def test_plain_bilinear_option_matches_float_bilinear_reference():
    img = _pil_decode(_jpeg_crops(1, seed=5)[0])
    for size in [(80, 80), (150, 70)]:
        got = resize(tf.constant(img[None], tf.float32), size, method="bilinear").numpy()[0]
        want = _np_bilinear(img, size)
        assert np.abs(got - want).max() <= 1.0  # float32 vs float64 only at exact .5 boundaries
        assert np.mean(got != want) < 0.005


# ------------------------------------------------------------------------------------------------ pipelines
def test_training_images_test_preprocessing_matches_original_within_1e5():
    """uint8 images (folder training data): PIL decode -> imresize -> (x - 128) / 128."""
    encoded = _jpeg_crops(4, seed=6)
    batch = tf.stack([decode_image(b) for b in encoded])
    got = preprocess_batch(batch, TEST_OPS).numpy()
    want = np.stack([(_pil_resize(_pil_decode(b), (96, 96)) - 128.0) / 128.0 for b in encoded])
    assert got.dtype == np.float32 and got.shape == (4, 96, 96, 3)
    assert np.abs(got - want).max() <= 1e-5


def test_bin_style_float_images_are_contrast_stretched_before_resize():
    """The original's .bin images are float32: bytescale, imresize, then standardize."""
    encoded = _jpeg_crops(3, seed=7)
    floats = np.stack([_pil_decode(b) for b in encoded]).astype(np.float32)
    floats[0] = floats[0] * 0.5 + 40.0  # a low-contrast image, which the stretch changes visibly
    got = preprocess_batch(tf.constant(floats), TEST_OPS).numpy()
    want = np.stack([(_pil_resize(_np_bytescale(f), (96, 96)) - 128.0) / 128.0 for f in floats])
    assert np.abs(got - want).max() <= 1e-5
    # Switching the quirk off treats float input like uint8 input.
    plain = preprocess_batch(tf.constant(floats), TEST_OPS, contrast_stretch=False).numpy()
    want_plain = np.stack([(_pil_resize(np.round(f).astype(np.uint8), (96, 96)) - 128.0) / 128.0 for f in floats])
    assert np.abs(plain - want_plain).max() <= 1e-5
    assert np.abs(got[0] - plain[0]).max() > 0.1


def test_flat_float_image_stretches_to_zero_like_scipy():
    flat = np.full((1, 20, 20, 3), 77.0, np.float32)
    got = preprocess_batch(flat, [["resize", (16, 16)], ["standardize", "scale"]]).numpy()
    np.testing.assert_array_equal(got, np.zeros((1, 16, 16, 3), np.float32))


def test_scale_standardization_and_uint8_untouched_without_resize():
    img = np.random.default_rng(8).integers(0, 256, (2, 9, 11, 3)).astype(np.uint8)
    got = preprocess_batch(img, [["standardize", "scale"]]).numpy()
    assert np.abs(got - img / 255.0).max() <= 1e-6


def test_random_flip_seeded_flips_some_images_deterministically():
    img = np.random.default_rng(9).integers(0, 256, (64, 8, 10, 3)).astype(np.uint8)
    seed = tf.constant([5, 11], tf.int64)
    a = preprocess_batch(img, [["random_flip"]], training=True, seed=seed).numpy()
    b = preprocess_batch(img, [["random_flip"]], training=True, seed=seed).numpy()
    np.testing.assert_array_equal(a, b)
    flipped = np.array([np.array_equal(a[i], img[i, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(a[i], img[i]) for i in range(64)])
    assert np.all(flipped ^ kept)
    assert 16 < flipped.sum() < 48
    other = preprocess_batch(img, [["random_flip"]], training=True, seed=tf.constant([6, 11], tf.int64)).numpy()
    assert not np.array_equal(a, other)
    np.testing.assert_array_equal(preprocess_batch(img, [["random_flip"]], training=False).numpy(), img)


def test_per_image_seeds_match_one_by_one_processing():
    img = np.random.default_rng(15).integers(0, 256, (8, 14, 12, 3)).astype(np.uint8)
    ops = [["random_crop", (10, 10)], ["random_flip"], ["standardize", "scale"]]
    seeds = tf.constant([[3, i] for i in range(8)], tf.int64)
    batched = preprocess_batch(img, ops, training=True, seed=seeds).numpy()
    for i in range(8):
        single = preprocess_batch(img[i:i + 1], ops, training=True, seed=seeds[i]).numpy()[0]
        np.testing.assert_array_equal(batched[i], single)
    assert len({batched[i].tobytes() for i in range(8)}) == 8


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_train_and_test_pair_equals_two_separate_calls(dtype):
    img = np.random.default_rng(16).integers(0, 256, (6, 30, 26, 3)).astype(dtype)
    train = [["padding", (2, 2)], ["resize", (24, 24)], ["random_flip"], ["standardize", "mean_scale"]]
    test = [["padding", (2, 2)], ["resize", (24, 24)], ["standardize", "mean_scale"]]
    seeds = tf.constant([[9, i] for i in range(6)], tf.int64)
    augmented, plain = preprocess_train_and_test(img, train, test, seed=seeds)
    np.testing.assert_array_equal(augmented.numpy(), preprocess_batch(img, train, True, seed=seeds).numpy())
    np.testing.assert_array_equal(plain.numpy(), preprocess_batch(img, test, False).numpy())


def test_center_crop_rounds_half_to_even_and_padding_keeps_original_width_quirk():
    img = np.random.default_rng(10).integers(0, 256, (2, 21, 19, 3)).astype(np.uint8)
    got = preprocess_batch(img, [["center_crop", (4, 4)]]).numpy()
    top, left = int(round(0.5 * 17)), int(round(0.5 * 15))  # 8.5 -> 8, 7.5 -> 8
    np.testing.assert_array_equal(got, img[:, top:top + 4, left:left + 4])
    padded = preprocess_batch(img, [["padding", (1, 2, 3, 4)]]).numpy()
    want = np.zeros((2, 21 + 1 + 2, 19 + 3 + 2, 3))  # width W + left + bottom, as the original
    want[:, 1:22, 3:22] = img
    np.testing.assert_array_equal(padded, want)


def test_random_crop_takes_windows_of_the_input():
    img = np.random.default_rng(11).integers(0, 256, (6, 12, 12, 3)).astype(np.uint8)
    got = preprocess_batch(img, [["random_crop", (8, 8)]], training=True, seed=tf.constant([1, 2])).numpy()
    for i in range(6):
        windows = [(y, x) for y in range(5) for x in range(5) if np.array_equal(got[i], img[i, y:y + 8, x:x + 8])]
        assert windows
    np.testing.assert_array_equal(preprocess_batch(img, [["random_crop", (8, 8)]]).numpy(), img[:, 2:10, 2:10])


def test_savedmodel_signature_with_dynamic_shapes(tmp_path):
    class Prep(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            return preprocess_batch(images, TEST_OPS)

    path = os.path.join(tmp_path, "prep")
    tf.saved_model.save(Prep(), path)
    loaded = tf.saved_model.load(path)
    encoded = _jpeg_crops(2, seed=12)
    floats = np.stack([_pil_decode(b) for b in encoded]).astype(np.float32)
    want = np.stack([(_pil_resize(_np_bytescale(f), (96, 96)) - 128.0) / 128.0 for f in floats])
    assert np.abs(loaded(tf.constant(floats)).numpy() - want).max() <= 1e-5


def test_preprocess_from_config_reads_the_recipe_keys():
    cfg = from_dict({"image_size": [32, 32], "eval_contrast_stretch": False})
    img = np.random.default_rng(13).integers(0, 256, (2, 40, 40, 3)).astype(np.float32)
    got = preprocess_from_config(tf.constant(img), cfg, training=False).numpy()
    want = np.stack([(_pil_resize(i.astype(np.uint8), (32, 32)) - 128.0) / 128.0 for i in img])
    assert np.abs(got - want).max() <= 1e-5


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("ops,needle", [
    ([["resize", (96, 96)], ["sharpen"]], "'sharpen'"),
    ([["cutout", 0.3, 1.5]], "'cutout'"),  # n_holes must be an integer
    ([["standardize", "zscore"]], "'zscore'"),
    ([["resize", 96]], "'resize'"),
    ([["padding", (1, 2, 3)]], "'padding'"),
])
def test_bad_ops_raise_naming_the_op(ops, needle):
    with pytest.raises(PreprocessError, match=needle):
        preprocess_batch(np.zeros((1, 8, 8, 3), np.uint8), ops)


def test_bad_shapes_and_methods_raise_clear_errors():
    with pytest.raises(PreprocessError, match=r"\[N, H, W, C\]"):
        preprocess_batch(np.zeros((8, 8, 3), np.uint8), TEST_OPS)
    with pytest.raises(PreprocessError, match="resize_method"):
        preprocess_batch(np.zeros((1, 8, 8, 3), np.uint8), TEST_OPS, resize_method="cubic")
    with pytest.raises(PreprocessError, match="larger than the images"):
        preprocess_batch(np.zeros((1, 8, 8, 3), np.uint8), [["center_crop", (9, 4)]])
    assert issubclass(PreprocessError, ValueError)
