"""EER / FMR operating points, AUERC family, TAR@FAR, risk-controlled and reject tables against brute-force
loops and hand-made cases with known answers."""
import numpy as np
import pytest
from scipy.integrate import trapezoid

from probface_tf.eval import metrics, risk
from references import ten_fold_loop


# ---------------------------------------------------------------- independent references (plain loops)


def _brute_rates(genuine, impostor):
    thresholds = sorted(set(float(x) for x in np.concatenate([genuine, impostor])))
    fmr = [sum(1 for s in impostor if s >= t) / len(impostor) for t in thresholds]
    fnmr = [sum(1 for s in genuine if s < t) / len(genuine) for t in thresholds]
    return thresholds, fmr, fnmr


def _brute_stats(genuine, impostor):
    thr, fmr, fnmr = _brute_rates(genuine, impostor)
    t2 = next(i for i in range(len(thr)) if fmr[i] <= fnmr[i])
    t1 = t2 if (fmr[t2] == fnmr[t2] or t2 == 0) else t2 - 1
    e = t1 if fmr[t1] + fnmr[t1] <= fmr[t2] + fnmr[t2] else t2

    def op(target):
        best = min(range(len(thr)), key=lambda i: (abs(fmr[i] - target), i))
        return fnmr[best], thr[best]

    return {"eer": (fmr[e] + fnmr[e]) / 2, "fmr100": op(0.01), "fmr1000": op(0.001), "rates": (thr, fmr, fnmr)}


def _loop_ten_fold(scores, labels):
    return ten_fold_loop(scores, labels)


def _pairs(rng, n, shift=1.5):
    labels = rng.random(n) < 0.5
    scores = (rng.standard_normal(n) * 0.3 + shift * 0.3 * labels).astype(np.float32)
    return scores, labels


# ---------------------------------------------------------------- pyeer metrics


def test_eer_hand_made_cases():
    # FMR 1 .75 .5 .5 .25 .25 0 0 / FNMR 0 0 0 .25 .25 .5 .5 .75: crossing at t = 0.6 where both are .25
    s = metrics.eer_stats([0.3, 0.6, 0.8, 0.9], [0.1, 0.2, 0.5, 0.7])
    assert s.eer == 0.25 and s.eer_threshold == 0.6
    # separable: FMR reaches 0 before FNMR leaves 0
    s = metrics.eer_stats([0.7, 0.8, 0.9], [0.1, 0.2, 0.3])
    assert s.eer == 0.0
    # strict crossing between t = 0.45 (FMR .4, FNMR .2) and t = 0.5 (FMR .4, FNMR .8): the point before it
    # has the smaller FMR + FNMR, so EER = (.4 + .2)/2
    s = metrics.eer_stats([0.3, 0.45, 0.45, 0.45, 0.9], [0.1, 0.2, 0.4, 0.5, 0.6])
    assert s.eer == pytest.approx(0.3) and s.eer_threshold == 0.45


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_stats_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    genuine = np.round(rng.normal(0.6, 0.15, 180), 2).astype(np.float32)  # ties inside and across classes
    impostor = np.round(rng.normal(0.2, 0.15, 1300), 2).astype(np.float32)
    s = metrics.eer_stats(genuine, impostor)
    ref = _brute_stats(genuine, impostor)
    thr, fmr, fnmr = ref["rates"]
    np.testing.assert_allclose(s.thresholds, thr)
    np.testing.assert_allclose(s.fmr, fmr)
    np.testing.assert_allclose(s.fnmr, fnmr)
    assert s.eer == pytest.approx(ref["eer"], abs=1e-12)
    assert (s.fmr100, s.fmr100_th) == pytest.approx(ref["fmr100"])
    assert (s.fmr1000, s.fmr1000_th) == pytest.approx(ref["fmr1000"])


