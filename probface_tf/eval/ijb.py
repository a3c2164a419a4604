"""IJB-A and IJB-C 1:1 template verification as the original's ``eval_ijb.py`` reports them.

Protocol files are read as distributed, unchanged:

* IJB-A: ``<proto>/IJB-A_11_sets/split{k}/verify_metadata_{k}.csv`` (header, then ``TEMPLATE_ID,SUBJECT_ID,
  FILE,MEDIA_ID,...`` rows) and ``verify_comparisons_{k}.csv`` (``template_1,template_2`` rows) for k = 1..10.
  An image is found by its last two path parts without extension (``frame/30000_00210``), so the aligned images
  live at ``<images>/frame/30000_00210.png`` (any image extension).
* IJB-C: ``ijbc_1N_gallery_G1.csv``, ``ijbc_1N_gallery_G2.csv`` and ``ijbc_1N_probe_mixed.csv`` (same columns)
  define the templates, ``ijbc_11_G1_G2_matches.csv`` the pairs. Aligned images are stored per subject,
  ``<images>/<SUBJECT_ID>/<img_123>.jpg`` for the metadata file ``img/123.jpg`` (the first '_' stands for '/');
  a ``NaN`` subject folder is skipped.

A template is a run of consecutive metadata rows with one template id; its label is its first row's subject.
Images missing from the image folder are left out; a template left without images scores -9999 against
anything (the original's ``force_compare``). A pair is genuine when the two templates' subjects agree.

Scores, as the original prints them (``fusion='original'``, the default): "mean" pooling of the concatenated
``[mu, sigma_sq]`` compared by negative squared distance, then for each temperature T in {1, 0.5, 2} the
uncertainty pooling (``probface_tf.fusion.fuse_templates_temperature``) compared by the distance of the fused
means and by MLS on the fused Gaussians. ``fusion='pfe'`` gives PFE's precision-weighted fusion instead
(``pfe_mls``, ``pfe_cosine``) next to mean pooling + cosine. TAR at FAR as the original's ``ROC``
(``probface_tf.eval.metrics.tar_at_far``): IJB-A the mean and standard deviation over the 10 splits at FAR 1e-3
and 1e-2, IJB-C one value (std 0) at FAR 1e-5 ... 1e-2.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from probface_tf import fusion, scoring
from probface_tf.eval import report
from probface_tf.eval.extraction import extract_files
from probface_tf.eval.metrics import tar_at_far

IJBA_FARS = (1e-3, 1e-2)
IJBC_FARS = (1e-5, 1e-4, 1e-3, 1e-2)
MISSING_SCORE = -9999.0
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
IJBC_FILES = ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv")
IJBC_PAIRS = "ijbc_11_G1_G2_matches.csv"


class IjbError(ValueError):
    """A protocol file or image folder is missing or malformed; the message names the file and line."""


@dataclass
class IjbSplit:
    """One verification set: templates (rows of images) and template pairs."""
    row_image: np.ndarray  # int [R]: index into the protocol's images
    row_template: np.ndarray  # int [R]: template id of each row
    template_label: dict  # template id -> subject id
    pairs: np.ndarray  # int [P, 2] template ids

    @property
    def labels(self) -> np.ndarray:
        subject = np.vectorize(self.template_label.__getitem__, otypes=[np.int64])
        return subject(self.pairs[:, 0]) == subject(self.pairs[:, 1])


@dataclass
class IjbProtocol:
    name: str  # 'ijba' or 'ijbc'
    images: list  # image files, in index order
    splits: list  # IjbSplit
    fars: tuple


# ---------------------------------------------------------------------------------------------- reading


def _image_files(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise IjbError(f"image folder {root}: no such directory")
    files = []
    for folder, _, names in os.walk(root):
        files += [os.path.join(folder, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise IjbError(f"image folder {root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(files)


def ijba_image_keys(files) -> dict:
    """``'parent/stem'`` -> image index."""
    return {os.path.basename(os.path.dirname(f)) + "/" + os.path.splitext(os.path.basename(f))[0]: i
            for i, f in enumerate(files)}


def ijbc_image_keys(files) -> dict:
    """``(subject, 'img/123')`` -> image index, from ``<subject>/img_123.jpg``."""
    keys = {}
    for i, f in enumerate(files):
        subject = os.path.basename(os.path.dirname(f))
        if subject == "NaN":
            continue
        if not subject.isdigit():
            raise IjbError(f"IJB-C image {f}: its folder must be the integer SUBJECT_ID (or NaN), got {subject!r}")
        keys[(int(subject), os.path.splitext(os.path.basename(f))[0].replace("_", "/", 1))] = i
    return keys


def _csv_rows(path: str, columns: int, skip_header: bool) -> list[tuple[int, list[str]]]:
    if not os.path.isfile(path):
        raise IjbError(f"protocol file {path}: no such file")
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    rows = []
    for number, line in enumerate(lines[1:] if skip_header else lines, start=2 if skip_header else 1):
        if not line.strip():
            continue
        fields = line.split(",")
        if len(fields) < columns:
            raise IjbError(f"{path}:{number}: expected at least {columns} comma-separated fields, got {line!r}")
        rows.append((number, fields))
    return rows


def _int(value: str, path: str, number: int, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise IjbError(f"{path}:{number}: {what} must be an integer, got {value!r}") from None


def read_templates(path: str, lookup) -> tuple[list, list, dict]:
    """``(row_image, row_template, template_label)`` of a metadata CSV; ``lookup(subject, file)`` -> index or None."""
    row_image, row_template, labels, current = [], [], {}, None
    for number, fields in _csv_rows(path, 3, skip_header=True):
        template = _int(fields[0], path, number, "TEMPLATE_ID")
        subject = _int(fields[1], path, number, "SUBJECT_ID")
        if template != current:  # a new run of rows; its first row gives the label
            current = template
            labels[template] = subject
        index = lookup(subject, os.path.splitext(fields[2].strip())[0])
        if index is not None:
            row_image.append(index)
            row_template.append(template)
    return row_image, row_template, labels


def read_pairs(path: str) -> np.ndarray:
    rows = _csv_rows(path, 2, skip_header=False)
    return np.array([[_int(f[0], path, n, "template id"), _int(f[1], path, n, "template id")] for n, f in rows],
                    np.int64).reshape(-1, 2)


def _split(metadata_files, pair_file, lookup) -> IjbSplit:
    row_image, row_template, labels = [], [], {}
    for path in metadata_files:
        images, templates, template_labels = read_templates(path, lookup)
        row_image += images
        row_template += templates
        labels.update(template_labels)
    pairs = read_pairs(pair_file)
    unknown = sorted(set(pairs.ravel().tolist()) - set(labels))
    if unknown:
        raise IjbError(f"{pair_file}: template ids {unknown[:5]} are in no metadata file "
                       f"({', '.join(map(os.path.basename, metadata_files))})")
    return IjbSplit(np.asarray(row_image, np.int64), np.asarray(row_template, np.int64), labels, pairs)


def load_ijba(image_root: str, proto_dir: str) -> IjbProtocol:
    """The 10 IJB-A verification splits under ``proto_dir/IJB-A_11_sets``."""
    files = _image_files(image_root)
    keys = ijba_image_keys(files)
    sets = os.path.join(proto_dir, "IJB-A_11_sets")
    splits = []
    for k in range(1, 11):
        folder = os.path.join(sets, "split%d" % k)
        splits.append(_split([os.path.join(folder, "verify_metadata_%d.csv" % k)],
                             os.path.join(folder, "verify_comparisons_%d.csv" % k), lambda s, f: keys.get(f)))
    return IjbProtocol("ijba", files, splits, IJBA_FARS)


def load_ijbc(image_root: str, proto_dir: str) -> IjbProtocol:
    """IJB-C 1:1: G1, G2 and mixed-probe templates, the G1 x G2 match list."""
    files = _image_files(image_root)
    keys = ijbc_image_keys(files)
    split = _split([os.path.join(proto_dir, name) for name in IJBC_FILES], os.path.join(proto_dir, IJBC_PAIRS),
                   lambda s, f: keys.get((s, f)))
    return IjbProtocol("ijbc", files, [split], IJBC_FARS)


def load_protocol(name: str, image_root: str, proto_dir: str) -> IjbProtocol:
    if name not in ("ijba", "ijbc"):
        raise IjbError(f"IJB protocol must be 'ijba' or 'ijbc', got {name!r}")
    return (load_ijba if name == "ijba" else load_ijbc)(image_root, proto_dir)


# ---------------------------------------------------------------------------------------------- scoring


def _neg_sq_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return -np.sum(np.square(a - b), axis=1)


def _scored(split: IjbSplit, ids: np.ndarray, score) -> np.ndarray:
    """``score(rows_1, rows_2)`` per pair over the fused templates ``ids``; MISSING_SCORE where one is empty."""
    pos = np.searchsorted(ids, split.pairs)
    found = (pos < ids.size) & (ids[np.minimum(pos, ids.size - 1)] == split.pairs)
    ok = found.all(axis=1)
    out = np.full(len(split.pairs), MISSING_SCORE)
    if ok.any():
        out[ok] = score(pos[ok, 0], pos[ok, 1])
    return out


def split_scores(mu, sigma_sq, split: IjbSplit, fusion_mode: str = "original",
                 temperatures=fusion.ORIGINAL_TEMPERATURES) -> dict:
    """{score name: [P]} for one split; ``sigma_sq`` None (no Gaussian) leaves mean pooling + cosine only."""
    mu_rows, t = np.asarray(mu, np.float64)[split.row_image], split.row_template
    s_rows = None if sigma_sq is None else np.asarray(sigma_sq, np.float64)[split.row_image]
    scores = {}
    if s_rows is not None and fusion_mode == "original":
        ids, feats = fusion.mean_concat_templates(mu_rows, s_rows, t)
        scores["mean"] = _scored(split, ids, lambda a, b: _neg_sq_distance(feats[a], feats[b]))
        for temp in temperatures:
            ids, fmu, fs = fusion.fuse_templates_temperature(mu_rows, s_rows, t, temp)
            scores["uncertainty_pooling_T%g" % temp] = _scored(split, ids,
                                                               lambda a, b: _neg_sq_distance(fmu[a], fmu[b]))
            scores["mls_T%g" % temp] = _scored(
                split, ids, lambda a, b: scoring.probabilistic_scores(fmu[a], fs[a], fmu[b], fs[b]))
        return scores
    if fusion_mode not in ("original", "pfe"):
        raise IjbError(f"template fusion must be 'original' or 'pfe', got {fusion_mode!r}")
    if s_rows is not None:
        ids, fmu, fs = fusion.fuse_templates(mu_rows, s_rows, t)
        scores["pfe_mls"] = _scored(split, ids, lambda a, b: scoring.probabilistic_scores(fmu[a], fs[a], fmu[b], fs[b]))
        scores["pfe_cosine"] = _scored(split, ids, lambda a, b: scoring.cosine_scores(fmu[a], fmu[b]))
    ids, mean_mu = fusion.mean_templates(mu_rows, t)
    scores["mean_cosine"] = _scored(split, ids, lambda a, b: scoring.cosine_scores(mean_mu[a], mean_mu[b]))
    return scores


def evaluate_features(mu, sigma_sq, protocol: IjbProtocol, fusion_mode: str = "original") -> dict:
    """{score name: {'tar': mean over splits [F], 'std': [F], 'far': mean achieved FAR [F]}}."""
    per_split = [(split_scores(mu, sigma_sq, s, fusion_mode), s.labels) for s in protocol.splits]
    table = {}
    for name in per_split[0][0]:
        tars, fars = zip(*[tar_at_far(scores[name], labels, protocol.fars)[:2] for scores, labels in per_split])
        table[name] = {"tar": np.mean(tars, axis=0).tolist(), "std": np.std(tars, axis=0).tolist(),
                       "far": np.mean(fars, axis=0).tolist()}
    return table


def result_lines(table: dict) -> list[str]:
    """The original's print-out: ``TAR: 0.91234 +- 0.01234 FAR: 0.001`` per FAR, under a '---- name' line."""
    lines = []
    for name, row in table.items():
        lines.append("---- " + name)
        lines += ["TAR: {:.5} +- {:.5} FAR: {:.5}".format(t, s, f)
                  for t, s, f in zip(row["tar"], row["std"], row["far"])]
    return lines


