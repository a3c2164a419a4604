"""``probface-data``: look into datasets, build ``.bin`` verification sets, render the synthetic dataset.

    probface-data inspect PATH [PATH ...] [--no-decode] [--json]
    probface-data make-bin --folder DIR --pairs pairs.txt --out set.bin [--skip-missing]
    probface-data synth --root DIR --num-identities N --images-per-identity K [--seed S] [...]

``inspect`` accepts an image folder (``root/<identity>/<image>``), an insightface ``.rec``/``.idx`` (or a folder
holding ``train.rec``), a ``<path> <label>`` list file, a ``.bin``, a folder of ``.bin`` files, or a synthetic
dataset root. It counts identities, images, pairs and items that cannot be read or decoded.

Exit status: 0 all readable; 1 a file was refused (unsafe pickle, truncated or inconsistent container, missing
path, bad arguments); 2 command-line usage error; 3 readable, but some images are not.
"""
from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl.flags import argparse_flags

from probface_tf.cli_support import fail_cleanly
from probface_tf.data.errors import DataError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
_DATASET_EXTENSIONS = (".rec", ".idx", ".txt", ".lst", ".list")


# ------------------------------------------------------------------------------------------------- inspect

def _progress(total: int, what: str):
    """A tqdm bar on a terminal, nothing otherwise; returns (callback, close)."""
    if not sys.stderr.isatty() or total < 200:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=f"decoding {what}", unit="img", leave=False)
    return (lambda _i: bar.update(1)), bar.close


def inspect_dataset(path: str, decode: bool = True) -> dict:
    """Counts of a training set (folder, RecordIO or list file); raises ``DataError`` if it is refused."""
    from probface_tf.data.dataset import open_dataset, scan_unreadable
    import numpy as np

    data = open_dataset(path, max_identities=None)
    per_class = np.bincount(data.labels, minlength=data.num_classes)
    info = {"path": path, "kind": _dataset_kind(path), "identities": int(data.num_classes),
            "images": int(data.num_images), "images_per_identity": [int(per_class.min()),
                                                                    float(np.median(per_class)),
                                                                    int(per_class.max())],
            "ignored_entries": len(data.ignored), "ignored_examples": [str(p) for p in data.ignored[:5]]}
    if decode:
        callback, close = _progress(len(data), os.path.basename(path.rstrip("/")))
        try:
            bad = scan_unreadable(data, progress=callback)
        finally:
            close()
        info["unreadable"] = len(bad)
        info["unreadable_examples"] = [message for _, message in bad[:5]]
    return info


