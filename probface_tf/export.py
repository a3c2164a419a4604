"""SavedModel export for TF Serving and for any TensorFlow runtime, without this package.

``export_saved_model(model, EXPORT_BASE)`` writes ``EXPORT_BASE/<version>/`` (the TF Serving layout:
``saved_model.pb``, ``variables/``, ``assets/probface.json``). The version directory appears in one
``os.rename`` of a finished, fsynced sibling ``.tmp-<version>-<pid>`` directory, so Serving (which only loads
numeric directories) never sees half a model.

Signatures (D = embedding size, S = sigma size, 1 or D; H, W = model input size):

=================  ==============================================  ==============================================
name               inputs                                          outputs
=================  ==============================================  ==============================================
serving_default    ``input`` float32 [None, H, W, 3], preprocessed  ``mu`` [None, D], ``sigma_sq`` [None, S],
                                                                   ``log_sigma_sq`` [None, S],
                                                                   ``embeddings_with_sigma`` [None, D + S]
from_image_bytes   ``image_bytes`` string [None], encoded JPEG,      the same four outputs
                   PNG, GIF or BMP; decoded and preprocessed in
                   the graph like the Python evaluation path
compare            ``mu1`` [N, D], ``sigma_sq1`` [N, S], ``mu2``     ``mls`` [N], ``cosine`` [N]: element-wise,
                   [N, D], ``sigma_sq2`` [N, S]                     row i of set 1 against row i of set 2
compare_all        ``mu1`` [N1, D], ``sigma_sq1`` [N1, S], ``mu2``   ``mls`` [N1, N2], ``cosine`` [N1, N2]: all
                   [N2, D], ``sigma_sq2`` [N2, S]                   pairs
=================  ==============================================  ==============================================

``mls`` is the original ``pair_MLS_score``: FastMLS ``-(2(1-mu1.mu2)/(1e-10+s1+s2) + log(s1+s2))`` for a 1-d
sigma, ``-(mean_d (mu1-mu2)^2/(s1+s2) + mean_d log(s1+s2))`` for a D-dim one. ``cosine`` re-normalises rows.
Names echo the original frozen graph (``input``, ``mu``, ``sigma_sq``, ``embeddings_with_sigma``).

Every signature checks its input shapes in the graph before any other op runs, because TF Serving and a loaded
SavedModel pass whatever shape the client sends: a bad input fails with an InvalidArgumentError whose message
names the signature, the input and the expected shape (``serving_default: input must be float32
[N, 96, 96, 3] (preprocessed faces), got shape [1 96 95 3]``); an undecodable image is named by its index.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

from probface_tf.scoring import cosine_tf, fastmls_tf, mls_tf

SERVING_DEFAULT = "serving_default"
FROM_IMAGE_BYTES = "from_image_bytes"
COMPARE = "compare"
COMPARE_ALL = "compare_all"
SIGNATURES = (SERVING_DEFAULT, FROM_IMAGE_BYTES, COMPARE, COMPARE_ALL)
OUTPUT_KEYS = ("mu", "sigma_sq", "log_sigma_sq", "embeddings_with_sigma")
SCORE_KEYS = ("mls", "cosine")
METADATA_FILE = "probface.json"
FORMAT = "probface_tf.saved_model/1"

_VERSION_DIR = re.compile(r"^\d+$")
# First bytes of the formats tf.io.decode_image reads: JPEG, PNG, GIF, BMP.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


class ExportError(ValueError):
    """A model, option or export directory is unusable; the message names it."""


class ExportInputError(ValueError):
    """An input given to an exported signature has the wrong dtype or shape; the message names the expected."""


# ---------------------------------------------------------------------------------------------------------------
# Building the serving functions
# ---------------------------------------------------------------------------------------------------------------

def default_preprocess_ops(image_size) -> list:
    """The original ``preprocess_test``: resize to the model input, then ``(x - 128) / 128``."""
    h, w = (int(s) for s in image_size)
    return [["resize", [h, w]], ["standardize", "mean_scale"]]


def _jsonable(value):
    """Op lists hold tuples; JSON (and the metadata asset) wants lists."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _model_input_size(model) -> tuple[int, int]:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ExportError(f"the model must take one image tensor, it has inputs {inputs!r}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ExportError(f"the model input must be [None, H, W, 3] with known H, W; got {list(shape)}")
    return int(shape[1]), int(shape[2])


