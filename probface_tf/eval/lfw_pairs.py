"""LFW from an image folder and the standard ``pairs.txt``, as the original's ``eval_lfw.py``.

``pairs.txt`` (the LFW distribution's file, also the original's ``proto/lfw_pairs.txt``): a header ``<sets>
<n>``, then per set ``n`` matched rows ``name i j`` followed by ``n`` mismatched rows ``name1 i name2 j``.
Image ``name i`` is the file whose name without extension is ``name_%04d`` anywhere under the folder (the
original indexes the folder by base name). Sets are the folds of the original's 10-fold protocol
(``probface_tf.eval.verification.ten_fold_accuracy`` on the pairs in file order gives exactly those folds).

Images are read as files: uint8, so the ``.bin`` path's contrast stretch of float images does not happen. That
is why the original reports two LFW numbers; ``evaluate.py --bin lfw.bin`` gives the other one. Printed as the
original: ``Euclidean (cosine) accuracy: %.5f threshold: %.5f`` and ``MLS accuracy: ...`` (MLS = FastMLS for a
1-d sigma_sq, D-dim MLS otherwise, on the full sigma_sq).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from probface_tf import scoring
from probface_tf.eval import report
from probface_tf.eval.extraction import extract_files
from probface_tf.eval.verification import ten_fold_accuracy

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class LfwPairsError(ValueError):
    """pairs.txt or the image folder is malformed; the message names the file and line."""


@dataclass
class LfwPairs:
    pairs_file: str
    images: list  # image files referenced by the pairs, in first-use order
    first: np.ndarray  # int [P] index into images
    second: np.ndarray
    labels: np.ndarray  # bool [P]
    n_folds: int


def index_folder(image_dir: str) -> dict:
    """Base name without extension -> file, for every image under ``image_dir``."""
    if not os.path.isdir(image_dir):
        raise LfwPairsError(f"LFW image folder {image_dir}: no such directory")
    found = {}
    for folder, _, names in os.walk(image_dir):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found[os.path.splitext(name)[0]] = os.path.join(folder, name)
    return found


def _image_name(name: str, number: str, path: str, line: int) -> str:
    if not number.isdigit():
        raise LfwPairsError(f"{path}:{line}: image number must be an integer, got {number!r}")
    return "%s_%04d" % (name, int(number))


def read_pairs_file(path: str) -> tuple[int, list[tuple[str, str, bool]]]:
    """``(sets, [(image name 1, image name 2, same), ...])`` in file order."""
    if not os.path.isfile(path):
        raise LfwPairsError(f"pairs file {path}: no such file")
    with open(path, encoding="utf-8") as f:
        lines = [(k, line.split()) for k, line in enumerate(f.read().splitlines(), start=1) if line.strip()]
    if not lines or len(lines[0][1]) != 2 or not all(v.isdigit() for v in lines[0][1]):
        raise LfwPairsError(f"{path}:1: header must be '<sets> <pairs per half>', got {lines[0][1] if lines else ''!r}")
    sets, half = (int(v) for v in lines[0][1])
    rows = lines[1:]
    if len(rows) != 2 * sets * half:
        raise LfwPairsError(f"{path}: header says {sets} sets of {half} matched + {half} mismatched pairs "
                            f"({2 * sets * half} rows), found {len(rows)} rows")
    pairs = []
    for k, (line, fields) in enumerate(rows):
        same = k % (2 * half) < half
        if len(fields) != (3 if same else 4):
            raise LfwPairsError(f"{path}:{line}: a {'matched' if same else 'mismatched'} pair has "
                                f"{3 if same else 4} fields, got {fields!r}")
        if same:
            pairs.append((_image_name(fields[0], fields[1], path, line), _image_name(fields[0], fields[2], path, line),
                          True))
        else:
            pairs.append((_image_name(fields[0], fields[1], path, line), _image_name(fields[2], fields[3], path, line),
                          False))
    return sets, pairs


def load_lfw_pairs(image_dir: str, pairs_file: str) -> LfwPairs:
    files = index_folder(image_dir)
    sets, pairs = read_pairs_file(pairs_file)
    missing = sorted({n for a, b, _ in pairs for n in (a, b) if n not in files})
    if missing:
        raise LfwPairsError(f"{pairs_file}: {len(missing)} image(s) not under {image_dir}, e.g. {missing[:3]}")
    order = {}
    for a, b, _ in pairs:
        for name in (a, b):
            order.setdefault(name, len(order))
    first = np.array([order[a] for a, _, _ in pairs], np.int64)
    second = np.array([order[b] for _, b, _ in pairs], np.int64)
    return LfwPairs(pairs_file, [files[n] for n in order], first, second,
                    np.array([s for _, _, s in pairs], bool), sets)


def evaluate_features(mu, sigma_sq, pairs: LfwPairs) -> dict:
    """{'cosine': FoldResult, 'mls': FoldResult (with a Gaussian sigma_sq)} over the pairs' folds."""
    mu = np.asarray(mu)
    results = {"cosine": ten_fold_accuracy(scoring.cosine_scores(mu[pairs.first], mu[pairs.second]), pairs.labels,
                                           pairs.n_folds)}
    if sigma_sq is not None:
        s = np.asarray(sigma_sq)
        mls = scoring.probabilistic_scores(mu[pairs.first], s[pairs.first], mu[pairs.second], s[pairs.second])
        results["mls"] = ten_fold_accuracy(mls, pairs.labels, pairs.n_folds)
    return results


def result_lines(results: dict) -> list[str]:
    lines = ["Euclidean (cosine) accuracy: %.5f threshold: %.5f" % (results["cosine"].accuracy,
                                                                   results["cosine"].threshold)]
    if "mls" in results:
        lines.append("MLS accuracy: %.5f threshold: %.5f" % (results["mls"].accuracy, results["mls"].threshold))
    return lines


def run_lfw_pairs(models, pairs: LfwPairs, out_dir: str, batch_size: int = 128, echo=print) -> list[dict]:
    """Extract, print the original's two lines per model, write results.json."""
    extracted = extract_files(models, pairs.images, batch_size, "--lfw_pairs %s" % pairs.pairs_file)
    out = []
    for model, (mu, sigma_sq, _) in zip(models, extracted):
        gaussian = sigma_sq if model.has_sigma and model.gaussian else None
        results = evaluate_features(mu, gaussian, pairs)
        echo("--- lfw pairs %s (%d pairs, %d images) ---" % (model.name, pairs.labels.size, len(pairs.images)))
        echo("\n".join(result_lines(results)))
        out.append({"method": model.name, "model": model.path,
                    **{name: r.to_dict() for name, r in results.items()}})
    os.makedirs(out_dir, exist_ok=True)
    report.write_json(os.path.join(out_dir, "results.json"), {"lfw_pairs": pairs.pairs_file, "methods": out})
    echo("wrote %s" % os.path.join(out_dir, "results.json"))
    return out
