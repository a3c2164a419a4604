"""Cosine candidate retrieval with faiss, then exact FastMLS re-ranking under a provable stopping bound.

The gallery is split into sigma_sq bands (equal-count quantiles of its sigma_sq), one faiss index per band. A
narrow band keeps the bound of ``bound.fastmls_upper_bound`` tight: for random-looking embeddings FastMLS is
governed by sigma_sq as much as by the cosine, and one bound over the whole sigma_sq range would send almost
every probe to a full scan. Per round, each (probe, band) still open retrieves its top ``k_b`` rows by cosine;
all retrieved rows are scored exactly; a (probe, band) closes when the probe's k-th exact score is above the
band's bound at the smallest cosine it returned, or when the band is exhausted; open ones retry with 4x ``k_b``.

With ``kind='flat'`` (``faiss.IndexFlatIP``) the result equals exact search (same ids, same order, ties by
id). ``kind='hnsw'`` (``faiss.IndexHNSWFlat``) uses the same loop on approximate neighbours: much faster on
large galleries, recall measured by ``benchmarks/search.py``.
"""
from __future__ import annotations

import numpy as np

from probface_tf.search.bound import fastmls_upper_bound
from probface_tf.search.topk import SearchError, candidate_scores, check_score, merge_topk

try:
    import faiss
except ImportError:  # faiss-cpu is in the cpu/dev extras; exact search works without it
    faiss = None

KINDS = ("flat", "hnsw")
ROWS_PER_BAND = 65536
MAX_BANDS = 32
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def _require_faiss():
    if faiss is None:
        raise SearchError("indexed search needs faiss: pip install faiss-cpu (or use method='exact')")


def band_edges(sigma_sq: np.ndarray, bands: int | None) -> np.ndarray:
    """Row ranges of the bands over rows sorted by sigma_sq: [bands + 1] offsets."""
    n = len(sigma_sq)
    bands = bands or int(np.clip(np.ceil(n / ROWS_PER_BAND), 1, MAX_BANDS))
    return np.linspace(0, n, min(bands, n) + 1).astype(np.int64)


class BandedIndex:
    """faiss indexes over sigma_sq bands of a gallery ``(mu [N, D] unit float32, sigma_sq [N])``."""

    def __init__(self, mu, sigma_sq, kind: str = "flat", bands: int | None = None, threads: int | None = None):
        _require_faiss()
        if kind not in KINDS:
            raise SearchError(f"unknown index kind {kind!r}: use one of {KINDS}")
        mu = np.ascontiguousarray(mu, np.float32)
        sigma_sq = np.asarray(sigma_sq, np.float32).reshape(-1)
        if len(mu) == 0:
            raise SearchError("the gallery is empty: enrol identities before searching")
        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.kind, self.dim = kind, mu.shape[1]
        self.mu, self.sigma_sq = mu, sigma_sq
        self.order = np.argsort(sigma_sq, kind="stable")  # band rows -> gallery rows
        edges = band_edges(sigma_sq, bands)
        self.bands = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows = self.order[lo:hi]
            index = faiss.IndexFlatIP(self.dim) if kind == "flat" else \
                faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            if kind == "hnsw":
                index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.add(mu[rows])
            self.bands.append((rows, float(sigma_sq[rows].min()), float(sigma_sq[rows].max()), index))

    def __len__(self) -> int:
        return len(self.mu)

    def _retrieve(self, band: int, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, _, _, index = self.bands[band]
        if self.kind == "hnsw":
            index.hnsw.efSearch = max(4 * k, 128)  # recall against speed; k = rows asked of this band
        cos, local = index.search(probes, k)
        return cos, np.where(local < 0, -1, rows[np.maximum(local, 0)])

    def _round(self, band, open_, kb, probes, probe_s, score, best_s, best_i) -> np.ndarray:
        """Retrieve ``kb`` rows of ``band`` for the probes ``open_``, merge their exact scores into the running
        top k; returns the smallest cosine retrieved per probe."""
        cos, ids = self._retrieve(band, probes[open_], kb)
        cand = candidate_scores(score, probes[open_], probe_s[open_], self.mu, self.sigma_sq, ids)
        best_s[open_], best_i[open_] = merge_topk(np.concatenate([best_s[open_], cand], axis=1),
                                                  np.concatenate([best_i[open_], ids], axis=1), best_s.shape[1])
        return cos[:, -1]

    def search(self, probe_mu, probe_s, k: int, score: str = "fastmls"):
        """(scores [P, k'] float64, ids [P, k'] gallery rows), k' = min(k, N), in ranking order."""
        check_score(score)
        probes = np.ascontiguousarray(probe_mu, np.float32)
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise SearchError(f"probe mu must be [P, {self.dim}] to match the gallery, got {probes.shape}")
        probe_s = np.asarray(probe_s, np.float64).reshape(len(probes))
        k = min(k, len(self))
        best_s = np.full((len(probes), k), -np.inf)
        best_i = np.full((len(probes), k), -1, np.int64)
        everyone = np.arange(len(probes))
        first = [min(len(rows), k if score == "cosine" else max(4 * k, 16)) for rows, *_ in self.bands]
        # one pass over every band first, so that each band's stopping test sees the probe's global k-th score
        lowest = [self._round(b, everyone, first[b], probes, probe_s, score, best_s, best_i)
                  for b in range(len(self.bands))]
        if score == "cosine":
            return best_s, best_i
        for band, (rows, s_lo, s_hi, _) in enumerate(self.bands):
            open_, kb, c_min = everyone, first[band], lowest[band]
            while kb < len(rows):
                still = ~(best_s[open_, -1] > fastmls_upper_bound(c_min, probe_s[open_], s_lo, s_hi))
                open_ = open_[still]
                if not open_.size:
                    break
                kb = min(len(rows), 4 * kb)
                c_min = self._round(band, open_, kb, probes, probe_s, score, best_s, best_i)
        return best_s, best_i
