"""The method registry and the one training loop: every method is found by name and builds a model whose
uncertainty it reads out; the Trainer drives any task (here a one-variable task checked against a NumPy loop):
schedule, deferred saves, checkpoints, resume and the non-finite stop."""
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.config import from_dict
from probface_tf.methods import BACKBONE_STAGE, HEAD_STAGE, Method, MethodError, build_model, get_method, \
    method_names, register_method
from probface_tf.train.checks import NonFiniteLossError, finite_values
from probface_tf.train.trainer import Trainer, TrainingTask

TINY = dict(image_size=(32, 32), embedding_size=8, backbone_filters=[4, 8, 8, 8], backbone_blocks=[1, 1, 1, 1],
            fc1_size=6, mc_samples=3, seed=1)


def test_every_method_is_registered_by_its_config_name():
    assert method_names(HEAD_STAGE) == ["idq", "mc_dropout", "pcnet", "probface"]
    assert method_names(BACKBONE_STAGE) == ["arcface", "cosface", "scaleface", "softmax"]
    assert [get_method(n).trains for n in method_names(HEAD_STAGE)] == [True, False, True, True]
    with pytest.raises(MethodError, match="registered twice"):
        register_method(Method(name="probface", stage=HEAD_STAGE, summary="again"))
    with pytest.raises(MethodError, match="stage must be one of"):
        register_method(Method(name="other", stage="stage3", summary="no such stage"))


@pytest.mark.parametrize("name, output_size", [("probface", 1), ("probface", 8), ("pcnet", 1), ("idq", 1),
                                               ("mc_dropout", 1)])
def test_head_methods_build_and_read_out_their_uncertainty(name, output_size):
    model = build_model(name, output_size=output_size, **TINY)
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    outputs = {k: v.numpy() for k, v in model(images, training=False).items()}
    uncertainty = np.asarray(get_method(name).uncertainty(outputs))
    assert model.get_layer("UncertaintyModule") is not None
    assert uncertainty.shape == (3, output_size) and np.all(uncertainty >= 0)
    np.testing.assert_allclose(np.linalg.norm(outputs["mu"], axis=1), 1.0, rtol=1e-5)
    if name == "probface":  # sigma^2 = exp(log sigma^2)
        np.testing.assert_allclose(uncertainty, np.exp(outputs["log_sigma_sq"]), rtol=1e-6)


TARGETS = [1.0, -2.0, 0.5]  # the batch of step k is TARGETS[k % 3]
LR = {0: 0.3, 4: 0.1}


class QuadraticTask(TrainingTask):
    """One variable w, loss (w - x)^2, plain gradient descent: the loop's work without a network."""

    def build(self):
        self.model = self.w = tf.Variable(0.0)
        self.saves, self.nan_at = [], None
        return ["quadratic task built"]

    def checkpoint_parts(self):
        return {"w": self.w}

    def batches(self, start_step):
        return (float("nan") if k == self.nan_at else TARGETS[k % 3] for k in itertools.count(start_step))

    def set_learning_rate(self, lr):
        self.lr = lr

    def batch_losses(self, x, global_step):
        return finite_values({"a": (self.w - x) ** 2}, global_step)

    def step(self, x, global_step, before_update=None):
        values = self.batch_losses(x, global_step)
        if before_update is not None:
            before_update()
        self.w.assign_sub(self.lr * 2.0 * (self.w - x))
        return values

    def state_variables(self):
        return [self.w]

    def save(self, run_dir, global_step, publish):
        self.saves.append((global_step, round(float(self.w.numpy()), 6)))

    def evaluate(self, global_step):
        yield "quadratic", f"w {float(self.w.numpy()):.6f}", {"w": float(self.w.numpy())}

    def postfix(self, watch):
        return {}


def _numpy_w(steps: int) -> float:
    w = 0.0
    for k in range(steps):
        lr = [v for s, v in sorted(LR.items()) if s <= k][-1]
        w -= lr * 2.0 * (w - TARGETS[k % 3])
    return w


def _cfg(tmp_path):
    folder = tmp_path / "train" / "id0"  # the run's preflight opens the training set: one image is enough
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy())
    return from_dict({"name": "quadratic", "log_base_dir": str(tmp_path / "log"),
                      "train_dataset_path": str(tmp_path / "train"),
                      "num_epochs": 3, "epoch_size": 3, "checkpoint_interval": 2, "summary_interval": 1,
                      "learning_rate_schedule": LR, "test_data_dir_mx": None, "deterministic": False})


def test_trainer_runs_resumes_and_stops_on_non_finite_losses(tmp_path):
    cfg, run_dir = _cfg(tmp_path), str(tmp_path / "run")
    first = Trainer(QuadraticTask, cfg, run_dir=run_dir, max_steps=7)
    part = first.run()
    assert part["global_step"] == 7 and float(part["model"].numpy()) == pytest.approx(_numpy_w(7), rel=1e-6)
    resumed = Trainer(QuadraticTask, cfg, run_dir=run_dir, resume=True).run()
    assert resumed["global_step"] == 9 and float(resumed["model"].numpy()) == pytest.approx(_numpy_w(9), rel=1e-6)
    log = open(os.path.join(run_dir, "training-log.txt"), encoding="utf-8").read()
    assert f"resumed from checkpoint {run_dir}/checkpoints/ckpt-7 at step 7" in log
    # the model after each epoch and at the stop, evaluated after each epoch; checkpoints every 2 steps too
    assert log.count("--- quadratic ---") == 3 and f"w {_numpy_w(9):.6f}" in log
    assert sorted(int(n.split("-")[1].split(".")[0]) for n in os.listdir(os.path.join(run_dir, "checkpoints"))
                  if n.endswith(".index")) == [6, 7, 8, 9][-cfg.keep_checkpoints:]

    class Diverging(QuadraticTask):
        def build(self):
            notes = super().build()
            self.nan_at = 4  # step 4's losses are NaN: state 4 (after step 3) was never saved
            return notes

    trainer = Trainer(Diverging, cfg, run_dir=str(tmp_path / "nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at global step 4: a=nan; .* latest checkpoint: "
                                                 r".*ckpt-3"):
        trainer.run()
    assert tf.train.latest_checkpoint(str(tmp_path / "nan" / "checkpoints")).endswith("ckpt-3")


def test_a_new_method_needs_only_its_module_and_a_recipe():
    """A method registered from outside the package is accepted by the config and built by name; nothing in
    config.py lists method names any more."""
    from probface_tf.methods import registry, model_from_config

    probface = get_method("probface")
    register_method(Method(name="probface_copy", stage=HEAD_STAGE, summary="the ProbFace head under a new name",
                           build_model=probface.build_model, loss=probface.loss, uncertainty=probface.uncertainty))
    try:
        cfg = from_dict({"head_type": "probface_copy", "image_size": [32, 32], "embedding_size": 8,
                         "backbone_filters": [4, 8, 8, 8], "backbone_blocks": [1, 1, 1, 1]})
        model = model_from_config(cfg)
        assert set(model.output) >= {"mu", "sigma_sq"}
        with pytest.raises(MethodError, match="head_type must be one of .*'probface_copy'.* got 'no_such'"):
            model_from_config(cfg.replace(head_type="no_such"))
    finally:
        registry._REGISTRY.pop("probface_copy")
