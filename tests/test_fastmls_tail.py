"""The compiled FastMLS tail against float64 NumPy, and the NumPy fallback it must agree with."""
import numpy as np
import pytest

from probface_tf import fastmls_tail, mls, scoring

pytest.importorskip("llvmlite")


def _tail64(tile, a, b, eps, attention_only=False):
    s = (a[:, None] + b[None, :]).astype(np.float64)  # the sum is a float32 operation in every path
    out = tile.astype(np.float64) / (np.float64(np.float32(eps)) + s)
    return out if attention_only else out - np.log(s)


def _ulps(got, exact, scale=None):
    """Error in units of the float32 spacing at ``scale`` (default: the exact value)."""
    scale = np.abs(exact if scale is None else scale).astype(np.float32)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(scale).astype(np.float64)


def test_log_is_within_one_ulp_over_the_normal_float32_range(rng):
    # a zero tile leaves -log(a_i + b_j): the log itself, on sums from ~1e-37 to ~1e38
    b = np.exp(rng.uniform(-85, 87, 200_000)).astype(np.float32)
    a = np.zeros(1, np.float32)
    tile = np.zeros((1, b.size), np.float32)
    assert fastmls_tail.usable(a, b)
    fastmls_tail.apply(tile, a, b, 0.0)
    exact = np.log(b.astype(np.float64))
    assert _ulps(-tile[0], exact).max() <= 1.0
    # NumPy's own float32 log, for scale (it is the fallback path): not better than ours
    assert _ulps(np.log(b), exact).max() >= _ulps(-tile[0], exact).max()


@pytest.mark.parametrize("attention_only", [False, True])
@pytest.mark.parametrize("low", [1e-6, 0.2])  # tiny sums: the 1e-10 of the denominator shows in float32
def test_tail_matches_float64(rng, attention_only, low):
    a = rng.uniform(low, 3 * low, 37).astype(np.float32)
    b = rng.uniform(low, 3 * low, 501).astype(np.float32)  # not a multiple of any vector width
    tile = rng.uniform(-4, 0, (37, 501)).astype(np.float32)
    exact = _tail64(tile, a, b, 1e-10, attention_only)
    attention = _tail64(tile, a, b, 1e-10, True)
    terms = np.abs(attention) + np.abs(attention - exact)  # |tile / s| + |log s|: the difference may cancel
    fastmls_tail.apply(tile, a, b, 1e-10, attention_only)
    assert _ulps(tile, exact, terms).max() <= 3.0


def test_pairwise_compiled_and_numpy_paths_agree(rng, monkeypatch):
    mu1 = rng.standard_normal((70, 16)).astype(np.float32)
    mu2 = rng.standard_normal((45, 16)).astype(np.float32)
    mu1 /= np.linalg.norm(mu1, axis=1, keepdims=True)
    mu2 /= np.linalg.norm(mu2, axis=1, keepdims=True)
    s1, s2 = rng.uniform(1e-4, 2, 70).astype(np.float32), rng.uniform(1e-4, 2, 45).astype(np.float32)
    compiled = scoring.fastmls_pairwise(mu1, s1, mu2, s2, block_rows=16)
    monkeypatch.setattr(fastmls_tail, "_compiled", False)  # as if llvmlite were not installed
    assert not fastmls_tail.usable(s1, s2)
    fallback = scoring.fastmls_pairwise(mu1, s1, mu2, s2, block_rows=16)
    np.testing.assert_allclose(compiled, fallback, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -0.1, np.inf, np.nan, 1e-45])  # zero, negative, inf, NaN, subnormal
def test_values_outside_the_normal_range_take_the_numpy_path(rng, bad):
    a = rng.uniform(0.1, 1, 5).astype(np.float32)
    b = rng.uniform(0.1, 1, 6).astype(np.float32)
    b[2] = bad
    if bad == 0.0 or bad == 1e-45:
        a[1] = 0  # the sum a_1 + b_2 is zero / subnormal
    if bad == -0.1:
        a[1] = 0.05  # the sum a_1 + b_2 is negative
    assert not fastmls_tail.usable(a, b)
    mu1, mu2 = np.eye(5, 4, dtype=np.float32), np.eye(6, 4, dtype=np.float32)
    with np.errstate(all="ignore"):
        got = scoring.fastmls_pairwise(mu1, a, mu2, b, threads=1)
        for i in range(5):
            row = scoring.fastmls_scores(np.repeat(mu1[i:i + 1], 6, 0), np.repeat(a[i:i + 1], 6), mu2, b)
            np.testing.assert_allclose(got[i], row, rtol=2e-6, atol=0, equal_nan=True)