def test_fmr100_known_answer():
    impostor = np.arange(1000) / 1000.0  # FMR at threshold 0.990 is exactly 10/1000
    genuine = np.array([0.5, 0.98, 0.99, 0.995, 1.2])
    s = metrics.eer_stats(genuine, impostor)
    assert s.fmr100_th == 0.99 and s.fmr100 == pytest.approx(2 / 5)  # 0.5 and 0.98 fall below
    assert s.fmr1000_th == 0.999 and s.fmr1000 == pytest.approx(4 / 5)
    assert s.fnmr_near(0.9901) == pytest.approx(2 / 5) and s.fnmr_near(0.9909) == pytest.approx(3 / 5)


def test_error_rates_need_both_classes():
    with pytest.raises(metrics.MetricsError, match="0 impostor"):
        metrics.eer_stats([0.1, 0.2], [])


# ---------------------------------------------------------------- AUERC family


def test_auerc_constant_and_linear_known_answers():
    r = np.arange(0, 1.0, 0.01)
    areas = metrics.auerc_family(r, np.full(100, 0.1))
    assert areas["AUERC"] == pytest.approx(0.099)
    assert areas["AUERC30"] == pytest.approx(0.029)
    assert areas["AUC"] == pytest.approx(0.099 - 0.005)
    assert areas["AUC30"] == pytest.approx(0.029 - 0.1 * 0.1 / 2)
    e = 0.5 - 0.4 * r  # e0 = 0.5 > 0.3: AUC30 subtracts e0 * 0.3 / 2
    areas = metrics.auerc_family(r, e)
    assert areas["AUERC"] == pytest.approx(trapezoid(e, r))
    assert areas["AUERC30"] == pytest.approx(trapezoid(e[:30], r[:30]))
    assert areas["AUC30"] == pytest.approx(trapezoid(e[:30], r[:30]) - 0.5 * 0.3 / 2)


# ---------------------------------------------------------------- TAR@FAR