def _model_output_sizes(model) -> tuple[int, int]:
    outputs = getattr(model, "output", None)
    if not isinstance(outputs, dict) or not {"mu", "sigma_sq"} <= set(outputs):
        names = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ExportError(f"the model must output a dict with 'mu' and 'sigma_sq' (a ProbFace model); got {names}")
    sizes = []
    for key in ("mu", "sigma_sq"):
        shape = tuple(outputs[key].shape)
        if len(shape) != 2 or shape[1] is None:
            raise ExportError(f"model output {key!r} must be [None, k] with known k, got {list(shape)}")
        sizes.append(int(shape[1]))
    return sizes[0], sizes[1]


def _check_preprocessing(ops, image_size, resize_method, contrast_stretch):
    """Run the op list once on a dummy image so a bad list fails here, naming itself, not inside a trace."""
    from probface_tf.data.preprocess import preprocess_batch

    try:
        # Larger than common face crops, so a leading crop op fits; the resize then sets the final size.
        out = preprocess_batch(tf.zeros([1, 256, 256, 3], tf.uint8), ops, training=False,
                               contrast_stretch=contrast_stretch, resize_method=resize_method)
    except (ValueError, TypeError, KeyError, tf.errors.InvalidArgumentError) as exc:
        raise ExportError(f"preprocess_ops {ops!r} cannot be applied: {exc}") from exc
    if tuple(out.shape[1:]) != (*image_size, 3) or out.dtype != tf.float32:
        raise ExportError(f"preprocess_ops {ops!r} produce {out.dtype.name} images of shape {list(out.shape[1:])}, "
                          f"but the model takes float32 [{image_size[0]}, {image_size[1]}, 3]")


def _dims_text(dims) -> str:
    """'[N, 96, 96, 3]' from ['N', 96, 96, 3]."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _assert_shape(signature: str, name: str, tensor, expected, dtype: str, what: str):
    """An in-graph check that ``tensor`` has the shape ``expected`` (str entries: any size, named so).

    The signature's TensorSpec already fixes rank and sizes statically, so ``tf.debugging.assert_rank`` /
    ``assert_equal`` would be folded away at trace time, yet a raw signature call (TF Serving, a loaded
    SavedModel) passes whatever shape the client sent. Matching the runtime shape as text cannot be folded
    and works for any rank, including the rank-3 input that would otherwise abort inside oneDNN.
    """
    shape = tf.shape(tensor)
    text = tf.strings.reduce_join(tf.strings.as_string(shape), separator=" ")
    pattern = " ".join(r"\d+" if isinstance(d, str) else str(int(d)) for d in expected)
    # No quotes around the name: the Assert op prints its message C-escaped, ' as \'.
    message = tf.strings.format(f"{signature}: {name} must be {dtype} {_dims_text(expected)} ({what}), "
                                "got shape {}", [shape], summarize=-1)
    return tf.debugging.Assert(tf.strings.regex_full_match(text, pattern), [message])


def _after(checks, *tensors):
    """``tensors`` gated on ``checks``: nothing downstream (convolutions included) runs before they pass."""
    with tf.control_dependencies(checks):
        return [tf.identity(t) for t in tensors]


def _assert_image_bytes(encoded):
    """A clear in-graph error for elements that are no image, before the decoder's terse one."""
    known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(encoded, 0, len(m)), m) for m in _MAGIC]), axis=0)
    bad = tf.cast(tf.where(tf.logical_not(known))[:, 0], tf.int32)
    first = tf.concat([bad, [-1]], axis=0)[0]
    length = tf.concat([tf.strings.length(tf.gather(encoded, bad)), [0]], axis=0)[0]
    # The message gives the length, not the bytes: raw binary would make the error text undecodable.
    message = tf.strings.format("from_image_bytes: {} element(s) of image_bytes are not encoded JPEG, PNG, GIF or "
                                "BMP images; the first is element {} ({} bytes)", (tf.size(bad), first, length))
    return tf.debugging.Assert(tf.size(bad) == 0, [message])


