"""Image-folder, list-file and insightface RecordIO readers, on small real files built here."""
import io
import os
import struct

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from probface_tf.data.dataset import open_dataset, scan_unreadable
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError
from probface_tf.data.folder import read_image_folder
from probface_tf.data.listfile import read_list_file
from probface_tf.data.recordio import (frame_record, pack_payload, read_payload, read_recordio, unpack_payload,
                                       write_recordio)

MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a little endian


def _jpeg(seed, size=40):
    photo = load_sample_image("china.jpg")
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, photo.shape[0] - size)), int(rng.integers(0, photo.shape[1] - size))
    buf = io.BytesIO()
    Image.fromarray(photo[y:y + size, x:x + size]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pil(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------- folder
def _folder(root, counts, names=None):
    names = names or [f"id{i:02d}" for i in range(len(counts))]
    blobs = {}
    for name, n in zip(names, counts):
        for j in range(n):
            blobs[(name, j)] = _jpeg(hash((name, j)) % 1000)
            _write(os.path.join(root, name, f"img_{j}.jpg"), blobs[(name, j)])
    return blobs


def test_folder_sorted_identities_labels_and_cut(tmp_path):
    root = str(tmp_path / "faces")
    _folder(root, [2, 3, 1, 2], names=["b", "a", "d", "c"])
    _write(os.path.join(root, "README.txt"), b"loose file")
    _write(os.path.join(root, "a", "notes.txt"), b"not an image")
    data = read_image_folder(root)
    assert data.class_names == ["a", "b", "c", "d"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    assert [os.path.relpath(s, root) for s in data.sources[:3]] == ["a/img_0.jpg", "a/img_1.jpg", "a/img_2.jpg"]
    assert sorted(os.path.basename(p) for p in data.ignored) == ["README.txt", "notes.txt"]
    cut = read_image_folder(root, max_identities=2)
    assert cut.class_names == ["a", "b"] and cut.num_classes == 2 and len(cut) == 5
    np.testing.assert_array_equal(cut.decode(3), _pil(open(os.path.join(root, "b", "img_0.jpg"), "rb").read()))


def test_folder_bad_images_are_found_and_strict_names_the_file(tmp_path):
    root = str(tmp_path / "faces")
    blobs = _folder(root, [3, 2])
    truncated = os.path.join(root, "id00", "img_1.jpg")
    _write(truncated, blobs[("id00", 1)][:len(blobs[("id00", 1)]) // 2])
    fake = os.path.join(root, "id01", "zz_fake.jpg")
    _write(fake, b"this is a text file named .jpg\n")
    data = read_image_folder(root)
    bad = scan_unreadable(data)
    assert [data.sources[i] for i, _ in bad] == [truncated, fake]
    assert all(data.sources[i] in msg for i, msg in bad)
    with pytest.raises(UnreadableImageError, match="zz_fake.jpg"):
        data.decode(data.sources.index(fake))
    _write(os.path.join(root, "id01", "list.csv"), b"x")
    with pytest.raises(UnreadableImageError, match="list.csv"):
        read_image_folder(root, strict=True)


def test_folder_empty_identity_and_empty_root_are_errors(tmp_path):
    root = str(tmp_path / "faces")
    _folder(root, [1])
    os.makedirs(os.path.join(root, "id99"))
    with pytest.raises(DatasetFormatError, match="id99.*no images"):
        read_image_folder(root)
    os.makedirs(str(tmp_path / "empty"))
    with pytest.raises(DatasetFormatError, match="no identity folders"):
        read_image_folder(str(tmp_path / "empty"))
    with pytest.raises(DatasetFormatError, match="max_identities"):
        read_image_folder(root, max_identities=0)


# --------------------------------------------------------------------------------------------- list file
def test_list_file_with_and_without_labels(tmp_path):
    root = str(tmp_path / "faces")
    _folder(root, [2, 1, 2], names=["zed", "amy", "bob"])
    lines = ["faces/zed/img_0.jpg 7", "faces/amy/img_0.jpg 2", "faces/bob/img_1.jpg 0"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n\n")
    data = read_list_file(str(tmp_path / "train.txt"))
    assert data.labels.tolist() == [7, 2, 0] and data.num_classes == 8
    assert data.sources[0] == os.path.join(root, "zed", "img_0.jpg")
    cut = read_list_file(str(tmp_path / "train.txt"), max_identities=2)
    assert cut.labels.tolist() == [2, 0]
    (tmp_path / "plain.txt").write_text("\n".join(l.rsplit(" ", 1)[0] for l in lines))
    plain = read_list_file(str(tmp_path / "plain.txt"))
    assert plain.class_names == ["amy", "bob", "zed"] and plain.labels.tolist() == [2, 0, 1]


def test_list_file_errors_name_the_line_or_file(tmp_path):
    (tmp_path / "mixed.txt").write_text("a/x.jpg 1\nb/y.jpg\n")
    with pytest.raises(DatasetFormatError, match=r"mixed.txt:2"):
        read_list_file(str(tmp_path / "mixed.txt"))
    (tmp_path / "neg.txt").write_text("a/x.jpg -3\n")
    with pytest.raises(DatasetFormatError, match=r"neg.txt:1: negative label"):
        read_list_file(str(tmp_path / "neg.txt"))
    (tmp_path / "missing.txt").write_text("nowhere/x.jpg 0\n")
    assert len(read_list_file(str(tmp_path / "missing.txt"))) == 1  # skipped later, when reached
    with pytest.raises(UnreadableImageError, match="nowhere/x.jpg"):
        read_list_file(str(tmp_path / "missing.txt"), strict=True)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DatasetFormatError, match="no entries"):
        read_list_file(str(tmp_path / "empty.txt"))


# --------------------------------------------------------------------------------------------- recordio
def _reference_rec(identities):
    """insightface train.rec/train.idx bytes for payloads without the magic word, built by hand."""
    rec, idx = bytearray(), []

    def put(key, payload):
        assert MAGIC not in payload
        idx.append(f"{key}\t{len(rec)}\n")
        rec.extend(MAGIC + struct.pack("<I", len(payload)) + payload + b"\0" * (-len(payload) % 4))

    n = sum(len(ims) for ims in identities)
    first = n + 1
    put(0, struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", first, first + len(identities)))
    key = 1
    for label, ims in enumerate(identities):
        for im in ims:
            put(key, struct.pack("<IfQQ", 0, float(label), key, 0) + im)
            key += 1
    start = 1
    for label, ims in enumerate(identities):
        put(first + label, struct.pack("<IfQQ", 2, 0.0, first + label, 0) + struct.pack("<2f", start, start + len(ims)))
        start += len(ims)
    return bytes(rec), "".join(idx)


def _safe_jpeg(seed):
    while MAGIC in (blob := _jpeg(seed)):
        seed += 1000
    return blob


def test_recordio_writer_is_byte_exact_and_reader_recovers_everything(tmp_path):
    identities = [[_safe_jpeg(1), _safe_jpeg(2)], [_safe_jpeg(3)], [_safe_jpeg(4), _safe_jpeg(5), _safe_jpeg(6)]]
    rec = str(tmp_path / "train.rec")
    assert write_recordio(rec, identities) == {"images": 6, "identities": 3}
    want_rec, want_idx = _reference_rec(identities)
    assert open(rec, "rb").read() == want_rec
    assert open(str(tmp_path / "train.idx")).read() == want_idx
    data = read_recordio(rec, identity_order="record")
    assert data.num_classes == 3 and data.labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert data.class_names == ["0_7", "0_8", "0_9"]  # rec2image folder names: identity record keys
    flat = [im for ims in identities for im in ims]
    for i in range(6):
        assert data.read_bytes(i) == flat[i]
        np.testing.assert_array_equal(data.decode(i), _pil(flat[i]))
    assert open_dataset(str(tmp_path)).num_images == 6  # a folder holding train.rec


def test_recordio_identity_cut_follows_rec2image_folder_names(tmp_path):
    identities = [[_safe_jpeg(i)] for i in range(12)]  # identity keys 13..24: '0_13' ... '0_24'
    rec = str(tmp_path / "train.rec")
    write_recordio(rec, identities)
    by_name = read_recordio(rec, max_identities=3)
    assert by_name.class_names == ["0_13", "0_14", "0_15"]
    identities = [[_safe_jpeg(i)] for i in range(95)]  # keys 96..190: '0_100' sorts before '0_96'
    write_recordio(rec, identities)
    by_name = read_recordio(rec, max_identities=2)
    assert by_name.class_names == ["0_100", "0_101"]
    assert by_name.read_bytes(0) == identities[100 - 96][0]
    assert read_recordio(rec, max_identities=2, identity_order="record").class_names == ["0_96", "0_97"]


def test_record_framing_splits_on_aligned_magic_like_dmlc():
    payload = b"A" * 8 + MAGIC + b"B" * 5
    want = (MAGIC + struct.pack("<I", (1 << 29) | 8) + b"A" * 8
            + MAGIC + struct.pack("<I", (3 << 29) | 5) + b"B" * 5 + b"\0" * 3)
    assert frame_record(payload) == want
    unaligned = b"xy" + MAGIC + b"z"
    assert frame_record(unaligned) == MAGIC + struct.pack("<I", 7) + unaligned + b"\0"
    many = MAGIC + b"C" * 4 + MAGIC + MAGIC + b"D"
    for data in (payload, unaligned, many, b"", MAGIC):
        assert read_payload(io.BytesIO(frame_record(data)), "test") == data
    with pytest.raises(UnreadableImageError, match="truncated record"):
        read_payload(io.BytesIO(frame_record(payload)[:-6]), "test")
    with pytest.raises(UnreadableImageError, match="bad record magic"):
        read_payload(io.BytesIO(b"\0" * 8 + frame_record(payload)), "test")


def test_recordio_image_containing_magic_round_trips(tmp_path):
    blob = _safe_jpeg(7)
    blob = blob + b"\0" * (-len(blob) % 4) + MAGIC + b"tail"  # aligned magic after the JPEG end marker
    rec = str(tmp_path / "train.rec")
    write_recordio(rec, [[blob, _safe_jpeg(8)]])
    assert open(rec, "rb").read().count(MAGIC) == 5  # 4 records + 1 extra part; the embedded one dropped
    data = read_recordio(rec)
    assert data.read_bytes(0) == blob
    np.testing.assert_array_equal(data.decode(0), _pil(blob))


def test_payload_labels_pack_like_mxnet():
    header, rest = unpack_payload(pack_payload([3.0, 9.0], b"img", id=5))
    assert header.flag == 2 and header.label.tolist() == [3.0, 9.0] and header.id == 5 and rest == b"img"
    header, rest = unpack_payload(pack_payload(4, b"x"))
    assert header.flag == 0 and header.label == 4.0 and rest == b"x"


def test_recordio_without_identity_header_uses_image_labels(tmp_path):
    rec, idx = str(tmp_path / "plain.rec"), str(tmp_path / "plain.idx")
    blobs = [_safe_jpeg(10), _safe_jpeg(11), _safe_jpeg(12)]
    with open(rec, "wb") as f, open(idx, "w") as g:
        for key, (label, blob) in enumerate([(5, blobs[0]), (2, blobs[1]), (5, blobs[2])]):
            g.write(f"{key}\t{f.tell()}\n")
            f.write(frame_record(pack_payload(float(label), blob)))
    data = read_recordio(rec)
    assert data.class_names == ["2", "5"] and data.labels.tolist() == [0, 1]
    assert data.read_bytes(1) == blobs[2]  # record 0 is the header slot, as insightface reads it


def test_recordio_corrupt_files_give_clear_errors(tmp_path):
    rec = str(tmp_path / "train.rec")
    blobs = [_safe_jpeg(20), _safe_jpeg(21), _safe_jpeg(22)]
    write_recordio(rec, [blobs[:2], blobs[2:]])
    os.rename(str(tmp_path / "train.idx"), str(tmp_path / "moved.idx"))
    with pytest.raises(DatasetFormatError, match=r"train.idx.*not found"):
        read_recordio(rec)
    idx = str(tmp_path / "moved.idx")
    assert read_recordio(rec, idx_path=idx).num_images == 3
    # identity record 5 pointing outside the image keys
    lines = open(idx).read().splitlines()
    raw = bytearray(open(rec, "rb").read())
    off5 = int(lines[5].split("\t")[1])
    raw[off5 + 8 + 24:off5 + 8 + 32] = struct.pack("<2f", 3, 9)
    bad_rec = str(tmp_path / "bad.rec")
    _write(bad_rec, bytes(raw))
    with pytest.raises(DatasetFormatError, match=r"identity record 5 has image range \[3.0, 9.0\]"):
        read_recordio(bad_rec, idx_path=idx)
    # header announcing identity records that the index does not have
    with open(str(tmp_path / "short.idx"), "w") as f:
        f.write("\n".join(lines[:5]) + "\n")
    with pytest.raises(DatasetFormatError, match="inconsistent header"):
        read_recordio(rec, idx_path=str(tmp_path / "short.idx"))
    with open(str(tmp_path / "junk.idx"), "w") as f:
        f.write("0\t0\nnot-a-line\n")
    with pytest.raises(DatasetFormatError, match=r"junk.idx:2"):
        read_recordio(rec, idx_path=str(tmp_path / "junk.idx"))


def test_recordio_truncated_and_garbage_images_are_unreadable_not_fatal(tmp_path):
    rec = str(tmp_path / "train.rec")
    good = _safe_jpeg(30)
    write_recordio(rec, [[good, b"GARBAGE!" * 3], [_safe_jpeg(31)]])
    data = read_recordio(rec)
    size = os.path.getsize(rec)
    last_image = data.sources[2][1]
    with open(rec, "r+b") as f:  # cut the file inside the last image record
        f.truncate(last_image + 40)
    with open(str(tmp_path / "train.idx")) as f:
        keep = [l for l in f if int(l.split("\t")[1]) < last_image + 40]
    with open(str(tmp_path / "train.idx"), "w") as f:
        f.writelines(keep)
    assert os.path.getsize(rec) < size
    with pytest.raises(DatasetFormatError, match="past the end|not in"):
        read_recordio(rec)  # identity records were cut off too: the header no longer matches
    write_recordio(rec, [[good, b"GARBAGE!" * 3], [_safe_jpeg(31)]])
    data = read_recordio(rec)
    raw = bytearray(open(rec, "rb").read())
    off = data.sources[2][1]
    raw[off + 8 + 24:off + 8 + 60] = b"\0" * 36  # damage an image inside its record
    _write(rec, bytes(raw))
    bad = scan_unreadable(read_recordio(rec))
    assert [i for i, _ in bad] == [1, 2]
    assert all("record at byte" in msg for _, msg in bad)
