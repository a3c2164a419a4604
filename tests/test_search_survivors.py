"""The exact scan's filters: the compiled survivor pass against float64 NumPy, the closed-form cosine cut against
the bound it inverts, and the float32 dot-product slack against measured errors."""
import numpy as np
import pytest

from probface_tf.search import survivors
from probface_tf.search.bound import cosine_cut, cosine_slack, fastmls_upper_bound


def _tile(rng, rows, cols):
    cos = rng.uniform(-0.3, 0.6, (rows, cols + 5)).astype(np.float32)[:, :cols]  # rows strided, not packed
    s1 = rng.uniform(0.05, 0.8, rows).astype(np.float32)
    s2 = rng.uniform(0.05, 0.8, cols).astype(np.float32)
    cut = rng.uniform(0.1, 0.4, rows).astype(np.float32)
    floor = rng.uniform(-3.0, -0.5, rows).astype(np.float32)
    return cos, s1, s2, cut, floor


def _reference(cos, s1, s2, cut, floor):
    """float64 scores of every entry; the entries the filter must keep, and those within rounding of its edge."""
    s = s1[:, None].astype(np.float64) + s2[None, :]
    score = -(2 * (1 - cos.astype(np.float64)) / (1e-10 + s) + np.log(s))
    above = cos >= cut[:, None]
    keep = above & (score >= floor[:, None])
    edge = above & (np.abs(score - floor[:, None]) < 1e-5)
    return np.flatnonzero(keep), np.flatnonzero(edge)


def _assert_matches(got, cos, *vectors):
    keep, edge = _reference(cos, *vectors)
    assert np.all(np.diff(got) > 0)  # row-major order, no repeats
    assert set(got) ^ set(keep) <= set(edge)
    assert len(keep) > 0 and len(edge) < 0.01 * max(1, len(keep))


@pytest.mark.parametrize("shape", [(1, 1), (3, 15), (5, 16), (37, 501), (300, 1024)])
def test_compiled_pass_equals_float64_filter(rng, shape):
    pytest.importorskip("llvmlite")
    assert survivors.kernel() is not None
    cos, *vectors = _tile(rng, *shape)
    if shape == (1, 1):  # the single entry survives
        cos[:], vectors[-1][:] = 0.5, -100.0
    _assert_matches(survivors.survivors(cos, *vectors, cap=cos.size), cos, *vectors)


def test_numpy_fallback_equals_float64_filter(rng, monkeypatch):
    monkeypatch.setattr(survivors, "_compiled", False)  # as if llvmlite were not installed
    cos, *vectors = _tile(rng, 37, 501)
    _assert_matches(survivors.survivors(cos, *vectors, cap=cos.size), cos, *vectors)


@pytest.mark.parametrize("compiled", [True, False])
def test_more_survivors_than_the_cap_give_none(rng, monkeypatch, compiled):
    if compiled:
        pytest.importorskip("llvmlite")
    else:
        monkeypatch.setattr(survivors, "_compiled", False)
    cos, *vectors = _tile(rng, 64, 200)
    every = survivors.survivors(cos, *vectors, cap=cos.size)
    assert survivors.survivors(cos, *vectors, cap=every.size - 1) is None
    np.testing.assert_array_equal(survivors.survivors(cos, *vectors, cap=every.size), every)


def test_mismatched_vectors_are_refused_before_the_compiled_loop(rng):
    cos, s1, s2, cut, floor = _tile(rng, 8, 40)
    with pytest.raises(ValueError, match="does not match"):
        survivors.survivors(cos, s1, s2[:-1], cut, floor, cap=10)
    with pytest.raises(ValueError, match="does not match"):
        survivors.survivors(cos.astype(np.float64), s1, s2, cut, floor, cap=10)
    with pytest.raises(ValueError, match="does not match"):
        survivors.survivors(np.asfortranarray(cos), s1, s2, cut, floor, cap=10)


def test_cosine_cut_inverts_the_bound(rng):
    n = 4000
    s1 = rng.uniform(1e-3, 1.0, n)
    lo = rng.uniform(1e-3, 1.0, n)
    hi = lo + rng.uniform(0, 2.0, n)
    kth = fastmls_upper_bound(rng.uniform(-1, 1, n), s1, lo, hi) - rng.uniform(0, 0.1, n)
    slack = 2e-5
    cut = np.array([cosine_cut(kth[i], s1[i], lo[i], hi[i], slack) for i in range(n)])
    # every sigma_sq of the range, a float32 cosine just under the cut (exact cosine up to slack above it)
    grid = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 401)[None, :]
    s = s1[:, None] + grid
    exact_cos = np.minimum(cut + slack, 1.0)[:, None]
    score = -(2 * (1 - exact_cos) / (1e-10 + s) + np.log(s))
    assert np.all(score.max(axis=1) < kth)
    # and it is tight: just above cut + slack, the bound reaches kth
    assert np.all(fastmls_upper_bound(cut + 2 * slack + 1e-6, s1, lo, hi) >= kth)
    assert np.isneginf(cosine_cut(-np.inf, 0.3, 0.2, 0.6, slack))


@pytest.mark.parametrize("dim", [16, 256])
def test_cosine_slack_bounds_float32_dot_products(rng, dim):
    # all-positive components: no cancellation, the accumulated rounding is largest relative to the result
    x = np.abs(rng.normal(size=(2000, dim))).astype(np.float32)
    y = np.abs(rng.normal(size=(300, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    error = np.abs((x @ y.T).astype(np.float64) - x.astype(np.float64) @ y.T.astype(np.float64))
    assert error.max() <= cosine_slack(dim, 1.0)
    assert cosine_slack(dim, 1.0) < 2e-5 * dim / 256 + 1e-7  # and not so loose that nothing is pruned
