"""1:N search: exact and faiss + bound top-k against a float64 brute-force loop, the bound itself, galleries."""
import functools
import os

import numpy as np
import pytest

from probface_tf.search import BandedIndex, Gallery, GalleryError, exact_topk, fastmls_upper_bound
from probface_tf.search import decision
from probface_tf.search.gallery import FORMAT_VERSION
from probface_tf.search import survivors
from probface_tf.search.pruned import PrunedScan


def _unit(rng, n, d):
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute(pm, ps, gm, gs, k, score="fastmls"):
    """Every pair in a Python loop in float64; order by (-score, row)."""
    out_i, out_s = [], []
    for p in range(len(pm)):
        row = []
        for g in range(len(gm)):
            c = float(np.dot(pm[p].astype(np.float64), gm[g].astype(np.float64)))
            if score == "cosine":
                row.append(c)
            else:
                s = float(ps[p]) + float(gs[g])
                row.append(-(2 * (1 - c) / (1e-10 + s) + np.log(s)))
        row = np.array(row)
        order = np.lexsort((np.arange(len(gm)), -row))[:k]
        out_i.append(order)
        out_s.append(row[order])
    return np.array(out_s), np.array(out_i)


def _case(kind, seed=0, n=400, p=24, d=16):
    rng = np.random.default_rng(seed)
    gm, pm = _unit(rng, n, d), _unit(rng, p, d)
    lo, hi = {"wide": (0.01, 2.0), "narrow": (0.30, 0.31)}[kind if kind in ("wide", "narrow") else "wide"]
    gs = rng.uniform(lo, hi, n).astype(np.float32)
    ps = rng.uniform(lo, hi, p).astype(np.float32)
    if kind == "ties":  # duplicate rows (equal scores, broken by row) and probes equal to gallery rows
        gm[200:260], gs[200:260] = gm[0:60], gs[0:60]
        gm[300:310], gs[300:310] = gm[7], gs[7]
        pm[:6] = gm[[7, 0, 1, 2, 300, 205]] * 0.99 + 0.01 * pm[:6]
        pm /= np.linalg.norm(pm, axis=1, keepdims=True)
    if kind == "near":  # probes close to a gallery row: high cosines, the bound is tight
        pm[:] = gm[:p] + 0.1 * pm
        pm /= np.linalg.norm(pm, axis=1, keepdims=True)
    return pm, ps, gm, gs


CASES = ("wide", "narrow", "ties", "near")


@functools.lru_cache(maxsize=None)
def _reference(kind):
    """(case arrays, brute-force top-10 scores and rows), computed once per case."""
    case = _case(kind)
    return case, _brute(*case, 10)


def _assert_equal_topk(result, reference):
    np.testing.assert_array_equal(result[1], reference[1])  # same rows, same order
    np.testing.assert_allclose(result[0], reference[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", CASES)
def test_exact_topk_equals_brute_force(kind):
    (pm, ps, gm, gs), ref = _reference(kind)
    _assert_equal_topk(exact_topk(pm, ps, gm, gs, 10, block_entries=24 * 300), ref)  # two gallery blocks


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("bands", [1, 3])
def test_flat_index_with_bound_equals_brute_force(kind, bands):
    (pm, ps, gm, gs), ref = _reference(kind)
    _assert_equal_topk(BandedIndex(gm, gs, "flat", bands=bands).search(pm, ps, 10), ref)


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("block_rows", [64, 5000])
@pytest.mark.parametrize("compiled", [True, False])
def test_pruned_scan_equals_brute_force(kind, block_rows, compiled, monkeypatch):
    if compiled:
        pytest.importorskip("llvmlite")
    else:
        monkeypatch.setattr(survivors, "_compiled", False)  # as if llvmlite were not installed
    (pm, ps, gm, gs), ref = _reference(kind)
    kept = []
    real = survivors.survivors

    def spy(cos, *args):  # the pruned path must actually run (and prune) on these galleries
        flat = real(cos, *args)
        kept.append(1.0 if flat is None else flat.size / cos.size)
        return flat

    monkeypatch.setattr(survivors, "survivors", spy)
    result = PrunedScan(gm, gs, block_rows=block_rows, seed_rows=40, dense_fraction=1.0).search(pm, ps, 10)
    assert kept and min(kept) < 0.9
    _assert_equal_topk(result, ref)
    chunked = PrunedScan(gm, gs, block_rows=block_rows, seed_rows=40, dense_fraction=1.0, probe_chunk=7)
    _assert_equal_topk(chunked.search(pm, ps, 10), ref)  # probes in chunks: the same results
    dense = PrunedScan(gm, gs, block_rows=block_rows, seed_rows=40, dense_fraction=0.0)
    _assert_equal_topk(dense.search(pm, ps, 10), ref)  # every tile over the cap: scored whole


def test_cosine_topk_and_hnsw_recall():
    pm, ps, gm, gs = _case("near")
    ref_s, ref_i = _brute(pm, ps, gm, gs, 5, score="cosine")
    np.testing.assert_array_equal(exact_topk(pm, ps, gm, gs, 5, "cosine")[1], ref_i)
    np.testing.assert_array_equal(BandedIndex(gm, gs, "flat", bands=2).search(pm, ps, 5, "cosine")[1], ref_i)
    _, fm_ref = _brute(pm, ps, gm, gs, 5)
    _, hnsw = BandedIndex(gm, gs, "hnsw", bands=2).search(pm, ps, 5)
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(hnsw, fm_ref)])
    assert recall >= 0.9


