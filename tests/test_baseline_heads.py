"""Baseline heads (PCNet/IDQ probability head, MC dropout, ScaleFace composition) vs numpy references."""
import keras
import numpy as np
import pytest

from probface_tf.methods import MethodError, build_model as build_baseline
from probface_tf.methods.mc_dropout import MCDropoutHead, copy_bottleneck
from probface_tf.models.probability_head import BaselineHeadError, ProbabilityHead
from probface_tf.models.heads import ScaleHead
from probface_tf.models.resface import build_resface

TINY = dict(image_size=(32, 32), embedding_size=8, backbone_filters=[4, 8, 8, 8], backbone_blocks=[1, 1, 1, 1])


def numpy_head(x, w1, b1, gamma, beta, mean, var, w2, b2, eps=1e-5):
    h = x.reshape(len(x), -1) @ w1 + b1
    h = np.maximum((h - mean) / np.sqrt(var + eps) * gamma + beta, 0)
    return 1 / (1 + np.exp(-(h @ w2 + b2)))


def prob_head_with_random_weights(rng, in_shape=(3, 4), fc1=5, wd=5e-4):
    head = ProbabilityHead(fc1_size=fc1, weight_decay=wd)
    head.build((None, *in_shape))
    flat = int(np.prod(in_shape))
    values = dict(w1=rng.normal(size=(flat, fc1)), b1=rng.normal(size=fc1), gamma=rng.uniform(0.5, 2, fc1),
                  beta=rng.normal(size=fc1), mean=rng.normal(size=fc1), var=rng.uniform(0.5, 2, fc1),
                  w2=rng.normal(size=(fc1, 1)) * 0.5, b2=rng.normal(size=1))
    head.fc1.kernel.assign(values["w1"])
    head.fc1.bias.assign(values["b1"])
    head.fc1_bn.gamma.assign(values["gamma"])
    head.fc1_bn.beta.assign(values["beta"])
    head.fc1_bn.moving_mean.assign(values["mean"])
    head.fc1_bn.moving_variance.assign(values["var"])
    head.fc2.kernel.assign(values["w2"])
    head.fc2.bias.assign(values["b2"])
    return head, values


def test_probability_head_inference_matches_numpy(rng):
    head, v = prob_head_with_random_weights(rng)
    x = rng.normal(size=(7, 3, 4)).astype(np.float32)
    got = head(x, training=False).numpy()
    assert got.shape == (7, 1)
    np.testing.assert_allclose(got, numpy_head(x, **v), rtol=1e-5, atol=1e-6)
    assert np.all((got > 0) & (got < 1))


def test_probability_head_training_uses_batch_statistics_like_torch(rng):
    head, v = prob_head_with_random_weights(rng)
    x = rng.normal(size=(6, 3, 4)).astype(np.float32)
    h = x.reshape(6, -1) @ v["w1"] + v["b1"]
    batch_mean, batch_var = h.mean(0), h.var(0)  # normalisation: biased variance
    expected = numpy_head(x, **{**v, "mean": batch_mean, "var": batch_var})
    np.testing.assert_allclose(head(x, training=True).numpy(), expected, rtol=1e-4, atol=1e-5)
    # torch BatchNorm1d running stats: momentum 0.1 and the unbiased variance
    np.testing.assert_allclose(head.fc1_bn.moving_mean.numpy(), 0.9 * v["mean"] + 0.1 * batch_mean, rtol=1e-5)
    np.testing.assert_allclose(head.fc1_bn.moving_variance.numpy(),
                               0.9 * v["var"] + 0.1 * h.var(0, ddof=1), rtol=1e-5)


def test_probability_head_weight_decay_covers_every_parameter(rng):
    head, v = prob_head_with_random_weights(rng, wd=3e-3)
    head(rng.normal(size=(2, 3, 4)).astype(np.float32))
    params = [v["w1"], v["b1"], v["gamma"], v["beta"], v["w2"], v["b2"]]  # torch SGD decays all of them
    expected = 3e-3 / 2 * sum(np.sum(np.square(p)) for p in params)
    assert float(sum(head.losses)) == pytest.approx(expected, rel=1e-5)
    no_decay = ProbabilityHead(fc1_size=5, weight_decay=0.0)
    no_decay.build((None, 12))
    assert no_decay.losses == []


def test_probability_head_initialisation_is_torch_linear(rng):
    keras.utils.set_random_seed(0)
    head = ProbabilityHead(fc1_size=64)
    head.build((None, 400))
    for dense, fan_in in ((head.fc1, 400), (head.fc2, 64)):
        bound = 1 / np.sqrt(fan_in)
        for w in (dense.kernel.numpy(), dense.bias.numpy()):
            assert np.abs(w).max() <= bound
        kernel = dense.kernel.numpy().ravel()
        assert np.abs(kernel).max() > 0.95 * bound  # uniform over the whole interval
        assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)


