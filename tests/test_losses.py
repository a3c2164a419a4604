"""MLS / FastMLS, output constraint and the total ProbFace objective vs explicit numpy loops."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from probface_tf import losses
from probface_tf.losses import LossInputError

WEIGHTS = {"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 1e-3}


def unit_rows(rng, n, d):
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_pairs(mu, sigma_sq):
    """A and L by loops over (i, j) in float64, straight from the formulas."""
    mu, s = np.asarray(mu, np.float64), np.asarray(sigma_sq, np.float64)
    n = len(mu)
    att, neg_mls = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if s.shape[1] == 1:
                fused = s[i, 0] + s[j, 0]
                att[i, j] = 2 * (1 - mu[i] @ mu[j]) / (1e-10 + fused)
                neg_mls[i, j] = att[i, j] + np.log(fused)
            else:
                fused = s[i] + s[j]
                ratio = (mu[i] - mu[j]) ** 2 / (1e-10 + fused)
                att[i, j] = ratio.mean()
                neg_mls[i, j] = (ratio + np.log(fused)).mean()
    return att, neg_mls


def reference_terms(labels, mu, sigma_sq):
    att, neg_mls = reference_pairs(mu, sigma_sq)
    n = len(labels)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    return {"mls": np.mean([neg_mls[p] for p in pos]), "att_pos": np.mean([att[p] for p in pos]),
            "att_neg": np.mean([att[p] for p in neg]), "attention": att}


def reference_oc(sigma_sq, kind, weight):
    s = np.asarray(sigma_sq, np.float64)
    dev = s / s.mean() - 1
    return weight * (np.sum(dev ** 2) if kind == "L2" else np.sum(np.abs(dev)))


@pytest.mark.parametrize("width", [1, 8])
def test_pairwise_attention_and_mls_match_loops(width, rng):
    mu = unit_rows(rng, 7, 8).astype(np.float32)
    sigma_sq = rng.uniform(0.05, 1.0, (7, width)).astype(np.float32)
    att, neg_mls = losses.pairwise_attention_and_mls(mu, sigma_sq)
    ref_att, ref_mls = reference_pairs(mu, sigma_sq)
    np.testing.assert_allclose(att.numpy(), ref_att, rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(neg_mls.numpy(), ref_mls, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("width", [1, 8])
def test_negative_mls_loss_terms_match_loops(width, rng):
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 3])
    mu = unit_rows(rng, 8, 8).astype(np.float32)
    log_s = rng.normal(-1.0, 0.4, (8, width)).astype(np.float32)
    got = losses.negative_mls_loss(labels, mu, log_s)
    ref = reference_terms(labels, mu, np.exp(log_s.astype(np.float64)))
    for key in ("mls", "att_pos", "att_neg"):
        assert float(got[key]) == pytest.approx(ref[key], rel=1e-5), key
    np.testing.assert_allclose(got["attention"].numpy(), ref["attention"], rtol=1e-4, atol=2e-6)


def test_equal_sigma_gives_the_closed_form(rng):
    """All sigma^2 = c: mls = mean_pos(2(1 - cos)) / 2c + log 2c and the output constraint is 0."""
    labels = np.repeat(np.arange(3), 4)
    mu = unit_rows(rng, 12, 16).astype(np.float32)
    c = 0.37
    got = losses.negative_mls_loss(labels, mu, np.full((12, 1), np.log(c), np.float32))
    cos_pos = [mu[i].astype(np.float64) @ mu[j] for i in range(12) for j in range(12)
               if i != j and labels[i] == labels[j]]
    assert float(got["mls"]) == pytest.approx(np.mean(2 * (1 - np.array(cos_pos))) / (2 * c) + np.log(2 * c),
                                              rel=1e-5)
    assert float(losses.output_constraint_loss(np.full((12, 1), c), "L2", 1.0)) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.output_constraint_loss(np.full((12, 1), c), "L1", 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_attention_diagonal_is_zero(rng):
    mu = unit_rows(rng, 5, 32).astype(np.float32)
    att, _ = losses.pairwise_attention_and_mls(mu, rng.uniform(0.1, 1, (5, 1)))
    np.testing.assert_allclose(np.diag(att.numpy()), 0.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_output_constraint_is_a_weighted_sum(kind, rng):
    s = rng.uniform(0.1, 1.0, (6, 3))
    got = float(losses.output_constraint_loss(s, kind, 0.01))
    assert got == pytest.approx(reference_oc(s, kind, 0.01), rel=1e-5)
    # A sum, not a mean: the same batch twice (same mean) doubles it.
    doubled = float(losses.output_constraint_loss(np.concatenate([s, s]), kind, 0.01))
    assert doubled == pytest.approx(2 * got, rel=1e-5)


def test_output_constraint_mean_is_stop_gradient(rng):
    s = rng.uniform(0.1, 1.0, (6, 1))
    var = tf.Variable(s, dtype=tf.float32)
    with tf.GradientTape() as tape:
        loss = losses.output_constraint_loss(var, "L2", 0.5)
    m0 = s.mean()
    np.testing.assert_allclose(tape.gradient(loss, var).numpy(), 0.5 * 2 * (s / m0 - 1) / m0, rtol=1e-4, atol=1e-7)


def reference_total(labels, mu, log_s, weights, oc_type, regu):
    from test_triplet import reference_triplet  # pytest puts tests/ on sys.path

    s = np.exp(np.asarray(log_s, np.float64))
    terms = reference_terms(labels, mu, s)
    total = regu
    if weights["mls_loss"] > 0:
        total += weights["mls_loss"] * terms["mls"]
    if oc_type:
        total += reference_oc(s, oc_type, weights["output_constraint_loss"])
    if weights["discriminate_loss"] > 0:
        total += weights["discriminate_loss"] * reference_triplet(labels, terms["attention"], 3.0)
    return total, terms


@pytest.mark.parametrize("weights, oc_type, keys", [
    (WEIGHTS, "L2", {"a", "att_neg", "att_pos", "atte", "mls", "regu", "s_L2", "s_max", "s_min"}),
    ({"mls_loss": 5.0, "output_constraint_loss": 1e-3, "discriminate_loss": 1e-4}, "L1",
     {"a", "att_neg", "att_pos", "atte", "mls", "regu", "s_L1", "s_max", "s_min"}),
    ({"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 0.0}, "",
     {"a", "att_neg", "att_pos", "mls", "regu", "s_max", "s_min"}),
    ({"mls_loss": 0.0, "output_constraint_loss": 0.0, "discriminate_loss": 0.5}, "L2",
     {"a", "att_neg", "att_pos", "atte", "regu", "s_L2", "s_max", "s_min"}),
])
def test_total_and_watch_list(weights, oc_type, keys, rng):
    labels = np.tile(np.repeat(np.arange(4), 2), 2)  # 4 ids x 4 images, as the doubled batches
    mu = unit_rows(rng, 16, 8).astype(np.float32)
    log_s = rng.normal(-1.0, 0.3, (16, 1)).astype(np.float32)
    total, watch = losses.probface_loss(labels, mu, log_s, weights, oc_type, regularization=0.1267)
    assert set(watch) == keys
    ref, terms = reference_total(labels, mu, log_s, weights, oc_type, 0.1267)
    assert float(total) == pytest.approx(ref, rel=1e-5)
    assert float(watch["a"]) == float(total)
    s = np.exp(log_s.astype(np.float64))
    assert float(watch["s_max"]) == pytest.approx(s.max(), rel=1e-6)
    assert float(watch["s_min"]) == pytest.approx(s.min(), rel=1e-6)
    assert float(watch["att_pos"]) == pytest.approx(terms["att_pos"], rel=1e-5)
    if "mls" in watch:  # unweighted
        assert float(watch["mls"]) == pytest.approx(terms["mls"], rel=1e-5)
    if "s_" + str(oc_type) in watch:  # weighted
        assert float(watch["s_" + oc_type]) == pytest.approx(
            reference_oc(s, oc_type, weights["output_constraint_loss"]), rel=1e-4, abs=1e-9)
    # The documented sum of the watched terms.
    parts = sum(weights[k] * float(watch[w]) for k, w in (("mls_loss", "mls"), ("discriminate_loss", "atte"))
                if w in watch)
    parts += float(watch.get("s_L2", watch.get("s_L1", 0.0))) + float(watch["regu"])
    assert float(total) == pytest.approx(parts, rel=1e-6)


def test_contrastive_metric_matches_loops(rng):
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    mu = unit_rows(rng, 8, 8).astype(np.float32)
    log_s = rng.normal(-1.0, 0.3, (8, 1)).astype(np.float32)
    weights = {"mls_loss": 0.0, "output_constraint_loss": 0.0, "discriminate_loss": 1.0}
    _, watch = losses.probface_loss(labels, mu, log_s, weights, "", metric="contrastive")
    att, _ = reference_pairs(mu, np.exp(log_s.astype(np.float64)))
    pos = [att[i, j] for i in range(8) for j in range(8) if i != j and labels[i] == labels[j]]
    neg = [max(3.0 - att[i, j], 0) for i in range(8) for j in range(8) if labels[i] != labels[j]]
    assert float(watch["atte"]) == pytest.approx(np.mean(pos) + np.mean(neg), rel=1e-5)


def test_gradients_reach_sigma_only(rng):
    labels = np.repeat(np.arange(3), 3)
    mu = tf.Variable(unit_rows(rng, 9, 8), dtype=tf.float32)
    log_s = tf.Variable(rng.normal(-1, 0.3, (9, 1)), dtype=tf.float32)
    with tf.GradientTape() as tape:
        total, _ = losses.probface_loss(labels, mu, log_s, WEIGHTS, "L2")
    grad_mu, grad_s = tape.gradient(total, [mu, log_s])
    assert grad_mu is None
    assert np.all(np.isfinite(grad_s.numpy())) and np.abs(grad_s.numpy()).sum() > 0


def test_mls_gradient_matches_finite_differences(rng):
    labels = np.array([0, 0, 1, 1, 1, 2])
    mu = unit_rows(rng, 6, 4)
    log_s = rng.normal(-1.0, 0.3, (6, 1))
    var = tf.Variable(log_s, dtype=tf.float32)
    with tf.GradientTape() as tape:
        mls = losses.negative_mls_loss(labels, mu.astype(np.float32), var)["mls"]
    grad = tape.gradient(mls, var).numpy()
    h = 1e-6
    for i in range(6):
        up, down = log_s.copy(), log_s.copy()
        up[i] += h
        down[i] -= h
        fd = (reference_terms(labels, mu, np.exp(up))["mls"] - reference_terms(labels, mu, np.exp(down))["mls"]) / (2 * h)
        assert grad[i, 0] == pytest.approx(fd, rel=1e-3, abs=1e-5)


def test_float32_whatever_the_input_dtype(rng):
    labels = np.repeat(np.arange(3), 2)
    mu = unit_rows(rng, 6, 8)
    log_s = rng.normal(-1, 0.3, (6, 1))
    ref, _ = losses.probface_loss(labels, mu.astype(np.float32), log_s.astype(np.float32), WEIGHTS)
    for dtype in (tf.float16, tf.bfloat16, tf.float64):
        total, watch = losses.probface_loss(labels, tf.constant(mu, dtype), tf.constant(log_s, dtype), WEIGHTS)
        assert total.dtype == tf.float32 and all(v.dtype == tf.float32 for v in watch.values())
        assert float(total) == pytest.approx(float(ref), rel=3e-2)


def test_unknown_batch_size_in_tf_function(rng):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 8], tf.float32),
                                  tf.TensorSpec([None, 1], tf.float32)])
    def step(labels, mu, log_s):
        return losses.probface_loss(labels, mu, log_s, WEIGHTS, "L2", regularization=0.5)

    for n in (6, 10):
        labels = np.repeat(np.arange(n // 2), 2)
        mu = unit_rows(rng, n, 8).astype(np.float32)
        log_s = rng.normal(-1, 0.3, (n, 1)).astype(np.float32)
        total, _ = step(labels, mu, log_s)
        assert float(total) == pytest.approx(reference_total(labels, mu, log_s, WEIGHTS, "L2", 0.5)[0], rel=1e-5)


@pytest.mark.parametrize("call, fragment", [
    (lambda: losses.pairwise_attention_and_mls(np.zeros((4, 8)), np.ones((4, 3))), r"1 or D=8 columns"),
    (lambda: losses.pairwise_attention_and_mls(np.zeros((4, 8)), np.ones((5, 1))), "batch size"),
    (lambda: losses.pairwise_attention_and_mls(np.zeros(8), np.ones((4, 1))), r"mu must have shape \[N, D\]"),
    (lambda: losses.negative_mls_loss(np.zeros(3, np.int32), np.zeros((4, 8)), np.ones((4, 1))), "batch size"),
    (lambda: losses.probface_loss([0, 0], np.zeros((2, 4)), np.zeros((2, 1)), {"mls_loss": 1.0}),
     "missing.*output_constraint_loss"),
    (lambda: losses.probface_loss([0, 0], np.zeros((2, 4)), np.zeros((2, 1)), {**WEIGHTS, "mls": 1.0}),
     "unknown.*'mls'"),
    (lambda: losses.probface_loss([0, 0], np.zeros((2, 4)), np.zeros((2, 1)), {**WEIGHTS, "mls_loss": -1}),
     r"loss_weights\['mls_loss'\]"),
    (lambda: losses.probface_loss([0, 0], np.zeros((2, 4)), np.zeros((2, 1)), WEIGHTS, "L3"), "'L3'"),
    (lambda: losses.probface_loss([0, 0], np.zeros((2, 4)), np.zeros((2, 1)), WEIGHTS, metric="hard"), "'hard'"),
    (lambda: losses.output_constraint_loss(np.ones((2, 1)), "abs"), "'abs'"),
])
def test_bad_input_is_named(call, fragment):
    with pytest.raises(LossInputError, match=fragment):
        call()


def test_sigma_width_known_only_at_run_time(rng):
    fn = tf.function(losses.pairwise_attention_and_mls,
                     input_signature=[tf.TensorSpec([None, None]), tf.TensorSpec([None, None])])
    mu = unit_rows(rng, 5, 8).astype(np.float32)
    for width in (1, 8):
        sigma_sq = rng.uniform(0.1, 1.0, (5, width)).astype(np.float32)
        att, neg_mls = fn(mu, sigma_sq)
        ref_att, ref_mls = reference_pairs(mu, sigma_sq)
        np.testing.assert_allclose(att.numpy(), ref_att, rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(neg_mls.numpy(), ref_mls, rtol=1e-4, atol=2e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="sigma_sq must have 1 or D columns"):
        fn(mu, np.ones((5, 3), np.float32))


_MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from probface_tf import losses
    data = json.loads(sys.stdin.read())
    labels, mu, log_s = (np.array(data[k]) for k in ("labels", "mu", "log_s"))
    weights = {"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 1e-3}
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dataset = tf.data.Dataset.from_tensor_slices((labels, mu.astype("float32"), log_s.astype("float32")))
    dist = strategy.experimental_distribute_dataset(dataset.batch(len(labels)))

    @tf.function
    def step(batch):
        def replica(l, m, s):
            ctx = tf.distribute.get_replica_context()
            total, _ = losses.probface_loss(ctx.all_gather(l, 0), ctx.all_gather(m, 0), ctx.all_gather(s, 0),
                                            weights, "L2")
            return total
        return strategy.run(replica, args=batch)

    per_replica = strategy.experimental_local_results(step(next(iter(dist))))
    print(json.dumps([float(t) for t in per_replica]))
""")