def test_k_larger_than_gallery_returns_everything_in_order():
    pm, ps, gm, gs = _case("wide", n=7)
    ref_s, ref_i = _brute(pm, ps, gm, gs, 7)
    np.testing.assert_array_equal(exact_topk(pm, ps, gm, gs, 50)[1], ref_i)
    np.testing.assert_array_equal(BandedIndex(gm, gs, "flat", bands=2).search(pm, ps, 50)[1], ref_i)


def test_bound_dominates_every_score_at_or_below_its_cosine():
    rng = np.random.default_rng(1)
    c = rng.uniform(-1, 1, 20000)
    s1, s2 = rng.uniform(0.001, 1.0, 20000), rng.uniform(0.001, 3.0, 20000)
    lo, hi = np.minimum(s2, rng.uniform(0.001, 3.0, 20000)), None
    hi = np.maximum(s2, rng.uniform(0.001, 3.0, 20000))
    below = c - rng.uniform(0, 0.5, 20000)
    mutual = s1 + s2
    score = -(2 * (1 - below) / (1e-10 + mutual) + np.log(mutual))
    assert np.all(score <= fastmls_upper_bound(c, s1, lo, hi))
    # and it is attained: a gallery row at the bound's cosine and at S* scores the bound (up to the slack)
    grid = np.linspace(lo[0], hi[0], 20001)
    best = np.max(-(2 * (1 - c[0]) / (s1[0] + grid) + np.log(s1[0] + grid)))
    assert fastmls_upper_bound(c[0], s1[0], lo[0], hi[0]) - best < 1e-3


# ---------------------------------------------------------------------------------------------- gallery


@pytest.fixture()
def gallery():
    rng = np.random.default_rng(2)
    g = Gallery(16, model_id="model-A")
    for name in ("ann", "bob", "cy"):
        g.add(name, _unit(rng, 3, 16), rng.uniform(0.1, 0.5, 3), model_id="model-A")
    return g