def run_ijb(models, protocol: IjbProtocol, out_dir: str, batch_size: int = 128, fusion_mode: str = "original",
            echo=print) -> list[dict]:
    """Extract every model's features once, print the original's TAR lines, write results.json / results.md."""
    extracted = extract_files(models, protocol.images, batch_size, "--ijb %s" % protocol.name)
    results = []
    for model, (mu, sigma_sq, _) in zip(models, extracted):
        gaussian = sigma_sq if model.has_sigma and model.gaussian else None
        table = evaluate_features(mu, gaussian, protocol, fusion_mode)
        echo("--- %s %s (%s fusion, %d split(s)) ---" % (protocol.name, model.name, fusion_mode, len(protocol.splits)))
        echo("\n".join(result_lines(table)))
        results.append({"method": model.name, "model": model.path, "fusion": fusion_mode, "table": table})
    os.makedirs(out_dir, exist_ok=True)
    report.write_json(os.path.join(out_dir, "results.json"),
                      {"protocol": protocol.name, "fars": list(protocol.fars), "methods": results})
    header = ["Method", "Score"] + ["TAR@FAR=%g" % f for f in protocol.fars]
    rows = [[r["method"], name] + ["%.4f ± %.4f" % (t, s) for t, s in zip(row["tar"], row["std"])]
            for r in results for name, row in r["table"].items()]
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write("# %s 1:1 verification (%s template fusion)\n\n%s\n" % (protocol.name.upper(), fusion_mode,
                                                                       report.markdown_table(header, rows)))
    echo("wrote %s and results.md" % os.path.join(out_dir, "results.json"))
    return results
