"""Pair scores of probabilistic face embeddings and pair uncertainty fusion.

Two faces ``(mu_i, sigma_sq_i)``, ``(mu_j, sigma_sq_j)`` are compared by

* cosine: ``<mu_i, mu_j>`` with rows re-normalised (the original ``pair_cosin_score``);
* FastMLS (1-d sigma): ``-(2(1 - cos)/(1e-10 + s_i + s_j) + log(s_i + s_j))``;
* MLS (D-dim sigma): ``-(mean_d (mu_id - mu_jd)^2/(s_id + s_jd) + mean_d log(s_id + s_jd))``;
* attention-only: the same two scores without their log term.

The formulas themselves are ``probface_tf.mls`` (one definition for NumPy and TensorFlow).

Every score has an element-wise form (pair list: row k of the first set against row k of the second, the
evaluation protocol) and a pairwise form (all-pairs matrix). The element-wise NumPy forms repeat the original's
float32 operations one for one; the pairwise forms work on row blocks on two threads, and the elementwise tail of
FastMLS is one compiled pass per block (``fastmls_tail``) so that it costs little next to the matmul it shares
with cosine. TensorFlow versions (``cosine_tf``, ``fastmls_tf``, ``mls_tf``) serve SavedModel signatures.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from probface_tf import fastmls_tail, mls

DEFAULT_BLOCK_ROWS = 1024


class ScoringError(ValueError):
    """Inputs of a score function have inconsistent shapes; the message names them."""


# --------------------------------------------------------------------------------------------------------------
# input checks


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ScoringError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _as_sigma(s, n: int, name: str, width: int | None = None) -> np.ndarray:
    """sigma_sq as [n, k]; a 1-D [n] vector is read as one column."""
    s = np.asarray(s)
    if s.ndim == 1:
        s = s[:, None]
    if s.ndim != 2 or s.shape[0] != n:
        raise ScoringError(f"{name} must have shape [{n}] or [{n}, k] to match its mu, got {s.shape}")
    if width is not None and s.shape[1] != width:
        raise ScoringError(f"{name} must have {width} column(s), got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float32)
    return s


def _same_rows(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ScoringError(f"{names}: element-wise scores need equal shapes, got {a.shape} and {b.shape}")


def _same_dim(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ScoringError(f"{names}: embedding sizes differ, got {a.shape} and {b.shape}")


# --------------------------------------------------------------------------------------------------------------
# element-wise scores (pair lists)


def cosine_scores(mu1, mu2) -> np.ndarray:
    """Cosine of row k of ``mu1`` and row k of ``mu2``; rows are re-normalised first (original behaviour)."""
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_rows(mu1, mu2, "mu1, mu2")
    x1 = mu1 / np.linalg.norm(mu1, axis=1)[:, None]
    x2 = mu2 / np.linalg.norm(mu2, axis=1)[:, None]
    return np.sum(x1 * x2, axis=1)


def fastmls_scores(mu1, s1, mu2, s2, attention_only: bool = False) -> np.ndarray:
    """FastMLS of pair k (1-d sigma_sq). ``mu`` rows are used as given (the original does not re-normalise)."""
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_rows(mu1, mu2, "mu1, mu2")
    s1 = _as_sigma(s1, mu1.shape[0], "sigma_sq1", width=1)
    s2 = _as_sigma(s2, mu2.shape[0], "sigma_sq2", width=1)
    attention, total = mls.fastmls_terms(np.sum(mu1 * mu2, axis=1), (s1 + s2).ravel())
    return -(attention if attention_only else total)


def mls_scores(mu1, s1, mu2, s2, attention_only: bool = False) -> np.ndarray:
    """D-dim MLS of pair k: means over the D dimensions, no epsilon (original ``pair_MLS_score``)."""
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_rows(mu1, mu2, "mu1, mu2")
    s1 = _as_sigma(s1, mu1.shape[0], "sigma_sq1", width=mu1.shape[1])
    s2 = _as_sigma(s2, mu2.shape[0], "sigma_sq2", width=mu2.shape[1])
    attention, total = mls.mls_terms(np.square(mu1 - mu2), s1 + s2, eps=0.0)
    return -(attention if attention_only else total)


def split_features(x) -> tuple[np.ndarray, np.ndarray]:
    """Split the original's concatenated ``[mu, sigma_sq]`` rows: width 257 or 513 is a 1-d sigma, any other
    width is split in halves."""
    x = _as_matrix(x, "features")
    width = x.shape[1]
    d = width - 1 if width in (257, 513) else width // 2
    return x[:, :d], x[:, d:]


def uncertainty_kind(sigma_sq) -> str:
    """'none', 'fastmls' (one column) or 'mls' (D columns)."""
    if sigma_sq is None:
        return "none"
    s = np.asarray(sigma_sq)
    return "fastmls" if s.ndim == 1 or s.shape[1] == 1 else "mls"


def probabilistic_scores(mu1, s1, mu2, s2, attention_only: bool = False) -> np.ndarray:
    """FastMLS for a 1-d sigma_sq, D-dim MLS otherwise."""
    if uncertainty_kind(s1) == "fastmls":
        return fastmls_scores(mu1, s1, mu2, s2, attention_only)
    return mls_scores(mu1, s1, mu2, s2, attention_only)


# --------------------------------------------------------------------------------------------------------------
# pairwise scores (all-pairs matrices)


def _run_blocks(n_rows: int, fill, block_rows: int, threads: int | None) -> None:
    """Call ``fill(start, stop)`` for row blocks of at most ``block_rows`` rows, on up to ``threads`` threads
    (NumPy ufuncs, BLAS and the compiled tail release the GIL, so blocks overlap on separate cores)."""
    threads = threads or min(2, os.cpu_count() or 1)
    if threads <= 1 or n_rows <= block_rows:
        for start in range(0, n_rows, block_rows):
            fill(start, min(start + block_rows, n_rows))
        return
    # as many blocks as a multiple of the threads, of equal size: no thread waits on a last lone block
    blocks = -(-n_rows // block_rows)
    blocks = -(-blocks // threads) * threads
    size = -(-n_rows // blocks)
    starts = range(0, n_rows, size)
    with _blas_controller().limit(limits=1, user_api="blas"):  # one BLAS thread per block thread
        list(_pool(threads).map(lambda start: fill(start, min(start + size, n_rows)), starts))


_pools: dict = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A thread pool kept across calls (making one costs about a millisecond); a forked child gets its own."""
    key = (os.getpid(), threads)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ThreadPoolExecutor(threads, thread_name_prefix="probface-scoring")
        return _pools[key]


