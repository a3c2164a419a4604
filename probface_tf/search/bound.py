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

from probface_tf.mls import MLS_EPSILON, fastmls_terms

RELATIVE_SLACK = 1e-9  # the scores' own rounding and the 1e-10 of the FastMLS denominator
_UNIT_ROUNDOFF = 2.0 ** -24


def cosine_slack(dim: int, norm_product: float = 1.0) -> float:
    """Largest error of a float32 dot product of length ``dim`` (any summation order, FMA or not) against the
    exact one, for vectors whose norms multiply to at most ``norm_product``: gamma_dim * sum |x_i y_i|
    (Higham's bound) with the sum bounded by Cauchy-Schwarz."""
    gamma = dim * _UNIT_ROUNDOFF / (1 - dim * _UNIT_ROUNDOFF)
    return gamma * float(norm_product)


COSINE_SLACK = cosine_slack(512)  # faiss's float32 cosines of unit vectors of up to 512 dimensions


def cosine_cut(kth, s1, s_lo: float, s_hi: float, slack: float) -> np.ndarray:
    """Per probe, a cosine such that a row whose float32 cosine (within ``slack`` of the exact one) is below it
    and whose sigma_sq lies in [s_lo, s_hi] scores strictly below ``kth``: -inf where ``kth`` is -inf.

    The bound U(c) = f(c, S*(c)) without the denominator's epsilon is inverted in closed form on its three
    pieces: S* = s1 + s_hi while c <= 1 - S_hi/2 (U there is at most -1 - log S_hi), S* = 2(1 - c) in between
    (U = -1 - log(2(1 - c))) and S* = s1 + s_lo above 1 - S_lo/2. The epsilon raises a score by at most
    4 eps / S_lo^2, taken off ``kth`` first together with the relative rounding slack."""
    kth, s1 = np.asarray(kth, np.float64), np.asarray(s1, np.float64)
    low, high = s1 + s_lo, s1 + s_hi
    with np.errstate(invalid="ignore", over="ignore"):  # kth = -inf gives -inf on the first piece
        target = kth - 4 * MLS_EPSILON / low ** 2 - RELATIVE_SLACK * (1 + np.abs(kth))
        on_high = 1 + high * (target + np.log(high)) / 2
        inside = 1 - np.exp(-1 - target) / 2
        on_low = 1 + low * (target + np.log(low)) / 2
        cut = np.where(target <= -1 - np.log(high), on_high, np.where(target <= -1 - np.log(low), inside, on_low))
    return np.where(np.isneginf(kth), -np.inf, cut - slack - 1e-12 * (1 + np.abs(cut)))


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
