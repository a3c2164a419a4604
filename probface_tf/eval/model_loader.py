"""One interface over the models the evaluator accepts.

``load_model(path, config=None)`` returns a ``LoadedModel``: call it with preprocessed float32 images
``[N, H, W, 3]`` to get ``{'mu': [N, D]}`` plus ``'sigma_sq': [N, S]`` when the model has an uncertainty output.
It also carries the input size and the evaluation preprocessing the model expects.

Accepted: a SavedModel directory or export base (``probface_tf.export`` layout, or any SavedModel whose
``serving_default`` maps one image tensor to ``mu``/``sigma_sq`` or to a single embedding), a ``.keras`` file
(ProbFace model, backbone with an end-point dict, or a plain embedding model), and an original TF1 checkpoint
(run directory, prefix or ``.index``; converted on the fly, ``config`` checked against it). A model without
sigma_sq is evaluated with cosine only.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


class ModelLoadError(ValueError):
    """The model path cannot be loaded or does not map images to embeddings; the message names the path."""


@dataclass
class Preprocessing:
    """Evaluation preprocessing: the original ``preprocess_test`` op list and its two switches."""
    ops: list
    resize_method: str = "pil_bilinear"
    contrast_stretch: bool = True
    source: str = "default"


@dataclass
class LoadedModel:
    fn: Callable = field(repr=False)  # float32 [N, H, W, 3] -> dict of tensors/arrays
    image_size: tuple
    has_sigma: bool
    kind: str  # 'saved_model', 'keras' or 'tf1_checkpoint'
    path: str
    preprocessing: Preprocessing = None
    sigma_note: str = ""
    label: str = ""  # row label of the summary table; default derived from the path
    # The output holding the per-image uncertainty (has_sigma tells whether there is one): 'sigma_sq', a
    # Gaussian's variance (MLS scores), or 'uncertainty', any other score, larger = riskier (the baselines:
    # PCNet/IDQ 1 - confidence, MC-dropout spread, ScaleFace 1/scale), used by the risk tables only.
    uncertainty: str = "sigma_sq"
    metadata: dict | None = None  # a SavedModel export's probface.json (preprocessing, calibration, ...)

    def __call__(self, images) -> dict:
        out = self.fn(images)
        result = {"mu": np.asarray(out["mu"])}
        if self.has_sigma:
            result[self.uncertainty] = np.asarray(out[self.uncertainty]).reshape(result["mu"].shape[0], -1)
        return result

    @property
    def gaussian(self) -> bool:
        return self.uncertainty == "sigma_sq"

    def distribute(self, strategy) -> None:
        """Run every batch split over the strategy's replicas (load the model in ``strategy.scope()`` first)."""
        if int(strategy.num_replicas_in_sync) > 1:
            from probface_tf.train.distribute import distributed_function

            self.fn = distributed_function(strategy, self.fn)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = os.path.basename(os.path.normpath(self.path))
        if base.isdigit():  # an export version directory: name it after the export base
            base = os.path.basename(os.path.dirname(os.path.normpath(self.path))) + "/" + base
        return base


def default_preprocessing(image_size) -> Preprocessing:
    h, w = (int(s) for s in image_size)
    return Preprocessing([["resize", [h, w]], ["standardize", "mean_scale"]])


def _config_preprocessing(cfg) -> Preprocessing:
    return Preprocessing([list(op) for op in cfg.preprocess_test], cfg.resize_method, bool(cfg.eval_contrast_stretch),
                         "config")


# ------------------------------------------------------------------------------------------------ SavedModel


