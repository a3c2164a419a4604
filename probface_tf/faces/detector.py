"""What a face detector returns, and the interface a detector implements (``MTCNNDetector`` is one)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")  # left = smaller x in the image


@dataclass
class Face:
    """One face of a photo. ``box`` (x1, y1, x2, y2) and ``landmarks`` [5, 2] (x, y; ``LANDMARK_NAMES`` order)
    in photo pixels; ``crop`` the aligned 112x112 uint8 RGB face; ``mu`` / ``sigma_sq`` once embedded."""
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    crop: np.ndarray | None = field(default=None, repr=False)
    mu: np.ndarray | None = field(default=None, repr=False)
    sigma_sq: np.ndarray | None = field(default=None, repr=False)
    source: str = ""

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0))

    def to_dict(self) -> dict:
        """JSON-ready summary (no crop; mu only as its size)."""
        out = {"source": self.source, "box": [round(float(v), 2) for v in self.box],
               "landmarks": {n: [round(float(v), 2) for v in p] for n, p in zip(LANDMARK_NAMES, self.landmarks)},
               "score": round(float(self.score), 5)}
        if self.sigma_sq is not None:
            out["sigma_sq"] = [float(v) for v in np.ravel(self.sigma_sq)]
        return out


class FaceDetector:
    """A detector maps an RGB uint8 photo [H, W, 3] to its faces, most confident first."""
    name = "detector"

    def detect(self, image: np.ndarray) -> list[Face]:
        raise NotImplementedError


def largest(faces: list[Face]) -> list[Face]:
    """The face with the largest box (none if there is none)."""
    return [max(faces, key=lambda f: f.area)] if faces else []