def test_ir_that_does_not_compile_warns_and_falls_back(monkeypatch):
    monkeypatch.setattr(fastmls_tail, "_compiled", None)
    monkeypatch.setattr(fastmls_tail, "module_ir", lambda: "define void @broken( {")
    with pytest.warns(RuntimeWarning, match="FastMLS tail not compiled"):
        assert fastmls_tail.kernels() is None
    a = np.ones(3, np.float32)
    assert not fastmls_tail.usable(a, a)


def test_float64_inputs_are_not_compiled(rng):
    a = rng.uniform(0.1, 1, 4)
    assert not fastmls_tail.usable(a, a)


def test_row_slices_of_a_larger_matrix_and_every_remainder(rng):
    big = rng.uniform(-4, 0, (9, 70)).astype(np.float32)
    a, b = rng.uniform(0.1, 1, 9).astype(np.float32), rng.uniform(0.1, 1, 70).astype(np.float32)
    for c0, c1 in [(0, 70), (3, 19), (5, 21), (16, 32), (40, 41), (7, 7)]:  # 70, 16, 16, 16, 1, 0 columns
        got = big.copy()
        fastmls_tail.apply(got[2:8, c0:c1], a[2:8], b[c0:c1], 1e-10)
        expected = big.copy()
        s = a[2:8, None] + b[None, c0:c1]
        expected[2:8, c0:c1] = big[2:8, c0:c1] / (np.float32(1e-10) + s) - np.log(s)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)  # and nothing outside the slice moved
        assert np.array_equal(np.delete(got, range(c0, c1), axis=1), np.delete(big, range(c0, c1), axis=1))


def test_mismatched_tile_is_refused_before_the_unchecked_loop():
    a, b = np.ones(3, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"tile float32\(3, 5\).*float32\(3,\) and float32\(4,\)"):
        fastmls_tail.apply(np.zeros((3, 5), np.float32), a, b, 1e-10)
    with pytest.raises(ValueError, match="contiguous rows"):
        fastmls_tail.apply(np.zeros((4, 3), np.float32).T, a, b, 1e-10)  # columns strided
    with pytest.raises(ValueError, match="contiguous rows"):
        fastmls_tail.apply(np.zeros((3, 4), np.float64), a, b, 1e-10)
    with pytest.raises(ValueError, match="contiguous rows"):
        fastmls_tail.apply(np.zeros((3, 4), np.float32), a, np.ones(8, np.float32)[::2], 1e-10)
    frozen = np.zeros((3, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastmls_tail.apply(frozen, a, b, 1e-10)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("attention_only", [False, True])
def test_pairwise_tails_compute_the_shared_formula(rng, monkeypatch, compiled, attention_only):
    """Both optimised tails (compiled, tiled NumPy) give -fastmls_terms of probface_tf.mls on every pair."""
    mu1, mu2 = unit_rows(rng, 40, 8), unit_rows(rng, 33, 8)
    s1, s2 = rng.uniform(1e-6, 1, 40).astype(np.float32), rng.uniform(1e-6, 1, 33).astype(np.float32)
    if not compiled:
        monkeypatch.setattr(fastmls_tail, "_compiled", False)
    assert fastmls_tail.usable(s1, s2) == compiled
    got = scoring.fastmls_pairwise(mu1, s1, mu2, s2, attention_only, block_rows=16)
    mutual = s1.astype(np.float64)[:, None] + s2.astype(np.float64)[None, :]
    attention, total = mls.fastmls_terms(mu1.astype(np.float64) @ mu2.astype(np.float64).T, mutual)
    want = -(attention if attention_only else total)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert np.ptp(want) > 1.0  # the pairs differ: not a constant matched by accident


def unit_rows(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
