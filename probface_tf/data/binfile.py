"""insightface ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...): a safe reader and a writer.

A ``.bin`` is a pickle of ``(bins, issame_list)``: ``2P`` encoded images (pair ``k`` = images ``2k, 2k+1``) and
``P`` booleans. Pickles can run code, so the reader uses an unpickler that builds only what these files hold:
bytes (Python 2 ``str`` arrive as latin-1 text and are turned back into bytes), ``bytearray``, bools, ints, lists,
tuples, and NumPy arrays of booleans or integers (some files store ``issame_list`` or images that way). Any other
global a pickle asks for (e.g. ``os.system`` through ``__reduce__``) is refused with ``UnsafePickleError``
before anything is called.

Images are decoded lazily, batch by batch, to uint8 RGB. The original decoded them to **float32** (MXNet
``nd.empty``), which is what triggers the contrast stretch of its test preprocessing: to reproduce its
evaluation, pass ``dtype=np.float32`` to ``BinSet.batches``.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from probface_tf.atomic import atomic_open
from probface_tf.data.dataset import decode_bytes
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError, UnsafePickleError


# ------------------------------------------------------------------------------------------- reading
@dataclass
class BinSet:
    name: str  # file name without extension, e.g. 'cfp_fp'
    path: str
    encoded: list  # 2P encoded images (bytes)
    issame: np.ndarray  # bool [P]
    batch_size: int = 128

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def __len__(self) -> int:
        return len(self.encoded)

    def batches(self, batch_size: int | None = None, dtype=np.uint8, channels: int = 3):
        """Yield decoded images ``[b, H, W, channels]`` in file order; all must share the first one's size."""
        batch_size = batch_size or self.batch_size
        shape = None
        for start in range(0, len(self.encoded), batch_size):
            images = []
            for i in range(start, min(start + batch_size, len(self.encoded))):
                image = decode_bytes(self.encoded[i], f"{self.path} image {i}", channels)
                shape = shape or image.shape
                if image.shape != shape:
                    raise UnreadableImageError(f"{self.path} image {i}: size {image.shape[:2]} differs from "
                                               f"image 0's {shape[:2]}")
                images.append(image)
            yield np.stack(images).astype(dtype, copy=False)

    def images(self, dtype=np.uint8) -> np.ndarray:
        """All ``2P`` images at once."""
        return np.concatenate(list(self.batches(dtype=dtype)))


def read_bin(path: str, batch_size: int = 128) -> BinSet:
    """Safely load a ``.bin``; images are decoded later by ``BinSet.batches``."""
    if not os.path.isfile(path):
        raise DatasetFormatError(f"{path}: .bin file not found")
    with open(path, "rb") as f:
        try:
            obj = _SafeUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                MemoryError, OverflowError) as exc:
            raise DatasetFormatError(f"{path}: not a readable .bin pickle ({type(exc).__name__}: {exc})") from None
    encoded, issame = _validate(obj, path)
    name = os.path.splitext(os.path.basename(path))[0]
    return BinSet(name=name, path=path, encoded=encoded, issame=issame, batch_size=batch_size)


