"""insightface MXNet RecordIO (``train.rec`` + ``train.idx``), read and written without MXNet.

Format (dmlc-core RecordIO as used by ``mxnet.recordio``):

* ``.idx``: text lines ``"<key>\\t<byte offset>\\n"``.
* ``.rec``: records, each one or more parts ``[uint32 magic 0xced7230a][uint32 lrec][data][zero padding to 4]``
  (little endian). ``lrec`` holds the part flag in its top 3 bits (0 = whole record, 1 = first, 2 = middle,
  3 = last part) and the part length in the low 29. The writer splits a record wherever the 4 magic bytes occur
  at a 4-aligned position of its data and drops them; the reader puts them back between parts.
* A record's data is an ``IRHeader`` ``<IfQQ`` (flag, label, id, id2; 24 bytes), then ``flag`` float32 labels
  when ``flag > 0`` (the header label is then 0), then the encoded image.
* insightface layout: record 0's labels are ``(first identity key, end identity key)``; image records are keys
  ``1 .. first-1``; identity record ``k`` has labels ``(start, end)``, its images' key range.

insightface's ``rec2image.py`` decodes identity record ``k`` to the folder ``"0_<k>"``; the original ProbFace
trained on that folder, whose first 20 000 names in string order are not the first 20 000 records.
``identity_order='name'`` (default) reproduces that cut; ``'record'`` keeps record order.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from probface_tf.data.errors import DatasetFormatError, UnreadableImageError
from probface_tf.data.face_dataset import FaceDataset, check_max_identities
from probface_tf.data.record_format import (  # noqa: F401 - the record functions are public here too
    IR_SIZE, MAGIC, IRHeader, frame_record, pack_payload, read_payload, read_image_record, read_record_at,
    unpack_payload)

# ------------------------------------------------------------------------------------------- index
def read_index(idx_path: str) -> dict:
    """``{key: offset}`` from a ``.idx`` file; malformed lines are an error naming the line."""
    if not os.path.isfile(idx_path):
        raise DatasetFormatError(f"{idx_path}: RecordIO index not found (insightface datasets ship train.idx "
                                 f"beside train.rec; pass idx_path if it lives elsewhere)")
    index = {}
    with open(idx_path, "r", encoding="ascii", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                key, offset = int(parts[0]), int(parts[1])
                if len(parts) != 2 or offset < 0:
                    raise ValueError
            except (ValueError, IndexError):
                raise DatasetFormatError(f"{idx_path}:{number}: expected '<key>\\t<offset>', "
                                         f"got {line.rstrip()!r}") from None
            if key in index:
                raise DatasetFormatError(f"{idx_path}:{number}: key {key} appears twice")
            index[key] = offset
    if not index:
        raise DatasetFormatError(f"{idx_path}: the index is empty")
    return index


class RecordSources(Sequence):
    """``sources`` of a RecordIO dataset: item ``i`` is ``(rec_path, offset)``; offsets kept as one array."""

    def __init__(self, rec_path: str, offsets):
        self.rec_path = rec_path
        self.offsets = np.asarray(offsets, np.int64)

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, i):
        return (self.rec_path, int(self.offsets[i]))


# ------------------------------------------------------------------------------------------- reader
def read_recordio(rec_path: str, idx_path: str | None = None, max_identities: int | None = 20000,
                  strict: bool = False, identity_order: str = "name") -> FaceDataset:
    """Read an insightface ``train.rec``/``train.idx`` pair into a ``FaceDataset`` (no image is decoded).

    Identities come from the identity records; ``identity_order='name'`` sorts them by their rec2image folder
    name ``"0_<key>"`` before keeping the first ``max_identities`` (the original's cut), ``'record'`` keeps
    record order. Files without an identity header fall back to each image record's own label.
    """
    check_max_identities(max_identities, rec_path)
    if identity_order not in ("name", "record"):
        raise DatasetFormatError(f"identity_order must be 'name' or 'record', got {identity_order!r}")
    if not os.path.isfile(rec_path):
        raise DatasetFormatError(f"{rec_path}: RecordIO file not found")
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    index = read_index(idx_path)
    size = os.path.getsize(rec_path)
    bad = [k for k, off in index.items() if off >= size]
    if bad:
        raise DatasetFormatError(f"{idx_path}: {len(bad)} offsets point past the end of {rec_path} "
                                 f"({size} bytes), e.g. key {bad[0]} -> {index[bad[0]]}")
    if 0 not in index:
        raise DatasetFormatError(f"{idx_path}: no record 0 (the insightface header record)")
    header, _ = _read_header(rec_path, index, 0)
    if header.flag == 0:
        ranges, names = _ranges_from_image_labels(rec_path, index)
    else:
        ranges, names = _ranges_from_identity_records(rec_path, idx_path, index, header)
    order = np.argsort(names, kind="stable") if identity_order == "name" else np.arange(len(names))
    if max_identities is not None:
        order = order[:max_identities]
    offsets, labels = [], []
    for label, ident in enumerate(order):
        keys = ranges[ident]
        offsets.extend(index[k] for k in keys)
        labels.extend([label] * len(keys))
    return FaceDataset(sources=RecordSources(rec_path, offsets), labels=np.asarray(labels, np.int64),
                       num_classes=len(order), class_names=[names[i] for i in order], root=rec_path,
                       strict=strict)


def _read_header(rec_path: str, index: dict, key: int) -> tuple[IRHeader, bytes]:
    where = f"{rec_path} (record {key} at byte {index[key]})"
    try:
        return unpack_payload(read_record_at(rec_path, index[key]), where)
    except UnreadableImageError as exc:  # a broken header record makes the whole file unusable
        raise DatasetFormatError(str(exc)) from None


def _require_indexed(index: dict, start: int, end: int, message) -> None:
    """DatasetFormatError(``message(missing keys)``) unless every key of [start, end) is in the index."""
    missing = [k for k in range(start, end) if k not in index]
    if missing:
        raise DatasetFormatError(message(missing))


def _ranges_from_identity_records(rec_path, idx_path, index, header):
    labels = np.atleast_1d(header.label)
    if labels.size < 2:
        raise DatasetFormatError(f"{rec_path}: header record 0 has {labels.size} label(s); insightface "
                                 f"layout needs (first identity key, end identity key)")
    first, end = int(labels[0]), int(labels[1])
    if not 1 <= first < end:
        raise DatasetFormatError(f"{rec_path}: inconsistent header: identity keys [{first}, {end}) "
                                 f"(need 1 <= first < end)")
    _require_indexed(index, first, end, lambda missing: f"{rec_path}: inconsistent header: identity record "
                     f"{missing[0]} (and {len(missing) - 1} more) not in {idx_path}")
    ranges, names = [], []
    for key in range(first, end):
        ident, _ = _read_header(rec_path, index, key)
        bounds = np.atleast_1d(ident.label)
        a, b = (int(bounds[0]), int(bounds[1])) if ident.flag >= 2 else (0, 0)
        if ident.flag < 2 or not 1 <= a < b <= first:
            raise DatasetFormatError(f"{rec_path}: inconsistent header: identity record {key} has image "
                                     f"range {bounds.tolist()} (need 1 <= start < end <= {first})")
        _require_indexed(index, a, b, lambda missing: f"{rec_path}: identity record {key}: image record "
                         f"{missing[0]} is not in {idx_path}")
        ranges.append(range(a, b))
        names.append(f"0_{key}")
    return ranges, names


def _ranges_from_image_labels(rec_path, index):
    """No identity header: every record except 0 is an image labelled by its own header."""
    by_label: dict[int, list] = {}
    for key in sorted(k for k in index if k != 0):
        header, _ = _read_header(rec_path, index, key)
        label = header.label if header.flag == 0 else header.label[0]
        by_label.setdefault(int(label), []).append(key)
    if not by_label:
        raise DatasetFormatError(f"{rec_path}: no image records")
    ids = sorted(by_label)
    return [by_label[i] for i in ids], [str(i) for i in ids]


# ------------------------------------------------------------------------------------------- writer
def write_recordio(rec_path: str, identities, idx_path: str | None = None) -> dict:
    """Write identities (a sequence of lists of encoded images) in the insightface layout.

    Keys: 0 header, ``1..N`` images (label = identity index), then one record per identity with its image key
    range. Returns ``{'images': N, 'identities': M}``.
    """
    identities = [list(images) for images in identities]
    if not identities or any(not images for images in identities):
        raise DatasetFormatError(f"{rec_path}: every identity needs at least one image")
    idx_path = idx_path or os.path.splitext(rec_path)[0] + ".idx"
    num_images = sum(len(images) for images in identities)
    first = num_images + 1
    with open(rec_path, "wb") as rec, open(idx_path, "w", encoding="ascii") as idx:
        def put(key, payload):
            idx.write(f"{key}\t{rec.tell()}\n")
            rec.write(frame_record(payload))

        put(0, pack_payload([first, first + len(identities)]))
        key = 1
        for label, images in enumerate(identities):
            for image in images:
                put(key, pack_payload(float(label), bytes(image), id=key))
                key += 1
        start = 1
        for label, images in enumerate(identities):
            put(first + label, pack_payload([start, start + len(images)], id=first + label))
            start += len(images)
    return {"images": num_images, "identities": len(identities)}
