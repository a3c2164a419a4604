"""List-file datasets: one image per line, ``<path> <label>`` or just ``<path>``.

As the original: with labels, they are used as given; without, the label is the index of the image's parent
folder name among the sorted distinct names. Differences: a path may contain spaces (the label is the last
field), relative paths are resolved against the list file's folder rather than the working directory, and
``max_identities`` keeps the identities with the smallest labels (the original did not cut list files).
"""
from __future__ import annotations

import os

import numpy as np

from probface_tf.data.face_dataset import FaceDataset, check_max_identities
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError


def read_list_file(path: str, max_identities: int | None = None, strict: bool = False) -> FaceDataset:
    """Read a list file into a ``FaceDataset``. With ``strict``, a listed file that does not exist is an
    error naming it (otherwise it is skipped and counted when the sampler reaches it)."""
    check_max_identities(max_identities, path)
    if not os.path.isfile(path):
        raise DatasetFormatError(f"{path}: list file not found")
    base = os.path.dirname(os.path.abspath(path))
    paths, labels, labelled = [], [], None
    with open(path, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            head, _, tail = line.rpartition(" ")
            has_label = bool(head) and _is_int(tail)
            if labelled is None:
                labelled = has_label
            elif has_label != labelled:
                raise DatasetFormatError(f"{path}:{number}: mixes '<path> <label>' and '<path>' lines: "
                                         f"{line!r}")
            file, label = (head.strip(), int(tail)) if has_label else (line, None)
            if label is not None and label < 0:
                raise DatasetFormatError(f"{path}:{number}: negative label {label}")
            paths.append(os.path.normpath(os.path.join(base, os.path.expanduser(file))))
            labels.append(label)
    if not paths:
        raise DatasetFormatError(f"{path}: the list file has no entries")
    if labelled:
        labels = np.asarray(labels, np.int64)
        names = None
    else:
        parents = [os.path.basename(os.path.dirname(p)) for p in paths]
        names, labels = np.unique(parents, return_inverse=True)
        names, labels = [str(n) for n in names], labels.astype(np.int64)
    keep = np.ones(len(paths), bool)
    if max_identities is not None:
        kept = np.unique(labels)[:max_identities]
        keep = np.isin(labels, kept)
    paths = [p for p, k in zip(paths, keep) if k]
    labels = labels[keep]
    if strict:
        for p in paths:
            if not os.path.isfile(p):
                raise UnreadableImageError(f"{p}: listed in {path} but not found")
    num_classes = int(labels.max()) + 1
    class_names = names[:num_classes] if names is not None else [str(i) for i in range(num_classes)]
    return FaceDataset(sources=paths, labels=labels, num_classes=num_classes, class_names=class_names,
                       root=path, strict=strict)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()
