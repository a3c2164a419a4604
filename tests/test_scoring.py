"""Pair scores and uncertainty fusion against independent per-pair loops (math module, float64)."""
import math
import multiprocessing
import threading

import numpy as np
import pytest
from sklearn.metrics.pairwise import cosine_similarity

from probface_tf import pair_uncertainty, scoring


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _fastmls_ref(a, sa, b, sb, attention_only=False):
    cos = sum(float(x) * float(y) for x, y in zip(a, b))
    mutual = float(sa) + float(sb)
    att = 2 * (1 - cos) / (1e-10 + mutual)
    return -att if attention_only else -(att + math.log(mutual))


def _mls_ref(a, sa, b, sb, attention_only=False):
    d = len(a)
    att = sum((float(x) - float(y)) ** 2 / (float(p) + float(q)) for x, y, p, q in zip(a, b, sa, sb)) / d
    logs = sum(math.log(float(p) + float(q)) for p, q in zip(sa, sb)) / d
    return -att if attention_only else -(att + logs)


def test_cosine_scores_renormalise_rows(rng):
    a = rng.standard_normal((7, 5)).astype(np.float32) * 3
    b = rng.standard_normal((7, 5)).astype(np.float32)
    expected = np.diag(cosine_similarity(a.astype(np.float64), b.astype(np.float64)))
    np.testing.assert_allclose(scoring.cosine_scores(a, b), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attention_only", [False, True])
def test_fastmls_scores_match_formula(rng, attention_only):
    a, b = _unit(rng, 9, 6), _unit(rng, 9, 6)
    sa, sb = rng.uniform(1e-3, 2, (9, 1)).astype(np.float32), rng.uniform(1e-3, 2, 9).astype(np.float32)
    got = scoring.fastmls_scores(a, sa, b, sb, attention_only)
    expected = [_fastmls_ref(a[k], sa[k, 0], b[k], sb[k], attention_only) for k in range(9)]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("attention_only", [False, True])
def test_mls_scores_match_formula(rng, attention_only):
    a, b = _unit(rng, 6, 4), _unit(rng, 6, 4)
    sa, sb = rng.uniform(0.01, 1, (6, 4)), rng.uniform(0.01, 1, (6, 4))
    got = scoring.mls_scores(a, sa, b, sb, attention_only)
    expected = [_mls_ref(a[k], sa[k], b[k], sb[k], attention_only) for k in range(6)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("attention_only", [False, True])
def test_pairwise_forms_match_per_pair_formula(rng, threads, attention_only):
    a, b = _unit(rng, 11, 8), _unit(rng, 6, 8)
    sa, sb = rng.uniform(0.05, 1, 11).astype(np.float32), rng.uniform(0.05, 1, (6, 1)).astype(np.float32)
    got = scoring.fastmls_pairwise(a, sa, b, sb, attention_only, block_rows=4, threads=threads)
    expected = [[_fastmls_ref(a[i], sa[i], b[j], sb[j, 0], attention_only) for j in range(6)] for i in range(11)]
    assert got.shape == (11, 6)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)

    da, db = rng.uniform(0.05, 1, (11, 8)), rng.uniform(0.05, 1, (6, 8))
    got = scoring.mls_pairwise(a, da, b, db, attention_only, block_rows=3, block_cols=4, threads=threads)
    expected = [[_mls_ref(a[i], da[i], b[j], db[j], attention_only) for j in range(6)] for i in range(11)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    got = scoring.cosine_pairwise(a * 2, b, block_rows=5, threads=threads)
    np.testing.assert_allclose(got, cosine_similarity(a, b), atol=1e-6)


@pytest.mark.parametrize("low", [1e-6, 0.3])  # tiny sigma_sq: the 1e-10 of the denominator matters in float32
def test_fastmls_pairwise_epsilon_matches_elementwise(rng, low):
    a, b = _unit(rng, 7, 8), _unit(rng, 5, 8)
    sa = rng.uniform(low, 2 * low, 7).astype(np.float32)
    sb = rng.uniform(low, 2 * low, 5).astype(np.float32)
    full = scoring.fastmls_pairwise(a, sa, b, sb, threads=1)
    for i in range(7):
        row = scoring.fastmls_scores(np.repeat(a[i:i + 1], 5, 0), np.repeat(sa[i:i + 1], 5), b, sb)
        np.testing.assert_allclose(full[i], row, rtol=2e-6)


@pytest.mark.parametrize("n_rows, block_rows, threads, sizes", [
    (3000, 1024, 2, [750] * 4),  # 3 blocks would leave one thread a lone third block
    (10000, 1024, 2, [1000] * 10),
    (7, 4, 2, [4, 3]),
    (5, 8, 2, [5]),  # one block: run on the calling thread
])
def test_row_blocks_are_even_and_cover_every_row_once(n_rows, block_rows, threads, sizes):
    seen = []
    lock = threading.Lock()

    def fill(start, stop):
        with lock:
            seen.append((start, stop))

    scoring._run_blocks(n_rows, fill, block_rows, threads)
    seen.sort()
    assert [stop - start for start, stop in seen] == sizes
    assert seen[0][0] == 0 and seen[-1][1] == n_rows
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))


def _threaded_pairwise():
    rng = np.random.default_rng(1)
    a = _unit(rng, 40, 8)
    s = rng.uniform(0.1, 1, 40).astype(np.float32)
    return scoring.fastmls_pairwise(a, s, a, s, block_rows=8, threads=2)


def _pairwise_in_child(queue):
    queue.put(_threaded_pairwise())


def test_pairwise_in_a_forked_child_after_the_parent_used_its_threads():
    parent = _threaded_pairwise()  # the parent's thread pool now exists
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_pairwise_in_child, args=(queue,))
    child.start()
    got = queue.get(timeout=120)  # a pool inherited without its threads would hang here
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, parent)