def test_mirrored_strategy_on_gathered_tensors(rng):
    """Two logical CPUs, each computing the loss on the all-gathered batch in replica context."""
    labels = np.repeat(np.arange(4), 4)
    mu = unit_rows(rng, 16, 8)
    log_s = rng.normal(-1, 0.3, (16, 1))
    payload = json.dumps({"labels": labels.tolist(), "mu": mu.tolist(), "log_s": log_s.tolist()})
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", _MIRRORED], input=payload, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    totals = json.loads(out.stdout.strip().splitlines()[-1])
    expected = reference_total(labels, mu.astype(np.float32), log_s.astype(np.float32), WEIGHTS, "L2", 0.0)[0]
    assert len(totals) == 2
    for total in totals:
        assert total == pytest.approx(expected, rel=1e-5)


def _mean_or_zero(values):
    """The convention of probface_tf.losses where the original divides by zero (an empty mean): 0."""
    return float(np.mean(values)) if len(values) else 0.0


def reference_edge_total(labels, mu, log_s, weights, metric, regu):
    """Total and unweighted terms by loops, with empty means taken as 0 (the original would give NaN)."""
    from test_triplet import reference_triplet

    s = np.exp(np.asarray(log_s, np.float64))
    att, neg_mls = reference_pairs(mu, s)
    n = len(labels)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if labels[i] != labels[j]]
    terms = {"mls": _mean_or_zero([neg_mls[p] for p in pos]), "att_pos": _mean_or_zero([att[p] for p in pos]),
             "att_neg": _mean_or_zero([att[p] for p in neg])}
    if metric == "triplet_semihard":
        terms["atte"] = reference_triplet(labels, att, 3.0)  # 0 without positives, row minimum without negatives
    else:
        terms["atte"] = terms["att_pos"] + _mean_or_zero([max(3.0 - att[p], 0.0) for p in neg])
    total = (weights["mls_loss"] * terms["mls"] + reference_oc(s, "L2", weights["output_constraint_loss"])
             + weights["discriminate_loss"] * terms["atte"] + regu)
    return total, terms


