"""MTCNN (Zhang et al. 2016) through the ``mtcnn`` package: its weights ship in the wheel and it runs on
TensorFlow 2 / Keras 3. Landmarks come as floats (``output_type='numpy'``), which alignment needs."""
from __future__ import annotations

import cv2
import numpy as np

from probface_tf.faces.detector import Face, FaceDetector

# Photos are detected at most this large (longer side); landmarks are mapped back to full resolution, where the
# crop is cut. MTCNN's time grows with the pixel count and faces this size are found just as well.
MAX_DETECT_SIDE = 1600


class MTCNNDetector(FaceDetector):
    name = "mtcnn"

    def __init__(self, min_score: float = 0.9, min_face_size: int = 20, max_side: int = MAX_DETECT_SIDE):
        from mtcnn import MTCNN  # the package is the optional 'photos' dependency

        self.min_score, self.min_face_size, self.max_side = float(min_score), int(min_face_size), int(max_side)
        self._mtcnn = MTCNN()

    def detect(self, image: np.ndarray) -> list[Face]:
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = image if scale == 1.0 else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        rows = self._mtcnn.detect_faces(small, output_type="numpy", box_format="xyxy",
                                        min_face_size=self.min_face_size)
        # row: batch index, x1, y1, x2, y2, score, x of the 5 points, y of the 5 points
        faces = [Face(box=row[1:5] / scale, landmarks=np.stack([row[6:11], row[11:16]], 1) / scale,
                      score=float(row[5])) for row in np.asarray(rows).reshape(-1, 16) if row[5] >= self.min_score]
        return sorted(faces, key=lambda f: -f.score)
