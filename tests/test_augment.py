"""The original's other preprocessing ops against NumPy transcriptions of its imageprocessing.py and against
Pillow (resize, rotate, GaussianBlur), with the random draws injected so the references see the same ones."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFilter

from probface_tf.data import augment
from probface_tf.data.errors import PreprocessError
from probface_tf.data.preprocess import parse_ops, preprocess_batch, resize


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    small = rng.integers(0, 256, (4, 6, 6, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(s).resize((28, 24), Image.BICUBIC)) for s in small])  # [4, 24, 28, 3]


def _t(x):
    return tf.constant(x, tf.float32)


def _np_padding(images, pad):  # the original, including its width quirk
    n, h, w = images.shape[:3]
    t = b = pad[0]
    left = pad[1]
    out = np.zeros((n, h + t + b, w + left + b, images.shape[3]), images.dtype)
    out[:, t:t + h, left:left + w] = images
    return out


def test_random_shift(images):
    x = images[:, :24, :24]  # square, as the original requires
    u = np.array([[0.0, 0.99], [0.5, 0.5], [0.99, 0.1], [0.3, 0.7]], np.float32)
    ours = augment.random_shift(_t(x), 0.2, draws=u).numpy()
    n, h, w = x.shape[:3]
    pad_x, pad_y = int(w * 0.2) + 1, int(h * 0.2) + 1
    temp = _np_padding(x, (pad_x, pad_y))
    sx, sy = (w * 0.2 * u[:, 0].astype(np.float64)).astype(np.int32), (h * 0.2 * u[:, 1]).astype(np.int32)
    ref = np.stack([temp[i, pad_y + sy[i]:pad_y + sy[i] + h, pad_x + sx[i]:pad_x + sx[i] + w] for i in range(n)])
    np.testing.assert_array_equal(ours, ref)
    assert not np.array_equal(ours[0], x[0])


def test_random_downsample_is_pillow_down_and_up(images):
    u = np.array([0.0, 0.37, 0.81, 0.999], np.float32)
    resize_fn = lambda im, size: resize(im, size)  # noqa: E731 - uint8 images: no stretch
    ours = augment.random_downsample(_t(images), 0.4, resize_fn, draws=u).numpy()
    h, w = images.shape[1:3]
    for i, img in enumerate(images):
        r = 0.4 + 0.6 * float(u[i])
        small = Image.fromarray(img).resize((int(round(r * w)), int(round(r * h))), Image.BILINEAR)
        np.testing.assert_array_equal(ours[i], np.asarray(small.resize((w, h), Image.BILINEAR)), err_msg=str(i))
    sizes = augment.downsample_sizes(24, 28, 0.4)
    assert (24, 28) in sizes and (10, 11) in sizes and len(sizes) == len(set(sizes))


def test_random_interpolate(images):
    u = np.array([0.25, 0.9], np.float32)
    ours = augment.random_interpolate(_t(images), draws=u).numpy()
    r = u.astype(np.float64)[:, None, None, None]  # np.random.rand is float64
    ref = r * images[0::2] + (1 - r) * images[1::2]
    np.testing.assert_array_equal(ours, ref.astype(np.uint8))


def test_flip_and_crop_expansions(images):
    x = _t(images)
    np.testing.assert_array_equal(augment.apply("expand_flip", x, (), True, None, None).numpy(),
                                  np.stack([images, images[:, :, ::-1]], axis=1).reshape(8, 24, 28, 3))
    h, w = 20, 21
    five = [images[:, :h, :w], images[:, :h, -w:], images[:, -h:, :w], images[:, -h:, -w:],
            images[:, 2:22, 4:25]]  # center: round(0.5 * 4) = 2, round(0.5 * 7) = 4 (halves to even)
    ref5 = np.stack(five, axis=1).reshape(20, h, w, 3)
    np.testing.assert_array_equal(augment.apply("five_crop", x, ((h, w),), False, None, None).numpy(), ref5)
    flipped = images[:, :, ::-1]
    five_f = np.stack([flipped[:, :h, :w], flipped[:, :h, -w:], flipped[:, -h:, :w], flipped[:, -h:, -w:],
                       flipped[:, 2:22, 4:25]], axis=1).reshape(20, h, w, 3)
    ref10 = np.stack([ref5, five_f], axis=1).reshape(40, h, w, 3)
    np.testing.assert_array_equal(augment.apply("ten_crop", x, ((h, w),), False, None, None).numpy(), ref10)


def test_cutout(images):
    centers = np.array([[[0, 0]], [[12, 14]], [[23, 27]], [[5, 20]]], np.int32)
    ours = augment.cutout(_t(images), 0.3, 1, centers=centers).numpy()
    length = int(24 * 0.3)
    ref = images.astype(np.float64).copy()
    for i, (y, x) in enumerate(centers[:, 0]):
        mask = np.ones((24, 28))
        mask[np.clip(y - length // 2, 0, 24):np.clip(y + length // 2, 0, 24),
             np.clip(x - length // 2, 0, 28):np.clip(x + length // 2, 0, 28)] = 0
        ref[i] *= mask[..., None]
    np.testing.assert_array_equal(ours, ref)
    assert (ours == 0).all(axis=-1).sum() > 0


def test_rotate_is_pillow_bilinear(images):
    degrees = np.array([9, -9, 30, 0])
    ours = augment.rotate(_t(images), tf.constant(degrees)).numpy()
    ref = np.stack([np.asarray(Image.fromarray(img).rotate(int(d), resample=Image.BILINEAR))
                    for img, d in zip(images, degrees)])
    np.testing.assert_array_equal(ours, ref)
    assert augment.rotate_degrees(3) == 9
    turned = augment.random_rotate(_t(images), 3, 1.0, seed=tf.constant([1, 2])).numpy()  # p = 1: all turn +-9
    for img, out in zip(images, turned):
        assert any(np.array_equal(out, np.asarray(Image.fromarray(img).rotate(d, resample=Image.BILINEAR)))
                   for d in (9, -9))


@pytest.mark.parametrize("radius", [5.0, 1.3])
def test_gaussian_blur_is_pillow(images, radius):
    ours = augment.gaussian_blur(_t(images), radius).numpy()
    ref = np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(radius=radius))) for i in images])
    np.testing.assert_array_equal(ours, ref)
    kept = augment.random_gaussian_blur(_t(images), radius, 0.0).numpy()
    np.testing.assert_array_equal(kept, images)


def test_op_lists_parse_run_and_follow_training(images):
    ops = [["random_shift", 0.1], ["cutout"], ["rotate", 3, 0.5], ["gaussian_blur", 2.0], ["expand_flip"],
           ["random_downsample", 0.5], ["five_crop", [20, 20]], ["standardize", "mean_scale"]]
    assert parse_ops(ops)[1] == ("cutout", (0.3, 1)) and parse_ops(ops)[2] == ("rotate", (3, 0.5))
    x = images[:, :24, :24]
    seed = tf.constant(np.arange(8).reshape(4, 2))
    a = preprocess_batch(x, ops, training=True, seed=seed).numpy()
    b = preprocess_batch(x, ops, training=True, seed=seed).numpy()
    assert a.shape == (40, 20, 20, 3)
    np.testing.assert_array_equal(a, b)  # stateless: the same seed gives the same batch
    # per-image seeds: image 1 alone with its seed gets exactly its rows of the batch
    alone = preprocess_batch(x[1:2], ops, training=True, seed=seed[1:2]).numpy()
    np.testing.assert_allclose(alone, a[10:20], atol=1e-6)
    plain = preprocess_batch(x, ops, training=False).numpy()  # random ops skipped, expansions kept
    ref = np.stack([x, x[:, :, ::-1]], axis=1).reshape(8, 24, 24, 3)[:, 2:22, 2:22]
    np.testing.assert_allclose(plain[4::5], (ref - 128.0) / 128.0)


def test_bad_arguments_name_the_op():
    with pytest.raises(PreprocessError, match="#0 'random_shift' takes 1..1"):
        parse_ops([["random_shift"]])
    with pytest.raises(PreprocessError, match="'random_downsample': min_ratio"):
        parse_ops([["random_downsample", 1.5]])
    with pytest.raises(PreprocessError, match="#1 'five_crop': expected 2 integers"):
        parse_ops([["random_flip"], ["five_crop", 20]])
