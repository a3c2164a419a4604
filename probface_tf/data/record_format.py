"""dmlc-core RecordIO records (the framing of insightface's ``train.rec``): framing, payloads, one record read
at a byte offset. The format is described in ``probface_tf.data.recordio``, which reads whole datasets."""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

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
