"""Training through train.py: kill -9 mid-run and resume gives the uninterrupted run's head weights; the mls
loss decreases on the tiny recipe; a non-finite loss stops training without a checkpoint of that state."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.data.synthetic import synthesize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL_STEPS = 20


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return synthesize(str(root), num_identities=24, images_per_identity=4, seed=1, image_size=48, bin_pairs=0,
                      split=0.0, workers=1).train_dir


def _command(train_dir, log_dir, *extra):
    """train.py on the tiny recipe; ``extra`` holds key=value overrides and --flags (with their values)."""
    sets = [f"log_base_dir={log_dir}", f"train_dataset_path={train_dir}", "synthetic=None", "test_bin_paths=None",
            "export_saved_model=False", "num_epochs=1", f"epoch_size={TOTAL_STEPS}", "checkpoint_interval=5",
            "summary_interval=1", "jit_compile=False"]
    flags, extra = [], list(extra)
    while extra:
        item = extra.pop(0)
        if item == "--resume":
            flags.append(item)
        elif item.startswith("--"):
            flags += [item, extra.pop(0)]
        else:
            sets.append(item)
    cmd = [sys.executable, os.path.join(REPO, "train.py"), os.path.join(REPO, "configs", "tiny.py"), *flags]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _head_weights(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("head/")]
    assert len(names) == 10
    return {n: reader.get_tensor(n) for n in names}, int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def _run_to_end(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("mode", ["feature_cache=True", "feature_cache=False"])
def test_kill_and_resume_reproduces_uninterrupted_run(train_dir, tmp_path, mode):
    _run_to_end(_command(train_dir, tmp_path / "a", mode, "--run_dir", str(tmp_path / "a" / "run")))
    reference, ref_step = _head_weights(tmp_path / "a" / "run")
    assert ref_step == TOTAL_STEPS

    run_b = tmp_path / "b" / "run"
    proc = subprocess.Popen(_command(train_dir, tmp_path / "b", mode, "--run_dir", str(run_b)), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed_after = None
    for line in proc.stdout:  # "[1][13] time: ..." is printed after step 13 completed
        if line.startswith("[1][13]"):
            proc.send_signal(signal.SIGKILL)
            killed_after = 13
            break
    proc.wait(timeout=300)
    assert killed_after and proc.returncode == -signal.SIGKILL
    _, step_at_kill = _head_weights(run_b)
    assert 0 < step_at_kill < TOTAL_STEPS  # the crash left a usable, older checkpoint

    out = _run_to_end(_command(train_dir, tmp_path / "b", mode, "--run_dir", str(run_b), "--resume"))
    assert f"at step {step_at_kill}" in out
    resumed, step = _head_weights(run_b)
    assert step == TOTAL_STEPS
    for name, value in reference.items():
        np.testing.assert_allclose(resumed[name], value, atol=1e-6, err_msg=name)


def test_tiny_recipe_mls_decreases(train_dir, tmp_path):
    out = _run_to_end(_command(train_dir, tmp_path, "num_epochs=3", "summary_interval=20", "lr=0.05",
                               "learning_rate_schedule={0: 0.05}"))
    mls = [float(line.split(" mls ")[1].split()[0]) for line in out.splitlines() if line.startswith("[")]
    assert len(mls) == 3
    assert mls[-1] < mls[0] - 0.01, mls


def test_non_finite_loss_stops_without_checkpoint(train_dir, tmp_path):
    proc = subprocess.run(_command(train_dir, tmp_path, "lr=1e30", "learning_rate_schedule={0: 1e30}",
                                   "checkpoint_interval=1",
                                   "--run_dir", str(tmp_path / "run")),
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert proc.returncode != 0
    assert "non-finite loss at global step" in proc.stderr
    _, step = _head_weights(tmp_path / "run")
    reader_dir = os.path.join(tmp_path, "run", "checkpoints")
    bad_step = int(proc.stderr.split("non-finite loss at global step ")[1].split(":")[0])
    assert step <= bad_step  # the last checkpoint predates the failing step
    for name, value in _head_weights(tmp_path / "run")[0].items():
        assert np.all(np.isfinite(value)), (reader_dir, name)