def test_tar_at_far_known_answer(rng):
    impostor = rng.permutation(np.arange(1000) / 1000.0)
    genuine = rng.uniform(0.95, 1.0, 400)
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(400, bool), np.zeros(1000, bool)])
    tars, fars, thresholds = metrics.tar_at_far(scores, labels, [1e-4, 1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(thresholds[1:], [0.999, 0.990, 0.900])
    assert thresholds[0] == pytest.approx(0.999 + 1e-8)  # no false accept allowed
    np.testing.assert_allclose(fars, [0, 1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(tars, [np.mean(genuine >= t) for t in thresholds])


# ---------------------------------------------------------------- percentiles and keep sets


def test_legacy_percentile():
    np.testing.assert_allclose(risk.legacy_percentile([4, 1, 3, 2], [0, 50, 90, 100]), [1, 2.5, 3.7, 4])
    x = np.random.default_rng(3).random(1001).astype(np.float32)
    np.testing.assert_allclose(risk.legacy_percentile(x, [0, 10, 33.3, 90, 100]),
                               np.percentile(x.astype(np.float64), [0, 10, 33.3, 90, 100]), rtol=1e-14)
    assert risk.legacy_percentile(x, 50).dtype == np.float64


def test_distinct_uncertainties_keep_exact_fractions(rng):
    fused = rng.permutation(np.linspace(0.1, 0.9, 700)).astype(np.float32)
    scores, labels = _pairs(rng, 700)
    rows = risk.risk_controlled_table({"cosine": scores}, labels, fused)
    assert [r.kept for r in rows] == [700, 630, 560, 490]
    assert [r.risk_factor for r in rows] == [0.0, 0.1, 0.2, 0.3]


def test_ties_at_threshold_are_kept():
    fused = np.array([0.1] * 5 + [0.5] * 10 + [0.9] * 5, np.float32)  # 90th percentile lands on 0.9
    scores, labels = _pairs(np.random.default_rng(1), 20)
    rows = risk.risk_controlled_table({"cosine": scores}, labels, fused, risk_factors=(0.1, 0.3))
    assert rows[0].kept == 20 and rows[1].kept == 15


def test_risk_table_matches_reference(rng):
    scores, labels = _pairs(rng, 400)
    other = scores + rng.normal(0, 0.05, 400).astype(np.float32)
    fused = rng.gamma(3, 0.1, 400).astype(np.float32)
    rows = risk.risk_controlled_table({"cosine": scores, "fastmls": other}, labels, fused)
    for row in rows:
        thr = np.percentile(fused.astype(np.float64), (1 - row.risk_factor) * 100)
        keep = fused <= np.float32(thr)
        assert row.kept == keep.sum() and row.risk_threshold == pytest.approx(thr, rel=1e-14)
        assert (row.results["cosine"].accuracy, row.results["cosine"].threshold) == \
            pytest.approx(_loop_ten_fold(scores[keep], labels[keep]))
        assert row.results["fastmls"].accuracy == pytest.approx(_loop_ten_fold(other[keep], labels[keep])[0])
    # rejecting uncorrelated uncertainty keeps the accuracy near its level; rejecting by |score - middle| helps
    helpful = -np.abs(scores - np.median(scores))
    rows = risk.risk_controlled_table({"cosine": scores}, labels, helpful)
    assert rows[-1].results["cosine"].accuracy > rows[0].results["cosine"].accuracy


# ---------------------------------------------------------------- reject (FNMR) table


def test_reject_error_table_matches_reference(rng):
    scores, labels = _pairs(rng, 600, shift=3)
    fused = rng.gamma(3, 0.1, 600).astype(np.float32)
    table = risk.reject_error_table(scores, labels, fused)
    r_all = np.arange(0, 1.0, 0.01)
    errors, fixed = [], None
    for r in r_all:
        keep = fused <= np.float32(np.percentile(fused.astype(np.float64), (1 - r) * 100))
        ref = _brute_stats(scores[keep & labels], scores[keep & ~labels])
        thr, _, fnmr = ref["rates"]
        if fixed is None:
            fixed = (ref["fmr100"][1], ref["fmr1000"][1])
            e100, e1000 = ref["fmr100"][0], ref["fmr1000"][0]
        else:
            e100 = fnmr[int(np.argmin(np.abs(np.array(thr) - fixed[0])))]
            e1000 = fnmr[int(np.argmin(np.abs(np.array(thr) - fixed[1])))]
        errors.append(e1000)
        printed = [row for row in table.rows if row["reject_factor"] == r]
        if printed:
            assert printed[0]["kept"] == keep.sum()
            assert printed[0]["eer"] == pytest.approx(ref["eer"])
            assert (printed[0]["fmr100"], printed[0]["fmr1000"]) == pytest.approx((e100, e1000))
    assert [row["reject_factor"] for row in table.rows] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    np.testing.assert_allclose(table.errors, errors)
    assert table.mean_error == pytest.approx(np.mean(errors))
    assert table.areas["AUERC"] == pytest.approx(trapezoid(errors, r_all))
    assert table.areas["AUERC30"] == pytest.approx(trapezoid(errors[:30], r_all[:30]))
    assert table.areas["AUC"] == pytest.approx(trapezoid(errors, r_all) - errors[0] ** 2 / 2)


# ---------------------------------------------------------------- ScaleFace-style reject verification


def test_reject_verification_curves_match_reference(rng):
    scores, labels = _pairs(rng, 2000, shift=4)
    uncertainty = np.round(rng.random(2000), 2)  # ties: the stable order keeps the earlier pair first
    portions, fars = (0.0, 0.1, 0.25, 0.5), (1e-3, 1e-2, 1e-1)
    curves = risk.reject_verification_curves(scores, labels, uncertainty, portions, fars)
    order = sorted(range(2000), key=lambda i: (uncertainty[i], i))
    for j, r in enumerate(portions):
        kept = order[: int(2000 * (1 - r))]
        imp = sorted((float(scores[i]) for i in kept if not labels[i]), reverse=True)
        gen = [float(scores[i]) for i in kept if labels[i]]
        for far in fars:
            k = int(round(len(imp) * far))
            t = imp[0] + 1e-8 if k == 0 else imp[k - 1]
            assert curves[far][j] == pytest.approx(sum(g >= t for g in gen) / len(gen))