def test_pairwise_diagonal_equals_elementwise(rng):
    a, b = _unit(rng, 10, 16), _unit(rng, 10, 16)
    sa, sb = rng.uniform(0.1, 1, 10), rng.uniform(0.1, 1, 10)
    full = scoring.fastmls_pairwise(a, sa, b, sb, threads=1)
    np.testing.assert_allclose(np.diag(full), scoring.fastmls_scores(a, sa, b, sb), atol=1e-5)


@pytest.mark.parametrize("pairwise", [False, True])
def test_tf_scores_match_numpy(rng, pairwise):
    a, b = _unit(rng, 5, 8), _unit(rng, 5, 8)
    sa, sb = rng.uniform(0.1, 1, (5, 1)).astype(np.float32), rng.uniform(0.1, 1, (5, 1)).astype(np.float32)
    da, db = rng.uniform(0.1, 1, (5, 8)).astype(np.float32), rng.uniform(0.1, 1, (5, 8)).astype(np.float32)
    if pairwise:
        ref_cos = [[float(a[i] @ b[j]) for j in range(5)] for i in range(5)]
        ref_fast = [[_fastmls_ref(a[i], sa[i, 0], b[j], sb[j, 0]) for j in range(5)] for i in range(5)]
        ref_mls = [[_mls_ref(a[i], da[i], b[j], db[j]) for j in range(5)] for i in range(5)]
    else:
        ref_cos = [float(a[k] @ b[k]) for k in range(5)]
        ref_fast = [_fastmls_ref(a[k], sa[k, 0], b[k], sb[k, 0]) for k in range(5)]
        ref_mls = [_mls_ref(a[k], da[k], b[k], db[k]) for k in range(5)]
    np.testing.assert_allclose(scoring.cosine_tf(a * 3, b, pairwise=pairwise).numpy(), ref_cos, atol=1e-6)
    np.testing.assert_allclose(scoring.fastmls_tf(a, sa, b, sb, pairwise=pairwise).numpy(), ref_fast, atol=3e-5)
    np.testing.assert_allclose(scoring.fastmls_tf(a, sa[:, 0], b, sb[:, 0], pairwise=pairwise).numpy(), ref_fast,
                               atol=3e-5)
    np.testing.assert_allclose(scoring.mls_tf(a, da, b, db, pairwise=pairwise).numpy(), ref_mls, atol=3e-5)


def test_fusion_methods():
    u1, u2 = np.array([1.0, 4.0, 0.5]), np.array([3.0, 2.0, 0.5])
    expected = {"max": [3, 4, 0.5], "sum": [4, 6, 1], "min": [1, 2, 0.5], "mean": [2, 3, 0.5],
                "harmonic": [1.5, 8 / 3, 0.5]}
    for method, values in expected.items():
        np.testing.assert_allclose(pair_uncertainty.fuse_uncertainty(u1, u2, method), values)
    with pytest.raises(scoring.ScoringError, match="unknown uncertainty fusion 'median'"):
        pair_uncertainty.fuse_uncertainty(u1, u2, "median")


def test_image_uncertainty_harmonic_for_ddim(rng):
    s = rng.uniform(0.01, 1, (4, 6))
    expected = [len(row) / sum(1 / (v + 1e-6) for v in row) for row in s]
    np.testing.assert_allclose(pair_uncertainty.image_uncertainty(s), expected, rtol=1e-12)
    np.testing.assert_array_equal(pair_uncertainty.image_uncertainty(s[:, :1]), s[:, 0])


def test_pair_uncertainty_uses_bin_layout():
    sigma = np.array([[0.1], [0.5], [0.7], [0.2]], np.float32)
    np.testing.assert_allclose(pair_uncertainty.pair_uncertainty(sigma, "max"), [0.5, 0.7])
    np.testing.assert_allclose(pair_uncertainty.pair_uncertainty(sigma, "sum"), [0.6, 0.9], rtol=1e-6)


def test_split_features_original_widths(rng):
    x = rng.standard_normal((3, 257))
    mu, s = scoring.split_features(x)
    assert mu.shape == (3, 256) and s.shape == (3, 1)
    mu, s = scoring.split_features(rng.standard_normal((3, 512)))
    assert mu.shape == (3, 256) and s.shape == (3, 256)


def test_kind_detection():
    assert scoring.uncertainty_kind(None) == "none"
    assert scoring.uncertainty_kind(np.ones((4, 1))) == "fastmls"
    assert scoring.uncertainty_kind(np.ones(4)) == "fastmls"
    assert scoring.uncertainty_kind(np.ones((4, 8))) == "mls"


def test_bad_shapes_name_the_inputs(rng):
    a = _unit(rng, 4, 8)
    with pytest.raises(scoring.ScoringError, match=r"sigma_sq1 must have shape \[4\] or \[4, k\].*\(3, 1\)"):
        scoring.fastmls_scores(a, np.ones((3, 1)), a, np.ones((4, 1)))
    with pytest.raises(scoring.ScoringError, match="equal shapes"):
        scoring.cosine_scores(a, a[:3])
    with pytest.raises(scoring.ScoringError, match="embedding sizes differ"):
        scoring.cosine_pairwise(a, a[:, :4])
    with pytest.raises(scoring.ScoringError, match="2-D"):
        scoring.cosine_scores(a[0], a[1])
    with pytest.raises(scoring.ScoringError, match="even number of rows"):
        pair_uncertainty.pair_rows(np.ones((5, 2)))
    with pytest.raises(ValueError):  # ScoringError is a ValueError
        scoring.mls_scores(a, np.ones((4, 1)), a, np.ones((4, 1)))
