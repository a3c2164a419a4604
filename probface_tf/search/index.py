"""Cosine candidate retrieval with faiss, then exact FastMLS re-ranking under a provable stopping bound.

The gallery is split into sigma_sq bands (equal-count quantiles of its sigma_sq), one faiss index per band. A
narrow band keeps the bound of ``bound.fastmls_upper_bound`` tight: for random-looking embeddings FastMLS is
governed by sigma_sq as much as by the cosine, and one bound over the whole sigma_sq range would send almost
every probe to a full scan. Per round, each (probe, band) still open retrieves its top ``k_b`` rows by cosine;
all retrieved rows are scored exactly; a (probe, band) closes when the probe's k-th exact score is above the
band's bound at the smallest cosine it returned, or when the band is exhausted; open ones retry with 4x ``k_b``.

With ``kind='flat'`` (``faiss.IndexFlatIP``) the result equals exact search (same ids, same order, ties by
id). ``kind='hnsw'`` (``faiss.IndexHNSWFlat``) cannot use the bound: its neighbours are approximate, so a row
above the smallest returned cosine may still be missing, and widening until the bound closes walks the whole
graph (slower than a flat scan). It makes one graph walk per band with a fixed budget instead: ``ef_search``
candidates by cosine, ranked by the FastMLS of their float32 cosine, the few that can reach the top k re-scored
exactly. One band by default: the FastMLS top 10 lies within the cosine top ~100-200 of the whole gallery, so
more bands only multiply the walks. Recall grows with ``ef_search``; with ``ef_search`` >= a band's rows that
band is scanned whole and the result is exact.
"""
from __future__ import annotations

import numpy as np

from probface_tf.search.bound import COSINE_SLACK, RELATIVE_SLACK, fastmls_of_cosine, fastmls_upper_bound
from probface_tf.search.topk import SearchError, candidate_scores, check_score, kth_largest, merge_topk

try:
    import faiss
except ImportError:  # faiss-cpu is in the cpu/dev extras; exact search works without it
    faiss = None

KINDS = ("flat", "hnsw")
ROWS_PER_BAND = 65536
MAX_BANDS = 32
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 256  # recall@10 ~0.999 on embedding-like data of 200k rows (docs/search.md)
HNSW_BANDS = 1


def _require_faiss():
    if faiss is None:
        raise SearchError("indexed search needs faiss: pip install faiss-cpu (or use method='exact')")


def band_edges(sigma_sq: np.ndarray, bands: int | None) -> np.ndarray:
    """Row ranges of the bands over rows sorted by sigma_sq: [bands + 1] offsets."""
    n = len(sigma_sq)
    bands = bands or int(np.clip(np.ceil(n / ROWS_PER_BAND), 1, MAX_BANDS))
    return np.linspace(0, n, min(bands, n) + 1).astype(np.int64)


