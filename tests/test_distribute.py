"""tf.distribute: a MirroredStrategy over two logical CPU devices must train and extract exactly like one device,
and a two-process MultiWorkerMirroredStrategy cluster on localhost must train the tiny recipe to the same head.

Each check runs in a fresh interpreter: the CPU can only be split into logical devices before TensorFlow
initialises, and a cluster strategy must be created before any other TensorFlow work.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.train.distribute import DistributeError, make_strategy, replica_slice

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
ENV.pop("TF_CONFIG", None)

_PRELUDE = """
import json, os, sys
import numpy as np, tensorflow as tf
from probface_tf.train.distribute import make_strategy
mirrored = make_strategy("mirrored", cpu_devices=2)
import keras
from probface_tf.config import from_dict
SMALL = dict(image_size=(32, 32), embedding_size=16, backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1])
"""

_HEAD = _PRELUDE + """
from probface_tf.models.probface import build_probface, head_of
from probface_tf.train.loop import HeadTrainer
cfg = from_dict({"image_size": [32, 32], "embedding_size": 16, "backbone_filters": [8, 8, 16, 16],
                 "backbone_blocks": [1, 1, 1, 1], "batch_size": 16, "learning_rate_schedule": {0: 0.05}})
keras.utils.set_random_seed(0)
weights = build_probface(**SMALL).get_weights()
rng = np.random.default_rng(0)
augmented = rng.normal(0, 1, (16, 32, 32, 3)).astype(np.float32)
twins = augmented.copy()
twins[::3] = twins[::3, :, ::-1]  # a third of the augmented images were mirrored: they differ from their twin
images, labels = np.concatenate([augmented, twins]), np.tile(np.repeat(np.arange(4), 4), 2)

def trainer(strategy):
    with strategy.scope():
        model = build_probface(**SMALL)
    model.set_weights(weights)
    return HeadTrainer(model, cfg, 0.05, strategy), model

out = {}
one, one_model = trainer(tf.distribute.get_strategy())
two, two_model = trainer(mirrored)
out["replicas"] = two.replicas
out["image_losses"] = [[one.image_step(images, labels, s), two.image_step(images, labels, s)] for s in range(3)]
features, mu = one.batch_features(images)
out["feature_losses"] = [[one.step(features, mu, labels, s), two.step(features, mu, labels, s)] for s in range(3, 5)]
out["head_weights"] = [[a.numpy().tolist(), b.numpy().tolist()]
                       for a, b in zip(head_of(one_model).weights, head_of(two_model).weights)]
f1, m1 = one.extract(images[:13])  # 13 images: not a multiple of the 2 replicas
f2, m2 = two.extract(images[:13])
out["extract"] = [f1.numpy().tolist(), f2.numpy().tolist(), m1.numpy().tolist(), m2.numpy().tolist()]

