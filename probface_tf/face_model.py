"""``FaceModel``: from photos to faces, embeddings and decisions, over any model ``probface_tf.load`` accepts.

    model = pf.load("log/run/model.keras", calibration="log/eval/run/calibration.json")
    a, b = model.embed_photo("a.jpg")[0], model.embed_photo("b.jpg")[0]
    print(model.compare(a, b))           # cosine, FastMLS, fused sigma^2 and 'same' / 'different' / 'uncertain'

Aligned crops go through the model's own evaluation preprocessing (``preprocess_test``) as float images, as the
``.bin`` evaluation feeds them, so thresholds calibrated by ``evaluate.py`` on those sets apply to photos.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from probface_tf import scoring
from probface_tf.calibration import Calibration, fused_sigma_sq
from probface_tf.data.preprocess import preprocess_batch
from probface_tf.faces.alignment import align_face
from probface_tf.faces.detector import Face, FaceDetector, largest
from probface_tf.faces.photo import read_photo


class FaceModelError(ValueError):
    """Input FaceModel cannot use; the message names it and its shape."""


class _Clock:
    """Adds each call's wall time to ``timings[stage]`` (no-op without a dict)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    def __call__(self, stage: str, fn, *args):
        if self.timings is None:
            return fn(*args)
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class Comparison:
    """Scores of one pair; ``decision`` is None without a calibration (``note`` says so)."""
    cosine: float
    fastmls: float | None
    fused_sigma_sq: float | None
    decision: str | None
    fmr: float | None = None
    reject: float | None = None
    threshold: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None and v != ""}