def check_positive(name: str, value) -> int:
    """``value`` as an int >= 1, or a SearchError naming the parameter."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SearchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def shortlist(score: str, cos, ids, probe_s, gallery_s, k: int) -> np.ndarray:
    """[P, w] gallery rows (-1 padded) among retrieved ``(cos, ids)`` that can be in the top k: the score of a
    float32 cosine is within ``slack`` of the exact one, so every entry whose ``approx + slack`` reaches the k-th
    largest ``approx - slack`` is kept, and only those need exact scores."""
    if score == "cosine":
        approx, slack = cos.astype(np.float64), np.full(cos.shape, COSINE_SLACK)
    else:
        mutual = probe_s[:, None] + gallery_s[np.maximum(ids, 0)]
        approx = fastmls_of_cosine(cos, mutual)
        slack = 2 * COSINE_SLACK / mutual + RELATIVE_SLACK * (1 + np.abs(approx))
    approx = np.where(ids < 0, -np.inf, approx)
    keep = approx + slack >= kth_largest(approx - slack, k)[:, None]
    width = max(1, int(keep.sum(axis=1).max()))
    cols = np.argsort(-approx, axis=1, kind="stable")[:, :width]
    return np.where(np.take_along_axis(keep, cols, axis=1), np.take_along_axis(ids, cols, axis=1), -1)


class BandedIndex:
    """faiss indexes over sigma_sq bands of a gallery ``(mu [N, D] unit float32, sigma_sq [N])``."""

    def __init__(self, mu, sigma_sq, kind: str = "flat", bands: int | None = None, threads: int | None = None,
                 ef_search: int = HNSW_EF_SEARCH, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION):
        """``ef_search`` (default of ``search``), ``m`` (graph links per row) and ``ef_construction``: HNSW only.
        ``bands`` defaults to one per 64k rows for 'flat' and to one for 'hnsw'."""
        _require_faiss()
        if kind not in KINDS:
            raise SearchError(f"unknown index kind {kind!r}: use one of {KINDS}")
        self.ef_search = check_positive("ef_search", ef_search)
        m, ef_construction = check_positive("m", m), check_positive("ef_construction", ef_construction)
        if bands is not None:
            bands = check_positive("bands", bands)
        mu = np.ascontiguousarray(mu, np.float32)
        sigma_sq = np.asarray(sigma_sq, np.float32).reshape(-1)
        if len(mu) == 0:
            raise SearchError("the gallery is empty: enrol identities before searching")
        if threads:
            faiss.omp_set_num_threads(int(threads))
        self.kind, self.dim = kind, mu.shape[1]
        self.mu, self.sigma_sq = mu, sigma_sq
        self.order = np.argsort(sigma_sq, kind="stable")  # band rows -> gallery rows
        edges = band_edges(sigma_sq, bands or (HNSW_BANDS if kind == "hnsw" else None))
        self.bands = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            rows = self.order[lo:hi]
            index = faiss.IndexFlatIP(self.dim) if kind == "flat" else \
                faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
            if kind == "hnsw":
                index.hnsw.efConstruction = ef_construction
            index.add(mu[rows])
            self.bands.append((rows, float(sigma_sq[rows].min()), float(sigma_sq[rows].max()), index))

    def __len__(self) -> int:
        return len(self.mu)

    def _retrieve(self, band: int, probes: np.ndarray, k: int, ef: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows of ``band`` by cosine: exact for 'flat' and for an HNSW band of at most ``ef`` rows
        (its flat storage is scanned), else one graph walk of ``efSearch = ef``."""
        rows, _, _, index = self.bands[band]
        if self.kind == "flat" or ef >= len(rows):
            flat = index if self.kind == "flat" else faiss.downcast_index(index.storage)
            cos, local = flat.search(probes, min(k, len(rows)))
        else:
            index.hnsw.efSearch = ef  # an attribute, not per-call search parameters: faiss-cpu >= 1.7 has it
            cos, local = index.search(probes, k)
        return cos, np.where(local < 0, -1, rows[np.maximum(local, 0)])

    def _walk(self, probes, probe_s, k: int, ef: int, score: str):
        """The HNSW search: per band, ``ef`` candidates by cosine, the shortlist of each re-scored exactly."""
        best_s = np.full((len(probes), k), -np.inf)
        best_i = np.full((len(probes), k), -1, np.int64)
        for band in range(len(self.bands)):
            cos, ids = self._retrieve(band, probes, ef, ef)
            ids = shortlist(score, cos, ids, probe_s, self.sigma_sq, k)
            cand = candidate_scores(score, probes, probe_s, self.mu, self.sigma_sq, ids)
            best_s, best_i = merge_topk(np.concatenate([best_s, cand], axis=1),
                                        np.concatenate([best_i, ids], axis=1), k)
        return best_s, best_i

    def _round(self, band, open_, kb, probes, probe_s, score, best_s, best_i) -> np.ndarray:
        """Retrieve ``kb`` rows of ``band`` for the probes ``open_``, merge their exact scores into the running
        top k; returns the smallest cosine retrieved per probe."""
        cos, ids = self._retrieve(band, probes[open_], kb)
        cand = candidate_scores(score, probes[open_], probe_s[open_], self.mu, self.sigma_sq, ids)
        best_s[open_], best_i[open_] = merge_topk(np.concatenate([best_s[open_], cand], axis=1),
                                                  np.concatenate([best_i[open_], ids], axis=1), best_s.shape[1])
        return cos[:, -1]

    def search(self, probe_mu, probe_s, k: int, score: str = "fastmls", ef_search: int | None = None):
        """(scores [P, k'] float64, ids [P, k'] gallery rows), k' = min(k, N), in ranking order. ``ef_search``
        (HNSW only; default the index's): candidates per band and graph walk, at least k."""
        check_score(score)
        probes = np.ascontiguousarray(probe_mu, np.float32)
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise SearchError(f"probe mu must be [P, {self.dim}] to match the gallery, got {probes.shape}")
        probe_s = np.asarray(probe_s, np.float64).reshape(len(probes))
        k = min(check_positive("k", k), len(self))
        if ef_search is not None and self.kind != "hnsw":
            raise SearchError(f"ef_search applies to kind='hnsw' only; this index is {self.kind!r} (exact)")
        if self.kind == "hnsw":
            ef = self.ef_search if ef_search is None else check_positive("ef_search", ef_search)
            return self._walk(probes, probe_s, k, max(ef, k), score)
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