def _bytes_to_images(encoded, ops, image_size, resize_method, contrast_stretch):
    """Encoded strings [N] -> float32 [N, H, W, 3], one image at a time (their sizes may differ).

    A graph cannot catch a decoder error, so the images go through a tf.data pipeline that drops failing
    elements (``ignore_errors``) with their indices; a missing index then becomes an error naming the element.
    """
    from probface_tf.data.preprocess import decode_image, preprocess_batch

    def one(index, data):
        batch = preprocess_batch(decode_image(data, channels=3)[tf.newaxis], ops, training=False,
                                 contrast_stretch=contrast_stretch, resize_method=resize_method)
        return index, tf.ensure_shape(batch[0], [*image_size, 3])

    (encoded,) = _after([_assert_image_bytes(encoded)], encoded)
    n = tf.shape(encoded)[0]
    dataset = tf.data.Dataset.from_tensor_slices((tf.range(n), encoded)).map(one).ignore_errors()
    # One batch holds every surviving image (batch size 0 is invalid, hence the floor of 1).
    dataset = dataset.batch(tf.cast(tf.maximum(n, 1), tf.int64))
    empty = (tf.zeros([0], tf.int32), tf.zeros([0, *image_size, 3], tf.float32))
    decoded, images = dataset.reduce(empty, lambda acc, b: (tf.concat([acc[0], b[0]], 0),
                                                             tf.concat([acc[1], b[1]], 0)))
    # Survivors keep their order, so the first failure is the first position i whose index is not i.
    position = tf.range(tf.size(decoded))
    first = tf.reduce_min(tf.concat([tf.boolean_mask(position, decoded != position), [tf.size(decoded)]], 0))
    length = tf.concat([tf.strings.length(encoded), [0]], 0)[first]  # first <= n, also for an empty batch
    message = tf.strings.format("from_image_bytes: {} element(s) of image_bytes could not be decoded (truncated or "
                                "corrupt image data); the first is element {} ({} bytes)",
                                (n - tf.size(decoded), first, length))
    (images,) = _after([tf.debugging.Assert(tf.size(decoded) == n, [message])], images)
    return tf.ensure_shape(images, [None, *image_size, 3])


def _embed(model, images, dim: int, sigma_dim: int):
    def run():
        out = model(images, training=False)
        sigma_sq = tf.cast(out["sigma_sq"], tf.float32)
        log_sigma_sq = tf.cast(out["log_sigma_sq"], tf.float32) if "log_sigma_sq" in out else tf.math.log(sigma_sq)
        return tf.cast(out["mu"], tf.float32), sigma_sq, log_sigma_sq

    def nothing():  # the convolutions reject an empty batch; an empty request gets empty outputs
        return tf.zeros([0, dim]), tf.zeros([0, sigma_dim]), tf.zeros([0, sigma_dim])

    mu, sigma_sq, log_sigma_sq = tf.cond(tf.shape(images)[0] > 0, run, nothing)
    return {"mu": tf.identity(mu, name="mu"), "sigma_sq": tf.identity(sigma_sq, name="sigma_sq"),
            "log_sigma_sq": tf.identity(log_sigma_sq, name="log_sigma_sq"),
            "embeddings_with_sigma": tf.concat([mu, sigma_sq], axis=1, name="embeddings_with_sigma")}


def _mls(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs: bool):
    """The original pair_MLS_score: FastMLS for a 1-d sigma, the D-dim MLS otherwise."""
    if sigma_sq1.shape[-1] == 1:
        return fastmls_tf(mu1, sigma_sq1, mu2, sigma_sq2, pairwise=all_pairs)
    return mls_tf(mu1, sigma_sq1, mu2, sigma_sq2, pairwise=all_pairs)


