"""HNSW search: recall against brute force on a structured gallery, the ef_search knob, bad parameters."""
import numpy as np
import pytest

from probface_tf.search import BandedIndex, SearchError, exact_topk

pytest.importorskip("faiss", reason="faiss-cpu (cpu/dev extras) backs the indexed search")

N, D, LATENT, PROBES, K = 3000, 32, 6, 60, 10


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def case():
    """Identities on a LATENT-dim manifold in R^D, image noise growing with sigma_sq, half the probes mated,
    the last 20 gallery rows duplicates of others (equal scores, ordered by row)."""
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((LATENT, D))
    z = rng.standard_normal((N, LATENT))
    gs = rng.uniform(0.2, 0.6, N)
    gm = _unit(_unit(z @ basis) + gs[:, None] * _unit(rng.standard_normal((N, D))))
    gm[-20:], gs[-20:] = gm[:20], gs[:20]
    zp = rng.standard_normal((PROBES, LATENT))
    zp[: PROBES // 2] = z[: PROBES // 2] + 0.35 * zp[: PROBES // 2]
    ps = rng.uniform(0.2, 0.6, PROBES)
    pm = _unit(_unit(zp @ basis) + ps[:, None] * _unit(rng.standard_normal((PROBES, D))))
    index = BandedIndex(gm, gs.astype(np.float32), "hnsw", bands=2, m=16, ef_construction=40)
    ref = exact_topk(pm, ps, gm, gs.astype(np.float32), K)
    return pm, ps, gm, gs.astype(np.float32), index, ref


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)])


def test_recall_against_brute_force_grows_with_ef(case):
    pm, ps, _, _, index, (_, ref_i) = case
    recalls = [_recall(index.search(pm, ps, K, ef_search=ef)[1], ref_i) for ef in (K, 32, 128)]
    assert recalls == sorted(recalls) and recalls[0] < 0.99 < recalls[-1]
    assert _recall(index.search(pm, ps, K)[1], ref_i) >= 0.99  # the default ef_search


def test_scores_are_exact_fastmls_of_the_rows_found(case):
    pm, ps, gm, gs, index, _ = case
    scores, ids = index.search(pm, ps, K, ef_search=32)
    c = np.einsum("pd,pkd->pk", pm.astype(np.float64), gm[ids].astype(np.float64))
    mutual = ps[:, None] + gs[ids]
    np.testing.assert_allclose(scores, -(2 * (1 - c) / mutual + np.log(mutual)), rtol=0, atol=1e-9)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("score", ["fastmls", "cosine"])
def test_ef_at_least_the_band_size_is_exact(case, score):
    pm, ps, gm, gs, index, _ = case
    ref_s, ref_i = exact_topk(pm, ps, gm, gs, K, score)
    scores, ids = index.search(pm, ps, K, score, ef_search=N // 2)
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=0, atol=1e-9)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64", None])
def test_bad_ef_search_is_refused_naming_it(case, bad):
    pm, ps, gm, gs, index, _ = case
    if bad is not None:
        with pytest.raises(SearchError, match=r"ef_search must be a positive integer, got"):
            index.search(pm, ps, K, ef_search=bad)
    with pytest.raises(SearchError, match=r"ef_search must be a positive integer"):
        BandedIndex(gm[:50], gs[:50], "hnsw", ef_search=bad)


def test_hnsw_only_parameters_are_refused_elsewhere(case):
    pm, ps, gm, gs, _, _ = case
    flat = BandedIndex(gm[:200], gs[:200], "flat")
    with pytest.raises(SearchError, match=r"ef_search applies to kind='hnsw' only"):
        flat.search(pm, ps, K, ef_search=64)
    for name in ("m", "ef_construction", "bands"):
        with pytest.raises(SearchError, match=rf"{name} must be a positive integer, got 0"):
            BandedIndex(gm[:50], gs[:50], "hnsw", **{name: 0})
    with pytest.raises(SearchError, match=r"k must be a positive integer, got 0"):
        flat.search(pm, ps, 0)
