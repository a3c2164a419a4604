"""The stopping bound of cosine-retrieve-then-FastMLS-re-rank search.

With c the cosine and S = s1 + s2 > 0, FastMLS is ``f(c, S) = 2c/S - 2/S - log S``. It increases with c for
every S, and for a fixed c it is concave-up-then-down in S with ``df/dS = (2(1 - c) - S) / S^2``: its maximum
over an interval [S_lo, S_hi] is at ``S* = clip(2(1 - c), S_lo, S_hi)``. So ``U(c) = f(c, S*(c))`` bounds the
score of every gallery row whose cosine is at most c and whose sigma_sq lies in the interval, and U increases
with c. A cosine index that returned the rows of cosine >= c_min leaves only rows below c_min; once the k-th
exact score among the returned rows is above U(c_min), no row left out can enter the top k.
"""
from __future__ import annotations

import numpy as np

from probface_tf.mls import fastmls_terms

COSINE_SLACK = 1e-5  # float32 cosines of unit vectors (faiss) are within ~1e-6 of the exact ones
RELATIVE_SLACK = 1e-9  # the scores' own rounding and the 1e-10 of the FastMLS denominator


def fastmls_of_cosine(cosine, mutual) -> np.ndarray:
    """FastMLS from a cosine and s1 + s2 (float64), for filtering; ranking scores come from ``scoring``."""
    return -fastmls_terms(np.asarray(cosine, np.float64), np.asarray(mutual, np.float64))[1]


def fastmls_upper_bound(cosine, s1, s2_min, s2_max) -> np.ndarray:
    """Largest FastMLS any gallery row with cosine <= ``cosine`` and sigma_sq in [s2_min, s2_max] can reach
    against a probe of sigma_sq ``s1`` (broadcasting), widened by the float slack so that it is safe to compare
    with scores computed in float64 from float32 embeddings."""
    c = np.minimum(np.asarray(cosine, np.float64) + COSINE_SLACK, 1.0)
    s1 = np.asarray(s1, np.float64)
    mutual = np.clip(2.0 * (1.0 - c), s1 + s2_min, s1 + s2_max)
    bound = fastmls_of_cosine(c, mutual)
    return bound + RELATIVE_SLACK * (1.0 + np.abs(bound))