def test_enrolment_fuses_with_pfe_and_keeps_counts(gallery):
    rng = np.random.default_rng(3)
    mu, s = _unit(rng, 4, 16), rng.uniform(0.1, 0.9, 4)
    row = gallery.add("dee", mu, s)
    precision = 1 / s
    mean = (mu.astype(np.float64) * precision[:, None]).sum(0) / precision.sum()
    np.testing.assert_allclose(gallery.mu[row], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(gallery.sigma_sq[row], 1 / precision.sum(), rtol=1e-6)
    assert gallery.counts[row] == 4 and gallery.labels[row] == "dee"
    with pytest.raises(GalleryError, match="'dee' is already enrolled"):
        gallery.add("dee", mu, s)
    gallery.reenrol("dee", mu[:1], s[:1])
    np.testing.assert_allclose(gallery.mu[row], mu[0], atol=1e-6)
    assert gallery.counts[row] == 1
    gallery.remove("bob")
    assert gallery.labels == ["ann", "cy", "dee"] and gallery.row("dee") == 2
    with pytest.raises(GalleryError, match="'bob' is not enrolled"):
        gallery.remove("bob")


def test_search_finds_the_enrolled_identity_with_every_method(gallery):
    probe = gallery.mu[[2, 0]] + 0.01
    for method in ("exact", "brute", "flat", "hnsw"):
        _, rows = gallery.search(probe, [0.2, 0.2], k=2, method=method)
        assert rows[:, 0].tolist() == [2, 0]


def test_bad_inputs_name_what_is_wrong(gallery, tmp_path):
    with pytest.raises(GalleryError, match="model 'model-A'.*'model-B'"):
        gallery.search(gallery.mu[:1], [0.2], model_id="model-B")
    with pytest.raises(GalleryError, match=r"probes: mu must be \[n, 16\]"):
        gallery.search(np.zeros((1, 8)), [0.2])
    with pytest.raises(GalleryError, match="'eve'.*\\[n, 16\\]"):
        gallery.add("eve", np.zeros((2, 8)), [0.1, 0.1])
    with pytest.raises(GalleryError, match="empty"):
        Gallery(16).search(np.ones((1, 16)), [0.1])
    with pytest.raises(GalleryError, match="'eve'.*sigma_sq"):
        gallery.add("eve", np.ones((2, 16)), [0.1, -1.0])
    assert "eve" not in gallery and len(gallery) == 3


def test_save_load_round_trip_and_atomic_failure(gallery, tmp_path, monkeypatch):
    path = str(tmp_path / "g.npz")
    gallery.thresholds = {"score_threshold": -1.5, "sigma_sq_threshold": 0.4}
    gallery.save(path)
    loaded = Gallery.load(path)
    assert loaded.labels == gallery.labels and loaded.model_id == "model-A" and loaded.thresholds["score_threshold"] == -1.5
    np.testing.assert_array_equal(loaded.mu, gallery.mu)
    np.testing.assert_array_equal(loaded.counts, gallery.counts)
    before = open(path, "rb").read()

    def crash(f, **arrays):  # a crash after part of the new file is written
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    gallery.add("late", np.ones((1, 16)), [0.1])
    with pytest.raises(KeyboardInterrupt):
        gallery.save(path)
    monkeypatch.undo()
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["g.npz"]
    assert Gallery.load(path).labels == ["ann", "bob", "cy"]


def test_truncated_and_foreign_files_are_refused(gallery, tmp_path):
    path = str(tmp_path / "g.npz")
    gallery.save(path)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GalleryError, match="cut.npz is truncated"):
        Gallery.load(str(cut))
    other = tmp_path / "v9.npz"
    meta = {"format": "probface-gallery", "version": FORMAT_VERSION + 8, "dim": 16}
    import json
    np.savez(other, meta=np.array(json.dumps(meta)), labels=np.array([], str), mu=np.zeros((0, 16)),
             sigma_sq=np.zeros(0), counts=np.zeros(0))
    with pytest.raises(GalleryError, match="v9.npz has format version 9"):
        Gallery.load(str(other))


def test_open_set_decisions_from_calibrated_thresholds():
    nonmated = np.array([-3.0, -2.5, -2.0, -1.0, -0.5] * 20)
    t = decision.threshold_at_fpir(nonmated, 0.2)
    assert np.mean(nonmated >= t) == 0.2 and -1.0 < t < -1.0 + 1e-12  # the smallest such threshold
    t0 = decision.threshold_at_fpir(nonmated, 0.0)
    assert np.mean(nonmated >= t0) == 0.0
    th = decision.calibrate(nonmated, 0.2, probe_sigma_sq=np.arange(10.0), reject_fraction=0.1)
    out = decision.decide([0.0, -3.0, 0.0], [1.0, 1.0, 9.5], th)
    assert out == ["identified", "unknown", "uncertain"]
    th["sigma_sq_threshold"] = None  # as read back from results.json: no risk threshold
    assert decision.decide([0.0], [9.5], th) == ["identified"]


def test_gallery_hnsw_search_takes_its_budget_and_other_methods_refuse_it():
    pm, ps, gm, gs = _case("wide")
    g = Gallery(gm.shape[1], model_id="m")
    for i in range(len(gm)):
        g.add(f"id{i:03d}", gm[i:i + 1], gs[i:i + 1], model_id="m")
    ref = _brute(pm, ps, g.mu, g.sigma_sq, 5)
    # a budget of the whole gallery scans the HNSW graph's flat storage: the exact result
    np.testing.assert_array_equal(g.search(pm, ps, 5, method="hnsw", ef_search=len(gm), model_id="m")[1], ref[1])
    with pytest.raises(GalleryError, match="ef_search applies to method 'hnsw' only"):
        g.search(pm, ps, 5, method="exact", ef_search=64, model_id="m")
    with pytest.raises(GalleryError, match="ef_search must be a positive integer"):
        g.search(pm, ps, 5, method="hnsw", ef_search=0, model_id="m")
