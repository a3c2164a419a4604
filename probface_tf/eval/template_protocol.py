"""Template verification protocols (IJB-style): which images form each template, and which template pairs to
compare.

Templates come from either

* a list file, one ``template_id,image_path`` row per image (commas or whitespace; ``#`` comments and blank
  lines skipped). A header row naming the columns selects them, so IJB's metadata CSVs work as they are
  (``TEMPLATE_ID`` / ``template_id`` / ``tid`` and ``FILENAME`` / ``image_path`` / ``image`` / ``path``); without
  a header the first two columns are used. Relative image paths are relative to the list's folder (or to
  ``image_root``). An image may belong to several templates; it is read once.
* a folder: every sub-folder is a template named after it, holding its image files.

Pairs come from a file of ``template_id_1,template_id_2,label`` rows (label 1/0 or true/false; commas or
whitespace, e.g. IJB-C's ``ijbc_template_pair_label.txt``), with an optional header row.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

TEMPLATE_COLUMNS = ("template_id", "tid")
IMAGE_COLUMNS = ("image_path", "filename", "image", "path", "file")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
LABELS = {"1": True, "0": False, "true": True, "false": False}


class TemplateProtocolError(ValueError):
    """A template list, folder or pairs file is malformed or inconsistent; the message names file and line."""


@dataclass
class TemplateProtocol:
    name: str
    templates_source: str  # the list file or folder
    pairs_source: str
    images: list  # unique image files (absolute), in first-seen order
    row_image: np.ndarray  # int [R]: image of each (template, image) row
    row_template: np.ndarray  # str [R]: template of each row
    pair_templates: np.ndarray  # str [P, 2]
    labels: np.ndarray  # bool [P]

    def summary(self) -> dict:
        return {"name": self.name, "templates_source": self.templates_source, "pairs_source": self.pairs_source,
                "templates": int(np.unique(self.row_template).size), "images": len(self.images),
                "rows": int(self.row_template.size), "pairs": int(self.labels.size),
                "genuine": int(self.labels.sum()), "impostor": int((~self.labels).sum())}


# ---------------------------------------------------------------------------------------------- text rows


def _rows(path: str, flag: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank, non-comment line; commas if the first such line has one."""
    if not os.path.isfile(path):
        raise TemplateProtocolError(f"{flag} {path}: no such file")
    with open(path, encoding="utf-8-sig") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, start=1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise TemplateProtocolError(f"{flag} {path}: no rows")
    if "," in lines[0][1]:
        return [(n, [field.strip() for field in next(csv.reader(io.StringIO(line)))]) for n, line in lines]
    return [(n, line.split()) for n, line in lines]


def _column(header: list[str], names) -> int | None:
    lowered = [h.lower() for h in header]
    return next((lowered.index(name) for name in names if name in lowered), None)


# ---------------------------------------------------------------------------------------------- templates


def read_template_list(path: str, image_root: str | None = None) -> list[tuple[str, str, str]]:
    """``[(template_id, image file, where)]`` from a list file; ``where`` = 'file line N' for messages."""
    rows = _rows(path, "--templates")
    t_col, i_col = _column(rows[0][1], TEMPLATE_COLUMNS), _column(rows[0][1], IMAGE_COLUMNS)
    if t_col is not None or i_col is not None:  # a header row
        if t_col is None or i_col is None:
            raise TemplateProtocolError(f"{path} line {rows[0][0]}: the header {rows[0][1]} needs a template "
                                        f"column ({'/'.join(TEMPLATE_COLUMNS)}) and an image column "
                                        f"({'/'.join(IMAGE_COLUMNS)})")
        rows = rows[1:]
    else:
        t_col, i_col = 0, 1
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    out = []
    for n, fields in rows:
        where = f"{path} line {n}"
        if len(fields) <= max(t_col, i_col) or not fields[t_col]:
            raise TemplateProtocolError(f"{where}: expected template_id,image_path, got {fields}")
        if not fields[i_col]:
            raise TemplateProtocolError(f"{where}: template {fields[t_col]!r} has an empty image path")
        out.append((fields[t_col], os.path.join(root, fields[i_col]), where))
    if not out:
        raise TemplateProtocolError(f"--templates {path}: no template rows after the header")
    return out


