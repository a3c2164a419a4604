"""Grad-CAM of a ProbFace model: which image regions drive its uncertainty (sigma_sq) and its identity (mu).

As the original's Grad-CAM tool (``utils/pb_inference_grad_cam.py``) does on its frozen graph: the feature map
``A`` is the last residual stage (``Conv4``, the original's ``Resface/Conv4/Conv_4/Conv_4_3/add``); the signal is
``-sigma_sq`` (regions that make the model confident); the gradients are divided by their root mean square
(``+ 1e-5``), averaged over space into one weight per channel, and ``cam = relu(1 + sum_c w_c A_c) / max``. The
map is resized to the image (bilinear), coloured with the JET map and blended ``0.7 image + 0.3 heat``. The
identity map uses the signal ``mu . stop_gradient(mu)``: the regions that make up the embedding.

``evaluate.py --model M.keras --explain IMAGE_OR_DIR``: per image, a PNG ``[image | sigma_sq map | mu map]``.
"""
from __future__ import annotations

import os

import cv2
import keras
import numpy as np
import tensorflow as tf

import probface_tf.models.probface  # noqa: F401 - registers the package's layers for load_keras_model
from probface_tf.data.preprocess import preprocess_batch
from probface_tf.eval.model_loader import load_model

FEATURE_LAYER = "Conv4"
BACKBONE = "Resface"
HEAD = "UncertaintyModule"
NORM_EPS = 1e-5
IMAGE_WEIGHT, HEAT_WEIGHT = 0.7, 0.3


class ExplainError(ValueError):
    """The model has no ResFace backbone + UncertaintyModule to explain, or an image is unusable."""


class GradCam:
    """Grad-CAM maps of a Keras ProbFace model (``build_probface`` layout) at ``FEATURE_LAYER``."""

    def __init__(self, model: keras.Model, head_input: str = "conv_final"):
        try:
            backbone, self.head = model.get_layer(BACKBONE), model.get_layer(HEAD)
            feature = backbone.get_layer(FEATURE_LAYER).input
        except ValueError as exc:
            raise ExplainError(f"model {model.name!r} has no '{BACKBONE}/{FEATURE_LAYER}' backbone stage and "
                               f"'{HEAD}' head to explain ({exc})") from None
        if head_input not in backbone.output:
            raise ExplainError(f"uncertainty_module_input {head_input!r} is not a backbone end point")
        self.probe = keras.Model(backbone.input, [feature, backbone.output["mu"], backbone.output[head_input]])
        self.image_size = tuple(int(v) for v in backbone.input.shape[1:3])

    def maps(self, images) -> dict:
        """``{'sigma_sq': [N, h, w], 'mu': [N, h, w]}`` CAMs in [0, 1] at feature-map resolution, plus the
        forward outputs ``sigma_sq [N, S]`` and ``mu [N, D]``. ``images``: preprocessed float ``[N, H, W, 3]``."""
        x = tf.convert_to_tensor(images, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            feature, mu, head_in = self.probe(x, training=False)
            sigma_sq = tf.exp(self.head(head_in, training=False))
            signals = {"sigma_sq": -tf.reduce_mean(sigma_sq, axis=1),
                       "mu": tf.reduce_sum(mu * tf.stop_gradient(mu), axis=1)}
        out = {name: cam(feature, tape.gradient(signal, feature)) for name, signal in signals.items()}
        del tape
        out.update(sigma_sq_value=sigma_sq.numpy(), mu_value=mu.numpy())
        return out


def cam(feature, grads) -> np.ndarray:
    """The original's CAM per image: RMS-normalised gradients, spatial mean per channel, ``relu(1 + sum w A)``
    divided by its maximum."""
    feature, grads = np.asarray(feature, np.float64), np.asarray(grads, np.float64)
    rms = np.sqrt(np.mean(np.square(grads), axis=(1, 2, 3), keepdims=True))
    weights = np.mean(grads / (rms + NORM_EPS), axis=(1, 2))  # [N, C]
    maps = np.maximum(1.0 + np.einsum("nhwc,nc->nhw", feature, weights), 0.0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return maps / np.where(peak > 0, peak, 1.0)


def overlay(image_rgb: np.ndarray, cam_map: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: the image blended with the JET-coloured map resized to it."""
    h, w = image_rgb.shape[:2]
    heat = cv2.resize(cam_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.uint8(255 * np.clip(heat / max(float(heat.max()), 1e-12), 0, 1))
    colour = cv2.applyColorMap(heat, cv2.COLORMAP_JET)[..., ::-1]  # BGR -> RGB
    return cv2.addWeighted(np.ascontiguousarray(image_rgb, np.uint8), IMAGE_WEIGHT, colour, HEAT_WEIGHT, 0)


def write_panels(path: str, image_rgb: np.ndarray, maps: dict, index: int) -> np.ndarray:
    """PNG ``[image | sigma_sq map | mu map]``; returns the panel (uint8 RGB)."""
    panel = np.concatenate([image_rgb, overlay(image_rgb, maps["sigma_sq"][index]),
                            overlay(image_rgb, maps["mu"][index])], axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, panel[..., ::-1]):
        raise ExplainError(f"cannot write {path}")
    return panel


def explain_files(model: keras.Model, paths, out_dir: str, preprocess, head_input: str = "conv_final",
                  echo=print) -> list[dict]:
    """Grad-CAM panels of image files: ``preprocess(uint8 [1, H, W, 3]) -> float [1, h, w, 3]`` is the model's
    evaluation preprocessing. Writes ``<out_dir>/<name>.png``; returns ``[{'image', 'png', 'sigma_sq'}]``."""
    explainer = GradCam(model, head_input)
    results = []
    for path in paths:
        data = open(path, "rb").read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ExplainError(f"{path}: not a decodable image")
        rgb = image[..., ::-1]
        maps = explainer.maps(preprocess(rgb[None]))
        png = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        write_panels(png, rgb, maps, 0)
        sigma = [float(v) for v in maps["sigma_sq_value"][0]]
        echo("%s sigma_sq %s -> %s" % (path, " ".join("%.6g" % v for v in sigma[:4]), png))
        results.append({"image": path, "png": png, "sigma_sq": sigma})
    return results


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(path: str) -> list[str]:
    """One image file, or the images of a folder (sorted, not recursive)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ExplainError(f"--explain {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        return files
    if not os.path.isfile(path):
        raise ExplainError(f"--explain {path}: no such file or folder")
    return [path]


def explain_model_file(model_path: str, images: str, out_dir: str, config=None, echo=print) -> list[dict]:
    """Grad-CAM panels for a ``.keras`` ProbFace model: the evaluator's loader checks the model and gives its
    evaluation preprocessing (``config`` as ``evaluate.py --config``)."""
    if not model_path.endswith(".keras"):
        raise ExplainError(f"--explain needs a .keras ProbFace model (convert a TF1 checkpoint with "
                           f"probface-convert first), got {model_path}")
    loaded = load_model(model_path, config)
    if not (loaded.has_sigma and loaded.gaussian):
        raise ExplainError(f"--model {model_path}: no sigma_sq output to explain")
    model = keras.saving.load_model(model_path, compile=False)
    prep = loaded.preprocessing

    def preprocess(batch):
        return preprocess_batch(batch, prep.ops, False, prep.contrast_stretch, prep.resize_method)

    return explain_files(model, image_files(images), out_dir, preprocess, echo=echo)
