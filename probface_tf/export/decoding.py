"""In-graph input checks and image decoding of the serving signatures.

TF Serving and a loaded SavedModel pass whatever shape a client sends, so each check runs in the graph, before
any other op, and its message names the signature, the input and the expected shape. Encoded images are
decoded and preprocessed in the graph exactly like the Python evaluation path.
"""
from __future__ import annotations

import tensorflow as tf

from probface_tf.data.preprocess import decode_image, preprocess_batch

# First bytes of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP.
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _dims_text(dims) -> str:
    """'[N, 96, 96, 3]' from ['N', 96, 96, 3]."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def assert_shape(signature: str, name: str, tensor, expected, dtype: str, what: str):
    """An in-graph check that ``tensor`` has the shape ``expected`` (str entries: any size, named so).

    The signature's TensorSpec already fixes rank and sizes statically, so ``tf.debugging.assert_rank`` /
    ``assert_equal`` would be folded away at trace time, yet a raw signature call (TF Serving, a loaded
    SavedModel) passes whatever shape the client sent. Matching the runtime shape as text cannot be folded
    and works for any rank, including the rank-3 input that would otherwise abort inside oneDNN.
    """
    shape = tf.shape(tensor)
    text = tf.strings.reduce_join(tf.strings.as_string(shape), separator=" ")
    pattern = " ".join(r"\d+" if isinstance(d, str) else str(int(d)) for d in expected)
    # No quotes around the name: the Assert op prints its message C-escaped, ' as \'.
    message = tf.strings.format(f"{signature}: {name} must be {dtype} {_dims_text(expected)} ({what}), "
                                "got shape {}", [shape], summarize=-1)
    return tf.debugging.Assert(tf.strings.regex_full_match(text, pattern), [message])


def after(checks, *tensors):
    """``tensors`` gated on ``checks``: nothing downstream (convolutions included) runs before they pass."""
    with tf.control_dependencies(checks):
        return [tf.identity(t) for t in tensors]


def _assert_image_bytes(encoded):
    """A clear in-graph error for elements that are no image, before the decoder's terse one."""
    known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(encoded, 0, len(m)), m) for m in IMAGE_MAGIC]), axis=0)
    bad = tf.cast(tf.where(tf.logical_not(known))[:, 0], tf.int32)
    first = tf.concat([bad, [-1]], axis=0)[0]
    length = tf.concat([tf.strings.length(tf.gather(encoded, bad)), [0]], axis=0)[0]
    # The message gives the length, not the bytes: raw binary would make the error text undecodable.
    message = tf.strings.format("from_image_bytes: {} element(s) of image_bytes are not encoded JPEG, PNG, GIF or "
                                "BMP images; the first is element {} ({} bytes)", (tf.size(bad), first, length))
    return tf.debugging.Assert(tf.size(bad) == 0, [message])


def bytes_to_images(encoded, ops, image_size, resize_method, contrast_stretch):
    """Encoded strings [N] -> float32 [N, H, W, 3], one image at a time (their sizes may differ).

    A graph cannot catch a decoder error, so the images go through a tf.data pipeline that drops failing
    elements (``ignore_errors``) with their indices; a missing index then becomes an error naming the element.
    """
    def one(index, data):
        batch = preprocess_batch(decode_image(data, channels=3)[tf.newaxis], ops, training=False,
                                 contrast_stretch=contrast_stretch, resize_method=resize_method)
        return index, tf.ensure_shape(batch[0], [*image_size, 3])

    (encoded,) = after([_assert_image_bytes(encoded)], encoded)
    n = tf.shape(encoded)[0]
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), encoded)).map(one).ignore_errors()
    # One batch holds every surviving image (batch size 0 is invalid, hence the floor of 1).
    dataset = dataset.batch(tf.cast(tf.maximum(n, 1), tf.int64))
    empty = (tf.zeros([0], tf.int32), tf.zeros([0, *image_size, 3], tf.float32))
    decoded, images = dataset.reduce(empty, lambda acc, b: (tf.concat([acc[0], b[0]], 0),
                                                             tf.concat([acc[1], b[1]], 0)))
    # Survivors keep their order, so the first failure is the first position i whose index is not i.
    position = tf.range(tf.size(decoded))
    first = tf.reduce_min(tf.concat([tf.boolean_mask(position, decoded != position), [tf.size(decoded)]], 0))
    length = tf.concat([tf.strings.length(encoded), [0]], 0)[first]  # first <= n, also for an empty batch
    message = tf.strings.format("from_image_bytes: {} element(s) of image_bytes could not be decoded (truncated or "
                                "corrupt image data); the first is element {} ({} bytes)",
                                (n - tf.size(decoded), first, length))
    (images,) = after([tf.debugging.Assert(tf.size(decoded) == n, [message])], images)
    return tf.ensure_shape(images, [None, *image_size, 3])