# Mixed precision under the strategy: Keras' loss-scale optimizer, per replica.
keras.config.set_dtype_policy("mixed_float16")
cfg = cfg.replace(mixed_precision="mixed_float16")
one, _ = trainer(tf.distribute.get_strategy())
two, _ = trainer(mirrored)
out["fp16_optimizer"] = type(two.optimizer).__name__
out["fp16_losses"] = [[one.image_step(images, labels, s), two.image_step(images, labels, s)] for s in range(2)]
print(json.dumps(out))
"""

_BACKBONE = _PRELUDE + """
from probface_tf.train.backbone import BackboneTrainer
out = {}
for loss, uniform in (("arcface", 0.0), ("scaleface", 0.5)):
    cfg = from_dict(dict(stage="backbone", image_size=[32, 32], backbone_filters=[8, 8, 16, 16],
                         backbone_blocks=[1, 1, 1, 1], embedding_size=16, margin_loss=loss, margin_s=16.0,
                         margin_m=0.2, uniform_loss_weight=uniform, optimizer="momentum", lr=0.05, batch_size=16))
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (16, 32, 32, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    keras.utils.set_random_seed(0)
    one = BackboneTrainer(cfg, 10, 0.05, tf.distribute.get_strategy())
    keras.utils.set_random_seed(0)
    two = BackboneTrainer(cfg, 10, 0.05, mirrored)
    steps = [[one.step(images, labels, s), two.step(images, labels, s)] for s in range(2)]
    weights = [[a.numpy().tolist(), b.numpy().tolist()] for a, b in zip(one.variables, two.variables)]
    out[loss] = {"steps": steps, "weights": weights}
print(json.dumps(out))
"""


def _run(code: str, timeout: int = 600) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _close(a: dict, b: dict, rtol: float, atol: float) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=rtol, abs=atol), key


def test_mirrored_head_training_and_extraction_equal_one_device():
    out = _run(_HEAD)
    assert out["replicas"] == 2
    # Whole doubled batches split over the replicas (twin reuse per replica), then from backbone features.
    for one, two in out["image_losses"] + out["feature_losses"]:
        _close(one, two, rtol=1e-5, atol=1e-7)
    for one, two in out["head_weights"]:
        np.testing.assert_allclose(np.array(two), np.array(one), rtol=0, atol=1e-5)
    f1, f2, m1, m2 = (np.array(x) for x in out["extract"])
    assert f1.shape[0] == f2.shape[0] == 13
    np.testing.assert_allclose(f2, f1, rtol=0, atol=1e-5)  # same features, same order
    np.testing.assert_allclose(m2, m1, rtol=0, atol=1e-6)
    assert out["fp16_optimizer"] == "LossScaleOptimizer"
    for one, two in out["fp16_losses"]:
        _close(one, two, rtol=1e-5, atol=1e-6)


def test_mirrored_backbone_training_equals_one_device():
    """Stage 1 with synchronised batch norm: global-batch statistics and the global-batch softmax mean. Keras'
    synchronised moments take E[x^2] - E[x]^2 where one device subtracts the mean first, so the two agree to
    float32 round-off, which two momentum steps carry into the weights."""
    out = _run(_BACKBONE)
    for loss in ("arcface", "scaleface"):
        first, second = out[loss]["steps"]
        _close(*first, rtol=1e-5, atol=1e-6)  # same initial weights: the first losses agree to round-off
        _close(*second, rtol=1e-4, atol=1e-5)
        for one, two in out[loss]["weights"]:
            np.testing.assert_allclose(np.array(two), np.array(one), rtol=0, atol=5e-5)
    assert {"uniform", "scale_mean", "scale_min", "scale_max"} <= set(out["scaleface"]["steps"][0][0])


def test_replica_slices_keep_doubled_batches_paired():
    batch = np.arange(16)
    assert replica_slice(batch, 1, 2).tolist() == list(range(8, 16))
    # replica 1 of 2 takes augmented images 4..7 and their twins 12..15
    assert replica_slice(batch, 1, 2, halves=True).tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    with pytest.raises(DistributeError, match="cannot be split evenly over 3 replicas"):
        replica_slice(batch, 0, 3)


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DistributeError, match="needs the TF_CONFIG environment variable"):
        make_strategy("multi_worker_mirrored")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(DistributeError, match="TF_CONFIG is not valid JSON"):
        make_strategy("multi_worker_mirrored")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(DistributeError, match="task index 3 is outside the 1 workers"):
        make_strategy("multi_worker_mirrored")
    with pytest.raises(DistributeError, match="must be one of"):
        make_strategy("parameter_server")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _latest_head(run_dir: str) -> dict:
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(os.path.join(run_dir, "checkpoints"))
            if name.startswith("head/") and "OPTIMIZER_SLOT" not in name}


def test_two_worker_cluster_trains_the_tiny_recipe_like_one_device(tmp_path):
    """Two processes on localhost ports (bounded by a timeout) train 4 steps of the tiny recipe; only the chief
    writes a run; its head equals a single-device run's."""
    overrides = ["--set", f"log_base_dir={tmp_path / 'log'}", "--set", "num_epochs=1", "--set", "epoch_size=4",
                 "--set", "checkpoint_interval=4", "--set", "test_bin_paths=None", "--set", "export_saved_model=False",
                 "--max_steps", "4"]
    train = [sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "configs", "tiny.py")]
    single = subprocess.run(train + overrides + ["--run_dir", str(tmp_path / "single")], capture_output=True,
                            text=True, env=ENV, cwd=str(tmp_path), timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    workers = [f"localhost:{p}" for p in _free_ports(2)]
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(train + overrides + ["--set", "distribute_strategy=multi_worker_mirrored",
                                                           "--run_dir", str(tmp_path / "cluster")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=str(tmp_path)))
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "2 replicas" in outputs[0][0]
    assert not (tmp_path / "log").exists()  # the worker wrote no run of its own next to the chief's
    ours, reference = _latest_head(str(tmp_path / "cluster")), _latest_head(str(tmp_path / "single"))
    assert sorted(ours) == sorted(reference) and len(ours) == 10  # the head's 10 variables
    for name in reference:
        np.testing.assert_allclose(ours[name], reference[name], rtol=0, atol=1e-5, err_msg=name)


def test_evaluate_extracts_under_a_mirrored_strategy_like_one_device(tmp_path):
    """``evaluate.py --distribute_strategy mirrored`` over two logical CPUs: the same per-pair scores, in order
    (47 pairs: the last batch of 94 images does not split evenly over the replicas)."""
    import io

    import keras
    from PIL import Image

    from probface_tf.data.binfile import write_bin
    from probface_tf.models.probface import build_probface

    keras.utils.set_random_seed(0)
    build_probface(image_size=(32, 32), embedding_size=16, backbone_filters=[8, 8, 16, 16],
                   backbone_blocks=[1, 1, 1, 1]).save(str(tmp_path / "tiny.keras"))
    rng = np.random.default_rng(0)

    def png():
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    write_bin(str(tmp_path / "lfw.bin"), [(png(), png(), k % 2 == 0) for k in range(47)])
    scores = {}
    for name, extra in (("one", []), ("two", ["--distribute_strategy", "mirrored", "--distribute_cpu_devices", "2"])):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--model", str(tmp_path / "tiny.keras"),
                               "--bin", str(tmp_path / "lfw.bin"), "--out", str(tmp_path / name), "--save-scores",
                               "--noplots", "--batch_size", "32", *extra], capture_output=True, text=True, env=ENV,
                              cwd=ROOT, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        scores[name] = dict(np.load(tmp_path / name / "lfw" / "scores.npz"))
    assert sorted(scores["one"]) == sorted(scores["two"])
    for key, value in scores["one"].items():
        np.testing.assert_allclose(scores["two"][key], value, rtol=1e-6, atol=1e-6, err_msg=key)
