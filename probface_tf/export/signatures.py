"""The serving signatures: a ``tf.Module`` of four ``tf.function`` over a (BN-folded) ProbFace model.

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

Every signature checks its input shapes in the graph before any other op runs (see ``decoding``): a bad input
fails with an InvalidArgumentError naming the signature, the input and the expected shape.
"""
from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from probface_tf.data.preprocess import preprocess_batch
from probface_tf.export.decoding import after, assert_shape, bytes_to_images
from probface_tf.export.errors import ExportError
from probface_tf.models.inference import fold_batch_norm
from probface_tf.scoring import cosine_tf, fastmls_tf, mls_tf

SERVING_DEFAULT = "serving_default"
FROM_IMAGE_BYTES = "from_image_bytes"
COMPARE = "compare"
COMPARE_ALL = "compare_all"
SIGNATURES = (SERVING_DEFAULT, FROM_IMAGE_BYTES, COMPARE, COMPARE_ALL)
OUTPUT_KEYS = ("mu", "sigma_sq", "log_sigma_sq", "embeddings_with_sigma")
SCORE_KEYS = ("mls", "cosine")
FORMAT = "probface_tf.saved_model/1"


def default_preprocess_ops(image_size) -> list:
    """The original ``preprocess_test``: resize to the model input, then ``(x - 128) / 128``."""
    h, w = (int(s) for s in image_size)
    return [["resize", [h, w]], ["standardize", "mean_scale"]]


def jsonable(value):
    """Op lists hold tuples; JSON (and the metadata asset) wants lists."""
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def model_input_size(model) -> tuple[int, int]:
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ExportError(f"the model must take one image tensor, it has inputs {inputs!r}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ExportError(f"the model input must be [None, H, W, 3] with known H, W; got {list(shape)}")
    return int(shape[1]), int(shape[2])


def model_output_sizes(model) -> tuple[int, int]:
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


def check_preprocessing(ops, image_size, resize_method, contrast_stretch):
    """Run the op list once on a dummy image so a bad list fails here, naming itself, not inside a trace."""
    try:
        # Larger than common face crops, so a leading crop op fits; the resize then sets the final size.
        out = preprocess_batch(tf.zeros([1, 256, 256, 3], tf.uint8), ops, training=False,
                               contrast_stretch=contrast_stretch, resize_method=resize_method)
    except (ValueError, TypeError, KeyError, tf.errors.InvalidArgumentError) as exc:
        raise ExportError(f"preprocess_ops {ops!r} cannot be applied: {exc}") from exc
    if tuple(out.shape[1:]) != (*image_size, 3) or out.dtype != tf.float32:
        raise ExportError(f"preprocess_ops {ops!r} produce {out.dtype.name} images of shape {list(out.shape[1:])}, "
                          f"but the model takes float32 [{image_size[0]}, {image_size[1]}, 3]")



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
    shapes = [assert_shape(signature, f"mu{k}", t, [n, dim], "float32", "L2-normalised embeddings")
              for k, n, t in (("1", rows[0], mu1), ("2", rows[1], mu2))]
    shapes += [assert_shape(signature, f"sigma_sq{k}", t, [n, sigma_dim], "float32", "sigma_sq of this model")
               for k, n, t in (("1", rows[0], sigma_sq1), ("2", rows[1], sigma_sq2))]
    # Row counts are compared only once the ranks are known to be right.
    mu1, sigma_sq1, mu2, sigma_sq2 = after(shapes, mu1, sigma_sq1, mu2, sigma_sq2)
    checks = [_check_rows(signature, "1", mu1, sigma_sq1), _check_rows(signature, "2", mu2, sigma_sq2)]
    if not all_pairs:
        checks.append(tf.debugging.assert_equal(tf.shape(mu1)[0], tf.shape(mu2)[0], message=(
            "compare is element-wise: both sets need the same number of rows (use compare_all for all pairs)")))
    mu1, sigma_sq1, mu2, sigma_sq2 = after(checks, mu1, sigma_sq1, mu2, sigma_sq2)
    return {"mls": tf.identity(_mls(mu1, sigma_sq1, mu2, sigma_sq2, all_pairs), name="mls"),
            "cosine": tf.identity(cosine_tf(mu1, mu2, pairwise=all_pairs), name="cosine")}


def check_finite_weights(model) -> None:
    """Refuse a model with a NaN / Inf weight: its export would serve NaN embeddings without a word."""
    for var in model.weights:
        value = np.asarray(var.numpy())
        if not np.all(np.isfinite(value)):
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            raise ExportError(f"weight {getattr(var, 'path', var.name)} holds {bad} non-finite value(s) (NaN/Inf); "
                              f"refusing to export a model that would output NaN")


def inference_form(model):
    """The BN-folded copy of a ResFace ProbFace model; any other model as it is."""
    try:
        return fold_batch_norm(model)
    except (ValueError, KeyError, AttributeError):  # not a ResFace + UncertaintyModule model: export as is
        return model


def build_serving_module(model, preprocess_ops=None, image_size=None, resize_method: str = "pil_bilinear",
                         contrast_stretch: bool = True, extra_metadata: dict | None = None) -> tf.Module:
    """A ``tf.Module`` with the four signatures as ``tf.function`` attributes (see the module docstring).

    ``preprocess_ops`` is the test-time op list (default: resize to the model input + ``mean_scale``);
    ``image_size`` [H, W], if given, must equal the model's input size. The module tracks the model's variables
    but not the Keras model itself, so the SavedModel holds plain TensorFlow functions only. A ProbFace model is
    exported in its inference form, batch norm folded into the convolutions (same outputs to float32 round-off,
    fewer ops per request).
    """
    check_finite_weights(model)
    model = inference_form(model)
    size = model_input_size(model)
    if image_size is not None and tuple(int(s) for s in image_size) != size:
        raise ExportError(f"image_size {list(image_size)} does not match the model input {list(size)}")
    dim, sigma_dim = model_output_sizes(model)
    ops = jsonable(preprocess_ops if preprocess_ops is not None else default_preprocess_ops(size))
    if resize_method not in ("pil_bilinear", "bilinear"):
        raise ExportError(f"resize_method must be 'pil_bilinear' or 'bilinear', got {resize_method!r}")
    check_preprocessing(ops, size, resize_method, bool(contrast_stretch))

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
        check = assert_shape(SERVING_DEFAULT, "input", input, ["N", *size, 3], "float32", "preprocessed faces")
        (images,) = after([check], input)
        return _embed(model, images, dim, sigma_dim)

    @tf.function(input_signature=[bytes_spec])
    def from_image_bytes(image_bytes):
        check = assert_shape(FROM_IMAGE_BYTES, "image_bytes", image_bytes, ["N"], "string",
                              "one encoded image per element")
        (image_bytes,) = after([check], image_bytes)
        images = bytes_to_images(image_bytes, ops, size, resize_method, bool(contrast_stretch))
        return _embed(model, images, dim, sigma_dim)

    @tf.function(input_signature=score_specs())
    def compare(mu1, sigma_sq1, mu2, sigma_sq2):
        return _scores(mu1, sigma_sq1, mu2, sigma_sq2, False, COMPARE, dim, sigma_dim)

    @tf.function(input_signature=score_specs())
    def compare_all(mu1, sigma_sq1, mu2, sigma_sq2):
        return _scores(mu1, sigma_sq1, mu2, sigma_sq2, True, COMPARE_ALL, dim, sigma_dim)

    metadata = {
        **(extra_metadata or {}),  # e.g. the decision thresholds of a Calibration
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