def test_probability_head_config_round_trip(rng):
    head, _ = prob_head_with_random_weights(rng)
    clone = ProbabilityHead.from_config(head.get_config())
    assert (clone.fc1_size, clone.weight_decay, clone.name) == (5, 5e-4, "UncertaintyModule")


def mc_head(rng, dim=16, rate=0.5, samples=40, seed=7, mean=None):
    head = MCDropoutHead(embedding_size=dim, rate=rate, samples=samples, seed=seed)
    head.build((None, dim))
    head.bottleneck.kernel.assign(np.eye(dim))
    bn = head.bottleneck_bn
    bn.moving_mean.assign(np.zeros(dim) if mean is None else mean)
    bn.moving_variance.assign(np.ones(dim))
    return head


def test_mc_dropout_samples_are_masked_copies_of_the_input(rng):
    x = rng.uniform(0.5, 2.0, size=(3, 16)).astype(np.float32)  # no zeros: a dropped unit is exactly 0
    samples = mc_head(rng).sample(x).numpy()
    assert samples.shape == (40, 3, 16)
    kept = samples != 0
    assert 0.4 < kept.mean() < 0.6  # rate 0.5
    ratio = np.where(kept, samples / x[None], np.nan)  # each sample is c * (x * mask), one c per sample
    spread = np.nanmax(ratio, axis=2) - np.nanmin(ratio, axis=2)
    assert np.nanmax(spread) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(samples, axis=2), 1.0, rtol=1e-5)
    assert len({m.tobytes() for m in kept.reshape(40, -1)}) == 40  # T different masks


def test_mc_dropout_uncertainty_matches_numpy_on_the_same_samples(rng):
    x = rng.normal(size=(5, 16)).astype(np.float32)
    shift = rng.normal(size=16)
    samples = mc_head(rng, mean=shift).sample(x).numpy().astype(np.float64)
    mu, uncertainty = mc_head(rng, mean=shift)(x)  # same seed: the same T masks
    mean = samples.mean(0)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    cos = np.einsum("tnd,nd->tn", samples, mean)
    np.testing.assert_allclose(mu.numpy(), mean, atol=1e-5)
    np.testing.assert_allclose(uncertainty.numpy()[:, 0], np.sqrt(np.mean((cos - cos.mean(0)) ** 2, axis=0)),
                               rtol=1e-4, atol=1e-7)
    assert np.all(uncertainty.numpy() > 0)


def test_mc_dropout_calls_draw_fresh_masks(rng):
    head = mc_head(rng, samples=5)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    first, second = head(x)[1].numpy(), head(x)[1].numpy()
    assert not np.array_equal(first, second)


def test_mc_dropout_rate_zero_is_the_deterministic_embedding(rng):
    backbone = build_resface("resface64_relu", TINY["image_size"], 8)
    keras.utils.set_random_seed(3)
    model = build_baseline("mc_dropout", backbone=backbone, mc_dropout_rate=0.0, mc_samples=4)
    copy_bottleneck(model)
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    out = model(images, training=False)
    np.testing.assert_array_equal(out["uncertainty"].numpy(), np.zeros((3, 1), np.float32))
    np.testing.assert_allclose(out["mu"].numpy(), backbone(images)["mu"].numpy(), atol=1e-6)