def _check_rows(signature, k, mu, sigma_sq):
    return tf.debugging.assert_equal(tf.shape(mu)[0], tf.shape(sigma_sq)[0], message=(
        f"{signature}: mu{k} and sigma_sq{k} must have the same number of rows"))


def _scores(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs: bool, signature: str, dim: int, sigma_dim: int):
    rows = ("N1", "N2") if all_pairs else ("N", "N")
    shapes = [_assert_shape(signature, f"mu{k}", t, [n, dim], "float32", "L2-normalised embeddings")
              for k, n, t in (("1", rows[0], mu1), ("2", rows[1], mu2))]
    shapes += [_assert_shape(signature, f"sigma_sq{k}", t, [n, sigma_dim], "float32", "sigma_sq of this model")
               for k, n, t in (("1", rows[0], sigma_sq1), ("2", rows[1], sigma_sq2))]
    # Row counts are compared only once the ranks are known to be right.
    mu1, sigma_sq1, mu2, sigma_sq2 = _after(shapes, mu1, sigma_sq1, mu2, sigma_sq2)
    checks = [_check_rows(signature, "1", mu1, sigma_sq1), _check_rows(signature, "2", mu2, sigma_sq2)]
    if not all_pairs:
        checks.append(tf.debugging.assert_equal(tf.shape(mu1)[0], tf.shape(mu2)[0], message=(
            "compare is element-wise: both sets need the same number of rows (use compare_all for all pairs)")))
    mu1, sigma_sq1, mu2, sigma_sq2 = _after(checks, mu1, sigma_sq1, mu2, sigma_sq2)
    return {"mls": tf.identity(_mls(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs), name="mls"),
            "cosine": tf.identity(cosine_tf(mu1, mu2, pairwise=all_pairs), name="cosine")}


def _inference_form(model):
    from probface_tf.models.inference import fold_batch_norm

    try:
        return fold_batch_norm(model)
    except (ValueError, KeyError, AttributeError):  # not a ResFace + UncertaintyModule model: export as is
        return model


