"""A gallery of enrolled identities: one fused Gaussian (mu, sigma_sq) per identity, searched 1:N.

Several images of one identity are fused by PFE template fusion (``probface_tf.fusion.fuse_template``:
precision-weighted mean, combined variance). The gallery keeps per identity its label, fused mu (unit, float32),
fused sigma_sq and image count, records the model it was made with (``model_id``: probes embedded by another model
are refused) and the open-set thresholds calibrated for it. Files are ``.npz`` archives with a format version,
written to a temporary file next to the target, flushed to disk and renamed over it: a crash mid-save leaves the
previous file whole.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from probface_tf.fusion import FusionError, fuse_template
from probface_tf.search.index import BandedIndex
from probface_tf.search.pruned import PrunedScan
from probface_tf.atomic import atomic_open
from probface_tf.search.topk import SearchError, check_score, exact_topk

FORMAT = "probface-gallery"
FORMAT_VERSION = 1
METHODS = ("exact", "brute", "flat", "hnsw")


class GalleryError(ValueError):
    """A gallery operation or file is invalid; the message names the identity, file or shape."""


class Gallery:
    """Enrolled identities for 1:N search. Rows are kept in enrolment order; a row's index is its search id."""

    def __init__(self, dim: int, model_id: str = ""):
        if int(dim) < 1:
            raise GalleryError(f"embedding size must be >= 1, got {dim}")
        self.dim, self.model_id = int(dim), str(model_id)
        self.labels: list[str] = []
        self.mu = np.zeros((0, self.dim), np.float32)
        self.sigma_sq = np.zeros((0,), np.float32)
        self.counts = np.zeros((0,), np.int64)
        self.thresholds: dict = {}
        self._rows: dict[str, int] = {}
        self._indexes: dict = {}

    # ---------------------------------------------------------------------------------------------- identities

    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, label) -> bool:
        return str(label) in self._rows

    def check_model(self, model_id: str) -> None:
        if self.model_id and model_id and str(model_id) != self.model_id:
            raise GalleryError(f"the gallery was made with model {self.model_id!r}; embeddings of model "
                               f"{model_id!r} cannot be searched in it or added to it")

    def _embeddings(self, mu, sigma_sq, what: str, dtype) -> tuple[np.ndarray, np.ndarray]:
        """``mu [n, D]`` (a single [D] row accepted) and one scalar ``sigma_sq`` per row, checked against the
        gallery's embedding size; ``what`` names them in the error."""
        rows = np.asarray(mu, dtype)
        rows = rows[None] if rows.ndim == 1 else rows
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise GalleryError(f"{what}: mu must be [n, {self.dim}] to match the gallery's embedding size, got "
                               f"{np.shape(mu)}")
        s = np.asarray(sigma_sq, dtype).reshape(-1)
        if s.shape[0] != rows.shape[0]:
            raise GalleryError(f"{what}: one scalar sigma_sq per row needed ({rows.shape[0]}), got shape "
                               f"{np.shape(sigma_sq)}")
        return rows, s

    def _fused(self, label: str, mu, sigma_sq) -> tuple[np.ndarray, float]:
        mu, s = self._embeddings(mu, sigma_sq, f"identity {label!r}", np.float64)
        try:
            fused_mu, fused_s = fuse_template(mu, s)
        except FusionError as exc:
            raise GalleryError(f"identity {label!r}: {exc}") from None
        return fused_mu.astype(np.float32), float(fused_s[0])

    def add(self, label, mu, sigma_sq, model_id: str = "") -> int:
        """Enrol a new identity from its images' ``mu [n, D]`` and ``sigma_sq [n]``; returns its row."""
        label = str(label)
        self.check_model(model_id)
        if label in self._rows:
            raise GalleryError(f"identity {label!r} is already enrolled: use reenrol() to replace it or "
                               f"remove() it first")
        fused_mu, fused_s = self._fused(label, mu, sigma_sq)
        self.labels.append(label)
        self.mu = np.concatenate([self.mu, fused_mu[None]])
        self.sigma_sq = np.append(self.sigma_sq, np.float32(fused_s))
        self.counts = np.append(self.counts, np.int64(len(np.atleast_2d(mu))))
        self._rows[label] = len(self.labels) - 1
        self._indexes.clear()
        return self._rows[label]

    def reenrol(self, label, mu, sigma_sq, model_id: str = "") -> int:
        """Replace an enrolled identity's template (fusion of the new images only), keeping its row."""
        label = str(label)
        self.check_model(model_id)
        row = self.row(label)
        fused_mu, fused_s = self._fused(label, mu, sigma_sq)  # checked before anything changes
        self.mu[row], self.sigma_sq[row], self.counts[row] = fused_mu, fused_s, len(np.atleast_2d(mu))
        self._indexes.clear()
        return row

    def remove(self, label) -> None:
        """Remove an identity; later rows move up by one."""
        row = self.row(label)
        del self.labels[row]
        self.mu = np.delete(self.mu, row, axis=0)
        self.sigma_sq = np.delete(self.sigma_sq, row)
        self.counts = np.delete(self.counts, row)
        self._rows = {name: i for i, name in enumerate(self.labels)}
        self._indexes.clear()

    def row(self, label) -> int:
        try:
            return self._rows[str(label)]
        except KeyError:
            raise GalleryError(f"identity {label!r} is not enrolled") from None

    # ---------------------------------------------------------------------------------------------- search

    def search(self, probe_mu, probe_sigma_sq, k: int = 5, score: str = "fastmls", method: str = "exact",
               model_id: str = "", ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores [P, k'], rows [P, k']) of each probe's best k identities, k' = min(k, len(gallery)): larger
        score first, ties by row. ``method``: 'exact' (one cosine scan with bound pruning, ``PrunedScan``),
        'brute' (every score, in blocks), 'flat' (faiss flat retrieval + bound) - all three the same result - or
        'hnsw' (faiss HNSW retrieval + FastMLS re-ranking, approximate; ``ef_search`` candidates per probe,
        default ``index.HNSW_EF_SEARCH``: larger is slower and closer to exact)."""
        check_score(score)
        self.check_model(model_id)
        if method not in METHODS:
            raise GalleryError(f"unknown search method {method!r}: use one of {METHODS}")
        if not len(self):
            raise GalleryError("the gallery is empty: enrol identities before searching")
        if ef_search is not None and method != "hnsw":
            raise GalleryError(f"ef_search applies to method 'hnsw' only, not {method!r}")
        probe_mu, probe_s = self._embeddings(probe_mu, probe_sigma_sq, "probes", np.float32)
        norm = np.linalg.norm(probe_mu, axis=1, keepdims=True)
        probe_mu = probe_mu / np.where(norm == 0, 1, norm)
        try:
            if method == "brute" or (method == "exact" and score == "cosine"):
                return exact_topk(probe_mu, probe_s, self.mu, self.sigma_sq, k, score)
            if method not in self._indexes:  # built on first use, dropped when the gallery changes
                self._indexes[method] = PrunedScan(self.mu, self.sigma_sq) if method == "exact" else \
                    BandedIndex(self.mu, self.sigma_sq, method)
            if method == "exact":
                return self._indexes[method].search(probe_mu, probe_s, k)
            return self._indexes[method].search(probe_mu, probe_s, k, score, ef_search=ef_search)
        except SearchError as exc:
            raise GalleryError(str(exc)) from None

    # ---------------------------------------------------------------------------------------------- files

    def save(self, path: str) -> None:
        """Write atomically: temporary file in the same folder, fsync, rename over ``path``."""
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "dim": self.dim, "model_id": self.model_id,
                "thresholds": self.thresholds}
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), labels=np.array(self.labels, dtype=str),
                     mu=self.mu, sigma_sq=self.sigma_sq, counts=self.counts)

    @classmethod
    def load(cls, path: str) -> "Gallery":
        if not os.path.exists(path):
            raise GalleryError(f"gallery file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in ("meta", "labels", "mu", "sigma_sq", "counts")}
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
            raise GalleryError(f"gallery file {path} is truncated or not a gallery ({type(exc).__name__}: "
                               f"{exc})") from None
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT:
            raise GalleryError(f"{path} is not a probface gallery (format {meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise GalleryError(f"gallery file {path} has format version {meta.get('version')}; this probface_tf "
                               f"reads version {FORMAT_VERSION}")
        gallery = cls(meta["dim"], meta.get("model_id", ""))
        n = len(arrays["labels"])
        if arrays["mu"].shape != (n, gallery.dim) or arrays["sigma_sq"].shape != (n,) or \
                arrays["counts"].shape != (n,):
            raise GalleryError(f"gallery file {path} is inconsistent: {n} labels, mu {arrays['mu'].shape}, "
                               f"sigma_sq {arrays['sigma_sq'].shape}, counts {arrays['counts'].shape}")
        gallery.labels = [str(x) for x in arrays["labels"]]
        gallery.mu = arrays["mu"].astype(np.float32)
        gallery.sigma_sq = arrays["sigma_sq"].astype(np.float32)
        gallery.counts = arrays["counts"].astype(np.int64)
        gallery.thresholds = meta.get("thresholds", {})
        gallery._rows = {name: i for i, name in enumerate(gallery.labels)}
        return gallery