def test_mc_dropout_model_copies_the_bottleneck_and_only_repeats_it(rng):
    backbone = build_resface("resface64_relu", TINY["image_size"], 8)
    for layer in (backbone.get_layer("Bottleneck"), backbone.get_layer("Bottleneck.BatchNorm")):
        for w in layer.weights:
            w.assign(rng.uniform(0.5, 1.5, size=w.shape))
    model = build_baseline("mc_dropout", backbone=backbone, mc_dropout_rate=0.3, mc_samples=64, seed=1)
    copy_bottleneck(model)
    head = model.get_layer("UncertaintyModule")
    np.testing.assert_array_equal(head.bottleneck.kernel.numpy(), backbone.get_layer("Bottleneck").kernel.numpy())
    assert model.trainable_weights == []
    images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    out = model(images)
    flat = keras.Model(backbone.input, backbone.get_layer("Logits.Flatten").output)(images).numpy()
    # the spread of 64 dropout passes over the bottleneck, from numpy on the flattened features
    bn = backbone.get_layer("Bottleneck.BatchNorm")
    gamma, beta, mean, var = (w.numpy() for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    kernel = backbone.get_layer("Bottleneck").kernel.numpy()
    deterministic = ((flat @ kernel) - mean) / np.sqrt(var + 1e-3) * gamma + beta
    deterministic /= np.linalg.norm(deterministic, axis=1, keepdims=True)
    cos_to_plain = np.sum(out["mu"].numpy() * deterministic, axis=1)
    assert np.all(cos_to_plain > 0.95)  # inverted dropout: the mean direction stays near the plain embedding
    assert np.all(out["uncertainty"].numpy() > 0)


def test_probability_model_outputs_backbone_mu_and_head_p(rng):
    model = build_baseline("pcnet", **TINY, fc1_size=6)
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    out = model(images, training=False)
    backbone, head = model.get_layer("Resface"), model.get_layer("UncertaintyModule")
    ends = backbone(images, training=False)
    np.testing.assert_allclose(out["mu"].numpy(), ends["mu"].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["uncertainty"].numpy(), head(ends["conv_final"], training=False).numpy(),
                               atol=1e-6)
    assert [v.path.split("/")[0] for v in model.trainable_weights] == ["UncertaintyModule"] * 6


@pytest.mark.parametrize("head_type", ["idq", "mc_dropout"])
def test_baseline_model_saves_and_loads(head_type, rng, tmp_path):
    model = build_baseline(head_type, **TINY, fc1_size=6, mc_samples=3, seed=5)
    copy_bottleneck(model)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    before = model(images)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    after = loaded(images)
    for key in ("mu", "uncertainty"):  # the seed generator's state is saved too: same dropout masks
        np.testing.assert_allclose(after[key].numpy(), before[key].numpy(), atol=1e-6)


def test_scaleface_run_becomes_an_uncertainty_model(rng, tmp_path):
    from probface_tf.methods.scaleface import scaleface_model

    backbone = build_resface("resface64_relu", TINY["image_size"], 8)
    features = keras.Input(backbone.output["conv_final"].shape[1:])
    scale_head = ScaleHead(hidden_units=4, activation="exp", batch_norm=False)
    scale_model = keras.Model(features, scale_head(features))
    backbone.save(tmp_path / "backbone.keras")
    scale_model.save(tmp_path / "scale_head.keras")
    model = scaleface_model(str(tmp_path))
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    out = model(images)
    ends = backbone(images)
    np.testing.assert_allclose(out["uncertainty"].numpy(), 1 / scale_model(ends["conv_final"]).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["mu"].numpy(), ends["mu"].numpy(), atol=1e-6)


def test_scaleface_scale_head_on_mu_and_underflowing_scales(rng, tmp_path):
    """A scale head reading mu (as the ScaleFace demo recipe configures it) is found through the run's
    config.py; a scale that underflows to 0 gives a large finite uncertainty, never inf."""
    from probface_tf.methods.scaleface import scaleface_model
    from probface_tf.models.heads import SCALE_FLOOR, uncertainty_from_scale

    backbone = build_resface("resface64_relu", TINY["image_size"], 8)
    features = keras.Input(backbone.output["mu"].shape[1:])
    scale_model = keras.Model(features, ScaleHead(hidden_units=4, activation="exp", batch_norm=False)(features))
    backbone.save(tmp_path / "backbone.keras")
    scale_model.save(tmp_path / "scale_head.keras")
    (tmp_path / "config.py").write_text("stage = 'backbone'\nuncertainty_module_input = 'mu'\n")
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    out = scaleface_model(str(tmp_path))(images)
    np.testing.assert_allclose(out["uncertainty"].numpy(), 1 / scale_model(backbone(images)["mu"]).numpy(),
                               rtol=1e-5)
    u = uncertainty_from_scale(np.array([[0.0], [2.0]], np.float32)).numpy()
    assert np.all(np.isfinite(u)) and u[0, 0] == pytest.approx(1 / SCALE_FLOOR) and u[1, 0] == 0.5


@pytest.mark.parametrize("make, needle", [
    (lambda: MCDropoutHead(8, rate=1.0), "rate must be in [0, 1)"),
    (lambda: MCDropoutHead(8, samples=1), "samples must be >= 2"),
    (lambda: ProbabilityHead(fc1_size=0), "fc1_size must be >= 1"),
    (lambda: build_baseline("pcnet", head_input="Conv9", **TINY), "'Conv9' is not a backbone end point"),
    (lambda: MCDropoutHead(8, flat_size=99).build((None, 12)), "flat_size 99 exceeds the feature width 12"),
    (lambda: ProbabilityHead().build((None, None)), "fully known feature dimensions"),
])
def test_bad_options_are_clear_errors(make, needle):
    with pytest.raises(BaselineHeadError, match=__import__("re").escape(needle)):
        make()


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(MethodError, match=r"head_type must be one of \['idq', 'mc_dropout', 'pcnet', 'probface'\], "
                                          r"got 'sphereface'"):
        build_baseline("sphereface", **TINY)
    with pytest.raises(MethodError, match="head_type must be one of .* got 'arcface'"):  # a stage-1 margin head
        build_baseline("arcface", **TINY)
