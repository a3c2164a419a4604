"""Keras model structure, serialization round trips, the head's TF1 batch-norm semantics, bad input."""
import numpy as np
import pytest
import tensorflow as tf

import keras
from probface_tf.models.probface import backbone_of, build_probface, head_of, predict
from probface_tf.models.resface import BackboneSpec, build_resface, conv_final_size, tf1_variable_map
from probface_tf.models.uncertainty import UncertaintyModule
from tf1_reference import TF1ProbFace

TINY = dict(image_size=(32, 32), embedding_size=16, backbone_filters=(8, 8, 16, 16), backbone_blocks=(1, 1, 1, 1))


@pytest.mark.parametrize("network,side,size", [
    ("resface64_relu", 96, 18432), ("resface64_relu_m", 96, 19392), ("resface64s2_relu", 96, 9216),
    ("resface64s2_relu_m", 96, 9696), ("resface64_relu", 112, 25088), ("resface64_relu_m", 112, 26048),
    ("resface64s2_relu", 112, 12544), ("resface64s2_relu_m", 112, 13024)])
def test_conv_final_sizes_match_spec(network, side, size):
    assert conv_final_size(network, (side, side)) == size


def test_resface64_at_112_end_points_and_parameters():
    model = build_resface("resface64_relu", (112, 112))
    shapes = {k: tuple(v.shape[1:]) for k, v in model.output.items()}
    assert shapes == {"Conv1": (56, 56, 64), "Conv2": (28, 28, 128), "Conv3": (14, 14, 256), "Conv4": (7, 7, 512),
                      "conv_final": (25088,), "mu": (256,)}
    names = tf1_variable_map(model)
    assert len(names) == 325
    assert names["Resface/Bottleneck/weights"].shape == (25088, 256)
    assert "Resface/Conv3/Conv_3/Conv_3_16/Conv_1/BatchNorm/moving_variance" in names
    conv = sum(int(np.prod(v.shape)) for n, v in names.items() if n.endswith("/weights") and "Bottleneck" not in n)
    assert conv == 37_160_640


def test_image_size_must_be_multiple_of_16():
    with pytest.raises(ValueError, match="multiples of 16"):
        build_resface("resface64_relu", (100, 100))


def test_fresh_head_initial_values_and_sigma_floor():
    for out_size, shift in ((1, -1.0), (16, -7.0)):
        head = UncertaintyModule(out_size)
        feats = np.random.default_rng(0).normal(0, 1, (5, 40)).astype(np.float32)
        log_s = head(feats).numpy()
        assert log_s.shape == (5, out_size)
        assert float(head.scale_and_shift.alpha.numpy()) == pytest.approx(0.1)
        assert float(head.scale_and_shift.gamma.numpy()) == shift
    head.scale_and_shift.gamma.assign(-1e3)  # sigma^2 never below the original's epsilon
    assert np.allclose(np.exp(head(feats).numpy()), 1e-6, rtol=1e-5)


def test_head_training_mode_matches_tf1_fused_batch_norm():
    """Training-mode head: batch statistics for the output and Bessel-corrected moving-variance updates."""
    rng = np.random.default_rng(4)
    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
    images = rng.normal(0, 1, (6, 32, 32, 3)).astype(np.float32)
    graph = TF1ProbFace(spec, (32, 32), 16, 1)
    graph.randomize(rng, calibrate_images=images)
    model = build_probface(**TINY)
    from probface_tf.convert import assign_checkpoint

    assign_checkpoint(model, graph.get_weights())
    feed = {graph.images: images, graph.phase_train: True}
    ref = graph.sess.run(graph.log_sigma_sq, feed)
    after = graph.get_weights()
    out = model(images, training=True)["log_sigma_sq"].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    mapping = head_of(model).tf1_variable_map()
    for name in ("fc1/BatchNorm/moving_mean", "fc1/BatchNorm/moving_variance",
                 "fc_log_sigma_sq/BatchNorm/moving_variance"):
        np.testing.assert_allclose(mapping[f"UncertaintyModule/{name}"].numpy(), after[f"UncertaintyModule/{name}"],
                                   rtol=1e-5, atol=1e-6)


def test_frozen_backbone_uses_moving_statistics_even_in_training_mode():
    model = build_probface(**TINY)
    bb = backbone_of(model)
    bn = bb.get_layer("Conv1.Conv1_pre.BatchNorm")
    bn.moving_mean.assign(np.full(8, 0.3, np.float32))
    x = np.random.default_rng(5).normal(0, 1, (4, 32, 32, 3)).astype(np.float32)
    before = [w.numpy().copy() for w in bb.weights]
    a, b = model(x, training=True)["mu"].numpy(), model(x, training=False)["mu"].numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert all(np.array_equal(w0, w.numpy()) for w0, w in zip(before, bb.weights))
    assert all(not w.trainable for w in bb.weights)
    # fc1, its BN beta/gamma, fc_log_sigma_sq, alpha, gamma; the 4 moving statistics complete the original 10.
    assert len(model.trainable_weights) == 6 and len(head_of(model).weights) == 10
    names = sorted(w.path for w in model.trainable_weights)
    assert all(n.startswith("UncertaintyModule/") for n in names)