@functools.lru_cache(maxsize=None)
def _blas_controller():
    from threadpoolctl import ThreadpoolController  # a scikit-learn dependency

    return ThreadpoolController()  # finding the loaded BLAS libraries once, not on every call


def _result_dtype(*arrays) -> np.dtype:
    return np.result_type(*[a.dtype for a in arrays], np.float32)


def cosine_pairwise(mu1, mu2, block_rows: int = DEFAULT_BLOCK_ROWS, threads: int | None = None) -> np.ndarray:
    """[N, M] cosine matrix (rows re-normalised)."""
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_dim(mu1, mu2, "mu1, mu2")
    dtype = _result_dtype(mu1, mu2)
    x1 = (mu1 / np.linalg.norm(mu1, axis=1, keepdims=True)).astype(dtype, copy=False)
    x2t = np.ascontiguousarray((mu2 / np.linalg.norm(mu2, axis=1, keepdims=True)).T, dtype=dtype)
    out = np.empty((mu1.shape[0], mu2.shape[0]), dtype)

    def fill(start, stop):
        np.matmul(x1[start:stop], x2t, out=out[start:stop])

    _run_blocks(mu1.shape[0], fill, block_rows, threads)
    return out


def fastmls_pairwise(mu1, s1, mu2, s2, attention_only: bool = False, block_rows: int = DEFAULT_BLOCK_ROWS,
                     threads: int | None = None) -> np.ndarray:
    """[N, M] FastMLS matrix: one matmul, one outer sum and one log per entry.

    The affine part ``2(cos - 1)`` is folded into the matmul by one extra column (``[2 mu1, -2] . [mu2, 1]``);
    the per-entry tail (outer sum, divide, log, subtract) then runs as one compiled pass over each row block
    (``fastmls_tail``, float32 with llvmlite installed). Otherwise NumPy runs it on small tiles that stay in cache,
    in a per-thread scratch buffer, adding the 1e-10 of the denominator only when it can change a sum in the
    working precision (it cannot once the smallest s1 + s2 exceeds ~2e-3 in float32), which saves a pass.
    """
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_dim(mu1, mu2, "mu1, mu2")
    s1 = _as_sigma(s1, mu1.shape[0], "sigma_sq1", width=1).ravel()
    s2 = _as_sigma(s2, mu2.shape[0], "sigma_sq2", width=1).ravel()
    dtype = _result_dtype(mu1, mu2, s1, s2)
    left = np.concatenate([2 * mu1, np.full((mu1.shape[0], 1), -2, mu1.dtype)], axis=1).astype(dtype, copy=False)
    right_t = np.ascontiguousarray(
        np.concatenate([mu2, np.ones((mu2.shape[0], 1), mu2.dtype)], axis=1).T, dtype=dtype)
    s1, s2 = s1.astype(dtype, copy=False), s2.astype(dtype, copy=False)
    out = np.empty((mu1.shape[0], mu2.shape[0]), dtype)
    if out.size == 0:
        return out
    eps = dtype.type(mls.MLS_EPSILON)
    if fastmls_tail.usable(s1, s2):
        tail = functools.partial(fastmls_tail.apply, eps=eps, attention_only=attention_only)
    else:
        smallest = s1.min() + s2.min()
        tail = _numpy_fastmls_tail(eps, attention_only, need_eps=smallest + eps != smallest)

    def fill(start, stop):
        block = out[start:stop]
        np.matmul(left[start:stop], right_t, out=block)  # 2(cos - 1) = -(2(1 - cos))
        tail(block, s1[start:stop], s2)

    _run_blocks(mu1.shape[0], fill, block_rows, threads)
    return out


