"""Open a training set with the reader its path calls for; the dataset type every reader returns is
``probface_tf.data.face_dataset.FaceDataset`` (public here too, with ``decode_bytes`` and ``scan_unreadable``)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from probface_tf.data.errors import DatasetFormatError
from probface_tf.data.face_dataset import (  # noqa: F401 - the dataset type and its helpers are public here
    FaceDataset, check_max_identities, decode_bytes, scan_unreadable)
from probface_tf.data.folder import read_image_folder
from probface_tf.data.listfile import read_list_file
from probface_tf.data.recordio import read_recordio


def merge_datasets(parts: Sequence) -> FaceDataset:
    """One dataset from several: each part's labels shifted past the previous parts' classes, as the original's
    ``init_from_folders`` (label = folder index + classes of the roots before)."""
    if not parts:
        raise DatasetFormatError("no dataset to merge: the list of training roots is empty")
    sources, labels, names, ignored, offset = [], [], [], [], 0
    for part in parts:
        sources += list(part.sources)
        labels.append(part.labels + offset)
        names += list(part.class_names)
        ignored += list(part.ignored)
        offset += part.num_classes
    return FaceDataset(sources, np.concatenate(labels), offset, names, root=", ".join(p.root for p in parts),
                       ignored=ignored, strict=parts[0].strict)


def open_dataset(path, max_identities: int | None = 20000, strict: bool = False, **kwargs) -> FaceDataset:
    """Read a training set, choosing the reader from what ``path`` is.

    ``*.rec`` (or ``*.idx``, or a folder holding ``train.rec``): insightface RecordIO; ``*.txt`` / ``*.lst`` /
    ``*.list``: a list file; any other folder: ``root/<identity>/<image>``. A list of such paths is read path
    by path and merged (``merge_datasets``); as the original's list of folders, each is read whole, without the
    ``max_identities`` cut.
    """
    if isinstance(path, (list, tuple)):
        return merge_datasets([open_dataset(p, None, strict, **kwargs) for p in path])
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise DatasetFormatError(f"dataset path not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        rec = os.path.join(path, "train.rec")
        if os.path.isfile(rec):
            return read_recordio(rec, max_identities=max_identities, strict=strict, **kwargs)
        return read_image_folder(path, max_identities=max_identities, strict=strict, **kwargs)
    if ext == ".rec":
        return read_recordio(path, max_identities=max_identities, strict=strict, **kwargs)
    if ext == ".idx":
        return read_recordio(path[:-4] + ".rec", idx_path=path, max_identities=max_identities, strict=strict,
                             **kwargs)
    if ext in (".txt", ".lst", ".list"):
        return read_list_file(path, max_identities=max_identities, strict=strict, **kwargs)
    raise DatasetFormatError(f"{path}: cannot tell the dataset format; expected a folder of identity folders, "
                             f"an insightface .rec/.idx, or a .txt list file of '<path> <label>' lines")


def dataset_from_config(cfg) -> FaceDataset:
    """``open_dataset(cfg.train_dataset_path)`` with the recipe's ``max_identities`` and ``strict_data``."""
    if not cfg["train_dataset_path"]:
        raise DatasetFormatError("config key 'train_dataset_path' is not set")
    return open_dataset(cfg["train_dataset_path"], max_identities=cfg["max_identities"], strict=cfg["strict_data"])
