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
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probface_tf.data.dataset import FaceDataset, check_max_identities
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LENGTH_MASK = (1 << 29) - 1


@dataclass
class IRHeader:
    flag: int
    label: object  # float, or float32 array when flag > 0
    id: int
    id2: int


# ------------------------------------------------------------------------------------------- payloads
def pack_payload(label, image: bytes = b"", id: int = 0, id2: int = 0) -> bytes:
    """IRHeader + labels + image, as ``mxnet.recordio.pack``: a scalar label is stored in the header, a
    sequence of labels after it (``flag`` = their count)."""
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), id, id2) + image
    labels = np.asarray(label, np.float32).ravel()
    return struct.pack(_IR_FORMAT, labels.size, 0.0, id, id2) + labels.astype("<f4").tobytes() + image


def unpack_payload(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    if len(payload) < IR_SIZE:
        raise DatasetFormatError(f"{where}: record of {len(payload)} bytes is shorter than its 24-byte header")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, payload)
    rest = payload[IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DatasetFormatError(f"{where}: header announces {flag} labels but the record is too short")
        label = np.frombuffer(rest, "<f4", flag).astype(np.float32)
        rest = rest[4 * flag:]
    return IRHeader(flag, label, id_, id2), rest


# ------------------------------------------------------------------------------------------- framing
def frame_record(payload: bytes) -> bytes:
    """The bytes dmlc's RecordIO writer emits for one record (including magic-splitting and padding)."""
    out = []
    start = 0
    for pos in range(0, len(payload) - len(payload) % 4, 4):
        if payload[pos:pos + 4] == _MAGIC_BYTES:
            out.append(_part(1 if start == 0 else 2, payload[start:pos]))
            start = pos + 4
    out.append(_part(3 if start else 0, payload[start:]))
    data = b"".join(out)
    return data + b"\0" * (-len(data) % 4)


def _part(cflag: int, chunk: bytes) -> bytes:
    # Only the final part can have a length that is not a multiple of 4; its padding is added once at the end.
    return _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(chunk)) + chunk


def read_payload(f, where: str) -> bytes:
    """Read one (possibly multi-part) record at the current file position."""
    chunks = []
    while True:
        head = f.read(8)
        if len(head) < 8:
            raise UnreadableImageError(f"{where}: truncated record header")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise UnreadableImageError(f"{where}: bad record magic 0x{magic:08x} (expected 0x{MAGIC:08x})")
        cflag, length = lrec >> 29, lrec & _LENGTH_MASK
        data = f.read((length + 3) & ~3)
        if len(data) < length:
            raise UnreadableImageError(f"{where}: truncated record ({len(data)} of {length} bytes)")
        chunks.append(data[:length])
        if cflag in (0, 3):
            return _MAGIC_BYTES.join(chunks)
        if cflag not in (1, 2):
            raise UnreadableImageError(f"{where}: invalid record part flag {cflag}")


def read_record_at(rec_path: str, offset: int) -> bytes:
    where = f"{rec_path} (record at byte {offset})"
    try:
        with open(rec_path, "rb") as f:
            f.seek(offset)
            return read_payload(f, where)
    except OSError as exc:
        raise UnreadableImageError(f"{where}: cannot read: {exc.strerror or exc}") from None


def read_image_record(rec_path: str, offset: int) -> bytes:
    """The encoded image stored in the record at ``offset``."""
    where = f"{rec_path} (record at byte {offset})"
    try:
        _, image = unpack_payload(read_record_at(rec_path, offset), where)
    except DatasetFormatError as exc:
        raise UnreadableImageError(str(exc)) from None
    return image


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


def _ranges_from_identity_records(rec_path, idx_path, index, header):
    labels = np.atleast_1d(header.label)
    if labels.size < 2:
        raise DatasetFormatError(f"{rec_path}: header record 0 has {labels.size} label(s); insightface "
                                 f"layout needs (first identity key, end identity key)")
    first, end = int(labels[0]), int(labels[1])
    if not 1 <= first < end:
        raise DatasetFormatError(f"{rec_path}: inconsistent header: identity keys [{first}, {end}) "
                                 f"(need 1 <= first < end)")
    missing = [k for k in range(first, end) if k not in index]
    if missing:
        raise DatasetFormatError(f"{rec_path}: inconsistent header: identity record {missing[0]} "
                                 f"(and {len(missing) - 1} more) not in {idx_path}")
    ranges, names = [], []
    for key in range(first, end):
        ident, _ = _read_header(rec_path, index, key)
        bounds = np.atleast_1d(ident.label)
        a, b = (int(bounds[0]), int(bounds[1])) if ident.flag >= 2 else (0, 0)
        if ident.flag < 2 or not 1 <= a < b <= first:
            raise DatasetFormatError(f"{rec_path}: inconsistent header: identity record {key} has image "
                                     f"range {bounds.tolist()} (need 1 <= start < end <= {first})")
        absent = [k for k in range(a, b) if k not in index]
        if absent:
            raise DatasetFormatError(f"{rec_path}: identity record {key}: image record {absent[0]} is not "
                                     f"in {idx_path}")
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
