"""Photos to embeddings through ``probface embed``: seconds per photo in each stage.

A folder of 640x480 one-face JPEG photos is made from skimage's astronaut photograph (her head cut out, scaled,
sometimes mirrored, placed at random on a plain canvas) and embedded by the code path of ``probface embed``
(``face_cli.embed_photos``), with a full-size ResFace64 ProbFace model (96x96 input; random weights, the same
cost as a trained one) and MTCNN. Prints JSON: seconds per photo for decode, detect, align, preprocess and
model, and the share of everything but the detector and the model (goal: <= 10 %).

    python benchmarks/photos.py [--photos 40] [--batch_size 32]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import skimage.data  # noqa: E402

from probface_tf import face_cli  # noqa: E402
from probface_tf.loading import load  # noqa: E402
from probface_tf.models.probface import build_probface  # noqa: E402


def make_photos(folder: str, count: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    head = skimage.data.astronaut()[20:240, 130:330]  # the face with hair and collar
    paths = []
    for i in range(count):
        canvas = np.full((480, 640, 3), rng.integers(60, 200, 3), np.uint8)
        size = int(rng.uniform(120, 300))
        face = cv2.resize(head, (size * head.shape[1] // head.shape[0], size), interpolation=cv2.INTER_AREA)
        face = face[:, ::-1] if rng.random() < 0.5 else face
        y, x = rng.integers(0, 480 - face.shape[0]), rng.integers(0, 640 - face.shape[1])
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        paths.append(os.path.join(folder, f"photo_{i:03d}.jpg"))
        cv2.imwrite(paths[-1], canvas[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(tmp, args.photos)
        model_path = os.path.join(tmp, "resface64.keras")
        build_probface().save(model_path)
        model = load(model_path, batch_size=args.batch_size)
        face_cli.embed_photos(model, photos[:2])  # warm-up: detector and model tracing
        start = time.perf_counter()
        arrays, skipped, seconds = face_cli.embed_photos(model, photos)
        total = time.perf_counter() - start
    per_photo = {k: v / len(photos) for k, v in seconds.items()}
    other = total - seconds["detect"] - seconds["model"]
    print(json.dumps({"photos": len(photos), "faces": int(len(arrays["mu"])), "skipped": len(skipped),
                      "seconds_per_photo": {**{k: round(v, 5) for k, v in per_photo.items()},
                                            "total": round(total / len(photos), 5)},
                      "share_outside_detector_and_model": round(other / total, 4),
                      "cpu_count": os.cpu_count()}, indent=2))


if __name__ == "__main__":
    main()