def _dataset_kind(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in (".rec", ".idx") or os.path.isfile(os.path.join(path, "train.rec")):
        return "recordio"
    return "list" if ext in (".txt", ".lst", ".list") else "folder"


def inspect_bin(path: str, decode: bool = True) -> dict:
    """Counts of a ``.bin`` verification set; raises ``DataError`` if it is refused."""
    from probface_tf.data.binfile import bin_summary

    info = bin_summary(path, decode=decode)
    info = {"path": path, "kind": "bin", **info}
    if "image_shapes" in info:
        info["image_shapes"] = [list(s) for s in info["image_shapes"]]
    return info


def _targets(path: str) -> list[tuple[str, str]]:
    """What to inspect for ``path``: [(kind, path)], kind 'bin' or 'dataset'."""
    from probface_tf.data.synthetic import load_manifest

    if os.path.isdir(path):
        manifest = load_manifest(path)
        if manifest is not None:
            out = [("dataset", manifest.train_dir)]
            if manifest.num_heldout_identities:
                out.append(("dataset", manifest.heldout_dir))
            if manifest.num_pairs:
                out.append(("bin", manifest.bin_path))
            return out
        entries = sorted(os.listdir(path))
        bins = [os.path.join(path, e) for e in entries if e.endswith(".bin")]
        has_dirs = any(os.path.isdir(os.path.join(path, e)) for e in entries)
        if bins and not has_dirs and not os.path.isfile(os.path.join(path, "train.rec")):
            return [("bin", b) for b in bins]
        return [("dataset", path)]
    if path.lower().endswith(".bin"):
        return [("bin", path)]
    return [("dataset", path)]


def inspect_path(path: str, decode: bool = True) -> list[dict]:
    """Inspect ``path``; a refused file becomes ``{'path', 'kind', 'error'}`` instead of raising."""
    if not os.path.exists(path):
        return [{"path": path, "kind": "missing", "error": f"{path}: no such file or folder"}]
    reports = []
    for kind, target in _targets(path):
        try:
            reports.append(inspect_bin(target, decode) if kind == "bin" else inspect_dataset(target, decode))
        except DataError as exc:
            reports.append({"path": target, "kind": "bin" if kind == "bin" else _dataset_kind(target),
                            "error": str(exc)})
    return reports


def exit_status(reports: list[dict]) -> int:
    if any("error" in r for r in reports):
        return EXIT_REFUSED
    if any(r.get("unreadable") for r in reports):
        return EXIT_UNREADABLE
    return EXIT_OK


def _format_report(r: dict) -> str:
    if "error" in r:
        return f"{r['path']}: REFUSED ({r['kind']}): {r['error']}"
    if r["kind"] == "bin":
        text = (f"{r['path']}: bin  pairs {r['pairs']} (same {r['positive_pairs']}, "
                f"different {r['pairs'] - r['positive_pairs']})  images {r['images']}")
        if "image_shapes" in r:
            text += f"  sizes {[tuple(s) for s in r['image_shapes']]}"
    else:
        lo, med, hi = r["images_per_identity"]
        text = (f"{r['path']}: {r['kind']}  identities {r['identities']}  images {r['images']}  "
                f"per identity min {lo} median {med:g} max {hi}  ignored entries {r['ignored_entries']}")
    if "unreadable" in r:
        text += f"  unreadable {r['unreadable']}"
        text += "".join(f"\n  unreadable: {m}" for m in r["unreadable_examples"])
    return text


def _cmd_inspect(args) -> int:
    reports = [r for path in args.paths for r in inspect_path(path, decode=not args.no_decode)]
    if args.json:
        print(json.dumps(reports, indent=1))
    else:
        print("\n".join(_format_report(r) for r in reports))
    return exit_status(reports)


# ------------------------------------------------------------------------------------------------ make-bin

def _cmd_make_bin(args) -> int:
    from probface_tf.data.binfile import make_bin_from_folder

    result = make_bin_from_folder(args.folder, args.pairs, args.out, skip_missing=args.skip_missing)
    print(json.dumps({"out": args.out, "pairs": result["pairs"], "skipped_pairs": result["skipped"],
                      "missing_files": result["missing_files"][:20]}))
    return EXIT_OK


# --------------------------------------------------------------------------------------------------- synth

def _severity(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _cmd_synth(args) -> int:
    from probface_tf.data.synthetic import synthesize

    start = time.perf_counter()
    m = synthesize(args.root, args.num_identities, args.images_per_identity, seed=args.seed,
                   image_size=args.image_size, severity=args.severity, bin_pairs=args.bin_pairs, split=args.split,
                   image_format=args.image_format, workers=args.workers)
    summary = {"root": m.root, "train_identities": m.num_train_identities, "train_images": m.num_train_images,
               "heldout_identities": m.num_heldout_identities, "heldout_images": m.num_heldout_images,
               "pairs": m.num_pairs, "bin": m.bin_path if m.num_pairs else None,
               "seconds": round(time.perf_counter() - start, 2)}
    print(json.dumps(summary))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------- main

def build_parser():
    parser = argparse_flags.ArgumentParser(prog="probface-data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="count identities, images, pairs and unreadable items")
    p.add_argument("paths", nargs="+", metavar="PATH", help="folder, .rec/.idx, list file, .bin, or synthetic root")
    p.add_argument("--no-decode", action="store_true", help="only read the structure, do not decode images")
    p.add_argument("--json", action="store_true", help="print a JSON list of reports")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("make-bin", help="build a .bin from an aligned folder and an LFW-style pairs.txt")
    p.add_argument("--folder", required=True, help="root/<identity>/<image>")
    p.add_argument("--pairs", required=True, help="'name i j' (same) / 'name1 i name2 j' (different) lines")
    p.add_argument("--out", required=True, help="output .bin")
    p.add_argument("--skip-missing", action="store_true", help="leave out pairs whose image is missing")
    p.set_defaults(func=_cmd_make_bin)

    p = sub.add_parser("synth", help="render the synthetic identities dataset")
    p.add_argument("--root", required=True)
    p.add_argument("--num-identities", type=int, required=True)
    p.add_argument("--images-per-identity", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--severity", type=_severity, default="mixed", help="mixed, uniform, clean or a number")
    p.add_argument("--bin-pairs", type=int, default=1000)
    p.add_argument("--split", type=float, default=0.2, help="fraction of identities held out of training")
    p.add_argument("--image-format", default="jpg", choices=("jpg", "png"))
    p.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    p.set_defaults(func=_cmd_synth)
    return parser


def main(args) -> int:
    # Refused input (DataError), a system error (disk full, a file where a folder belongs) or a TensorFlow op
    # error: one line and exit 1; PROBFACE_DEBUG=1 shows the traceback.
    with fail_cleanly(f"probface-data {args.command}", EXIT_REFUSED):
        return args.func(args)


def run(argv=None) -> None:
    """Console-script entry point (exits with the command's status)."""
    app.run(main, argv=argv, flags_parser=lambda argv_: build_parser().parse_args(argv_[1:]))


if __name__ == "__main__":
    run()
