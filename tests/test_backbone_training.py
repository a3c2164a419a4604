"""Stage 1: a narrow ResFace trained with a margin softmax on generated identities.

Checked: the loss falls and the training accuracy rises; the per-epoch held-out evaluation is logged; the run's
backbone is a valid ``restore_model`` for head training (its weights arrive unchanged); an interrupted run
resumed from its checkpoint ends with the same weights as an uninterrupted one; ScaleFace trains its scale head
and UniformFace reports its term.
"""
import os
import re

import keras
import numpy as np
import pytest

from probface_tf.config import from_dict
from probface_tf.data.synthetic import synthesize
from probface_tf.train import backbone

LINE = re.compile(r"^\[(\d+)\]\[(\d+)\] time: [\d.]+((?: \w+ -?[\d.]+(?:e[-+]\d+)?)+)$", re.M)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    return synthesize(str(root / "synth"), num_identities=20, images_per_identity=8, seed=3, image_size=32,
                      severity="clean", bin_pairs=40, split=0.2, workers=1)


def _cfg(synth, tmp_path, **overrides):
    values = dict(stage="backbone", name="stage1", log_base_dir=str(tmp_path / "log"),
                  train_dataset_path=synth.train_dir, test_bin_paths=[synth.bin_path], test_targets=[],
                  image_size=[32, 32], backbone_filters=[8, 16, 16, 32], backbone_blocks=[1, 1, 1, 1],
                  embedding_size=32, margin_loss="cosface", margin_s=16.0, margin_m=0.1, optimizer="adam",
                  batch_size=32, epoch_size=12, num_epochs=2, lr=3e-3, learning_rate_schedule={0: 3e-3},
                  weight_decay=5e-4, summary_interval=4, checkpoint_interval=6, eval_batch_size=40,
                  deterministic=True)
    values.update(overrides)
    return from_dict(values, source="test")


def _logged(run_dir):
    text = open(os.path.join(run_dir, "training-log.txt"), encoding="utf-8").read()
    rows = []
    for match in LINE.finditer(text):
        fields = match.group(3).split()
        rows.append({k: float(v) for k, v in zip(fields[::2], fields[1::2])})
    return text, rows


def test_margin_softmax_learns_and_the_backbone_restores_into_head_training(synth, tmp_path):
    cfg = _cfg(synth, tmp_path)
    result = backbone.train(cfg, run_dir=str(tmp_path / "run"))
    assert result["global_step"] == 24
    text, rows = _logged(result["run_dir"])
    assert len(rows) == 6  # steps 1, 5, 9 of each 12-step epoch
    assert sorted(rows[0]) == ["acc", "loss", "lr", "regu", "softmax"]  # the original sorted-key form
    assert rows[-1]["softmax"] < 0.7 * rows[0]["softmax"]
    assert rows[-1]["acc"] > rows[0]["acc"]
    assert text.count("--- synth_val ---") == 2
    assert re.search(r"^Cosine score acc \d\.\d{6} threshold -?\d\.\d{6}$", text, re.M)

    # The run directory is a restore_model for head training: the backbone arrives weight for weight.
    from probface_tf.models.probface import build_probface
    from probface_tf.train.restore import restore

    saved = keras.saving.load_model(os.path.join(result["run_dir"], backbone.BACKBONE_FILE), compile=False)
    model = build_probface(image_size=(32, 32), embedding_size=32, backbone_filters=[8, 16, 16, 32],
                           backbone_blocks=[1, 1, 1, 1])
    head_before = [w.numpy().copy() for w in model.get_layer("UncertaintyModule").weights]
    restore(model, result["run_dir"], None, ["UncertaintyModule"])
    restored = model.get_layer("Resface")
    assert len(restored.weights) == len(saved.weights)
    for mine, theirs in zip(restored.weights, saved.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for before, after in zip(head_before, model.get_layer("UncertaintyModule").weights):
        np.testing.assert_array_equal(before, after.numpy())  # excluded scope keeps its fresh init


def test_resume_after_interruption_gives_the_uninterrupted_weights(synth, tmp_path):
    cfg = _cfg(synth, tmp_path, test_bin_paths=None, num_epochs=1)
    whole = backbone.train(cfg, run_dir=str(tmp_path / "whole"))
    backbone.train(cfg, run_dir=str(tmp_path / "parts"), max_steps=6)
    resumed = backbone.train(cfg, run_dir=str(tmp_path / "parts"), resume=True)
    assert resumed["global_step"] == whole["global_step"] == 12
    for a, b in zip(whole["model"].weights, resumed["model"].weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-6, err_msg=a.path)


def test_scaleface_trains_its_scale_head_and_uniformface_reports_its_term(synth, tmp_path):
    cfg = _cfg(synth, tmp_path, margin_loss="scaleface", margin_s=16.0, margin_m=0.1, uniform_loss_weight=0.5,
               test_bin_paths=None, num_epochs=1)
    result = backbone.train(cfg, run_dir=str(tmp_path / "scale"))
    _, rows = _logged(result["run_dir"])
    assert {"scale_mean", "scale_min", "scale_max", "uniform"} <= set(rows[0])
    assert all(0 < r["scale_min"] <= r["scale_mean"] <= r["scale_max"] <= 16.0 for r in rows)
    assert rows[-1]["scale_mean"] != rows[0]["scale_mean"]
    assert os.path.isfile(os.path.join(result["run_dir"], backbone.SCALE_HEAD_FILE))
    # loss = softmax + 0.5 * uniform + regu, as logged
    for r in rows:
        assert r["loss"] == pytest.approx(r["softmax"] + 0.5 * r["uniform"] + r["regu"], abs=2e-4)
