"""Images -> features: tf.data pipelines that decode and preprocess images beside the model, and the forward
passes of one or several models over them.

Models whose evaluation preprocessing is the same (op list, resize method, contrast-stretch switch) share one
preprocessed batch; every image is decoded once per dataset whatever the number of models, and each distinct
preprocessing is one extra map over the decoded batch. Only a few batches of float images exist at any time.

Two sources: a ``.bin`` (fixed-size images, decoded into float32 as the original did, which turns on its
contrast stretch) and a list of image files (any size, decoded to uint8 as the original's folder evaluations
read them, so no stretch; the op list must resize them to the model input).
"""
from __future__ import annotations

import json
import itertools
import time

import numpy as np


class EvaluationError(ValueError):
    """A dataset or model cannot be evaluated; the message names the file (and image) and the problem."""


def preprocessing_key(preprocessing) -> tuple:
    """What decides the preprocessed pixels (the ``source`` label does not)."""
    return (json.dumps(preprocessing.ops), preprocessing.resize_method, bool(preprocessing.contrast_stretch))


def group_by_preprocessing(models) -> tuple[list, list[int]]:
    """(one preprocessing per distinct key, index of each model's group)."""
    keys, groups, index = [], [], []
    for model in models:
        key = preprocessing_key(model.preprocessing)
        if key not in keys:
            keys.append(key)
            groups.append(model.preprocessing)
        index.append(keys.index(key))
    return groups, index


def _batch_preparer(preprocessing, as_float: bool):
    """Batch [N, H, W, 3] uint8 -> the model's float32 input. ``as_float``: the image is float32 as the original's
    .bin arrays were (contrast stretch before a resize); otherwise uint8 as its image files were."""
    import tensorflow as tf

    from probface_tf.data.preprocess import preprocess_batch

    ops, stretch, method = preprocessing.ops, preprocessing.contrast_stretch, preprocessing.resize_method

    def prepare(images):
        images = tf.cast(images, tf.float32) if as_float else images
        return preprocess_batch(images, ops, False, stretch, method)

    return prepare


# ---------------------------------------------------------------------------------------------- .bin source


def _first_image_shape(binset) -> tuple:
    from probface_tf.data.dataset import decode_bytes

    return tuple(decode_bytes(binset.encoded[0], f"{binset.path} image 0").shape)


def _bin_batches(binset, batch_size: int):
    """Decoded uint8 batches of a .bin; every image must have image 0's size, as the original's fixed buffer."""
    import tensorflow as tf

    from probface_tf.data.preprocess import decode_image

    shape = _first_image_shape(binset)

    def decode(encoded):
        return tf.ensure_shape(decode_image(encoded, shape[2]), shape)

    data = tf.data.Dataset.from_tensor_slices(tf.constant(binset.encoded, tf.string))
    return data.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size), shape


def _check_ops(preprocessings, shape) -> None:
    import tensorflow as tf

    from probface_tf.data.preprocess import preprocess_batch

    for p in preprocessings:  # op-list errors surface here, not inside tf.data
        preprocess_batch(tf.zeros((1, *shape), tf.float32), p.ops, False, p.contrast_stretch, p.resize_method)


def image_pipeline(binset, preprocessing, batch_size: int):
    """tf.data pipeline of one .bin and one preprocessing: batches of model input (no prefetch: see
    ``CHUNK_IMAGES``)."""
    return shared_bin_pipeline(binset, [preprocessing], batch_size).map(lambda batch: batch)  # 1-tuple -> tensor


def shared_bin_pipeline(binset, preprocessings, batch_size: int):
    """One pipeline for several preprocessings: each element is a tuple, one batch per preprocessing, all made
    from the same decoded images."""
    import tensorflow as tf

    data, shape = _bin_batches(binset, batch_size)
    _check_ops(preprocessings, shape)
    preparers = [_batch_preparer(p, as_float=True) for p in preprocessings]
    return data.map(lambda images: tuple(prepare(images) for prepare in preparers),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _locate_bad_bin_image(binset, error) -> Exception:
    """The pipeline failed: decode images one by one to name the culprit."""
    from probface_tf.data.dataset import decode_bytes

    shape = None
    for i, blob in enumerate(binset.encoded):
        image = decode_bytes(blob, f"{binset.path} image {i}")  # raises UnreadableImageError naming it
        shape = shape or image.shape
        if image.shape != shape:
            return EvaluationError(f"{binset.path} image {i}: size {image.shape[:2]} differs from image 0's "
                                   f"{shape[:2]}")
    return EvaluationError(f"{binset.path}: feature extraction failed: {_first_line(error)}")


# ---------------------------------------------------------------------------------------------- file source


def shared_file_pipeline(paths, preprocessings, batch_size: int):
    """Image files of any size -> tuples of preprocessed batches (one per preprocessing). Each image is
    preprocessed alone (sizes differ), so the op list must bring every image to one size."""
    import tensorflow as tf

    from probface_tf.data.preprocess import decode_image

    preparers = [_batch_preparer(p, as_float=False) for p in preprocessings]

    def load(path):
        image = decode_image(tf.io.read_file(path), 3)[None]
        return tuple(prepare(image)[0] for prepare in preparers)

    data = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
    return data.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)


