"""Write a 1:N identification protocol (``gallery.csv``, ``probes.csv``) from a folder of identity sub-folders.

The first ``enrolled_fraction`` of the identities (sorted by name) are enrolled with their first
``gallery_images`` images; their other images are mated probes, and every image of the remaining identities is a
non-mated probe. Paths in the files are relative to the protocol folder, as ``evaluate.py --gallery_protocol``
reads them. For the demo: ``write_identification_protocol(root/heldout, root/identification)``.
"""
from __future__ import annotations

import os

from probface_tf.data.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def write_identification_protocol(images_dir: str, out_dir: str, enrolled_fraction: float = 0.5,
                                  gallery_images: int = 3) -> dict:
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: not a folder of identity sub-folders")
    if not 0 < enrolled_fraction < 1 or gallery_images < 1:
        raise DataError(f"enrolled_fraction must be in (0, 1) and gallery_images >= 1, got {enrolled_fraction}, "
                        f"{gallery_images}")
    identities = sorted(d for d in os.listdir(images_dir) if os.path.isdir(os.path.join(images_dir, d)))
    enrolled = max(1, int(round(len(identities) * enrolled_fraction)))
    if len(identities) < 2 or enrolled >= len(identities):
        raise DataError(f"{images_dir}: {len(identities)} identities; an open-set protocol needs enrolled and "
                        f"non-enrolled ones")
    os.makedirs(out_dir, exist_ok=True)
    gallery, probes = [], []
    for n, identity in enumerate(identities):
        folder = os.path.join(images_dir, identity)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        rel = [os.path.relpath(os.path.join(folder, f), out_dir) for f in files]
        if n < enrolled:
            if len(rel) <= gallery_images:
                raise DataError(f"{folder}: {len(rel)} images; an enrolled identity needs more than "
                                f"{gallery_images} (gallery + probes)")
            gallery += [(identity, r) for r in rel[:gallery_images]]
            probes += [(identity, r) for r in rel[gallery_images:]]
        else:
            probes += [(identity, r) for r in rel]
    for name, rows in (("gallery.csv", gallery), ("probes.csv", probes)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write("".join(f"{identity},{path}\n" for identity, path in rows))
    return {"enrolled": enrolled, "non_enrolled": len(identities) - enrolled, "gallery_images": len(gallery),
            "probes": len(probes)}