def test_keras_and_saved_model_round_trips_are_exact(tmp_path):
    model = build_probface(**TINY, uncertainty_module_output_size=16)
    rng = np.random.default_rng(6)
    for w in model.weights:
        w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype(np.float32))
    x = rng.normal(0, 1, (3, 32, 32, 3)).astype(np.float32)
    ref = predict(model, x)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    again = predict(loaded, x)
    for k in ref:
        np.testing.assert_array_equal(again[k], ref[k])
    assert not backbone_of(loaded).trainable

    tf.saved_model.save(model, str(tmp_path / "sm"))
    restored = tf.saved_model.load(str(tmp_path / "sm"))
    out = restored.signatures["serving_default"](inputs=tf.constant(x))
    for k in ref:
        np.testing.assert_array_equal(out[k].numpy(), ref[k])


@pytest.mark.parametrize("shape", [(2, 64, 64, 3), (2, 32, 32, 1), (32, 32, 3)])
def test_bad_image_shapes_name_the_expected_shape(shape):
    model = build_probface(**TINY)
    with pytest.raises(ValueError, match=r"\[N, 32, 32, 3\]"):
        predict(model, np.zeros(shape, np.float32))


def test_unknown_backbone_and_end_point():
    with pytest.raises(ValueError, match="unknown embedding_network"):
        build_probface("models/resnet50.py")
    with pytest.raises(ValueError, match="not a backbone end point"):
        build_probface(**TINY, uncertainty_module_input="Conv5")


def test_folded_inference_model_matches_unfolded():
    from probface_tf.models.inference import fold_batch_norm

    rng = np.random.default_rng(7)
    model = build_probface(**{**TINY, "backbone_blocks": (1, 2, 1, 1)}, embedding_network="resface64_relu_m")
    for w in model.weights:
        noise = rng.uniform(0.5, 1.5, w.shape) if "moving_variance" in w.path else w.numpy() + rng.normal(0, .05, w.shape)
        w.assign(noise.astype(np.float32))
    x = rng.normal(0, 1, (4, 32, 32, 3)).astype(np.float32)
    ref, folded = predict(model, x), predict(fold_batch_norm(model), x)
    for k in ref:
        np.testing.assert_allclose(folded[k], ref[k], atol=2e-6)
    assert not any("BatchNorm" in l.name for l in backbone_of(fold_batch_norm(model)).layers)
    bf16 = predict(fold_batch_norm(model, compute_dtype="bfloat16"), x)
    assert bf16["mu"].dtype == np.float32 and np.abs(bf16["mu"] - ref["mu"]).max() < 0.05


def test_folded_inference_model_keeps_a_stage_output_head():
    # Export folds BN; a head on Conv3 (not conv_final) must stay on Conv3 in the folded copy.
    from probface_tf.models.inference import fold_batch_norm

    rng = np.random.default_rng(8)
    model = build_probface(**TINY, embedding_network="resface64_relu_m", uncertainty_module_input="Conv3")
    for w in model.weights:
        noise = rng.uniform(0.5, 1.5, w.shape) if "moving_variance" in w.path else w.numpy() + rng.normal(0, .05, w.shape)
        w.assign(noise.astype(np.float32))
    folded = fold_batch_norm(model)
    assert tuple(head_of(folded).input.shape[1:]) == (4, 4, 16)
    x = rng.normal(0, 1, (4, 32, 32, 3)).astype(np.float32)
    ref, got = predict(model, x), predict(folded, x)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], atol=2e-6)


def test_head_on_the_images_as_the_original_allows():
    """uncertainty_module_input = 'images': fc1 reads the flattened H*W*3 input (slim.flatten in the original),
    the head's sigma^2 is the UncertaintyModule applied to the images, and BN folding keeps it on the images."""
    from probface_tf.models.inference import fold_batch_norm

    rng = np.random.default_rng(9)
    model = build_probface(**TINY, uncertainty_module_input="images")
    head = head_of(model)
    assert tuple(head.weights[0].shape) == (32 * 32 * 3, 256)  # fc1/weights
    x = rng.normal(0, 1, (4, 32, 32, 3)).astype(np.float32)
    out = predict(model, x)
    np.testing.assert_allclose(out["log_sigma_sq"], head(x, training=False).numpy(), atol=1e-6)
    folded = fold_batch_norm(model)
    assert tuple(head_of(folded).input.shape[1:]) == (32, 32, 3)
    np.testing.assert_allclose(predict(folded, x)["sigma_sq"], out["sigma_sq"], rtol=1e-6)
