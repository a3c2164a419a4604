"""Exact FastMLS top-k by one cosine scan with bound pruning: about the cost of a cosine top-k.

The gallery is scanned in blocks of rows sorted by sigma_sq (descending). For each block, one float32 matmul gives the
cosines of every probe with every row, as a cosine search would; FastMLS is then computed exactly (float64) only
for the entries whose cosine can still matter: by ``bound.fastmls_upper_bound``, a row of cosine c and sigma_sq in
the block's range scores at most U(c), so an entry with U(c) below the probe's current k-th score cannot enter
its top k. The cut ``c_cut`` (smallest c with U(c) >= k-th) is found by bisection per probe and block, and the
scan keeps ``cosine >= c_cut``, usually a tiny fraction of the block. A block where too many entries survive (the
first ones, before the k-th scores settle) is scored whole by the all-pairs engine. The result is the exact top k
in the package's ranking order (score descending, ties by row).
"""
from __future__ import annotations

import numpy as np

from probface_tf import scoring
from probface_tf.search.bound import COSINE_SLACK, RELATIVE_SLACK, fastmls_of_cosine, fastmls_upper_bound
from probface_tf.search.topk import SearchError, block_candidates, block_scores, merge_topk

BLOCK_ROWS = 16384
SEED_ROWS = 1024  # a small first block, scored whole, gives every probe a k-th score to prune with
DENSE_FRACTION = 0.02  # above this share of surviving entries a block is scored whole
PROBE_CHUNK = 256  # probes scanned together: bounds the cosine block (256 x 16k float32 = 16 MB) and its masks
BISECTIONS = 40


def cosine_cut(kth: np.ndarray, probe_s: np.ndarray, s_lo: float, s_hi: float) -> np.ndarray:
    """Per probe, a cosine below which no row of sigma_sq in [s_lo, s_hi] can score >= kth (-inf: keep all)."""
    lo, hi = np.full(kth.shape, -1.0 - 1e-3), np.ones(kth.shape)
    reachable = fastmls_upper_bound(hi, probe_s, s_lo, s_hi) >= kth
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        above = fastmls_upper_bound(mid, probe_s, s_lo, s_hi) >= kth
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    return np.where(~np.isfinite(kth), -np.inf, np.where(reachable, lo, np.inf))


class PrunedScan:
    """A gallery ``(mu [N, D], sigma_sq [N])`` held sorted by sigma_sq for exact FastMLS top-k."""

    def __init__(self, mu, sigma_sq, block_rows: int = BLOCK_ROWS, seed_rows: int = SEED_ROWS,
                 dense_fraction: float = DENSE_FRACTION, probe_chunk: int = PROBE_CHUNK):
        mu = np.asarray(mu, np.float32)
        sigma_sq = np.asarray(sigma_sq, np.float32).reshape(-1)
        if len(mu) == 0:
            raise SearchError("the gallery is empty: enrol identities before searching")
        # no sorted copy of mu: each block's rows are gathered when it is scanned (16k x D floats, a small cost
        # next to its matmul), so the search adds only the order and a sorted sigma_sq to the gallery's memory
        self.order = np.argsort(-sigma_sq, kind="stable")  # sorted rows -> gallery rows
        self.mu = mu
        self.sorted_s, self.block_rows, self.seed_rows = sigma_sq[self.order], int(block_rows), int(seed_rows)
        self.dense_fraction, self.probe_chunk = float(dense_fraction), max(1, int(probe_chunk))

    def _survivors(self, keep, cos, start, rows, probes, probe_s, best_s):
        """Exact scores [P, w] (padded with -inf / row -1) of the entries that pass the bound cut and can still
        reach the k-th score: FastMLS of the float32 cosine is within ``slack`` of the exact score, so the k-th
        largest of ``approx - slack`` and the current exact top k is a lower bound of the final k-th score, and
        only entries with ``approx + slack`` at or above it are scored exactly."""
        pr, pc = np.nonzero(keep)  # row-major: grouped by probe
        mutual = probe_s[pr] + self.sorted_s[start + pc]
        approx = fastmls_of_cosine(cos[pr, pc], mutual)
        slack = 2 * COSINE_SLACK / mutual + RELATIVE_SLACK * (1 + np.abs(approx))
        counts = np.bincount(pr, minlength=len(probes))
        slot = np.arange(pr.size) - (np.cumsum(counts) - counts)[pr]
        low = np.full((len(probes), int(counts.max())), -np.inf)
        low[pr, slot] = approx - slack
        k = best_s.shape[1]
        kth = -np.partition(-np.concatenate([best_s, low], axis=1), k - 1, axis=1)[:, k - 1]
        near = approx + slack >= kth[pr]
        pr, pc = pr[near], pc[near]
        if not pr.size:
            return None, None
        exact = scoring.fastmls_scores(probes[pr].astype(np.float64), probe_s[pr],
                                       self.mu[rows[pc]].astype(np.float64),
                                       self.sorted_s[start + pc].astype(np.float64))
        counts = np.bincount(pr, minlength=len(probes))
        slot = np.arange(pr.size) - (np.cumsum(counts) - counts)[pr]
        cand_s = np.full((len(probes), int(counts.max())), -np.inf)
        cand_i = np.full(cand_s.shape, -1, np.int64)
        cand_s[pr, slot], cand_i[pr, slot] = exact, rows[pc]
        return cand_s, cand_i

    def search(self, probe_mu, probe_s, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact FastMLS top ``k`` of every probe, probes taken ``probe_chunk`` at a time (each probe's result
        does not depend on the others, so chunking only bounds the working memory)."""
        probes = np.asarray(probe_mu, np.float32)
        probe_s = np.asarray(probe_s, np.float64).reshape(len(probes))
        parts = [self._search_chunk(probes[i:i + self.probe_chunk], probe_s[i:i + self.probe_chunk], k)
                 for i in range(0, len(probes), self.probe_chunk)] or [self._search_chunk(probes, probe_s, k)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_chunk(self, probes: np.ndarray, probe_s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.order)
        k = min(k, n)
        best_s, best_i = np.full((len(probes), k), -np.inf), np.full((len(probes), k), -1, np.int64)
        seed = min(n, max(self.seed_rows, 4 * k))
        edges = np.r_[0, np.arange(seed, n, self.block_rows), n]
        for start, stop in zip(edges[:-1], edges[1:]):
            rows = self.order[start:stop]
            cut = cosine_cut(best_s[:, -1], probe_s, float(self.sorted_s[stop - 1]), float(self.sorted_s[start]))
            block_mu = self.mu[rows]
            cos = probes @ block_mu.T
            keep = cos >= np.nextafter(cut.astype(np.float32), np.float32(-np.inf))[:, None]  # rounded down
            if np.count_nonzero(keep) > self.dense_fraction * keep.size:
                block = block_scores("fastmls", probes, probe_s, block_mu, self.sorted_s[start:stop])
                cand_s, cols = block_candidates(block, k)
                cand_i = rows[cols]
            else:
                cand_s, cand_i = self._survivors(keep, cos, start, rows, probes, probe_s, best_s)
                if cand_s is None:
                    continue
            best_s, best_i = merge_topk(np.concatenate([best_s, cand_s], axis=1),
                                        np.concatenate([best_i, cand_i], axis=1), k)
        return best_s, best_i
