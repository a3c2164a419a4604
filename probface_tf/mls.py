"""The mutual likelihood score, written once for every backend.

For two faces with unit ``mu`` and variances ``s``, with the fused variance ``m = s_i + s_j``:

* FastMLS (1-d sigma, ProbFace): attention ``A = 2(1 - cos) / (eps + m)``, ``L = A + log(m)``;
* MLS (D-dim sigma, PFE): ``A = mean_d (mu_id - mu_jd)^2 / (eps + m_d)``, ``L = A + mean_d log(m_d)``.

``L`` is the negative log-likelihood that the two faces share one identity up to constants: the training loss
averages it over positive pairs, and a pair's score is ``-L`` (``-A`` without the log term). The original adds
``eps = 1e-10`` inside the divisions of its losses and of FastMLS scoring, but not in its D-dim pair score
(``pair_MLS_score``), hence the ``eps`` argument of ``mls_terms``.

The arithmetic is plain operators, so the same lines run on NumPy arrays and TensorFlow tensors; only the log
and the mean over the last axis are passed in (``NUMPY`` / ``tensorflow_ops()``). Optimised forms of the FastMLS
tail (``scoring``'s tiled NumPy passes, ``fastmls_tail``'s compiled pass) are tested against ``fastmls_terms``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

MLS_EPSILON = 1e-10  # added to the fused variance in the divisions only (never inside the log), as the original


class Ops(NamedTuple):
    """The two operations the formulas need beyond arithmetic operators."""
    log: Callable
    mean_last: Callable  # mean over the last axis


NUMPY = Ops(log=np.log, mean_last=lambda x: np.mean(x, axis=-1))


def tensorflow_ops(tf) -> Ops:
    """The TensorFlow operations (the module is passed in so NumPy-only callers never import TensorFlow)."""
    return Ops(log=tf.math.log, mean_last=lambda x: tf.reduce_mean(x, axis=-1))


def fastmls_terms(cos, mutual, ops: Ops = NUMPY):
    """``(A, L)`` of FastMLS from the cosine and the fused variance ``s_i + s_j`` (same shapes)."""
    attention = 2 * (1 - cos) / (MLS_EPSILON + mutual)
    return attention, attention + ops.log(mutual)


def mls_terms(diff_sq, mutual, ops: Ops = NUMPY, eps: float = MLS_EPSILON):
    """``(A, L)`` of D-dim MLS from ``(mu_i - mu_j)^2`` and ``s_i + s_j`` (shape [..., D]; means over D)."""
    attention = ops.mean_last(diff_sq / (eps + mutual))
    return attention, attention + ops.mean_last(ops.log(mutual))
