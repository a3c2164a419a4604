"""Keras model vs the original graph rebuilt in tf.compat.v1: real TF1 checkpoints, converted by name."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.config import from_dict
from probface_tf.convert import CheckpointError, assign_checkpoint, find_checkpoint, load_tf1_checkpoint
from probface_tf.models.inference import fold_batch_norm
from probface_tf.models.probface import backbone_of, build_probface, head_of
from probface_tf.models.resface import BackboneSpec
from tf1_reference import TF1ProbFace

# variant: (embedding_network, sigma size, input side)
VARIANTS = {
    "resface64_1d": ("resface64_relu", 1, 96),
    "resface64_fusion": ("resface64_relu_m", 1, 96),
    "resface64_half_width": ("resface64s2_relu", 1, 96),
    "resface64_ddim": ("resface64_relu", 256, 96),
    "resface64_1d_112": ("resface64_relu", 1, 112),
    "resface64_half_width_fusion_112": ("resface64s2_relu_m", 1, 112),
}


def _count(variables, trainable):
    return sum(int(np.prod(v.shape)) for v in variables if v.trainable == trainable)


# The bounds the README states. Measured (Xeon with AMX, seeded reference weights): max |dmu| 2.1e-7, max
# |dlog sigma^2| 7.1e-5 over the variants below -- float32 round-off of 64 convs (a few ulp of mu's entries),
# amplified in log sigma^2 by the head's batch norm; both graphs are equally far from a float64 evaluation.
MU_TOL, LOG_SIGMA_SQ_TOL = 5e-7, 1e-4
# evaluate.py --compute_dtype bfloat16 runs the BN-folded backbone in bfloat16 (8-bit mantissa): the README's
# bound on how far that moves mu of ResFace64 @96. Measured max |dmu| 1.5e-3 here (AMX; 1.2e-3 on
# benchmarks/extract.py's two images), 1.8e-3 reported on an AVX-512-BF16 CPU without AMX.
BF16_MU_TOL = 2.5e-3


def _assert_parity(out, ref, record_property):
    d_mu = float(np.abs(out["mu"].numpy() - ref["mu"]).max())
    d_log = float(np.abs(out["log_sigma_sq"].numpy() - ref["log_sigma_sq"]).max())
    record_property("max_abs_dmu", d_mu)  # in --junitxml reports, for tracking the margins
    record_property("max_abs_dlog_sigma_sq", d_log)
    assert d_mu <= MU_TOL and d_log <= LOG_SIGMA_SQ_TOL, (d_mu, d_log)
    assert np.allclose(out["sigma_sq"].numpy(), ref["sigma_sq"], rtol=1e-4)
    # Not a trivial match: the head's output varies across inputs.
    assert np.ptp(ref["log_sigma_sq"]) > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_checkpoint_matches_original_graph(variant, tmp_path, record_property):
    network, out_size, side = VARIANTS[variant]
    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, (3, side, side, 3)).astype(np.float32)
    graph = TF1ProbFace(network, (side, side), 256, out_size)
    graph.randomize(rng, calibrate_images=images)
    ref = graph.run(images)
    graph.save(str(tmp_path / "model-20200101-000000.ckpt"), global_step=12000)

    model = load_tf1_checkpoint(str(tmp_path), freeze_backbone=False)
    assert tuple(model.input.shape[1:]) == (side, side, 3)  # the input size is read off the checkpoint
    _assert_parity(model(images, training=False), ref, record_property)
    if variant == "resface64_1d":
        fast = fold_batch_norm(model, compute_dtype="bfloat16")
        error = float(np.abs(fast(images, training=False)["mu"].numpy() - ref["mu"]).max())
        record_property("max_abs_dmu_bfloat16", error)
        assert 1e-4 < error <= BF16_MU_TOL  # really reduced precision, and within the stated bound

    # Same parameter counts: TF1 variables (all trainable in the original's collection) vs Keras.
    tf1 = graph.get_weights()
    keras_vars = backbone_of(model).weights + head_of(model).weights
    assert sum(v.size for v in tf1.values()) == sum(int(np.prod(v.shape)) for v in keras_vars)
    moving = sum(v.size for n, v in tf1.items() if "moving_" in n)
    assert _count(keras_vars, trainable=False) == moving
    assert _count(keras_vars, trainable=True) == sum(v.size for v in tf1.values()) - moving


def test_head_on_a_stage_output_matches_original_graph(tmp_path, record_property):
    """uncertainty_module_input = 'Conv4' of the fusion net: the head reads the flattened last stage instead of
    conv_final (which would add the pooled stages), in both graphs."""
    rng = np.random.default_rng(4)
    images = rng.normal(0, 1, (3, 96, 96, 3)).astype(np.float32)
    graph = TF1ProbFace("resface64_relu_m", (96, 96), 256, 1, head_input="Conv4")
    graph.randomize(rng, calibrate_images=images)
    ref = graph.run(images)
    assert graph.get_weights()["UncertaintyModule/fc1/weights"].shape == (6 * 6 * 512, 256)

    model = build_probface("resface64_relu_m", (96, 96), uncertainty_module_input="Conv4")
    assign_checkpoint(model, graph.get_weights())
    _assert_parity(model(images, training=False), ref, record_property)

    # Converted with the recipe, the model keeps the fusion backbone and the Conv4 head the shapes cannot tell.
    graph.save(str(tmp_path / "ckpt"), global_step=1)
    cfg = from_dict({"embedding_network": "resface64_relu_m", "uncertainty_module_input": "Conv4"})
    converted = load_tf1_checkpoint(str(tmp_path), cfg)
    assert any(l.name == "conv_final.concat" for l in backbone_of(converted).layers)
    assert tuple(head_of(converted).input.shape[1:]) == (6, 6, 512)
    _assert_parity(converted(images, training=False), ref, record_property)


def test_converter_reads_the_head_end_point_off_the_checkpoint(tmp_path):
    """Without a config, fc1's input width says which end point feeds the head (here Conv3: 4*4*16 = 256)."""
    rng = np.random.default_rng(5)
    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1), fusion=True)
    images = rng.normal(0, 1, (3, 32, 32, 3)).astype(np.float32)
    graph = TF1ProbFace(spec, (32, 32), 16, 1, head_input="Conv3")
    graph.randomize(rng, calibrate_images=images)
    graph.save(str(tmp_path / "ckpt"), global_step=1)
    model = load_tf1_checkpoint(str(tmp_path))
    assert tuple(head_of(model).input.shape[1:]) == (4, 4, 16)
    ref = graph.run(images)
    np.testing.assert_allclose(model(images)["log_sigma_sq"].numpy(), ref["log_sigma_sq"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(model(images)["mu"].numpy(), ref["mu"], atol=1e-6, rtol=0)
    # A recipe naming another end point is a clear clash, not a shape error deep in the assignment.
    cfg = from_dict({"embedding_network": "resface64_relu_m", "backbone_filters": [8, 8, 16, 16],
                     "backbone_blocks": [1, 1, 1, 1], "image_size": [32, 32], "embedding_size": 16})
    with pytest.raises(CheckpointError, match="uncertainty_module_input: config conv_final vs checkpoint Conv3"):
        load_tf1_checkpoint(str(tmp_path), cfg)


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


def _convert_cli(*args):
    """The installed console script in a fresh process, as a user runs it."""
    exe = shutil.which("probface-convert")
    cmd = [exe] if exe else [sys.executable, "-m", "probface_tf.convert"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*cmd, *map(str, args)], env=env, capture_output=True, text=True)


# TensorFlow's own C++ start-up log (absl format, "I0000 00:00:…"), printed on import whatever the tool does.
_TF_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:)")