def _locate_bad_file(paths, error) -> Exception:
    from probface_tf.data.dataset import decode_bytes

    for path in paths:
        with open(path, "rb") as f:
            decode_bytes(f.read(), path)  # raises UnreadableImageError naming the file
    return EvaluationError(f"feature extraction of {len(paths)} image files failed: {_first_line(error)}")


# ---------------------------------------------------------------------------------------------- forward passes


def _first_line(error) -> str:
    return str(getattr(error, "message", error)).strip().splitlines()[0]


def check_input_size(element_shape, model, source: str) -> None:
    """The preprocessed size must be the model's input size (else the model's --config is missing)."""
    size = tuple(element_shape.as_list()[1:3])
    if None in size:
        raise EvaluationError(
            f"{source}: preprocessing ({model.preprocessing.source}: {model.preprocessing.ops}) does not bring the "
            f"images to one size; add a 'resize' op to preprocess_test (the model takes "
            f"{model.image_size[0]}x{model.image_size[1]})")
    if size != tuple(model.image_size):
        raise EvaluationError(
            f"{source}: preprocessing ({model.preprocessing.source}: {model.preprocessing.ops}) gives "
            f"{size[0]}x{size[1]} images but the model takes {model.image_size[0]}x{model.image_size[1]}; "
            f"pass the model's --config or fix preprocess_test")


# Images decoded and preprocessed before the models run on them. Decoding while a model runs would put tf.data's
# threads on the cores the model's kernels already fill: measured on 2 cores, that interleaving is slower than
# preparing a chunk and then running the model over it. The chunk bounds the memory (2048 x 96 x 96 x 3 float32
# is 226 MB).
CHUNK_IMAGES = 2048


def _chunks(data, batches_per_chunk: int):
    iterator = iter(data)
    while True:
        chunk = list(itertools.islice(iterator, batches_per_chunk))
        if not chunk:
            return
        yield chunk


def run_models(models, data, group_index, locate_error, progress=None, batch_size: int = 128) -> list[tuple]:
    """Feed every batch tuple of ``data`` to the models (model k reads element ``group_index[k]``), a chunk of
    ``CHUNK_IMAGES`` prepared at a time.

    Returns per model ``(mu [N, D], uncertainty [N, S] or None, seconds spent in its forward passes)``;
    ``locate_error(exc)`` turns a pipeline failure into an error naming the bad image."""
    import tensorflow as tf

    mus, sigmas, seconds = [[] for _ in models], [[] for _ in models], [0.0] * len(models)
    try:
        for chunk in _chunks(data, max(1, CHUNK_IMAGES // batch_size)):
            for batches in chunk:
                for k, model in enumerate(models):
                    start = time.perf_counter()
                    out = model(batches[group_index[k]])
                    seconds[k] += time.perf_counter() - start
                    mus[k].append(out["mu"])
                    if model.has_sigma:
                        sigmas[k].append(out[model.uncertainty])
                if progress is not None:
                    progress(len(mus[0][-1]))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.NotFoundError) as exc:
        raise locate_error(exc) from None
    return [(np.concatenate(mus[k]), np.concatenate(sigmas[k]) if model.has_sigma else None, seconds[k])
            for k, model in enumerate(models)]


def extract_bin(models, binset, batch_size: int = 128, progress=None) -> list[tuple]:
    """Every model over one .bin, decoding it once: per model (mu, uncertainty or None, forward seconds)."""
    groups, index = group_by_preprocessing(models)
    data = shared_bin_pipeline(binset, groups, batch_size)
    for model, k in zip(models, index):
        check_input_size(data.element_spec[k].shape, model, binset.path)
    return run_models(models, data, index, lambda exc: _locate_bad_bin_image(binset, exc), progress, batch_size)


def extract_files(models, paths, batch_size: int = 128, source: str = "image list") -> list[tuple]:
    """Every model over a list of image files, decoding each file once: per model (mu, uncertainty or None,
    forward seconds)."""
    groups, index = group_by_preprocessing(models)
    data = shared_file_pipeline(paths, groups, batch_size)
    for model, k in zip(models, index):
        check_input_size(data.element_spec[k].shape, model, source)
    return run_models(models, data, index, lambda exc: _locate_bad_file(paths, exc), batch_size=batch_size)
