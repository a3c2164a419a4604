"""Checks an evaluation runs before extracting any feature: where it writes, and that every ``.bin`` can give
the metrics it is asked for. Extraction is the long part; nothing it computes should be lost to a bad ``--out``
or a set whose metrics cannot be computed."""
from __future__ import annotations

import os

from probface_tf.data.binfile import read_bin


class EvaluationInputError(ValueError):
    """An evaluation's output folder or input set cannot be used; the message names the flag and the path."""


RESULT_FILES = ("results.json", "results.md")


def check_out_dir(out: str) -> None:
    """``out`` is (or can become) a folder that holds no earlier evaluation's results."""
    probe = os.path.abspath(out)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise EvaluationInputError(f"--out {out}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise EvaluationInputError(f"--out {out}: {probe} is not writable")
    earlier = [n for n in RESULT_FILES if os.path.exists(os.path.join(out, n))]
    if earlier:
        raise EvaluationInputError(f"--out {out} already holds {', '.join(earlier)} of an earlier evaluation; give "
                                   "a new --out folder (or move the old results away) so neither is overwritten")


def check_both_classes(paths) -> None:
    """Every ``.bin`` has same-identity and different-identity pairs: accuracy, AUERC and TAR@FAR need both."""
    for path in paths:
        issame = read_bin(path).issame
        same = int(issame.sum())
        if same in (0, len(issame)):
            kind = "same-identity" if same else "different-identity"
            raise EvaluationInputError(f"{path}: all {len(issame)} pairs are {kind} pairs; the verification "
                                       "metrics (10-fold accuracy, error-versus-reject, TAR@FAR) need both same- "
                                       "and different-identity pairs")
