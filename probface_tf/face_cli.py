"""``probface``: faces from photos on the command line.

    probface verify A.jpg B.jpg --model M [--calibration FILE] [--fmr 1e-3] [--reject 0.1] [--json]
    probface embed DIR_OR_FILES... --model M --out faces.npz [--largest_face] [--batch_size 32] [--json]

``verify`` prints each photo's faces (box, detection score, sigma^2) and, for every face of A against every face
of B, cosine, FastMLS, fused sigma^2 and the decision (with a calibration: 'same' / 'different' / 'uncertain').
``embed`` writes one row per detected face: source path, face index, box, landmarks, score, mu, sigma_sq; photos
that fail (unreadable, truncated, too large, no face) are listed with the reason in the output (``skipped_*``).
A photo that fails never stops the others; the exit status is non-zero only when no photo could be processed.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from probface_tf.faces.photo import PHOTO_EXTENSIONS, PhotoError

PROGRAM = "probface"
USAGE = __doc__.split("\n\n")[1]


def _define_flags():
    from absl import flags

    fv = flags.FlagValues()  # private: importing this module adds nothing to a caller's absl FLAGS
    flags.DEFINE_string("model", None, ".keras file, SavedModel / export base, run directory or TF1 checkpoint",
                        flag_values=fv)
    flags.DEFINE_string("config", None, "config file (TF1 checkpoints: architecture and preprocessing)", flag_values=fv)
    flags.DEFINE_string("calibration", None, "calibration.json written by evaluate.py (default: the one stored in "
                        "the export, if any)", flag_values=fv)
    flags.DEFINE_float("fmr", 1e-3, "false-match rate of the decision threshold (1e-2, 1e-3 or 1e-4)", flag_values=fv)
    flags.DEFINE_float("reject", 0.0, "answer 'uncertain' for pairs among this riskiest fraction (0.1, 0.2, 0.3)",
                       flag_values=fv)
    flags.DEFINE_string("out", None, "embed: output .npz", flag_values=fv)
    flags.DEFINE_boolean("largest_face", False, "only the largest face of each photo", flag_values=fv)
    flags.DEFINE_integer("batch_size", 32, "aligned faces per forward pass", flag_values=fv)
    flags.DEFINE_boolean("json", False, "print JSON instead of text", flag_values=fv)
    flags.DEFINE_boolean("progress", True, "embed: a progress bar on a terminal", flag_values=fv)
    return fv


def _dashed(argv):
    return [a.replace("--largest-face", "--largest_face").replace("--batch-size", "--batch_size") for a in argv]


def list_photos(paths) -> list[str]:
    """Files as given, folders searched recursively for image files (sorted)."""
    photos = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                photos += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(PHOTO_EXTENSIONS)]
        else:
            photos.append(path)
    return photos


def _detect_all(model, photos, largest_face: bool, timings: dict, progress: bool):
    from tqdm import tqdm

    faces, skipped = [], []
    bar = tqdm(photos, desc="photos", unit="photo", disable=not (progress and sys.stderr.isatty()))
    for path in bar:
        try:
            found = model.detect(path, largest_face, name=path, timings=timings)
        except PhotoError as exc:
            skipped.append((path, str(exc)))
            continue
        if not found:
            skipped.append((path, f"{path}: no face found"))
        faces += [(path, i, face) for i, face in enumerate(found)]
    return faces, skipped


def embed_photos(model, photos, largest_face: bool = False, progress: bool = False) -> tuple[dict, list, dict]:
    """(arrays for faces.npz, [(path, reason)] of skipped photos, seconds per stage: decode, detect, align,
    preprocess, model). Faces are embedded in batches of ``model.batch_size``."""
    timings = dict.fromkeys(("decode", "detect", "align", "preprocess", "model"), 0.0)
    faces, skipped = _detect_all(model, photos, largest_face, timings, progress)
    model.embed_faces([f for _, _, f in faces], timings)
    dim = faces[0][2].mu.shape[-1] if faces else 0
    arrays = {"path": np.array([p for p, _, _ in faces], dtype=str), "face_index": np.array([i for _, i, _ in faces]),
              "box": np.array([f.box for *_, f in faces]).reshape(-1, 4),
              "landmarks": np.array([f.landmarks for *_, f in faces]).reshape(-1, 5, 2),
              "score": np.array([f.score for *_, f in faces]),
              "mu": np.array([f.mu for *_, f in faces], np.float32).reshape(len(faces), dim),
              "skipped_path": np.array([p for p, _ in skipped], dtype=str),
              "skipped_reason": np.array([r for _, r in skipped], dtype=str)}
    if model.has_sigma:
        width = faces[0][2].sigma_sq.size if faces else 1
        arrays["sigma_sq"] = np.array([f.sigma_sq for *_, f in faces], np.float32).reshape(len(faces), width)
    return arrays, skipped, timings


def _face_line(face) -> str:
    x1, y1, x2, y2 = face.box
    sigma = "" if face.sigma_sq is None else f"  sigma_sq {float(np.mean(face.sigma_sq)):.4g}"
    return f"  face box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})  detection {face.score:.3f}{sigma}"


def _comparison_line(i: int, j: int, result) -> str:
    parts = [f"cosine {result.cosine:.4f}"]
    if result.fastmls is not None:
        parts += [f"FastMLS {result.fastmls:.4f}", f"fused sigma_sq {result.fused_sigma_sq:.4g}"]
    if result.decision:
        parts.append(f"-> {result.decision.upper()} (FMR {result.fmr:g}, threshold {result.threshold:.4f}"
                     + (f", reject {result.reject:g})" if result.reject else ")"))
    return f"A face {i} vs B face {j}: " + ", ".join(parts)


def verify(model, a: str, b: str, fmr: float, reject: float, largest_face: bool = False) -> tuple[dict, list[str]]:
    """(JSON-ready result, text lines) of ``probface verify``; raises PhotoError for an unreadable photo."""
    photos = {"A": model.embed_photo(a, largest_face, name=a), "B": model.embed_photo(b, largest_face, name=b)}
    lines, result = [], {"photos": {}, "comparisons": []}
    for key, path in (("A", a), ("B", b)):
        faces = photos[key]
        lines.append(f"{key}: {path}: {len(faces)} face(s)" + ("" if faces else " - nothing to compare"))
        lines += [_face_line(f) for f in faces]
        result["photos"][key] = {"path": path, "faces": [f.to_dict() for f in faces]}
    for i, fa in enumerate(photos["A"]):
        for j, fb in enumerate(photos["B"]):
            comparison = model.compare(fa, fb, fmr, reject)
            lines.append(_comparison_line(i, j, comparison))
            result["comparisons"].append({"a": i, "b": j, **comparison.to_dict()})
    if model.calibration is None and result["comparisons"]:
        lines.append("note: no calibration (--calibration FILE from evaluate.py): scores only, no decision")
    return result, lines


def _run_verify(model, fv, files) -> int:
    if len(files) != 2:
        raise PhotoError(f"verify takes two photos, got {len(files)}: {files}")
    result, lines = verify(model, files[0], files[1], fv.fmr, fv.reject, fv.largest_face)
    print(json.dumps(result, indent=2) if fv.json else "\n".join(lines))
    return 0 if result["comparisons"] else 1


def _run_embed(model, fv, files) -> int:
    if not fv.out:
        raise PhotoError("embed needs --out FILE.npz")
    photos = list_photos(files)
    if not photos:
        raise PhotoError(f"no photos in {files}")
    arrays, skipped, timings = embed_photos(model, photos, fv.largest_face, fv.progress)
    for _, reason in skipped:
        print(f"{PROGRAM}: skipped {reason}", file=sys.stderr)
    if len(arrays["mu"]):
        os.makedirs(os.path.dirname(os.path.abspath(fv.out)), exist_ok=True)
        np.savez(fv.out, **arrays)
    summary = {"photos": len(photos), "faces": int(len(arrays["mu"])), "skipped": len(skipped),
               "out": fv.out if len(arrays["mu"]) else None, "seconds": {k: round(v, 4) for k, v in timings.items()}}
    print(json.dumps(summary) if fv.json else
          f"{summary['faces']} face(s) from {len(photos) - len(skipped)} of {len(photos)} photo(s) -> {summary['out']}")
    return 0 if len(arrays["mu"]) else 1


def main(argv=None) -> int:
    from absl import flags

    fv = _define_flags()
    argv = _dashed(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("usage:\n" + USAGE + "\n\n" + fv.get_help())
        return 0
    try:
        command, *files = fv([PROGRAM, *argv])[1:] or [None]
        if command not in ("verify", "embed"):
            raise flags.Error(f"the first argument must be 'verify' or 'embed', got {command!r}")
        if not fv.model:
            raise flags.Error("--model is required")
    except flags.Error as exc:
        print(f"{PROGRAM}: error: {exc}\nusage:\n{USAGE}", file=sys.stderr)
        return 2
    from probface_tf.loading import load

    try:
        model = load(fv.model, calibration=fv.calibration, config=fv.config, batch_size=fv.batch_size)
        return (_run_verify if command == "verify" else _run_embed)(model, fv, files)
    except ValueError as exc:  # PhotoError, ModelLoadError, CalibrationError: the message names the input
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, PhotoError) else 2


def run() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())


if __name__ == "__main__":
    run()