def _is_saved_model(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return True
    return os.path.isdir(path) and any(name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb"))
                                       for name in os.listdir(path))


def _load_saved_model(path: str) -> LoadedModel:
    import tensorflow as tf

    from probface_tf.export import resolve_export
    from probface_tf.export.saved_model import read_metadata

    try:
        path = resolve_export(path)
        loaded = tf.saved_model.load(path)
    except Exception as exc:  # corrupt protobuf, missing variables
        raise ModelLoadError(f"--model {path}: cannot load the SavedModel: {type(exc).__name__}: {exc}") from None
    if "serving_default" not in loaded.signatures:
        raise ModelLoadError(f"--model {path}: the SavedModel has no 'serving_default' signature "
                             f"(has {sorted(loaded.signatures)})")
    fn = loaded.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    if len(specs) != 1:
        raise ModelLoadError(f"--model {path}: serving_default must take one image tensor, takes {sorted(specs)}")
    (input_name, spec), = specs.items()
    shape = spec.shape.as_list()
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None or spec.dtype != tf.float32:
        raise ModelLoadError(f"--model {path}: serving_default input {input_name!r} must be float32 "
                             f"[None, H, W, 3], got {spec.dtype.name} {shape}")
    outputs = fn.structured_outputs
    mu_key = "mu" if "mu" in outputs else (next(iter(outputs)) if len(outputs) == 1 else None)
    if mu_key is None:
        raise ModelLoadError(f"--model {path}: serving_default outputs {sorted(outputs)} have no 'mu' embedding")
    has_sigma = "sigma_sq" in outputs

    def call(images):
        out = fn(**{input_name: tf.convert_to_tensor(images, tf.float32)})
        return {"mu": out[mu_key], **({"sigma_sq": out["sigma_sq"]} if has_sigma else {})}

    model = LoadedModel(call, (shape[1], shape[2]), has_sigma, "saved_model", path,
                        sigma_note="" if has_sigma else "the SavedModel has no sigma_sq output")
    metadata = model.metadata = read_metadata(loaded, path)
    if metadata and "preprocess_ops" in metadata:
        model.preprocessing = Preprocessing(metadata["preprocess_ops"], metadata.get("resize_method", "pil_bilinear"),
                                            bool(metadata.get("contrast_stretch", True)), "saved_model metadata")
    return model


# ------------------------------------------------------------------------------------------------ Keras


def _keras_call(model) -> Callable:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def call(images):
        return model(images, training=False)

    return call


def _wrap_keras(model, kind: str, path: str, compute_dtype: str = "float32") -> LoadedModel:
    """ProbFace models (dict with mu and sigma_sq), backbones (dict with mu) and plain embedding models."""
    shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) and len(model.inputs) == 1 else None
    if shape is None or len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[2] is None:
        raise ModelLoadError(f"--model {path}: the model must take one image tensor [None, H, W, 3], "
                             f"has inputs {[tuple(i.shape) for i in getattr(model, 'inputs', [])]}")
    outputs = model.output
    if compute_dtype != "float32" and not (isinstance(outputs, dict) and "sigma_sq" in outputs):
        raise ModelLoadError(f"--compute_dtype {compute_dtype}: only ProbFace models (outputs mu, sigma_sq) can run "
                             f"in reduced precision; {path} is another kind of model")
    if isinstance(outputs, dict):
        if "mu" not in outputs:
            raise ModelLoadError(f"--model {path}: model outputs {sorted(outputs)} have no 'mu' embedding")
        uncertainty = "sigma_sq" if "sigma_sq" in outputs else "uncertainty"
        has_sigma = uncertainty in outputs  # baseline models output a non-Gaussian 'uncertainty'
        model = _folded_if_probface(model, compute_dtype) if "sigma_sq" in outputs else model
        raw = _keras_call(model)
        fn = raw
    else:
        has_sigma, uncertainty = False, "sigma_sq"
        raw = _keras_call(model)

        def fn(images):
            return {"mu": raw(images)}

    note = "" if has_sigma else "the model has no sigma_sq output"
    return LoadedModel(fn, (int(shape[1]), int(shape[2])), has_sigma, kind, path, sigma_note=note,
                       uncertainty=uncertainty)


def _folded_if_probface(model, compute_dtype: str = "float32"):
    """Batch norm folded into the convolutions (same outputs to float32 round-off, faster on CPU); with
    ``compute_dtype`` 'bfloat16' / 'float16' the folded backbone computes in that precision (mu, sigma_sq float32)."""
    try:
        from probface_tf.models.inference import fold_batch_norm

        return fold_batch_norm(model, None if compute_dtype == "float32" else compute_dtype)
    except (ValueError, KeyError, AttributeError, ImportError):  # not a ResFace + UncertaintyModule model
        if compute_dtype != "float32":
            raise ModelLoadError(f"--compute_dtype {compute_dtype}: only ResFace ProbFace models can run in reduced "
                                 f"precision; {model.name} is another kind of model") from None
        return model


def _load_keras(path: str, compute_dtype: str = "float32") -> LoadedModel:
    import keras

    import probface_tf.methods.mc_dropout  # noqa: F401 - registers the baseline heads too
    import probface_tf.methods.scaleface  # noqa: F401 - and the ScaleFace layers (ScaleHead, InverseScale)
    import probface_tf.models.probability_head  # noqa: F401
    import probface_tf.models.probface  # noqa: F401 - registers the package's layers for deserialisation

    _check_keras_archive(path)
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # corrupt zip, foreign or unregistered layers
        raise ModelLoadError(f"--model {path}: cannot load the Keras model: {type(exc).__name__}: {exc}") from None
    return _wrap_keras(model, "keras", path, compute_dtype)