def build_serving_module(model, preprocess_ops=None, image_size=None, resize_method: str = "pil_bilinear",
                         contrast_stretch: bool = True) -> tf.Module:
    """A ``tf.Module`` with the four signatures as ``tf.function`` attributes (see the module docstring).

    ``preprocess_ops`` is the test-time op list (default: resize to the model input + ``mean_scale``);
    ``image_size`` [H, W], if given, must equal the model's input size. The module tracks the model's variables
    but not the Keras model itself, so the SavedModel holds plain TensorFlow functions only. A ProbFace model is
    exported in its inference form, batch norm folded into the convolutions (same outputs to float32 round-off,
    fewer ops per request).
    """
    model = _inference_form(model)
    size = _model_input_size(model)
    if image_size is not None and tuple(int(s) for s in image_size) != size:
        raise ExportError(f"image_size {list(image_size)} does not match the model input {list(size)}")
    dim, sigma_dim = _model_output_sizes(model)
    ops = _jsonable(preprocess_ops if preprocess_ops is not None else default_preprocess_ops(size))
    if resize_method not in ("pil_bilinear", "bilinear"):
        raise ExportError(f"resize_method must be 'pil_bilinear' or 'bilinear', got {resize_method!r}")
    _check_preprocessing(ops, size, resize_method, bool(contrast_stretch))

    images_spec = tf.TensorSpec([None, *size, 3], tf.float32, name="input")
    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

    def score_specs():
        return [tf.TensorSpec([None, dim], tf.float32, name="mu1"),
                tf.TensorSpec([None, sigma_dim], tf.float32, name="sigma_sq1"),
                tf.TensorSpec([None, dim], tf.float32, name="mu2"),
                tf.TensorSpec([None, sigma_dim], tf.float32, name="sigma_sq2")]

    # The argument names become the signature's input keys.
    @tf.function(input_signature=[images_spec])
    def serving_default(input):  # noqa: A002 - the original frozen graph's input name
        check = _assert_shape(SERVING_DEFAULT, "input", input, ["N", *size, 3], "float32", "preprocessed faces")
        (images,) = _after([check], input)
        return _embed(model, images, dim, sigma_dim)

    @tf.function(input_signature=[bytes_spec])
    def from_image_bytes(image_bytes):
        check = _assert_shape(FROM_IMAGE_BYTES, "image_bytes", image_bytes, ["N"], "string",
                              "one encoded image per element")
        (image_bytes,) = _after([check], image_bytes)
        images = _bytes_to_images(image_bytes, ops, size, resize_method, bool(contrast_stretch))
        return _embed(model, images, dim, sigma_dim)

    @tf.function(input_signature=score_specs())
    def compare(mu1, sigma_sq1, mu2, sigma_sq2):
        return _scores(mu1, sigma_sq1, mu2, sigma_sq2, False, COMPARE, dim, sigma_dim)

    @tf.function(input_signature=score_specs())
    def compare_all(mu1, sigma_sq1, mu2, sigma_sq2):
        return _scores(mu1, sigma_sq1, mu2, sigma_sq2, True, COMPARE_ALL, dim, sigma_dim)

    metadata = {
        "format": FORMAT, "image_size": list(size), "channels": 3, "embedding_size": dim, "sigma_size": sigma_dim,
        "preprocess_ops": ops, "resize_method": resize_method, "contrast_stretch": bool(contrast_stretch),
        "decoded_images_are_uint8": True, "compare": "element-wise", "compare_all": "all pairs",
        "mls": "FastMLS" if sigma_dim == 1 else "D-dim MLS", "signatures": _signature_table(size, dim, sigma_dim),
    }
    text = json.dumps(metadata, indent=1, sort_keys=True)

    @tf.function(input_signature=[])
    def metadata_json():
        return tf.constant(text)

    module = tf.Module(name="probface_serving")
    module.serving_default, module.from_image_bytes = serving_default, from_image_bytes
    module.compare, module.compare_all, module.metadata_json = compare, compare_all, metadata_json
    # The functions capture the model's variables; listing them makes the SavedModel save and restore them.
    module.model_variables = _captured_variables(signature_functions(module).values())
    module.metadata_text = text  # a str: not tracked, read back by export_saved_model
    return module


def signature_functions(module: tf.Module) -> dict:
    """{signature name: concrete function} of a module from ``build_serving_module``."""
    return {name: getattr(module, name).get_concrete_function() for name in SIGNATURES}


def _captured_variables(functions) -> list:
    seen, out = set(), []
    for fn in functions:
        for var in fn.variables:
            if id(var) not in seen:
                seen.add(id(var))
                out.append(var)
    return out


def _signature_table(size, dim, sigma_dim) -> dict:
    h, w = size
    embed = {"mu": [None, dim], "sigma_sq": [None, sigma_dim], "log_sigma_sq": [None, sigma_dim],
             "embeddings_with_sigma": [None, dim + sigma_dim]}
    pair_in = {"mu1": [None, dim], "sigma_sq1": [None, sigma_dim], "mu2": [None, dim], "sigma_sq2": [None, sigma_dim]}
    return {
        SERVING_DEFAULT: {"inputs": {"input": ["float32", [None, h, w, 3]]}, "outputs": embed},
        FROM_IMAGE_BYTES: {"inputs": {"image_bytes": ["string", [None]]}, "outputs": embed},
        COMPARE: {"inputs": {k: ["float32", v] for k, v in pair_in.items()},
                  "outputs": {"mls": [None], "cosine": [None]}},
        COMPARE_ALL: {"inputs": {k: ["float32", v] for k, v in pair_in.items()},
                      "outputs": {"mls": [None, None], "cosine": [None, None]}},
    }


# ---------------------------------------------------------------------------------------------------------------
# Writing: versioned, atomic
# ---------------------------------------------------------------------------------------------------------------

