"""Keras model vs the original graph rebuilt in tf.compat.v1: real TF1 checkpoints, converted by name."""
import numpy as np
import pytest

from probface_tf.convert import CheckpointError, find_checkpoint, load_tf1_checkpoint
from probface_tf.models.probface import backbone_of, head_of
from probface_tf.models.resface import BackboneSpec
from probface_tf.tf1_reference import TF1ProbFace

VARIANTS = {
    "resface64_1d": ("resface64_relu", 1),
    "resface64_fusion": ("resface64_relu_m", 1),
    "resface64_half_width": ("resface64s2_relu", 1),
    "resface64_ddim": ("resface64_relu", 256),
}


def _count(variables, trainable):
    return sum(int(np.prod(v.shape)) for v in variables if v.trainable == trainable)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_checkpoint_matches_original_graph(variant, tmp_path):
    network, out_size = VARIANTS[variant]
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (3, 96, 96, 3)).astype(np.float32)
    graph = TF1ProbFace(network, (96, 96), 256, out_size)
    graph.randomize(rng, calibrate_images=images)
    ref = graph.run(images)
    graph.save(str(tmp_path / "model-20200101-000000.ckpt"), global_step=12000)

    model = load_tf1_checkpoint(str(tmp_path), freeze_backbone=False)
    out = model(images, training=False)
    assert np.abs(out["mu"].numpy() - ref["mu"]).max() <= 1e-5
    assert np.abs(out["log_sigma_sq"].numpy() - ref["log_sigma_sq"]).max() <= 1e-4
    assert np.allclose(out["sigma_sq"].numpy(), ref["sigma_sq"], rtol=1e-4)
    # Not a trivial match: the head's output varies across inputs.
    assert np.ptp(ref["log_sigma_sq"]) > 1e-3

    # Same parameter counts: TF1 variables (all trainable in the original's collection) vs Keras.
    tf1 = graph.get_weights()
    keras_vars = backbone_of(model).weights + head_of(model).weights
    assert sum(v.size for v in tf1.values()) == sum(int(np.prod(v.shape)) for v in keras_vars)
    moving = sum(v.size for n, v in tf1.items() if "moving_" in n)
    assert _count(keras_vars, trainable=False) == moving
    assert _count(keras_vars, trainable=True) == sum(v.size for v in tf1.values()) - moving


def test_head_parameter_counts_match_spec():
    # ORIGINAL_SPEC §10: 4,719,362 trainable + 514 moving stats (1-d head @96); 4,784,642 for D = 256.
    for out_size, trainable in ((1, 4_719_362), (256, 4_784_642)):
        graph = TF1ProbFace("resface64_relu", (96, 96), 256, out_size)
        model = load_tf1_checkpoint_roundtrip(graph)
        head = head_of(model)
        assert _count(head.weights, True) == trainable
        assert _count(head.weights, False) == 512 + 2 * out_size


def load_tf1_checkpoint_roundtrip(graph):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        graph.save(f"{d}/ckpt", global_step=0)
        return load_tf1_checkpoint(d)


def test_backbone_only_checkpoint_needs_permission(tmp_path):
    rng = np.random.default_rng(2)
    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
    images = rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
    base = TF1ProbFace(spec, (32, 32), 16, with_head=False)
    base.randomize(rng)
    base.save(str(tmp_path / "ckpt"), global_step=3)
    with pytest.raises(CheckpointError, match="no UncertaintyModule"):
        load_tf1_checkpoint(str(tmp_path))
    model = load_tf1_checkpoint(str(tmp_path), exclude_restore_scopes=["center_loss", "centers", "UncertaintyModule"])
    assert np.abs(model(images)["mu"].numpy() - base.run(images, fetch=("mu",))["mu"]).max() <= 1e-5
    head = head_of(model)  # freshly initialised head: original initial values
    assert float(head.scale_and_shift.alpha.numpy()) == pytest.approx(0.1)
    assert float(head.scale_and_shift.gamma.numpy()) == pytest.approx(-1.0)


def test_mismatched_checkpoint_lists_variables(tmp_path):
    from probface_tf.convert import assign_checkpoint, read_checkpoint
    from probface_tf.models.probface import build_probface

    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
    graph = TF1ProbFace(spec, (32, 32), 16, 1)
    prefix = graph.save(str(tmp_path / "ckpt"), global_step=1)
    values = read_checkpoint(prefix)
    other = build_probface(image_size=(32, 32), embedding_size=16, backbone_filters=(8, 8, 16, 32),
                           backbone_blocks=(1, 2, 1, 1))
    with pytest.raises(CheckpointError) as err:
        assign_checkpoint(other, values)
    text = str(err.value)
    assert "missing from the checkpoint" in text and "Resface/Conv2/Conv_2/Conv_2_2/Conv/weights" in text
    assert "shape mismatch" in text and "Resface/Conv4/Conv4_pre/weights" in text


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        find_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match=r"no TF1 checkpoint \(\*\.index\)"):
        find_checkpoint(str(tmp_path))


def test_convert_cli_writes_keras_file(tmp_path):
    import keras

    from probface_tf.convert import run

    rng = np.random.default_rng(3)
    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1), fusion=True)
    images = rng.normal(0, 1, (2, 32, 32, 3)).astype(np.float32)
    graph = TF1ProbFace(spec, (32, 32), 16, 1)
    graph.randomize(rng, calibrate_images=images)
    graph.save(str(tmp_path / "model-x.ckpt"), global_step=5)
    out = tmp_path / "model.keras"
    assert run([str(tmp_path), "--out", str(out)]) == 0
    model = keras.saving.load_model(str(out))
    np.testing.assert_allclose(model(images)["log_sigma_sq"].numpy(), graph.run(images)["log_sigma_sq"], atol=1e-4)
    assert run([str(tmp_path / "missing"), "--out", str(out)]) == 2
