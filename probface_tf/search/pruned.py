"""Exact FastMLS top-k by one cosine scan with bound pruning: about the cost of a cosine top-k.

The gallery is scanned in place (no copy), in blocks of rows. For each block and chunk of probes, one float32
matmul gives every cosine, as a cosine search would; everything else must cost far less than that matmul:

* ``survivors`` drops, in one compiled pass over the tile, every entry whose cosine is below the bound's cut
  (``bound.cosine_cut``: no sigma_sq of the block lifts it to the probe's running k-th score) or whose float32
  FastMLS is below that k-th score minus the float32 errors;
* the few survivors get an approximate score, FastMLS in float64 of their float32 cosine (within ``err`` of the
  exact score, ``err`` from the float32 dot-product bound), and join the probe's running candidates: its k best
  approximate scores and every one within ``2 err`` of the k-th (``Candidates``);
* at the end the candidates (about k per probe) are scored exactly, in float64 from the embeddings, and ranked.

An entry dropped anywhere scores exactly below the final k-th exact score, so the result is the exact top k in
the package's ranking order (score descending, ties by row). The first block, before any k-th score exists, and
any tile where too many entries survive, are scored whole by the all-pairs engine.
"""
from __future__ import annotations

import numpy as np

from probface_tf.fastmls_tail import normal_sums
from probface_tf.search import survivors
from probface_tf.search.bound import cosine_cut, cosine_slack, fastmls_of_cosine
from probface_tf.search.topk import (SearchError, block_scores, candidate_scores, exact_topk, kth_largest,
                                     merge_topk)

BLOCK_ROWS = 4096
SEED_ROWS = 1024  # a small first block, scored whole, gives every probe a k-th score to prune with
DENSE_FRACTION = 0.02  # above this share of surviving entries a tile is scored whole
RESCORE_CHUNK = 256  # probes whose candidates are scored exactly together (their float64 rows: ~5 MB for k = 10)
PROBE_CHUNK = 512  # with BLOCK_ROWS, an 8 MB float32 cosine tile (tiles of 1 to 8 M entries measured alike on 2 cores)


def score_floor(kth: np.ndarray, s1: np.ndarray, s_lo: float, s_hi: float, slack: float) -> np.ndarray:
    """float32 floors under the scores ``kth``, lowered by the largest error of the float32 FastMLS of
    ``survivors`` (cosine error, the rounding of s1 + s2, the division and the one-ulp log) for sums in
    [s1 + s_lo, s1 + s_hi]; generous, since it only admits a few more entries to the candidates."""
    low, high = s1 + s_lo, s1 + s_hi
    logs = np.maximum(np.abs(np.log(low)), np.abs(np.log(high)))
    error = (2 * slack + 1e-5) / low + 1e-5 * (1 + np.abs(kth)) + 1e-6 * logs
    with np.errstate(invalid="ignore"):
        return np.nextafter((kth - error).astype(np.float32), np.float32(-np.inf))


