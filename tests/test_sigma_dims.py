"""D-dim sigma_sq on a .bin: the original's verification (FastMLS on the first column) and risk table (percentile
over all P x D values, rows repeated once per kept value), against loops; ours (D-dim MLS, harmonic mean) kept."""
import numpy as np
import pytest

from probface_tf.eval import risk
from probface_tf.eval.runner import evaluate_features
from references import ten_fold_loop

P, D = 80, 8
S = D  # a D-dim sigma_sq has one variance per embedding dimension


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(11)
    issame = np.arange(P) % 2 == 0
    base = rng.normal(size=(P, D))
    other = np.where(issame[:, None], base + rng.normal(0, 0.6, (P, D)), rng.normal(size=(P, D)))
    mu = np.empty((2 * P, D), np.float32)
    mu[0::2], mu[1::2] = base, other
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma = rng.uniform(0.1, 1.0, (2 * P, S)).astype(np.float32)
    return mu, sigma, issame


def _percentile(values, q):  # linear interpolation written out
    x = np.sort(values.ravel().astype(np.float64))
    i = q / 100 * (x.size - 1)
    lo = int(np.floor(i))
    return x[lo] + (x[min(lo + 1, x.size - 1)] - x[lo]) * (i - lo)


def test_original_mode_matches_the_original_loops(feats):
    mu, s, issame = feats
    result, arrays = evaluate_features(mu, s, issame, "x", sigma_dims="original")
    assert result["sigma"] == "fastmls" and result["sigma_dims"]["mode"] == "original"
    a, b = mu[0::2].astype(np.float64), mu[1::2].astype(np.float64)
    both = s[0::2, 0].astype(np.float64) + s[1::2, 0]
    fast = -(2 * (1 - np.sum(a * b, axis=1)) / (1e-10 + both) + np.log(both))
    np.testing.assert_allclose(arrays["fastmls"], fast, rtol=1e-5, atol=1e-6)  # float32 features
    assert result["verification"]["fastmls"]["accuracy"] == pytest.approx(ten_fold_loop(arrays["fastmls"], issame)[0])
    fused = np.maximum(s[0::2], s[1::2])  # [P, S]
    cos = np.sum(a * b, axis=1)
    for row, r in zip(result["risk"], risk.RISK_FACTORS):
        thr = _percentile(fused, (1 - r) * 100)
        keep = [k for k in range(P) for j in range(S) if fused[k, j] <= np.float32(thr)]  # np.where(...)[0]
        assert row["risk_threshold"] == pytest.approx(thr, rel=1e-12)
        assert row["kept"] == len(keep) and row["total"] == P
        assert row["cosine"]["accuracy"] == pytest.approx(ten_fold_loop(cos[keep], issame[keep])[0], abs=1e-6)


def test_full_mode_keeps_ddim_mls_and_the_harmonic_mean(feats):
    mu, s, issame = feats
    result, arrays = evaluate_features(mu, s, issame, "x")
    assert result["sigma"] == "mls" and result["sigma_dims"]["mode"] == "full"
    u = 1 / np.mean(1 / (s.astype(np.float64) + 1e-6), axis=1)
    fused = np.maximum(u[0::2], u[1::2])
    kept = int(np.sum(fused <= _percentile(fused, 90)))
    assert result["risk"][1]["kept"] == kept and result["risk"][1]["total"] == P
    one_d, _ = evaluate_features(mu, s[:, :1], issame, "x", sigma_dims="original")
    assert "sigma_dims" not in one_d  # a 1-d sigma_sq is the same in both modes
    with pytest.raises(ValueError, match="sigma_dims"):
        evaluate_features(mu, s, issame, "x", sigma_dims="half")