class FaceModel:
    """A loaded face model (``engine``: the evaluator's ``LoadedModel``), a detector and an optional
    calibration. Build it with ``probface_tf.load``."""

    def __init__(self, engine, detector: FaceDetector | str | None = "mtcnn", calibration: Calibration | None = None,
                 batch_size: int = 64):
        self.engine = engine
        self._detector = detector
        self.calibration = calibration
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return (f"FaceModel({self.engine.path!r}, kind={self.engine.kind}, input={self.image_size}, "
                f"sigma_sq={self.has_sigma}, calibrated={self.calibration is not None})")

    @property
    def image_size(self) -> tuple:
        return tuple(int(s) for s in self.engine.image_size)

    @property
    def has_sigma(self) -> bool:
        return bool(self.engine.has_sigma and self.engine.gaussian)

    @property
    def detector(self) -> FaceDetector:
        if isinstance(self._detector, str):
            if self._detector != "mtcnn":
                raise FaceModelError(f"unknown detector {self._detector!r}; give 'mtcnn' or a FaceDetector")
            from probface_tf.faces.mtcnn_detector import MTCNNDetector  # loads its networks: only when used

            self._detector = MTCNNDetector()
        if self._detector is None:
            raise FaceModelError("this FaceModel was loaded without a detector (detector=None)")
        return self._detector

    # ------------------------------------------------------------------------------------------------ embedding
    def preprocess(self, crops) -> np.ndarray:
        """Aligned uint8 crops [N, h, w, 3] -> the model's float32 input [N, H, W, 3]."""
        p = self.engine.preprocessing
        images = np.asarray(crops).astype(np.float32)  # float, as the .bin evaluation feeds its images
        return preprocess_batch(images, p.ops, False, p.contrast_stretch, p.resize_method).numpy()

    def embed(self, images, timings: dict | None = None) -> dict:
        """``mu`` [N, D] and ``sigma_sq`` [N, S] (absent for a model without one) of aligned faces: uint8 crops
        (e.g. ``Face.crop``; preprocessed here) or float32 images already at the model's input size and
        preprocessed. ``timings``: its 'preprocess' and 'model' seconds are increased by this call."""
        clock = _Clock(timings)
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise FaceModelError(f"embed: images must be [N, H, W, 3] (or one [H, W, 3]), got {list(images.shape)}")
        raw = images.dtype == np.uint8
        if not raw and tuple(images.shape[1:3]) != self.image_size:
            raise FaceModelError(f"embed: float images must be preprocessed to the model input {self.image_size}, "
                                 f"got {list(images.shape[1:3])}; pass uint8 crops to have them preprocessed")
        outs = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            batch = clock("preprocess", self.preprocess, batch) if raw else batch.astype(np.float32)
            outs.append(clock("model", self.engine, batch))
        if not outs:
            return {"mu": np.zeros((0, 0), np.float32)}
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    # ------------------------------------------------------------------------------------------------ photos
    def detect(self, photo, largest_face: bool = False, name: str | None = None, timings: dict | None = None
               ) -> list[Face]:
        """Faces of a photo (path, bytes or RGB array), most confident first, each with its aligned crop.
        ``timings``: a dict whose 'decode', 'detect' and 'align' seconds are increased by this call."""
        clock = _Clock(timings)
        image = clock("decode", read_photo, photo, name)
        faces = clock("detect", self.detector.detect, image)
        faces = largest(faces) if largest_face else faces
        for face in faces:
            face.crop = clock("align", align_face, image, face.landmarks)
            face.source = name or (str(photo) if isinstance(photo, (str, os.PathLike)) else "")
        return faces

    def embed_faces(self, faces: list[Face], timings: dict | None = None) -> list[Face]:
        """Fill ``mu`` / ``sigma_sq`` of detected faces (batched forward passes)."""
        if faces:
            out = self.embed(np.stack([f.crop for f in faces]), timings)
            for i, face in enumerate(faces):
                face.mu = out["mu"][i]
                face.sigma_sq = out["sigma_sq"][i] if self.has_sigma else None
        return faces

    def embed_photo(self, photo, largest_face: bool = False, name: str | None = None) -> list[Face]:
        """``detect`` plus each face's ``mu`` and ``sigma_sq``."""
        return self.embed_faces(self.detect(photo, largest_face, name))

    # ------------------------------------------------------------------------------------------------ compare
    def _as_face(self, item, side: str) -> Face:
        if isinstance(item, Face):
            if item.mu is None:
                self.embed_faces([item])
            return item
        if isinstance(item, dict) and "mu" in item:
            return Face(np.zeros(4), np.zeros((5, 2)), 1.0, mu=np.ravel(item["mu"]),
                        sigma_sq=None if item.get("sigma_sq") is None else np.ravel(item["sigma_sq"]))
        faces = self.embed_photo(item, largest_face=True)  # a photo: its largest face
        if not faces:
            raise FaceModelError(f"compare: no face found in {side} ({item if isinstance(item, str) else 'photo'})")
        return faces[0]

    def compare(self, a, b, fmr: float = 1e-3, reject: float = 0.0, score: str | None = None) -> Comparison:
        """Compare two faces (``Face``, ``{'mu', 'sigma_sq'}`` or a photo, whose largest face is used).
        With a calibration: 'same' / 'different' at false-match rate ``fmr`` on ``score`` (FastMLS when the model
        has sigma^2, else cosine), or 'uncertain' when the pair's fused sigma^2 is among the riskiest ``reject``
        fraction of the calibration pairs."""
        fa, fb = self._as_face(a, "the first photo"), self._as_face(b, "the second photo")
        mu1, mu2 = fa.mu[None], fb.mu[None]
        cosine = float(scoring.cosine_scores(mu1, mu2)[0])
        fast = fused = None
        if fa.sigma_sq is not None and fb.sigma_sq is not None:
            s1, s2 = fa.sigma_sq[None], fb.sigma_sq[None]
            fast = float(scoring.probabilistic_scores(mu1, s1, mu2, s2)[0])
            fused = float(fused_sigma_sq(s1, s2)[0])
        result = Comparison(cosine, fast, fused, None)
        if self.calibration is None:
            result.note = "no calibration: scores only (load with calibration=FILE for a decision)"
            return result
        score = score or ("fastmls" if fast is not None else "cosine")
        value = fast if score == "fastmls" else cosine
        if value is None:
            raise FaceModelError("compare: FastMLS needs sigma_sq on both faces; use score='cosine'")
        result.decision = self.calibration.decide(score, value, fused, fmr, reject)
        result.fmr, result.reject = fmr, reject or None
        result.threshold = self.calibration.threshold(score, fmr)
        return result