def _check_keras_archive(path: str) -> None:
    """A .keras file is a zip archive: one cut short (an interrupted copy or download) says so."""
    if os.path.isdir(path):
        raise ModelLoadError(f"--model {path}: a directory named .keras; expected a .keras file")
    size = os.path.getsize(path)
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"--model {path}: cannot load the Keras model: truncated or corrupt .keras file "
                             f"({size} bytes, not a complete zip archive); copy or save the model again")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        bad = f"{type(exc).__name__}: {exc}"
    if bad is not None:
        raise ModelLoadError(f"--model {path}: cannot load the Keras model: corrupt .keras file ({size} bytes; "
                             f"damaged member {bad})")


# ------------------------------------------------------------------------------------------------ TF1 checkpoint


def _load_tf1(path: str, cfg, compute_dtype: str = "float32") -> LoadedModel:
    from probface_tf.convert import find_checkpoint, infer_architecture, load_tf1_checkpoint, read_checkpoint

    prefix = find_checkpoint(path)
    has_head = infer_architecture(read_checkpoint(prefix))["uncertainty_module_output_size"] is not None
    model = load_tf1_checkpoint(prefix, cfg, allow_missing_head=not has_head)
    loaded = _wrap_keras(model, "tf1_checkpoint", path, compute_dtype)
    if not has_head:  # the fresh head's sigma_sq would be noise: evaluate the base model with cosine only
        loaded.has_sigma = False
        loaded.sigma_note = "the checkpoint has no UncertaintyModule variables (a base model)"
    return loaded


def _is_scaleface_run(path: str) -> bool:
    from probface_tf.methods.scaleface import is_scaleface_run

    return is_scaleface_run(path)


def _looks_like_checkpoint(path: str) -> bool:
    if path.endswith(".index") or os.path.isfile(path + ".index"):
        return True
    return os.path.isdir(path) and any(name.endswith(".index") for name in os.listdir(path))


# ------------------------------------------------------------------------------------------------ entry point


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def load_model(path: str, config=None, compute_dtype: str = "float32") -> LoadedModel:
    """Load any accepted model (see the module docstring). ``config``: a Config (or config file path) giving the
    evaluation preprocessing and, for TF1 checkpoints, the architecture to check against. ``compute_dtype``:
    the precision of the (BN-folded) backbone of a Keras / TF1 ProbFace model; 'bfloat16' is several times
    faster on CPUs with AMX or AVX512-BF16 and moves ResFace64's mu by at most 2.5e-3 (measured 1.6e-3)."""
    if compute_dtype not in COMPUTE_DTYPES:
        raise ModelLoadError(f"--compute_dtype must be one of {list(COMPUTE_DTYPES)}, got {compute_dtype!r}")
    if isinstance(config, str):
        from probface_tf.config import load_config

        config = load_config(config)
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise ModelLoadError(f"--model {path}: no such file or directory")
    if _is_saved_model(path):
        if compute_dtype != "float32":
            raise ModelLoadError(f"--compute_dtype {compute_dtype}: a SavedModel runs as exported; give the "
                                 f"run's model.keras to evaluate in reduced precision")
        model = _load_saved_model(path)
    elif path.endswith((".tflite", ".onnx", ".pb")):  # probface-export files: run by their own runtime
        from probface_tf.export.runtimes import ExportError, open_runtime

        try:
            runtime = open_runtime(path)
        except ExportError as exc:
            raise ModelLoadError(f"--model {exc}") from None
        model = LoadedModel(runtime, runtime.image_size, True, runtime.kind, path,
                            Preprocessing(**runtime.preprocessing, source=f"{runtime.kind} metadata"),
                            metadata=runtime.metadata)
    elif path.endswith(".keras"):
        model = _load_keras(path, compute_dtype)
    elif _is_scaleface_run(path):
        from probface_tf.methods.scaleface import scaleface_model

        model = _wrap_keras(scaleface_model(path), "scaleface", path, compute_dtype)
    elif _looks_like_checkpoint(path):
        model = _load_tf1(path, config, compute_dtype)
    else:
        raise ModelLoadError(f"--model {path}: not a SavedModel (no saved_model.pb), a .keras file, or a TF1 "
                             f"checkpoint (no *.index)")
    if config is not None:
        model.preprocessing = _config_preprocessing(config)
    elif model.preprocessing is None:
        model.preprocessing = default_preprocessing(model.image_size)
    return model


def wrap_keras_model(model, config=None, path: str = "<in-memory model>") -> LoadedModel:
    """The evaluator's interface over a Keras model already in memory (e.g. during training)."""
    loaded = _wrap_keras(model, "keras", path)
    loaded.preprocessing = (_config_preprocessing(config) if config is not None
                            else default_preprocessing(loaded.image_size))
    return loaded
