"""Exact top-k of probes against a gallery, by FastMLS or cosine, in gallery blocks of bounded memory.

Ranking order everywhere in this package: larger score first, equal scores by smaller gallery row. The scores
come from ``probface_tf.scoring`` (all-pairs engine for whole blocks, element-wise form for candidate lists), in
float64 so that the two paths agree far below any gap two real embeddings produce.
"""
from __future__ import annotations

import numpy as np

from probface_tf import scoring

SCORES = ("fastmls", "cosine")
BLOCK_ENTRIES = 1 << 23  # probe x gallery scores held at once (64 MB of float64)


class SearchError(ValueError):
    """A search cannot run as asked (shapes, empty gallery, unknown score); the message says which."""


def check_score(score: str) -> str:
    if score not in SCORES:
        raise SearchError(f"unknown score {score!r}: use one of {SCORES}")
    return score


def rank_order(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per-row permutation putting [P, n] candidates in ranking order (score descending, id ascending)."""
    by_id = np.argsort(ids, axis=1, kind="stable")
    by_score = np.argsort(-np.take_along_axis(scores, by_id, axis=1), axis=1, kind="stable")
    return np.take_along_axis(by_id, by_score, axis=1)


def merge_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row of [P, n] candidates, duplicates of one id kept once (they carry equal scores)."""
    order = rank_order(scores, ids)
    scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    repeat = np.zeros(ids.shape, bool)
    repeat[:, 1:] = (ids[:, 1:] == ids[:, :-1]) & (ids[:, 1:] >= 0)
    if repeat.any():
        scores = np.where(repeat, -np.inf, scores)
        ids = np.where(repeat, -1, ids)
        order = rank_order(scores, np.where(ids < 0, np.iinfo(np.int64).max, ids))
        scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
    return scores[:, :k], ids[:, :k]


def block_scores(score: str, probe_mu, probe_s, gallery_mu, gallery_s) -> np.ndarray:
    """[P, G] float64 scores of every probe against every gallery row."""
    pm, gm = np.asarray(probe_mu, np.float64), np.asarray(gallery_mu, np.float64)
    if score == "cosine":
        return scoring.cosine_pairwise(pm, gm)
    return scoring.fastmls_pairwise(pm, np.asarray(probe_s, np.float64), gm, np.asarray(gallery_s, np.float64))


def candidate_scores(score: str, probe_mu, probe_s, gallery_mu, gallery_s, ids: np.ndarray) -> np.ndarray:
    """[P, n] float64 scores of probe p against gallery rows ``ids[p]`` (ids < 0: -inf)."""
    p, n = ids.shape
    safe = np.where(ids < 0, 0, ids).ravel()
    left = np.repeat(np.asarray(probe_mu, np.float64), n, axis=0)
    right = np.asarray(gallery_mu[safe], np.float64)
    if score == "cosine":
        flat = scoring.cosine_scores(left, right)
    else:
        flat = scoring.fastmls_scores(left, np.repeat(np.asarray(probe_s, np.float64), n),
                                      right, np.asarray(gallery_s[safe], np.float64))
    return np.where(ids < 0, -np.inf, flat.reshape(p, n))


def kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """[P] the k-th largest entry of each row of [P, n] scores (the n-th when a row holds fewer than k)."""
    k = min(k, scores.shape[1])
    return -np.partition(-scores, k - 1, axis=1)[:, k - 1]


def block_candidates(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, columns) holding each row's k best entries of a [P, n] score block and every entry tied with
    the k-th (np.argpartition's cut is arbitrary among ties, and ties are ordered by row later)."""
    width = int((block >= kth_largest(block, k)[:, None]).sum(axis=1).max())
    cols = np.argpartition(-block, width - 1, axis=1)[:, :width]
    return np.take_along_axis(block, cols, axis=1), cols


def exact_topk(probe_mu, probe_s, gallery_mu, gallery_s, k: int, score: str = "fastmls",
               block_entries: int = BLOCK_ENTRIES) -> tuple[np.ndarray, np.ndarray]:
    """(scores [P, k'], ids [P, k']) with k' = min(k, G): brute force over gallery blocks, running top-k merge."""
    check_score(score)
    n = len(gallery_mu)
    if n == 0:
        raise SearchError("the gallery is empty: enrol identities before searching")
    if k < 1:
        raise SearchError(f"k must be >= 1, got {k}")
    k = min(k, n)
    best_s = np.full((len(probe_mu), 0), -np.inf)
    best_i = np.zeros((len(probe_mu), 0), np.int64)
    gallery_block = max(256, block_entries // max(1, len(probe_mu)))
    for start in range(0, n, gallery_block):
        stop = min(n, start + gallery_block)
        block = block_scores(score, probe_mu, probe_s, gallery_mu[start:stop], gallery_s[start:stop])
        cand_s, cols = block_candidates(block, k)
        cand_i = cols + start
        best_s, best_i = merge_topk(np.concatenate([best_s, cand_s], axis=1),
                                    np.concatenate([best_i, cand_i], axis=1), k)
    return best_s, best_i