def list_versions(export_base: str) -> list[int]:
    """Numeric version directories under ``export_base`` (complete or not), ascending."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(n) for n in os.listdir(export_base)
                  if _VERSION_DIR.match(n) and os.path.isdir(os.path.join(export_base, n)))


def next_version(export_base: str) -> int:
    """The version a new export gets: one more than the largest existing, or 1."""
    versions = list_versions(export_base)
    return versions[-1] + 1 if versions else 1


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: str) -> None:
    """Flush every file and directory, so the rename publishes data that is already on disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(os.path.join(dirpath, name))
        _fsync(dirpath)


def _write_saved_model(module: tf.Module, path: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        meta_path = os.path.join(scratch, METADATA_FILE)
        with open(meta_path, "w", encoding="utf-8") as f:
            f.write(module.metadata_text)
        # Tracked as an asset, the file is copied to <version>/assets/ and its path is an attribute on load.
        module.metadata_file = tf.saved_model.Asset(meta_path)
        tf.saved_model.save(module, path, signatures=signature_functions(module))


def _publish(tmp: str, export_base: str, version: int, overwrite: bool) -> str:
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        if not overwrite:
            raise ExportError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
        old = os.path.join(export_base, f".old-{version}-{os.getpid()}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)  # put the previous model back rather than lose it
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)  # fails on a non-empty target: another export took this version meanwhile
        except OSError as exc:
            raise ExportError(f"{final} appeared while exporting ({exc}); nothing was overwritten") from exc
    _fsync(export_base)
    return final


def export_saved_model(model, export_base: str, version: int | None = None, preprocess_ops=None, image_size=None,
                       resize_method: str = "pil_bilinear", contrast_stretch: bool = True,
                       overwrite: bool = False) -> str:
    """Export ``model`` (Keras, outputs {mu, sigma_sq[, log_sigma_sq]}) to ``export_base/<version>/``.

    ``preprocess_ops``, ``resize_method`` and ``contrast_stretch`` describe the evaluation preprocessing the
    ``from_image_bytes`` signature reproduces; they are stored in ``assets/probface.json``. See
    ``write_serving_module`` for versions and atomicity. Returns the version directory.
    """
    _check_version(version)
    _check_export_base(export_base)
    module = build_serving_module(model, preprocess_ops, image_size, resize_method, contrast_stretch)
    return write_serving_module(module, export_base, version, overwrite)


def write_serving_module(module: tf.Module, export_base: str, version: int | None = None,
                         overwrite: bool = False) -> str:
    """Save a ``build_serving_module`` module as ``export_base/<version>/``; returns that path.

    ``version`` defaults to ``next_version(export_base)``. The SavedModel is written to a sibling
    ``.tmp-<version>-<pid>`` directory, fsynced and renamed into place; on any failure the temporary directory
    is removed and no numeric directory is created. An existing version is an error unless ``overwrite``.
    """
    _check_version(version)
    _check_export_base(export_base)
    os.makedirs(export_base, exist_ok=True)
    version = next_version(export_base) if version is None else int(version)
    final = os.path.join(export_base, str(version))
    if os.path.exists(final) and not overwrite:
        raise ExportError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_saved_model(module, tmp)
        _fsync_tree(tmp)
        return _publish(tmp, export_base, version, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_version(version) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                or version < 1):
        raise ExportError(f"version must be a positive integer, got {version!r}")


def _check_export_base(export_base: str) -> None:
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise ExportError(f"export base {export_base} exists and is not a directory")


# ---------------------------------------------------------------------------------------------------------------
# Loading with input checks
# ---------------------------------------------------------------------------------------------------------------

def resolve_export(path: str) -> str:
    """A SavedModel directory, or an export base (its largest version with a ``saved_model.pb``)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    complete = [v for v in list_versions(path) if os.path.isfile(os.path.join(path, str(v), "saved_model.pb"))]
    if not complete:
        raise ExportError(f"{path} is neither a SavedModel directory nor an export base with version directories")
    return os.path.join(path, str(complete[-1]))


def _as_float_array(value, signature: str, name: str, spec: tf.TensorSpec) -> np.ndarray:
    expected = f"float32 {_shape_text(spec.shape)}"
    array = np.asarray(value)
    if array.dtype.kind != "f":
        hint = " (encoded images go to from_image_bytes; serving_default takes preprocessed floats)" \
            if signature == SERVING_DEFAULT else ""
        raise ExportInputError(f"{signature}: input {name!r} must be {expected}, got dtype {array.dtype}{hint}")
    if not spec.shape.is_compatible_with(array.shape):
        raise ExportInputError(f"{signature}: input {name!r} must be {expected}, got shape {list(array.shape)}")
    return array.astype(np.float32, copy=False)


def _as_bytes_array(value, signature: str, name: str) -> np.ndarray:
    if isinstance(value, (bytes, str)) or not hasattr(value, "__len__"):
        raise ExportInputError(f"{signature}: input {name!r} must be a list of encoded images (string [None]), "
                               f"got {type(value).__name__}")
    items = list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise ExportInputError(f"{signature}: input {name!r} must be string [None], got shape {list(value.shape)}")
    for i, item in enumerate(items):
        if not isinstance(item, (bytes, np.bytes_)):
            raise ExportInputError(f"{signature}: element {i} of {name!r} must be bytes (an encoded image), "
                                   f"got {type(item).__name__}")
    return np.array(items, dtype=object)


def _check_score_rows(signature: str, rows: dict) -> None:
    for k in ("1", "2"):
        if rows["mu" + k] != rows["sigma_sq" + k]:
            raise ExportInputError(f"{signature}: mu{k} has {rows['mu' + k]} rows but sigma_sq{k} has "
                                   f"{rows['sigma_sq' + k]}")
    if signature == COMPARE and rows["mu1"] != rows["mu2"]:
        raise ExportInputError(f"compare is element-wise and needs as many rows in set 2 as in set 1 "
                               f"({rows['mu2']} vs {rows['mu1']}); use compare_all for all pairs")


def _shape_text(shape: tf.TensorShape) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + "]"


class ExportedModel:
    """A loaded export whose calls check dtypes and shapes first and return NumPy arrays.

    ``ExportedModel(path)`` takes a version directory or an export base (latest complete version).
    """

    def __init__(self, path: str):
        self.path = resolve_export(path)
        self.loaded = tf.saved_model.load(self.path)
        self.metadata = json.loads(self.loaded.metadata_json().numpy().decode("utf-8"))
        missing = [s for s in SIGNATURES if s not in self.loaded.signatures]
        if missing:
            raise ExportError(f"{self.path} lacks the signatures {missing}; was it written by export_saved_model?")

    def input_specs(self, signature: str) -> dict:
        return self.loaded.signatures[signature].structured_input_signature[1]

    def __call__(self, signature: str, **inputs) -> dict[str, np.ndarray]:
        if signature not in SIGNATURES:
            raise ExportInputError(f"unknown signature {signature!r}; choose one of {list(SIGNATURES)}")
        specs = self.input_specs(signature)
        if set(inputs) != set(specs):
            raise ExportInputError(f"{signature} takes inputs {sorted(specs)}, got {sorted(inputs)}")
        feed = {}
        for name, spec in specs.items():
            if spec.dtype == tf.string:
                feed[name] = tf.constant(_as_bytes_array(inputs[name], signature, name), tf.string)
            else:
                feed[name] = tf.constant(_as_float_array(inputs[name], signature, name, spec))
        if signature in (COMPARE, COMPARE_ALL):
            _check_score_rows(signature, {k: int(v.shape[0]) for k, v in feed.items()})
        return {k: v.numpy() for k, v in self.loaded.signatures[signature](**feed).items()}

    def embed(self, images) -> dict[str, np.ndarray]:
        """Preprocessed float images [N, H, W, 3] -> mu, sigma_sq, log_sigma_sq, embeddings_with_sigma."""
        return self(SERVING_DEFAULT, input=images)

    def embed_image_bytes(self, encoded) -> dict[str, np.ndarray]:
        """Encoded JPEG/PNG/GIF/BMP byte strings -> the same outputs as ``embed``."""
        return self(FROM_IMAGE_BYTES, image_bytes=encoded)

    def compare(self, mu1, sigma_sq1, mu2, sigma_sq2) -> dict[str, np.ndarray]:
        """Element-wise scores [N]: row i of set 1 against row i of set 2."""
        return self(COMPARE, mu1=mu1, sigma_sq1=sigma_sq1, mu2=mu2, sigma_sq2=sigma_sq2)

    def compare_all(self, mu1, sigma_sq1, mu2, sigma_sq2) -> dict[str, np.ndarray]:
        """All-pairs scores [N1, N2]."""
        return self(COMPARE_ALL, mu1=mu1, sigma_sq1=sigma_sq1, mu2=mu2, sigma_sq2=sigma_sq2)


def load_export(path: str) -> ExportedModel:
    """Load a SavedModel written by ``export_saved_model`` (a version directory or the export base)."""
    return ExportedModel(path)


# ---------------------------------------------------------------------------------------------------------------
# Console script
# ---------------------------------------------------------------------------------------------------------------

def load_model_for_export(path: str, cfg=None):
    """A ``.keras`` ProbFace model, or an original TF1 checkpoint (run dir / prefix) converted on the fly."""
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise ExportError(f"--model {path}: no such file or directory")
    if path.endswith(".keras"):
        import keras

        import probface_tf.models.probface  # noqa: F401 - registers the custom layers for deserialisation

        try:
            return keras.saving.load_model(path, compile=False)
        except Exception as exc:  # a corrupt or foreign file: report which one
            raise ExportError(f"--model {path}: cannot load the Keras model: {type(exc).__name__}: {exc}") from exc
    try:
        from probface_tf.convert import load_tf1_checkpoint
    except ImportError as exc:
        raise ExportError(f"--model {path}: not a .keras file, and TF1 checkpoint conversion is unavailable "
                          f"({exc})") from exc
    return load_tf1_checkpoint(path, cfg)


def _define_flags():
    from absl import flags

    # A private FlagValues: importing this module never adds flags to a caller's absl.flags.FLAGS.
    fv = flags.FlagValues()
    flags.DEFINE_string("model", None, "a .keras ProbFace model, or an original TF1 run dir / checkpoint "
                        "(with --config)", flag_values=fv)
    flags.DEFINE_string("out", None, "export base: the SavedModel goes to OUT/<version>/", flag_values=fv)
    flags.DEFINE_integer("version", None, "version number (default: largest existing + 1, or 1)", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "replace an existing version directory", flag_values=fv)
    flags.DEFINE_string("config", None, "config file: preprocess_test, resize_method and eval_contrast_stretch "
                        "for from_image_bytes (default: resize to the model input + mean_scale)", flag_values=fv)
    return fv


def main(argv=None) -> int:
    """``probface-export --model PATH --out EXPORT_BASE [--version N] [--overwrite] [--config CFG]``."""
    from absl import flags

    fv = _define_flags()
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print("usage: probface-export --model PATH --out EXPORT_BASE [--version N] [--overwrite] [--config CFG]\n")
        print(fv.get_help())
        return 0
    try:
        rest = fv(["probface-export", *argv])
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments {rest[1:]}")
        for required in ("model", "out"):
            if fv[required].value is None:
                raise flags.Error(f"--{required} is required")
    except flags.Error as exc:
        print(f"probface-export: error: {exc}", file=sys.stderr)
        return 2
    try:
        kwargs = {}
        cfg = None
        if fv.config:
            from probface_tf.config import load_config

            cfg = load_config(fv.config)
            kwargs = {"preprocess_ops": cfg.preprocess_test, "resize_method": cfg.resize_method,
                      "contrast_stretch": cfg.eval_contrast_stretch}
        model = load_model_for_export(fv.model, cfg)
        path = export_saved_model(model, fv.out, version=fv.version, overwrite=fv.overwrite, **kwargs)
    except ValueError as exc:  # ExportError, ConfigError, CheckpointError: messages name the file or key
        print(f"probface-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    with open(os.path.join(path, "assets", METADATA_FILE), encoding="utf-8") as f:
        for name, spec in json.load(f)["signatures"].items():
            print(f"  {name}: {spec['inputs']} -> {spec['outputs']}")
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
