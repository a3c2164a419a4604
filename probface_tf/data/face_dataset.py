"""The dataset every reader returns: image sources, integer labels, class names.

``FaceDataset.sources[i]`` is either a file path (image folders, list files) or a ``(rec_path, offset)`` pair
(RecordIO). ``read_bytes(i)`` returns the encoded image; ``decode(i)`` the uint8 RGB array. Both raise
``UnreadableImageError`` naming the file; the sampler turns that into "skipped and counted" unless strict.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from probface_tf.data.errors import DatasetFormatError, UnreadableImageError
from probface_tf.data.record_format import read_image_record


@dataclass
class FaceDataset:
    sources: Sequence
    labels: np.ndarray  # int64 [num_images]
    num_classes: int  # labels are in [0, num_classes)
    class_names: list  # class_names[label]
    root: str = ""
    ignored: list = field(default_factory=list)  # files left out when listing (not images), reported
    strict: bool = False
    _class_indices: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int64)
        if len(self.sources) != len(self.labels):
            raise DatasetFormatError(f"{self.root}: {len(self.sources)} sources but {len(self.labels)} labels")
        if len(self.labels) == 0:
            raise DatasetFormatError(f"{self.root}: the dataset has no images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_images(self) -> int:
        return len(self.labels)

    def class_indices(self) -> list:
        """``[np.int64 array of image indices for each label]`` (empty for labels without images)."""
        if self._class_indices is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
            self._class_indices = [order[bounds[c]:bounds[c + 1]] for c in range(self.num_classes)]
        return self._class_indices

    def describe(self, index: int) -> str:
        """The file (and record) an image comes from, for messages."""
        source = self.sources[index]
        if isinstance(source, tuple):
            return f"{source[0]} (record at byte {source[1]})"
        return str(source)

    def read_bytes(self, index: int) -> bytes:
        source = self.sources[index]
        if isinstance(source, tuple):
            return read_image_record(*source)
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UnreadableImageError(f"{source}: cannot read: {exc.strerror or exc}") from None

    def decode(self, index: int, channels: int = 3) -> np.ndarray:
        """Decoded uint8 ``[H, W, channels]`` image (TF decoder, Pillow-identical for JPEG)."""
        return decode_bytes(self.read_bytes(index), self.describe(index), channels)


def decode_bytes(data: bytes, name: str, channels: int = 3) -> np.ndarray:
    """Decode one encoded image eagerly; any failure is an ``UnreadableImageError`` naming ``name``."""
    import tensorflow as tf
    if not data:
        raise UnreadableImageError(f"{name}: empty file")
    try:
        # Same decoders as preprocess.decode_image, chosen in Python (an eager tf.cond costs ~0.1 ms).
        if data[:3] == b"\xff\xd8\xff":
            return tf.io.decode_jpeg(data, channels=channels, dct_method="INTEGER_ACCURATE").numpy()
        return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as exc:
        reason = exc.message.split("[Op:")[0].split("}}")[-1].strip() or "not a decodable image"
        raise UnreadableImageError(f"{name}: not a decodable image ({reason})") from None


def scan_unreadable(data: FaceDataset, channels: int = 3, progress=None) -> list:
    """Decode every image; return ``[(index, message), ...]`` for those that fail (for ``inspect``)."""
    bad = []
    for i in range(len(data)):
        try:
            data.decode(i, channels)
        except UnreadableImageError as exc:
            bad.append((i, str(exc)))
        if progress is not None:
            progress(i)
    return bad


def check_max_identities(max_identities, where: str) -> None:
    if max_identities is not None and (not isinstance(max_identities, (int, np.integer)) or max_identities <= 0):
        raise DatasetFormatError(f"{where}: max_identities must be a positive integer or None, "
                                 f"got {max_identities!r}")