class Candidates:
    """Per probe, the k best approximate scores seen so far and every one within ``margin`` of the k-th, as
    padded rows [P, W] sorted by score (-inf / -1 pad). ``margin`` is twice the largest approximation error,
    so every entry left out scores exactly below the final k-th exact score."""

    def __init__(self, probes: int, k: int, abs_error: np.ndarray):
        self.k, self.abs_error = k, abs_error
        self.scores, self.ids = np.full((probes, k), -np.inf), np.full((probes, k), -1, np.int64)

    def margin(self, kth: np.ndarray, at=slice(None)) -> np.ndarray:
        # 2 x (error of an approximate score: cosine part + float64 rounding, relative to kth's size)
        return 1.001 * (2 * self.abs_error[at] + 4e-9 * (1 + np.abs(kth)))

    @property
    def kth(self) -> np.ndarray:
        return self.scores[:, self.k - 1]

    def threshold(self) -> np.ndarray:
        """Below this approximate score an entry can be dropped (-inf while fewer than k are known)."""
        kth = self.kth
        with np.errstate(invalid="ignore"):
            return np.where(np.isneginf(kth), -np.inf, kth - self.margin(kth))

    def add(self, at: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge candidates [len(at), w] of the probes ``at`` (-inf / -1 padded)."""
        scores = np.concatenate([self.scores[at], scores], axis=1)
        ids = np.concatenate([self.ids[at], ids], axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        kth = scores[:, self.k - 1]
        with np.errstate(invalid="ignore"):
            keep = (ids >= 0) & ((scores >= (kth - self.margin(kth, at))[:, None]) | np.isneginf(kth)[:, None])
        width = max(self.k, int(keep.sum(axis=1).max()))
        if width > self.scores.shape[1]:
            grow = width - self.scores.shape[1]
            self.scores = np.pad(self.scores, ((0, 0), (0, grow)), constant_values=-np.inf)
            self.ids = np.pad(self.ids, ((0, 0), (0, grow)), constant_values=-1)
        width = self.scores.shape[1]  # the merged rows hold the stored ones, so they are at least this wide
        self.scores[at] = np.where(keep, scores, -np.inf)[:, :width]
        self.ids[at] = np.where(keep, ids, -1)[:, :width]


def _near_kth(scores: np.ndarray, k: int, margin_of) -> np.ndarray:
    """Flat indices of each row's k best entries of a score tile and of every entry within the margin of the
    k-th: the rest cannot come within the margin of the running k-th, which is at least the tile's."""
    kth = kth_largest(scores, k)
    return np.flatnonzero(scores >= (kth - margin_of(kth))[:, None])


def _padded(probe_rows: np.ndarray, scores: np.ndarray, ids: np.ndarray, n: int):
    """Per-probe candidate lists [n, w] (padded with -inf / -1) from entries grouped by probe."""
    counts = np.bincount(probe_rows, minlength=n)
    slot = np.arange(probe_rows.size) - (np.cumsum(counts) - counts)[probe_rows]
    cand_s = np.full((n, int(counts.max())), -np.inf)
    cand_i = np.full(cand_s.shape, -1, np.int64)
    cand_s[probe_rows, slot], cand_i[probe_rows, slot] = scores, ids
    return cand_s, cand_i


class PrunedScan:
    """A gallery ``(mu [N, D], sigma_sq [N])`` prepared for exact FastMLS top-k (it keeps views, not copies)."""

    def __init__(self, mu, sigma_sq, block_rows: int = BLOCK_ROWS, seed_rows: int = SEED_ROWS,
                 dense_fraction: float = DENSE_FRACTION, probe_chunk: int = PROBE_CHUNK):
        self.mu = np.ascontiguousarray(mu, np.float32)
        self.sigma_sq = np.ascontiguousarray(np.asarray(sigma_sq, np.float32).reshape(-1))
        n = len(self.mu)
        if n == 0:
            raise SearchError("the gallery is empty: enrol identities before searching")
        if self.mu.ndim != 2 or len(self.sigma_sq) != n:
            raise SearchError(f"gallery mu {self.mu.shape} and sigma_sq {self.sigma_sq.shape} do not match")
        self.block_rows, self.dense_fraction = max(1, int(block_rows)), float(dense_fraction)
        self.probe_chunk = max(1, int(probe_chunk))
        seed = min(n, max(1, int(seed_rows)))
        self.edges = np.r_[0, np.arange(seed, n, self.block_rows), n]
        self.block_lo = np.minimum.reduceat(self.sigma_sq, self.edges[:-1]).astype(np.float64)
        self.block_hi = np.maximum.reduceat(self.sigma_sq, self.edges[:-1]).astype(np.float64)
        self.max_norm = float(np.sqrt(max(np.einsum("ij,ij->i", self.mu, self.mu).max(), 0.0)))

    def search(self, probe_mu, probe_s, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [P, k'] float64, rows [P, k']) of every probe's exact FastMLS top k, k' = min(k, N)."""
        probes = np.ascontiguousarray(probe_mu, np.float32)
        s1 = np.asarray(probe_s, np.float64).reshape(len(probes))
        s1_32 = s1.astype(np.float32)  # the float32 filter's copy; exact scores use s1
        if probes.ndim != 2 or probes.shape[1] != self.mu.shape[1]:
            raise SearchError(f"probe mu must be [P, {self.mu.shape[1]}] to match the gallery, got {probes.shape}")
        k = min(int(k), len(self.mu))
        if not len(probes) or not normal_sums(s1_32, self.sigma_sq):
            # a zero or subnormal s1 + s2: the float32 filter is undefined there, score everything
            return exact_topk(probes, s1, self.mu, self.sigma_sq, k)
        norms = np.sqrt(np.einsum("ij,ij->i", probes, probes)).max()
        slack = cosine_slack(self.mu.shape[1], 1.01 * norms * self.max_norm)
        # |approximate - exact| <= 2 slack / (s1 + s2) for FastMLS of a float32 cosine (float64 rounding apart)
        found = Candidates(len(probes), k, 2 * slack / (s1 + self.block_lo.min()))
        tile = np.empty((min(len(probes), self.probe_chunk), self.block_rows), np.float32)
        for b, (start, stop) in enumerate(zip(self.edges[:-1], self.edges[1:])):
            lo, hi = self.block_lo[b], self.block_hi[b]
            threshold = found.threshold()
            cut = np.nextafter(cosine_cut(threshold, s1, lo, hi, slack).astype(np.float32), np.float32(-np.inf))
            floor = score_floor(threshold, s1, lo, hi, slack)
            for p0 in range(0, len(probes), self.probe_chunk):
                chunk = slice(p0, min(len(probes), p0 + self.probe_chunk))
                self._scan_tile(chunk, start, stop, probes, (s1, s1_32), cut, floor, tile, found)
        parts = [merge_topk(candidate_scores("fastmls", probes[c], s1[c], self.mu, self.sigma_sq, found.ids[c]),
                            found.ids[c], k)
                 for c in (slice(p, p + RESCORE_CHUNK) for p in range(0, len(probes), RESCORE_CHUNK))]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _scan_tile(self, chunk: slice, start, stop, probes, probe_s, cut, floor, tile, found) -> None:
        """Add to the running candidates every entry of probes ``chunk`` x rows [start, stop) that can still
        enter a top k; ``probe_s`` is (float64 sigma_sq, its float32 copy)."""
        block, block_s = self.mu[start:stop], self.sigma_sq[start:stop]
        pq, ps = probes[chunk], probe_s[0][chunk]
        flat = None
        if not np.isneginf(found.kth[chunk]).any():  # else no k-th score to prune with yet: score it whole
            cos = tile[:len(pq), :stop - start]
            np.matmul(pq, block.T, out=cos)
            flat = survivors.survivors(cos, probe_s[1][chunk], block_s, cut[chunk], floor[chunk],
                                       int(self.dense_fraction * cos.size))
            if flat is not None:
                probe_rows, cols = np.divmod(flat, stop - start)
                approx = fastmls_of_cosine(cos[probe_rows, cols], ps[probe_rows] + block_s[cols])
        if flat is None:  # most entries survive: the all-pairs engine is faster than gathering them
            scores = block_scores("fastmls", pq, ps, block, block_s)
            flat = _near_kth(scores, found.k, lambda kth: found.margin(kth, chunk))
            probe_rows, cols = np.divmod(flat, stop - start)
            approx = scores.reshape(-1)[flat]
        if not flat.size:
            return
        rows, probe_rows = np.unique(probe_rows, return_inverse=True)  # merge only the probes concerned
        cand_s, cand_i = _padded(probe_rows, approx, cols + start, len(rows))
        found.add(chunk.start + rows, cand_s, cand_i)