def _tool_lines(stderr):
    return [l for l in stderr.splitlines() if l.strip() and not _TF_LOG.match(l)]


def test_convert_cli_errors_are_one_line(tmp_path):
    proc = _convert_cli(tmp_path / "missing", "--out", tmp_path / "m.keras")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = _tool_lines(proc.stderr)
    assert lines == [f"probface-convert: error: checkpoint not found: {tmp_path / 'missing'} (no such directory and "
                     f"no {tmp_path / 'missing'}.index)"], proc.stderr
    assert not (tmp_path / "m.keras").exists()


def test_unexpected_checkpoint_variable_is_listed(tmp_path):
    spec = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
    graph = TF1ProbFace(spec, (32, 32), 16, 1)
    with graph.graph.as_default():  # a fifth stage this backbone does not have
        extra = tf.compat.v1.get_variable("Resface/Conv5/weights", [3, 3, 16, 16])
    graph.sess.run(extra.initializer)
    graph.save(str(tmp_path / "ckpt"), global_step=1)
    with pytest.raises(CheckpointError) as err:
        load_tf1_checkpoint(str(tmp_path))
    assert "1 variable(s) unexpected in the checkpoint:\n  Resface/Conv5/weights" in str(err.value)
    assert "missing from the checkpoint" not in str(err.value) and "shape mismatch" not in str(err.value)
    # Through the CLI: the tool's prefix on the first line, the list below it, no traceback, no file.
    proc = _convert_cli(tmp_path, "--out", tmp_path / "m.keras")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = _tool_lines(proc.stderr)
    assert lines[0].startswith("probface-convert: error: ") and "does not match the model" in lines[0]
    assert "  Resface/Conv5/weights" in lines
    assert not (tmp_path / "m.keras").exists()


def test_convert_cli_allow_missing_head_on_a_backbone_only_checkpoint(tmp_path):
    import keras

    rng = np.random.default_rng(6)
    spec = BackboneSpec((8, 8, 16, 16), (1, 2, 1, 1))
    images = rng.normal(0, 1, (3, 32, 32, 3)).astype(np.float32)
    base = TF1ProbFace(spec, (32, 32), 16, with_head=False)
    base.randomize(rng)
    base.save(str(tmp_path / "model-base.ckpt"), global_step=7)
    out = tmp_path / "converted" / "model.keras"
    refused = _convert_cli(tmp_path, "--out", out)
    assert refused.returncode == 2 and "--allow_missing_head" in refused.stderr and not out.exists()
    proc = _convert_cli(tmp_path, "--out", out, "--allow_missing_head")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"saved {out}" in proc.stdout
    model = keras.saving.load_model(str(out))
    ref = base.sess.run({"mu": base.mu, **{k: base.end_points[k] for k in ("Conv1", "Conv2", "Conv3", "Conv4")},
                         "conv_final": base.conv_final}, {base.images: images})
    got = backbone_of(model)(images, training=False)
    for key, value in ref.items():
        np.testing.assert_allclose(got[key].numpy(), value, atol=1e-5, rtol=0, err_msg=key)
    head = head_of(model)  # the fresh head of the original recipe
    assert float(head.scale_and_shift.alpha.numpy()) == pytest.approx(0.1)
    assert float(head.scale_and_shift.gamma.numpy()) == pytest.approx(-1.0)
    assert model(images)["sigma_sq"].shape == (3, 1)


