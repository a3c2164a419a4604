""".bin verification files: safe loading of every real layout, refusal of anything else, writer, pairs.txt."""
import builtins
import io
from collections import OrderedDict
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from probface_tf.data.binfile import bin_summary, make_bin_from_folder, read_bin, read_pairs_txt, write_bin
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError, UnsafePickleError


def _crop(seed, size=112):
    photo = load_sample_image("china.jpg")
    rng = np.random.default_rng(seed)
    y, x = int(rng.integers(0, photo.shape[0] - size)), int(rng.integers(0, photo.shape[1] - size))
    return np.ascontiguousarray(photo[y:y + size, x:x + size])


def _jpeg(seed):
    buf = io.BytesIO()
    Image.fromarray(_crop(seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _pil(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _dump(path, obj, protocol):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


# --------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_python3_bins_of_every_protocol_load(tmp_path, protocol):
    images = [_jpeg(i) for i in range(4)]
    for issame in ([True, False], np.array([True, False]), [np.bool_(True), np.bool_(False)], [1, 0]):
        for bins in (images, [bytearray(b) for b in images], [np.frombuffer(b, np.uint8) for b in images]):
            data = read_bin(_dump(tmp_path / "x.bin", (bins, issame), protocol))
            assert data.encoded == images and data.issame.tolist() == [True, False] and data.num_pairs == 2


def test_python2_str_pickle_loads_as_bytes(tmp_path):
    """A Python 2 insightface .bin stores images as str (BINSTRING); hand-assembled here."""
    images = [_jpeg(10), _jpeg(11)]
    raw = b"\x80\x02]q\x00(" + b"".join(b"T" + struct.pack("<i", len(b)) + b for b in images) + b"e]\x88a\x86."
    path = tmp_path / "lfw.bin"
    path.write_bytes(raw)
    data = read_bin(str(path))
    assert data.name == "lfw" and data.encoded == images and data.issame.tolist() == [True]
    np.testing.assert_array_equal(data.images()[1], _pil(images[1]))


def test_streaming_batches_decode_like_pillow(tmp_path):
    images = [_jpeg(20 + i) for i in range(10)]
    data = read_bin(_dump(tmp_path / "cfp_fp.bin", (images, [True, False] * 2 + [True]), 4), batch_size=3)
    batches = list(data.batches())
    assert [b.shape[0] for b in batches] == [3, 3, 3, 1] and batches[0].dtype == np.uint8
    np.testing.assert_array_equal(np.concatenate(batches), np.stack([_pil(b) for b in images]))
    floats = next(data.batches(batch_size=2, dtype=np.float32))
    assert floats.dtype == np.float32 and floats.shape == (2, 112, 112, 3)


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({self.marker!r}, 'w').close()",))


def test_code_executing_pickles_are_refused_and_nothing_runs(tmp_path):
    for cls, needle in ((_RunsShell, r"\.system'"), (_CallsEval, r"builtins?_*\.eval'")):
        marker = str(tmp_path / f"marker_{cls.__name__}")
        path = _dump(tmp_path / "evil.bin", ([_jpeg(0), cls(marker)], [True]), 2)
        with pytest.raises(UnsafePickleError, match=needle) as info:
            read_bin(path)
        assert "evil.bin" in str(info.value)
        assert not os.path.exists(marker)


def test_other_objects_are_refused(tmp_path):
    object_array = np.array([b"a", b"b"], dtype=object)
    with pytest.raises(UnsafePickleError, match="dtype"):
        read_bin(_dump(tmp_path / "a.bin", ([_jpeg(0), _jpeg(1)], object_array), 2))
    with pytest.raises(UnsafePickleError, match="numpy.ma"):  # an ndarray subclass
        read_bin(_dump(tmp_path / "b.bin", ([_jpeg(0), _jpeg(1)], np.ma.masked_array([1, 0])), 2))
    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        read_bin(_dump(tmp_path / "d.bin", ([_jpeg(0), _jpeg(1)], OrderedDict(a=1)), 4))
    with pytest.raises(UnsafePickleError):
        read_bin(_dump(tmp_path / "c.bin", ([_jpeg(0), _jpeg(1)], {1, 2}), 2))  # builtins.set under protocol 2


@pytest.mark.parametrize("obj,needle", [
    (([b"x"] * 3, [True]), "3 images for 1 pairs"),
    ({"bins": [], "issame": []}, "pair"),
    (([b"x", b"y"], []), "issame_list is empty"),
    (([b"x", 7], [True]), "image 1 is int"),
    (([b"x", b"y"], ["yes"]), r"issame_list\[0\]"),
])
def test_structural_errors_name_the_problem(tmp_path, obj, needle):
    with pytest.raises(DatasetFormatError, match=needle):
        read_bin(_dump(tmp_path / "bad.bin", obj, 4))


def test_garbage_and_corrupt_images(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(os.urandom(64))
    with pytest.raises((DatasetFormatError, UnsafePickleError), match="junk.bin"):
        read_bin(str(path))
    good = _jpeg(3)
    data = read_bin(_dump(tmp_path / "agedb_30.bin", ([good, good[:300], good, b"text"], [True, False]), 4))
    with pytest.raises(UnreadableImageError, match=r"agedb_30.bin image 1"):
        list(data.batches())
    info = bin_summary(str(tmp_path / "agedb_30.bin"))
    assert info["pairs"] == 2 and info["images"] == 4 and info["unreadable"] == 2
    assert info["positive_pairs"] == 1 and info["image_shapes"] == [(112, 112, 3)]


# --------------------------------------------------------------------------------------------- writing
def test_writer_round_trip_from_arrays_bytes_and_paths(tmp_path):
    arrays = [_crop(30), _crop(31)]
    blob = _jpeg(32)
    file = tmp_path / "face.jpg"
    file.write_bytes(_jpeg(33))
    out = str(tmp_path / "mine.bin")
    assert write_bin(out, [(arrays[0], blob, True), (str(file), arrays[1], False)], image_format="png") == 2
    data = read_bin(out)
    assert data.issame.tolist() == [True, False]
    assert data.encoded[1] == blob and data.encoded[2] == file.read_bytes()
    images = data.images()
    np.testing.assert_array_equal(images[0], arrays[0])  # PNG is lossless
    np.testing.assert_array_equal(images[3], arrays[1])
    jpg = read_bin(out if write_bin(out, [(arrays[0], arrays[1], True)], quality=98) else out).images()
    assert np.abs(jpg[0].astype(int) - arrays[0]).mean() < 3.0
    with pytest.raises(DatasetFormatError, match="pair 0"):
        write_bin(out, [(arrays[0], arrays[1])])


def _lfw_folder(root):
    names = {"Ann_Lee": 3, "Bo_Chen": 2}
    for n, (name, count) in enumerate(names.items()):
        os.makedirs(os.path.join(root, name))
        for i in range(1, count + 1):
            Image.fromarray(_crop(40 + 10 * n + i)).save(os.path.join(root, name, f"{name}_{i:04d}.jpg"), quality=90)


def test_make_bin_from_lfw_folder_and_pairs_txt(tmp_path):
    root = str(tmp_path / "lfw")
    _lfw_folder(root)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t3\nAnn_Lee\t1\t3\nBo_Chen\t1\t2\nAnn_Lee\t2\tBo_Chen\t1\n")
    assert read_pairs_txt(str(pairs))[2] == ("Ann_Lee", "2", "Bo_Chen", "1", False)
    out = str(tmp_path / "lfw.bin")
    assert make_bin_from_folder(root, str(pairs), out) == {"pairs": 3, "skipped": 0, "missing_files": []}
    data = read_bin(out)
    assert data.issame.tolist() == [True, True, False]
    order = ["Ann_Lee/Ann_Lee_0001", "Ann_Lee/Ann_Lee_0003", "Bo_Chen/Bo_Chen_0001", "Bo_Chen/Bo_Chen_0002",
             "Ann_Lee/Ann_Lee_0002", "Bo_Chen/Bo_Chen_0001"]
    for blob, stem in zip(data.encoded, order):
        assert blob == open(os.path.join(root, stem + ".jpg"), "rb").read()


def test_make_bin_missing_and_corrupt_images(tmp_path):
    root = str(tmp_path / "lfw")
    _lfw_folder(root)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("Ann_Lee\t1\t9\nBo_Chen\t1\t2\n")
    with pytest.raises(UnreadableImageError, match="Ann_Lee_0009.jpg"):
        make_bin_from_folder(root, str(pairs), str(tmp_path / "a.bin"))
    result = make_bin_from_folder(root, str(pairs), str(tmp_path / "a.bin"), skip_missing=True)
    assert result["pairs"] == 1 and result["skipped"] == 1
    with open(os.path.join(root, "Bo_Chen", "Bo_Chen_0002.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(UnreadableImageError, match="Bo_Chen_0002.jpg"):
        make_bin_from_folder(root, str(pairs), str(tmp_path / "b.bin"), skip_missing=True)
    assert not os.path.exists(str(tmp_path / "b.bin"))
    bad = tmp_path / "bad_pairs.txt"
    bad.write_text("Ann_Lee\t1\n")
    with pytest.raises(DatasetFormatError, match="bad_pairs.txt:1"):
        read_pairs_txt(str(bad))
