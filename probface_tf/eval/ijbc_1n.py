"""insightface's IJB-C (IJB-B) 1:N meta files, read unchanged, as an ``IdentificationProtocol``.

``META/ijbc_1N_gallery_G1.csv`` and ``_G2.csv`` (IJB-B: ``_S1``/``_S2``) and ``ijbc_1N_probe_mixed.csv``: a
header row, then ``TEMPLATE_ID,SUBJECT_ID,...`` rows (one per image of a template); ``ijbc_face_tid_mid.txt``:
``image_name template_id media_id`` rows, space separated (the faces of every template). The gallery identity of a
gallery template is its subject; probe templates of subjects outside the chosen gallery are non-mated (with both
gallery sets every probe is mated, as in insightface's script). Templates are fused with PFE over all their
faces; insightface first averages the faces of one media (video), then sums the media.
"""
from __future__ import annotations

import os

import numpy as np

from probface_tf.eval.identification_protocol import IdentificationProtocol, ProtocolError, index_images

GALLERY_SETS = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}


def _read(path: str, delimiter, skip: int, columns: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise ProtocolError(f"IJB meta file {path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if n <= skip or not line.strip():
                continue
            fields = line.strip().split(delimiter)
            if len(fields) < columns:
                raise ProtocolError(f"{path} line {n}: expected at least {columns} fields, got {fields}")
            rows.append(fields[:columns])
    if not rows:
        raise ProtocolError(f"{path}: no rows")
    return np.array(rows)


def _template_subjects(path: str) -> dict:
    rows = _read(path, ",", 1, 2)
    return dict(zip(rows[:, 0].astype(np.int64).tolist(), rows[:, 1].astype(np.int64).tolist()))


def read_ijbc_1n(meta_dir: str, image_root: str, target: str = "ijbc", gallery: str = "both"
                 ) -> IdentificationProtocol:
    """``gallery``: the first set (G1/S1), the second (G2/S2) or 'both'."""
    target = target.lower()
    if target not in GALLERY_SETS:
        raise ProtocolError(f"IJB target must be one of {list(GALLERY_SETS)}, got {target!r}")
    sets = GALLERY_SETS[target]
    chosen = sets if gallery == "both" else [s for s in sets if s.lower() == gallery.lower()]
    if not chosen:
        raise ProtocolError(f"gallery set must be one of {list(sets)} or 'both', got {gallery!r}")
    gallery_t = {}
    for name in chosen:
        gallery_t.update(_template_subjects(os.path.join(meta_dir, f"{target}_1N_gallery_{name}.csv")))
    probe_t = _template_subjects(os.path.join(meta_dir, f"{target}_1N_probe_mixed.csv"))
    faces = _read(os.path.join(meta_dir, f"{target}_face_tid_mid.txt"), None, 0, 3)
    tid = faces[:, 1].astype(np.int64)
    g_rows = np.flatnonzero(np.isin(tid, list(gallery_t)))
    p_rows = np.flatnonzero(np.isin(tid, list(probe_t)))
    for kind, wanted, rows in (("gallery", gallery_t, g_rows), ("probe", probe_t, p_rows)):
        missing = set(wanted) - set(tid[rows].tolist())
        if missing:
            raise ProtocolError(f"{target}_face_tid_mid.txt has no face of {len(missing)} {kind} template(s), e.g. "
                                f"{sorted(missing)[:3]}")
    used = np.concatenate([g_rows, p_rows])  # only the faces of the chosen templates are embedded
    images, index = index_images([os.path.join(image_root, n) for n in faces[used, 0]])
    probe_template = np.array([f"t{t}" for t in tid[p_rows]])
    return IdentificationProtocol(
        f"{target}-1n-{'+'.join(chosen)}", images, index[:g_rows.size],
        np.array([str(gallery_t[t]) for t in tid[g_rows]]), index[g_rows.size:], probe_template,
        {f"t{t}": str(s) for t, s in probe_t.items()})