_TILE_ROWS = 16  # rows of the elementwise tail at a time: 16 x 10k float32 = 640 KB, about an L2 cache
_local = threading.local()


def _numpy_fastmls_tail(eps, attention_only: bool, need_eps: bool):
    """The FastMLS tail as NumPy passes over tiles of ``_TILE_ROWS`` rows, in a per-thread scratch buffer:
    ``block / (eps + a_i + b_j) - log(a_i + b_j)``, the eps skipped when it cannot change any sum."""
    def tile_tail(tile, a, b):
        mutual = _scratch(len(tile), len(b), tile.dtype)
        np.add(a[:, None], b[None, :], out=mutual)
        if attention_only or need_eps:
            log_mutual = None if attention_only else np.log(mutual)
            mutual += eps
            tile /= mutual
            if log_mutual is not None:
                tile -= log_mutual
            return
        tile /= mutual
        np.log(mutual, out=mutual)
        tile -= mutual

    def tail(block, a, b):
        for r in range(0, len(block), _TILE_ROWS):
            tile_tail(block[r:r + _TILE_ROWS], a[r:r + _TILE_ROWS], b)

    return tail


def _scratch(rows: int, cols: int, dtype) -> np.ndarray:
    """A per-thread buffer reused across tiles (fresh large allocations would page-fault every block)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.dtype != dtype or buf.shape[1] != cols or buf.shape[0] < rows:
        buf = _local.buffer = np.empty((max(rows, _TILE_ROWS), cols), dtype)
    return buf[:rows]


def mls_pairwise(mu1, s1, mu2, s2, attention_only: bool = False, block_rows: int = 16, block_cols: int = 256,
                 threads: int | None = None) -> np.ndarray:
    """[N, M] D-dim MLS matrix. Each entry needs D divides and D logs: D times the work of FastMLS."""
    mu1, mu2 = _as_matrix(mu1, "mu1"), _as_matrix(mu2, "mu2")
    _same_dim(mu1, mu2, "mu1, mu2")
    s1 = _as_sigma(s1, mu1.shape[0], "sigma_sq1", width=mu1.shape[1])
    s2 = _as_sigma(s2, mu2.shape[0], "sigma_sq2", width=mu2.shape[1])
    dtype = _result_dtype(mu1, mu2, s1, s2)
    out = np.empty((mu1.shape[0], mu2.shape[0]), dtype)

    def fill(start, stop):
        a_mu, a_s = mu1[start:stop, None, :], s1[start:stop, None, :]
        for col in range(0, mu2.shape[0], block_cols):
            b_mu, b_s = mu2[None, col:col + block_cols], s2[None, col:col + block_cols]
            attention, total = mls.mls_terms(np.square(a_mu - b_mu), a_s + b_s, eps=0.0)
            np.negative(attention if attention_only else total, out=out[start:stop, col:col + block_cols])

    _run_blocks(mu1.shape[0], fill, block_rows, threads)
    return out


# --------------------------------------------------------------------------------------------------------------
# TensorFlow versions (for SavedModel signatures)


def _tf():
    import tensorflow as tf  # imported lazily: the NumPy evaluation path does not need TensorFlow

    return tf


def _tf_sigma(s, tf):
    s = tf.convert_to_tensor(s)
    return s if s.shape.rank == 2 else tf.expand_dims(s, -1)


def cosine_tf(mu1, mu2, pairwise: bool = False):
    """Cosine in TensorFlow: [N] for pairs (row k with row k), [N, M] with ``pairwise``."""
    tf = _tf()
    x1 = tf.math.l2_normalize(mu1, axis=-1)
    x2 = tf.math.l2_normalize(mu2, axis=-1)
    if pairwise:
        return tf.matmul(x1, x2, transpose_b=True)
    return tf.reduce_sum(x1 * x2, axis=-1)


def fastmls_tf(mu1, s1, mu2, s2, pairwise: bool = False, attention_only: bool = False):
    """FastMLS in TensorFlow (1-d sigma_sq of shape [N] or [N, 1]): [N] for pairs, [N, M] with ``pairwise``."""
    tf = _tf()
    s1, s2 = _tf_sigma(s1, tf), _tf_sigma(s2, tf)
    if pairwise:
        cos = tf.matmul(mu1, mu2, transpose_b=True)
        mutual = s1 + tf.transpose(s2)
    else:
        cos = tf.reduce_sum(mu1 * mu2, axis=-1)
        mutual = tf.reshape(s1 + s2, [-1])
    attention, total = mls.fastmls_terms(cos, mutual, mls.tensorflow_ops(tf))
    return -(attention if attention_only else total)


def mls_tf(mu1, s1, mu2, s2, pairwise: bool = False, attention_only: bool = False):
    """D-dim MLS in TensorFlow: [N] for pairs, [N, M] with ``pairwise``."""
    tf = _tf()
    if pairwise:
        mu1, s1 = tf.expand_dims(mu1, 1), tf.expand_dims(s1, 1)
        mu2, s2 = tf.expand_dims(mu2, 0), tf.expand_dims(s2, 0)
    attention, total = mls.mls_terms(tf.square(mu1 - mu2), s1 + s2, mls.tensorflow_ops(tf), eps=0.0)
    return -(attention if attention_only else total)