@pytest.mark.parametrize("metric", ["triplet_semihard", "contrastive"])
@pytest.mark.parametrize("case", ["no_positive_pair", "no_negative_pair"])
@pytest.mark.parametrize("width", [1, 8])
def test_degenerate_batches_stay_finite(case, metric, width, rng):
    n = 6
    labels = np.arange(n) if case == "no_positive_pair" else np.zeros(n, np.int64)
    mu = unit_rows(rng, n, 8).astype(np.float32)
    log_s = tf.Variable(rng.normal(-1.0, 0.3, (n, width)).astype(np.float32))
    weights = {"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 0.5}
    with tf.GradientTape() as tape:
        total, watch = losses.probface_loss(labels, mu, log_s, weights, "L2", metric=metric, regularization=0.1)
    grad = tape.gradient(total, log_s).numpy()
    assert all(np.isfinite(float(v)) for v in watch.values()) and np.isfinite(float(total))
    assert np.all(np.isfinite(grad))
    ref_total, terms = reference_edge_total(labels, mu, log_s.numpy(), weights, metric, 0.1)
    for key, value in terms.items():
        assert float(watch[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert float(total) == pytest.approx(ref_total, rel=1e-5)
    if case == "no_positive_pair":  # the pair terms vanish: only the output constraint, the negatives and regu
        assert float(watch["mls"]) == 0.0 and float(watch["att_pos"]) == 0.0
        assert float(watch["atte"]) == (0.0 if metric == "triplet_semihard" else pytest.approx(terms["atte"]))
        assert float(watch["att_neg"]) > 0
    else:
        assert float(watch["att_neg"]) == 0.0 and float(watch["mls"]) != 0.0
        if metric == "contrastive":  # no hinge term without negatives
            assert float(watch["atte"]) == pytest.approx(float(watch["att_pos"]), rel=1e-6)


@pytest.mark.parametrize("honour,expected", [(False, "triplet_semihard"), (True, "contrastive")])
def test_discriminat_metric_type_is_ignored_unless_honoured(honour, expected):
    """The original reads discriminat_metric_type through an inverted test and always trains triplet_semihard;
    honour_discriminat_metric_type=True uses the recipe's value."""
    from probface_tf.config import load_config
    from probface_tf.train.loop import discriminative_metric

    cfg = load_config("configs/tiny.py", ["discriminat_metric_type=contrastive",
                                          f"honour_discriminat_metric_type={honour}"])
    assert discriminative_metric(cfg) == expected
