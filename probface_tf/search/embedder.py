"""What a gallery needs from a model: ``embed(images) -> (mu [N, D], sigma_sq [N])`` and a ``model_id``.

``ModelEmbedder`` adapts a ``FaceModel`` (``probface_tf.load``) to it and adds ``embed_files(paths)`` (aligned crops,
decoded and preprocessed as the evaluator does) and ``embed_photos(paths)`` (photos: the largest face of each is
detected and aligned first; a photo without a face is an error naming it). The model id is a fingerprint of
the model's function, not of its path: the first values of ``mu`` for a fixed pseudo-random image, rounded, hashed,
so that a copied or re-exported model keeps its id and a retrained one gets a new one.
"""
from __future__ import annotations

import hashlib

import numpy as np

from probface_tf.eval.extraction import extract_files
from probface_tf.loading import load

FINGERPRINT_DECIMALS = 2  # survives float32/bfloat16 kernels and thread-count differences, not retraining


class EmbedderError(ValueError):
    """A model cannot serve a gallery (no sigma_sq, an image with no face); the message names it."""


def model_fingerprint(embed, image_size) -> str:
    """``sha1`` of the rounded ``mu`` of one fixed image of the model's input size."""
    h, w = (int(s) for s in image_size)
    image = np.random.default_rng(1234).uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
    mu, _ = embed(image)
    rounded = np.round(np.asarray(mu, np.float64)[0], FINGERPRINT_DECIMALS) + 0.0  # -0.0 -> 0.0
    digest = hashlib.sha1(rounded.astype("<f8").tobytes() + str(mu.shape[1]).encode()).hexdigest()
    return f"d{mu.shape[1]}-{digest[:16]}"


class ModelEmbedder:
    """A ``FaceModel`` as a gallery embedder; ``photos=True``: ``embed_paths`` detects and aligns faces first."""

    def __init__(self, face_model, batch_size: int = 64, photos: bool = False):
        loaded = face_model.engine
        self.face_model, self.photos = face_model, bool(photos)
        if not loaded.has_sigma or not loaded.gaussian:
            raise EmbedderError(f"model {loaded.path} has no sigma_sq output: a ProbFace gallery needs the "
                                f"uncertainty of every image")
        self.loaded, self.batch_size = loaded, int(batch_size)
        self.model_id = model_fingerprint(self.embed, loaded.image_size)

    @classmethod
    def from_path(cls, path: str, config=None, batch_size: int = 64, photos: bool = False) -> "ModelEmbedder":
        return cls(load(path, config=config, batch_size=batch_size), batch_size, photos)

    def embed(self, images) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed float32 images [N, H, W, 3] -> (mu [N, D], sigma_sq [N])."""
        out = self.loaded(np.asarray(images, np.float32))
        return out["mu"], out["sigma_sq"].reshape(len(out["mu"]), -1).mean(axis=1)

    def embed_files(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """Aligned face crops on disk -> (mu [N, D], sigma_sq [N]); an unreadable file is an error naming it."""
        mu, sigma_sq, _ = extract_files([self.loaded], list(paths), self.batch_size, source="gallery images")[0]
        return mu, sigma_sq.reshape(len(mu), -1).mean(axis=1)

    def embed_photos(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """Photos -> (mu [N, D], sigma_sq [N]) of the largest face of each; every photo is detected before any
        is embedded, so a photo without a face stops the call before the gallery is touched."""
        faces = []
        for path in paths:
            found = self.face_model.detect(path, largest_face=True)
            if not found:
                raise EmbedderError(f"{path}: no face found (the detector found nothing above its score threshold)")
            faces.extend(found)
        self.face_model.embed_faces(faces)
        mu = np.stack([f.mu for f in faces]) if faces else np.zeros((0, 0), np.float32)
        sigma_sq = np.stack([np.ravel(f.sigma_sq) for f in faces]) if faces else np.zeros((0, 1), np.float32)
        return mu, sigma_sq.mean(axis=1)

    def embed_paths(self, paths) -> tuple[np.ndarray, np.ndarray]:
        """``embed_photos`` or ``embed_files``, as this embedder was made for."""
        return self.embed_photos(paths) if self.photos else self.embed_files(paths)
