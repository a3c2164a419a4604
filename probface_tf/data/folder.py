"""Image-folder datasets: ``root/<identity>/<image>``, as the original reads its training set.

Identity folders are sorted by name and only the first ``max_identities`` are kept (original: 20 000); files
inside are sorted; the label is the identity's position. Differences from the original, each reported rather
than silent: loose files and hidden entries in ``root`` are not identities (the original let them take a slot
of the 20 000), and files without an image extension are left out and listed in ``FaceDataset.ignored``.
"""
from __future__ import annotations

import os

from absl import logging

from probface_tf.data.face_dataset import FaceDataset, check_max_identities
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def read_image_folder(root: str, max_identities: int | None = 20000, strict: bool = False) -> FaceDataset:
    """List ``root/<identity>/<image>`` into a ``FaceDataset`` (images are not decoded here).

    An empty identity folder, or no identity at all, is an error. With ``strict``, a non-image file inside an
    identity folder is an error naming it; otherwise it is left out, counted and logged once.
    """
    check_max_identities(max_identities, root)
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DatasetFormatError(f"{root}: not a folder")
    identities, ignored = [], []
    with os.scandir(root) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_dir():
                identities.append(entry.name)
            else:
                ignored.append(entry.path)
    identities.sort()
    if max_identities is not None:
        identities = identities[:max_identities]
    if not identities:
        raise DatasetFormatError(f"{root}: no identity folders (expected root/<identity>/<image>)")
    sources, labels = [], []
    for label, name in enumerate(identities):
        images, others = _list_images(os.path.join(root, name))
        if others and strict:
            raise UnreadableImageError(f"{others[0]}: not an image file (extension not in {IMAGE_EXTENSIONS})")
        ignored.extend(others)
        if not images:
            raise DatasetFormatError(f"{os.path.join(root, name)}: identity folder has no images")
        sources.extend(images)
        labels.extend([label] * len(images))
    if ignored:
        logging.warning("%s: %d entries are not identity folders or images and were left out, e.g. %s",
                        root, len(ignored), ignored[0])
    return FaceDataset(sources=sources, labels=labels, num_classes=len(identities), class_names=identities,
                       root=root, ignored=ignored, strict=strict)


def _list_images(folder: str) -> tuple[list, list]:
    images, others = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(entry.path)
            else:
                others.append(entry.path)
    images.sort()
    return images, sorted(others)