def _validate(obj, path: str):
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DatasetFormatError(f"{path}: expected a pickled (bins, issame_list) pair, got {_kind(obj)}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype != object:
        raise DatasetFormatError(f"{path}: bins must be a list of encoded images, got an array {bins.shape}")
    if not isinstance(bins, (list, tuple)):
        raise DatasetFormatError(f"{path}: bins must be a list of encoded images, got {_kind(bins)}")
    encoded = [_as_bytes(b, path, i) for i, b in enumerate(bins)]
    flags = _as_bools(issame, path)
    if len(flags) == 0:
        raise DatasetFormatError(f"{path}: issame_list is empty")
    if len(encoded) != 2 * len(flags):
        raise DatasetFormatError(f"{path}: {len(encoded)} images for {len(flags)} pairs (need exactly 2 per pair)")
    return encoded, flags


def _as_bytes(item, path: str, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):  # a Python 2 str read with latin-1, as the original's pickle.load did
        return item.encode("latin-1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise DatasetFormatError(f"{path}: image {i} is {_kind(item)}, not encoded image bytes")


def _as_bools(issame, path: str) -> np.ndarray:
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1 or issame.dtype.kind not in "biu":
            raise DatasetFormatError(f"{path}: issame_list array must be 1-D bool/int, got {issame.dtype} "
                                     f"{issame.shape}")
        values = issame.tolist()
    elif isinstance(issame, (list, tuple)):
        values = list(issame)
    else:
        raise DatasetFormatError(f"{path}: issame_list must be a list of booleans, got {_kind(issame)}")
    for i, v in enumerate(values):
        if not isinstance(v, (bool, int, np.bool_, np.integer)) or v not in (0, 1):
            raise DatasetFormatError(f"{path}: issame_list[{i}] is {v!r}, not a boolean")
    return np.asarray(values, dtype=np.bool_)


def _kind(obj) -> str:
    return type(obj).__name__ + (f" of length {len(obj)}" if isinstance(obj, (list, tuple)) else "")


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler for ``.bin`` files: Python 2 strings as latin-1 text, and a whitelist of tiny constructors."""

    def __init__(self, f, path: str):
        super().__init__(f, encoding="latin1")
        self.path = path

    def find_class(self, module, name):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise UnsafePickleError(f"{self.path}: refused to load: the pickle asks for '{module}.{name}', which "
                                    f"a .bin verification file never contains (nothing was executed)")
        return factory

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.path}: refused to load: the pickle uses a persistent id")


def _refuse(what: str):
    raise UnsafePickleError(f"refused to load: unexpected {what} in a .bin pickle (nothing was executed)")


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 pickles bytes as _codecs.encode(latin-1 text, 'latin1') under protocols 0-2.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        _refuse(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _bytes(*args):
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    return _refuse("bytes(...) call")


def _bytearray(*args):
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0], "latin-1")
    return _refuse("bytearray(...) call")


def _np_dtype(spec, *args):
    dtype = np.dtype(spec)  # a type code string; BUILD then restores its state
    if dtype.kind not in "biuf" or dtype.hasobject:
        _refuse(f"numpy dtype {dtype}")
    return dtype


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: accepted as ``_reconstruct``'s subtype, never callable."""

    def __new__(cls, *args, **kwargs):
        _refuse("numpy.ndarray(...) call")


def _np_reconstruct(subtype, shape, dtype_code):
    if subtype is not _NdarrayType:
        _refuse(f"array subtype {subtype!r}")
    return np.ndarray.__new__(np.ndarray, shape, np.dtype(dtype_code))


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, (bytes, str)):
        _refuse("numpy scalar")
    raw = data.encode("latin-1") if isinstance(data, str) else data
    return np.frombuffer(raw, dtype, 1)[0]


def _np_frombuffer(buffer, dtype, shape, order="C"):
    # Protocol 5 arrays: only plain numeric dtypes, data copied out of the pickle's buffer.
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf":
        _refuse("numpy buffer")
    return np.frombuffer(bytes(buffer), dtype).reshape(shape, order=order).copy()


_ALLOWED = {}
for _module in ("builtins", "__builtin__"):
    _ALLOWED[(_module, "bytes")] = _bytes
    _ALLOWED[(_module, "bytearray")] = _bytearray
_ALLOWED[("_codecs", "encode")] = _codecs_encode
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _np_reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _np_scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _np_frombuffer
_ALLOWED[("numpy", "ndarray")] = _NdarrayType
_ALLOWED[("numpy", "dtype")] = _np_dtype


# ------------------------------------------------------------------------------------------- writing
def write_bin(path: str, pairs, image_format: str = "jpg", quality: int = 95, protocol: int = 4) -> int:
    """Write ``pairs`` — ``(image_a, image_b, issame)`` triples — as an insightface ``.bin``; returns P.

    An image is encoded bytes (stored as is), a file path (its bytes are stored as is) or a uint8
    ``[H, W, 3]`` array (encoded as ``image_format`` 'jpg' or 'png'). The file is replaced atomically.
    """
    if image_format not in ("jpg", "png"):
        raise DatasetFormatError(f"{path}: image_format must be 'jpg' or 'png', got {image_format!r}")
    bins, issame = [], []
    for k, pair in enumerate(pairs):
        if len(pair) != 3:
            raise DatasetFormatError(f"{path}: pair {k} must be (image_a, image_b, issame), got {len(pair)} items")
        a, b, same = pair
        bins += [_encoded(a, image_format, quality, f"pair {k} image a"),
                 _encoded(b, image_format, quality, f"pair {k} image b")]
        issame.append(bool(same))
    if not issame:
        raise DatasetFormatError(f"{path}: no pairs to write")
    with atomic_open(path, "wb") as f:
        pickle.dump((bins, issame), f, protocol=protocol)
    return len(issame)


def _encoded(image, image_format: str, quality: int, what: str) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as f:
                return f.read()
        except OSError as exc:
            raise UnreadableImageError(f"{image}: cannot read ({what}): {exc.strerror or exc}") from None
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (1, 3):
        raise DatasetFormatError(f"{what}: expected bytes, a path or a uint8 [H, W, 3] array, got "
                                 f"{array.dtype} {array.shape}")
    import tensorflow as tf
    if image_format == "png":
        return tf.io.encode_png(array).numpy()
    return tf.io.encode_jpeg(array, quality=quality).numpy()


def read_pairs_txt(pairs_txt: str) -> list:
    """LFW-style pairs: ``name i j`` (same person) or ``name1 i name2 j`` (different); an optional first line
    of two integers (folds, pairs per fold) is skipped. Returns ``[(name1, id1, name2, id2, issame), ...]``."""
    if not os.path.isfile(pairs_txt):
        raise DatasetFormatError(f"{pairs_txt}: pairs file not found")
    pairs = []
    with open(pairs_txt, "r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if number == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                continue
            if len(fields) == 3:
                pairs.append((fields[0], fields[1], fields[0], fields[2], True))
            elif len(fields) == 4:
                pairs.append((fields[0], fields[1], fields[2], fields[3], False))
            else:
                raise DatasetFormatError(f"{pairs_txt}:{number}: expected 'name i j' or 'name1 i name2 j', "
                                         f"got {line.rstrip()!r}")
    if not pairs:
        raise DatasetFormatError(f"{pairs_txt}: no pairs")
    return pairs


def resolve_pair_image(folder: str, name: str, token: str) -> str:
    """``folder/name/name_0001.jpg`` (LFW naming, jpg/png/jpeg) for a number, else ``folder/name/token``."""
    if token.isdigit():
        stem = os.path.join(folder, name, f"{name}_{int(token):04d}")
        for ext in (".jpg", ".png", ".jpeg"):
            if os.path.isfile(stem + ext):
                return stem + ext
        return stem + ".jpg"
    return os.path.join(folder, name, token)


def make_bin_from_folder(folder: str, pairs_txt: str, out_path: str, skip_missing: bool = False,
                         check_images: bool = True) -> dict:
    """Build a ``.bin`` from an aligned image folder and an LFW-style ``pairs.txt``; image bytes are stored
    unchanged. A missing image is an error naming it unless ``skip_missing`` (then the pair is left out and
    counted). ``check_images`` decodes every image first, so a corrupt file is never written into the set."""
    skipped, pairs = [], []
    for name1, id1, name2, id2, same in read_pairs_txt(pairs_txt):
        a, b = resolve_pair_image(folder, name1, id1), resolve_pair_image(folder, name2, id2)
        missing = [p for p in (a, b) if not os.path.isfile(p)]
        if missing:
            if not skip_missing:
                raise UnreadableImageError(f"{missing[0]}: image of pair ({name1} {id1}, {name2} {id2}) in "
                                           f"{pairs_txt} not found")
            skipped.append(missing[0])
            continue
        pairs.append((a, b, same))
    if check_images:
        for path in sorted({p for a, b, _ in pairs for p in (a, b)}):
            with open(path, "rb") as f:
                decode_bytes(f.read(), path)
    written = write_bin(out_path, pairs)
    return {"pairs": written, "skipped": len(skipped), "missing_files": skipped}


def bin_summary(path: str, decode: bool = True) -> dict:
    """Counts for ``probface-data inspect``: pairs, images, positives, decodable images, image size."""
    data = read_bin(path)
    info = {"name": data.name, "pairs": data.num_pairs, "images": len(data),
            "positive_pairs": int(data.issame.sum())}
    if decode:
        bad, shapes = [], set()
        for i, blob in enumerate(data.encoded):
            try:
                shapes.add(decode_bytes(blob, f"{path} image {i}").shape)
            except UnreadableImageError as exc:
                bad.append(str(exc))
        info.update(unreadable=len(bad), unreadable_examples=bad[:5], image_shapes=sorted(shapes))
    return info


