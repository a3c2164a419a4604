"""Writing the embedded demo dataset: spec checks, the worker pool, the ``.bin`` pairs and the manifest.

The images come from ``synthetic_faces`` (identities, clean rendering) and ``synthetic_degrade`` (the
degradation of recorded severity). Rendering runs in plain worker processes and the output is the same
whatever their number.

``synthesize`` writes::

    root/train/<identity>/<index>.jpg      training identities (folder index = label)
    root/heldout/<identity>/<index>.jpg    held-out identities (never in train)
    root/severity.csv                      path,identity,index,severity,split for every image
    root/synth_val.bin                     insightface .bin: pickled (list of 2P encoded images, list of P bools)
    root/synth_val_severity.npy            float32 [2P]: severity of each .bin image
    root/synth_val_pairs.txt               the .bin's pairs, LFW style ('id a b' / 'id1 a id2 b') in heldout/
    root/manifest.json                     the spec; a matching manifest makes ``synthesize`` a no-op

While rendering, ``root/synth_pending.json`` holds the spec being written. Regenerating removes exactly the
files a manifest or pending spec names; a root holding any other file is refused and left untouched.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from probface_tf.data.binfile import write_bin
from probface_tf.data.owned_files import remove_owned
from probface_tf.data.synthetic_degrade import (IMAGE_FORMATS, SEVERITY_MODES, draw_severity, encode_image,
                                                render_image)
from probface_tf.data.synthetic_faces import PAIRS_STREAM, SyntheticDataError, stream_rng

# Bump when the rendering changes: a manifest of another version is regenerated.
GENERATOR_VERSION = 2
MANIFEST, PENDING = "manifest.json", "synth_pending.json"
TRAIN_DIR, HELDOUT_DIR = "train", "heldout"
SEVERITY_CSV = "severity.csv"
BIN_NAME, BIN_SEVERITY, BIN_PAIRS = "synth_val.bin", "synth_val_severity.npy", "synth_val_pairs.txt"
LEGACY_PAIRS_CSV = "synth_val_pairs.csv"  # written by generator version 1

@dataclass(frozen=True)
class SyntheticSpec:
    num_identities: int
    images_per_identity: int
    seed: int = 0
    image_size: int = 112
    severity: str | float = "mixed"
    bin_pairs: int = 1000
    split: float = 0.2
    image_format: str = "jpg"
    version: int = GENERATOR_VERSION

    @property
    def num_heldout(self) -> int:
        return int(round(self.split * self.num_identities))

    @property
    def num_train(self) -> int:
        return self.num_identities - self.num_heldout


@dataclass(frozen=True)
class SyntheticManifest:
    """What ``synthesize`` wrote; paths are absolute."""
    root: str
    spec: SyntheticSpec
    train_dir: str
    heldout_dir: str
    severity_csv: str
    bin_path: str
    bin_severity_path: str
    bin_pairs_path: str
    num_train_identities: int
    num_heldout_identities: int
    num_train_images: int
    num_heldout_images: int
    num_pairs: int

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("root")
        for key in ("train_dir", "heldout_dir", "severity_csv", "bin_path", "bin_severity_path", "bin_pairs_path"):
            d[key] = os.path.relpath(d[key], self.root)
        return d


_INT_KEYS = ("num_identities", "images_per_identity", "seed", "image_size", "bin_pairs")


def _check_spec(spec: SyntheticSpec) -> None:
    def bad(key, value, need):
        raise SyntheticDataError(f"synthesize: {key}={value!r} {need}")
    for key in _INT_KEYS:
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            bad(key, value, "must be an integer")
    if spec.num_identities < 1:
        bad("num_identities", spec.num_identities, "must be >= 1")
    if spec.images_per_identity < 1:
        bad("images_per_identity", spec.images_per_identity, "must be >= 1")
    if spec.seed < 0:
        bad("seed", spec.seed, "must be >= 0")
    if spec.image_size < 16:
        bad("image_size", spec.image_size, "must be >= 16")
    if isinstance(spec.severity, str):
        if spec.severity not in SEVERITY_MODES:
            bad("severity", spec.severity, f"must be one of {list(SEVERITY_MODES)} or a number in [0, 1]")
    elif isinstance(spec.severity, bool) or not isinstance(spec.severity, (int, float, np.integer, np.floating)) \
            or not 0 <= spec.severity <= 1:
        bad("severity", spec.severity, f"must be one of {list(SEVERITY_MODES)} or a number in [0, 1]")
    if spec.image_format not in IMAGE_FORMATS:
        bad("image_format", spec.image_format, f"must be one of {list(IMAGE_FORMATS)}")
    if isinstance(spec.split, bool) or not isinstance(spec.split, (int, float, np.integer, np.floating)) \
            or not 0.0 <= spec.split < 1.0:
        bad("split", spec.split, "(held-out fraction of identities) must be in [0, 1)")
    if spec.bin_pairs < 0:
        bad("bin_pairs", spec.bin_pairs, "must be >= 0")
    if spec.num_train < 1:
        bad("split", spec.split, f"leaves no training identity out of {spec.num_identities}")
    if spec.bin_pairs:
        if spec.num_heldout < 2 or spec.images_per_identity < 2:
            bad("bin_pairs", spec.bin_pairs, f"needs >= 2 held-out identities (split={spec.split} of "
                f"{spec.num_identities} gives {spec.num_heldout}) with >= 2 images each "
                f"(images_per_identity={spec.images_per_identity})")
        same_max = spec.num_heldout * spec.images_per_identity * (spec.images_per_identity - 1) // 2
        if spec.bin_pairs // 2 > same_max:
            bad("bin_pairs", spec.bin_pairs, f"asks for {spec.bin_pairs // 2} distinct same-identity pairs but the "
                f"held-out images only allow {same_max}")


def _image_relpath(spec: SyntheticSpec, identity: int, index: int) -> str:
    folder = TRAIN_DIR if identity < spec.num_train else HELDOUT_DIR
    return f"{folder}/{identity:05d}/{index:03d}.{spec.image_format}"


def _render_identities(root: str, spec: SyntheticSpec, identities) -> None:
    """Render and write every image of ``identities``."""
    for identity in identities:
        folder = os.path.dirname(os.path.join(root, _image_relpath(spec, identity, 0)))
        os.makedirs(folder, exist_ok=True)
        for index in range(spec.images_per_identity):
            image, _ = render_image(spec.seed, identity, index, spec.image_size, spec.severity)
            _atomic_write(os.path.join(root, _image_relpath(spec, identity, index)),
                          encode_image(image, spec.image_format))


def _render_all(root: str, spec: SyntheticSpec, workers: int) -> None:
    """Render with ``workers`` processes, identity i going to worker i % workers.

    Workers are fresh interpreters running this module (``python -m``): unlike fork they are safe when the
    caller already runs TensorFlow threads, and unlike multiprocessing's spawn they never re-import the
    caller's main script."""
    workers = max(1, min(workers, spec.num_identities))
    if workers == 1:
        _render_identities(root, spec, range(spec.num_identities))
        return
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    spec_json = json.dumps(asdict(spec))
    procs, logs = [], []
    try:
        for k in range(workers):
            logs.append(tempfile.TemporaryFile())
            procs.append(subprocess.Popen([sys.executable, "-m", __name__, root, spec_json, str(k), str(workers)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
        failed = [(k, p.wait()) for k, p in enumerate(procs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for (k, code), log in zip(failed, logs):
        log.seek(0)
        tail = log.read()[-3000:].decode(errors="replace")
        log.close()
        if code:
            raise RuntimeError(f"synthesize: rendering worker {k} of {workers} into {root} exited with status "
                               f"{code}:\n{tail}")


def _severity_rows(spec: SyntheticSpec) -> list[tuple]:
    rows = []
    for identity in range(spec.num_identities):
        split = TRAIN_DIR if identity < spec.num_train else HELDOUT_DIR
        for index in range(spec.images_per_identity):
            s = draw_severity(spec.seed, identity, index, spec.severity)
            rows.append((_image_relpath(spec, identity, index), identity, index, s, split))
    return rows


def _draw_pairs(spec: SyntheticSpec) -> list[tuple[tuple[int, int], tuple[int, int], bool]]:
    """Balanced pairs over held-out identities, alternating same/different so every contiguous fold of the
    10-fold protocol is balanced; no pair repeats."""
    r = stream_rng(spec.seed, PAIRS_STREAM)
    ids = np.arange(spec.num_train, spec.num_identities)
    n = spec.images_per_identity
    n_same, n_diff = spec.bin_pairs // 2, spec.bin_pairs - spec.bin_pairs // 2
    same, diff, seen = [], [], set()
    while len(same) < n_same:
        i = int(r.choice(ids))
        a, b = sorted(int(x) for x in r.choice(n, 2, replace=False))
        if (i, a, b) not in seen:
            seen.add((i, a, b))
            same.append(((i, a), (i, b), True))
    while len(diff) < n_diff:
        i, j = (int(x) for x in r.choice(ids, 2, replace=False))
        a, b = int(r.integers(n)), int(r.integers(n))
        key = tuple(sorted([(i, a), (j, b)]))
        if key not in seen:  # different-identity pairs are plentiful: retries are rare
            seen.add(key)
            diff.append(((i, a), (j, b), False))
    pairs = []
    for k in range(max(n_same, n_diff)):
        pairs.extend(p[k] for p in (same, diff) if k < len(p))
    return pairs


def _write_bin(root: str, spec: SyntheticSpec, severity: dict) -> None:
    pairs = _draw_pairs(spec)
    files, sev, lines = [], [], []
    for first, second, same in pairs:
        rels = [_image_relpath(spec, *item) for item in (first, second)]
        files.append((*(os.path.join(root, rel) for rel in rels), same))
        sev.extend(severity[rel] for rel in rels)
        (name1, file1), (name2, file2) = (rel.split("/")[1:] for rel in rels)
        lines.append(f"{name1} {file1} {file2}" if same else f"{name1} {file1} {name2} {file2}")
    write_bin(os.path.join(root, BIN_NAME), files)  # the image files' bytes, unchanged
    buf = io.BytesIO()
    np.save(buf, np.asarray(sev, np.float32))
    _atomic_write(os.path.join(root, BIN_SEVERITY), buf.getvalue())
    # LFW-style pairs relative to heldout/: `probface-data make-bin` rebuilds the same .bin from them.
    _atomic_write(os.path.join(root, BIN_PAIRS), ("\n".join(lines) + "\n").encode())


def _csv_bytes(header, rows) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _manifest_for(root: str, spec: SyntheticSpec) -> SyntheticManifest:
    j = lambda name: os.path.join(root, name)  # noqa: E731
    return SyntheticManifest(
        root=root, spec=spec, train_dir=j(TRAIN_DIR), heldout_dir=j(HELDOUT_DIR), severity_csv=j(SEVERITY_CSV),
        bin_path=j(BIN_NAME), bin_severity_path=j(BIN_SEVERITY), bin_pairs_path=j(BIN_PAIRS),
        num_train_identities=spec.num_train, num_heldout_identities=spec.num_heldout,
        num_train_images=spec.num_train * spec.images_per_identity,
        num_heldout_images=spec.num_heldout * spec.images_per_identity, num_pairs=spec.bin_pairs)


def load_manifest(root: str) -> SyntheticManifest | None:
    """The manifest of a synthesized folder, or None if there is none (or it is unreadable/outdated)."""
    root = os.path.abspath(root)
    spec = _read_spec(os.path.join(root, MANIFEST))
    return None if spec is None else _manifest_for(root, spec)


def _complete(m: SyntheticManifest) -> bool:
    """Every output of the manifest is still there (one image folder per identity)."""
    files = [m.severity_csv] + ([m.bin_path, m.bin_severity_path, m.bin_pairs_path] if m.num_pairs else [])
    folders = [(m.train_dir, m.num_train_identities), (m.heldout_dir, m.num_heldout_identities)]
    return all(os.path.isfile(f) for f in files) and all(
        n == 0 or (os.path.isdir(d) and len(os.listdir(d)) == n) for d, n in folders)


def _owned_files(spec: SyntheticSpec) -> set[str]:
    """Every file a synthesis of ``spec`` writes, relative to its root."""
    images = {_image_relpath(spec, i, n) for i in range(spec.num_identities) for n in range(spec.images_per_identity)}
    extra = {LEGACY_PAIRS_CSV} if spec.version == 1 else set()
    return images | extra | {MANIFEST, PENDING, SEVERITY_CSV, BIN_NAME, BIN_SEVERITY, BIN_PAIRS}


def _read_spec(path: str) -> SyntheticSpec | None:
    try:
        with open(path) as fh:
            return SyntheticSpec(**json.load(fh)["spec"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _clear_outputs(root: str) -> None:
    """Remove a previous synthesis (the files its manifest or pending spec name) and nothing else."""
    specs = [s for s in (_read_spec(os.path.join(root, n)) for n in (MANIFEST, PENDING)) if s is not None]
    remove_owned(root, set().union(*map(_owned_files, specs)), "synthesize", SyntheticDataError)


def synthesize(root: str, num_identities: int, images_per_identity: int, seed: int = 0, image_size: int = 112,
               severity: str | float = "mixed", bin_pairs: int = 1000, split: float = 0.2,
               image_format: str = "jpg", workers: int | None = None) -> SyntheticManifest:
    """Render the dataset into ``root`` (see the module docstring) and return its manifest.

    ``split`` is the fraction of identities held out of training (the last ones); the ``.bin`` holds
    ``bin_pairs`` pairs of held-out images, half same-identity. If ``root`` already holds a dataset of the
    same spec nothing is rendered. ``workers`` (default: CPU count) only changes the speed, not the bytes."""
    spec = SyntheticSpec(num_identities, images_per_identity, seed, image_size, severity, bin_pairs, split,
                         image_format)
    _check_spec(spec)
    # NumPy scalars -> Python numbers, for the JSON manifest.
    spec = dataclasses.replace(spec, **{k: int(getattr(spec, k)) for k in _INT_KEYS},
                               severity=spec.severity if isinstance(spec.severity, str) else float(spec.severity),
                               split=float(spec.split))
    root = os.path.abspath(root)
    if os.path.exists(root) and not os.path.isdir(root):
        raise SyntheticDataError(f"synthesize: root {root} exists and is not a folder")
    existing = load_manifest(root)
    if existing is not None and existing.spec == spec and _complete(existing):
        return existing
    os.makedirs(root, exist_ok=True)
    _clear_outputs(root)
    # Written first: the files of this spec are ours to remove if the run stops half-way.
    _atomic_write(os.path.join(root, PENDING), json.dumps({"spec": asdict(spec)}).encode())
    _render_all(root, spec, workers or os.cpu_count() or 1)
    rows = _severity_rows(spec)
    _atomic_write(os.path.join(root, SEVERITY_CSV),
                  _csv_bytes(("path", "identity", "index", "severity", "split"),
                             [(p, i, n, repr(s), sp) for p, i, n, s, sp in rows]))
    if spec.bin_pairs:
        _write_bin(root, spec, {row[0]: row[3] for row in rows})
    manifest = _manifest_for(root, spec)
    # Written last: a manifest means the dataset is complete.
    _atomic_write(os.path.join(root, MANIFEST), json.dumps(manifest.to_json(), indent=1).encode())
    os.remove(os.path.join(root, PENDING))
    return manifest


def read_severity(csv_path: str) -> dict[str, tuple[int, float]]:
    """``severity.csv`` as {relative path: (identity, severity)}."""
    out = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "identity", "severity"} - set(reader.fieldnames or ())
        if missing:
            raise SyntheticDataError(f"{csv_path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                out[row["path"]] = (int(row["identity"]), float(row["severity"]))
            except (TypeError, ValueError) as exc:
                raise SyntheticDataError(f"{csv_path}:{line}: bad row {row!r}: {exc}") from exc
    return out


def _worker_main(argv: list[str]) -> None:
    root, spec_json, k, workers = argv
    spec = SyntheticSpec(**json.loads(spec_json))
    _render_identities(root, spec, range(int(k), spec.num_identities, int(workers)))


if __name__ == "__main__":
    _worker_main(sys.argv[1:])