def read_template_folder(folder: str) -> list[tuple[str, str, str]]:
    """``[(template_id, image file, where)]``: each sub-folder of ``folder`` is a template of its image files."""
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not names:
        raise TemplateProtocolError(f"--templates {folder}: no sub-folder (one per template) in the folder")
    out = []
    for name in names:
        sub = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(sub) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise TemplateProtocolError(f"--templates {folder}: template {name!r} ({sub}) is empty: no image file "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
        out += [(name, os.path.join(sub, f), sub) for f in files]
    return out


def _check_images(rows) -> None:
    missing = [(where, image) for _, image, where in rows if not os.path.isfile(image)]
    if missing:
        shown = "; ".join(f"{where}: image {image} not found" for where, image in missing[:3])
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise TemplateProtocolError(f"{len(missing)} of {len(rows)} template images are missing: {shown}{more}")


# ---------------------------------------------------------------------------------------------- pairs


def read_template_pairs(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(template ids [P, 2], labels [P], 'file line N' of each pair)."""
    rows = _rows(path, "--template_pairs")
    if len(rows[0][1]) >= 3 and rows[0][1][2].lower() not in LABELS:
        rows = rows[1:]  # a header row
    ids, labels, wheres = [], [], []
    for n, fields in rows:
        where = f"{path} line {n}"
        if len(fields) < 3 or not fields[0] or not fields[1]:
            raise TemplateProtocolError(f"{where}: expected template_id_1,template_id_2,label, got {fields}")
        if fields[2].lower() not in LABELS:
            raise TemplateProtocolError(f"{where}: label {fields[2]!r} is not 1/0 or true/false")
        ids.append(fields[:2])
        labels.append(LABELS[fields[2].lower()])
        wheres.append(where)
    if not ids:
        raise TemplateProtocolError(f"--template_pairs {path}: no pairs after the header")
    return np.asarray(ids, dtype=str).reshape(-1, 2), np.asarray(labels, bool), wheres


# ---------------------------------------------------------------------------------------------- both


def load_protocol(templates: str, pairs: str, image_root: str | None = None) -> TemplateProtocol:
    """Read and cross-check a protocol: every image exists, every pair's templates are defined, and the pairs
    hold both genuine and impostor pairs (TAR@FAR needs both)."""
    if not os.path.exists(templates):
        raise TemplateProtocolError(f"--templates {templates}: no such file or directory")
    rows = read_template_folder(templates) if os.path.isdir(templates) else read_template_list(templates, image_root)
    _check_images(rows)
    pair_ids, labels, wheres = read_template_pairs(pairs)
    known = {t for t, _, _ in rows}
    unknown = [(where, t) for where, pair in zip(wheres, pair_ids) for t in pair if t not in known]
    if unknown:
        shown = "; ".join(f"{where}: template id {str(t)!r}" for where, t in unknown[:3])
        raise TemplateProtocolError(f"{len(unknown)} template id(s) of the pairs are not in --templates "
                                    f"{templates}: {shown}")
    if labels.all() or not labels.any():
        raise TemplateProtocolError(f"--template_pairs {pairs}: TAR@FAR needs genuine (1) and impostor (0) pairs, "
                                    f"got {int(labels.sum())} genuine and {int((~labels).sum())} impostor")
    index: dict = {}  # image file -> its position, first-seen order (files are read once, in list order)
    row_image = np.asarray([index.setdefault(os.path.abspath(image), len(index)) for _, image, _ in rows])
    name = os.path.splitext(os.path.basename(os.path.normpath(templates)))[0]
    return TemplateProtocol(name, templates, pairs, list(index), row_image,
                            np.asarray([t for t, _, _ in rows], dtype=str), pair_ids, labels)
