"""Training through train.py: kill -9 mid-run and resume gives the uninterrupted run's head weights (across an
epoch boundary and an LR change); the shipped tiny recipe's mls decreases; a non-finite loss stops training
and the state that produced it is never on disk; a recipe whose paths are missing fails before any run dir."""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.data.synthetic import synthesize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCH_SIZE, NUM_EPOCHS = 10, 2
TOTAL_STEPS = EPOCH_SIZE * NUM_EPOCHS
LR_CHANGE = 15  # inside epoch 2, after the kill: the resumed run must cross it with the restored momentum


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return synthesize(str(root), num_identities=24, images_per_identity=4, seed=1, image_size=48, bin_pairs=0,
                      split=0.0, workers=1).train_dir


def _train_py(config, sets, flags=()):
    cmd = [sys.executable, os.path.join(REPO, "train.py"), config, *flags]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _command(train_dir, log_dir, *extra):
    """train.py on the tiny recipe with a small batch on ``train_dir``; ``extra`` holds key=value overrides and
    --flags (with their values)."""
    sets = [f"log_base_dir={log_dir}", f"train_dataset_path={train_dir}", "synthetic=None", "test_bin_paths=None",
            "export_saved_model=False", f"num_epochs={NUM_EPOCHS}", f"epoch_size={EPOCH_SIZE}",
            "checkpoint_interval=5", "summary_interval=1", "batch_size=32",
            "batch_format={'size': 32, 'num_classes': 8}", "lr=0.01",
            f"learning_rate_schedule={{0: 0.01, {LR_CHANGE}: 0.001}}"]
    flags, extra = [], list(extra)
    while extra:
        item = extra.pop(0)
        if item == "--resume":
            flags.append(item)
        elif item.startswith("--"):
            flags += [item, extra.pop(0)]
        else:
            sets.append(item)
    return _train_py(os.path.join(REPO, "configs", "tiny.py"), sets, flags)


def _env():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _head_weights(run_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("head/")]
    assert len(names) == 10
    return {n: reader.get_tensor(n) for n in names}, int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


def _run_to_end(cmd, cwd=REPO):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _logged(out, key):
    """{(epoch, step): value of ``key``} from the original log lines."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"\[(\d+)\]\[(\d+)\] time: ", line)
        if m:
            found[int(m.group(1)), int(m.group(2))] = float(line.split(f" {key} ")[1].split()[0])
    return found


@pytest.mark.parametrize("mode", ["feature_cache=True", "feature_cache=False"])
def test_kill_and_resume_reproduces_uninterrupted_run(train_dir, tmp_path, mode):
    out = _run_to_end(_command(train_dir, tmp_path / "a", mode, "--run_dir", str(tmp_path / "a" / "run")))
    reference, ref_step = _head_weights(tmp_path / "a" / "run")
    assert ref_step == TOTAL_STEPS
    lr = _logged(out, "lr")  # the schedule really changes inside epoch 2 (line [2][6] = global step 15)
    assert lr[2, 5] == 0.01 and lr[2, 6] == 0.001 and len(lr) == TOTAL_STEPS

    run_b = tmp_path / "b" / "run"
    proc = subprocess.Popen(_command(train_dir, tmp_path / "b", mode, "--run_dir", str(run_b)), cwd=REPO,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    killed = False
    for line in proc.stdout:
        # "[2][1]" is printed after update 11, whose step first wrote the epoch-end checkpoint 10.
        if line.startswith("[2][1] "):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=300)
    assert killed and proc.returncode == -signal.SIGKILL
    _, step_at_kill = _head_weights(run_b)
    assert EPOCH_SIZE <= step_at_kill <= LR_CHANGE < TOTAL_STEPS  # an older checkpoint, before the LR change

    out = _run_to_end(_command(train_dir, tmp_path / "b", mode, "--run_dir", str(run_b), "--resume"))
    assert f"resumed from checkpoint {run_b}/checkpoints/ckpt-{step_at_kill} at step {step_at_kill}" in out
    resumed, step = _head_weights(run_b)
    assert step == TOTAL_STEPS
    for name, value in reference.items():
        np.testing.assert_allclose(resumed[name], value, atol=1e-6, rtol=0, err_msg=name)
    # The head really trained: equality is not the trivial one of two untouched heads.
    alpha = [n for n in reference if "scale_and_shift/alpha" in n][0]
    assert abs(float(reference[alpha]) - 0.1) > 1e-4


def test_tiny_recipe_mls_decreases(tmp_path):
    """The shipped recipe, only log_base_dir overridden; run from an empty folder so its synthetic data is
    generated there (as on a fresh machine) and the checkout is not written to."""
    out = _run_to_end(_train_py(os.path.join(REPO, "configs", "tiny.py"), [f"log_base_dir={tmp_path / 'log'}"]),
                      cwd=tmp_path)
    mls = list(_logged(out, "mls").values())
    assert len(mls) == 6 and np.all(np.isfinite(mls))  # 2 epochs x 30 steps, a line every 10 steps
    # Batch-to-batch noise of the logged mls is ~0.03 on this recipe; the decrease measured is ~0.08.
    assert np.mean(mls[-3:]) < mls[0] - 0.03, mls


def test_non_finite_loss_stops_and_bad_state_is_never_saved(train_dir, tmp_path):
    # Three sane updates, then lr 1e30: update 4 makes the weights ~1e28, whose regu overflows at step 4.
    run = tmp_path / "run"
    proc = subprocess.run(_command(train_dir, tmp_path, "learning_rate_schedule={0: 0.01, 3: 1e30}",
                                   "checkpoint_interval=1", "--run_dir", str(run)),
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    m = re.search(r"non-finite loss at global step (\d+): (.*?); training stopped", errors[0])
    assert m, errors[0]
    bad_step = int(m.group(1))
    terms = dict(t.split("=") for t in m.group(2).split(", "))
    assert bad_step == 4 and "a" in terms and "regu" in terms
    assert all(not np.isfinite(float(v)) for v in terms.values())
    # What is on disk predates the failing state, and is finite.
    weights, step = _head_weights(run)
    assert step == bad_step - 1
    saved = {int(f.split("-")[1].split(".")[0]) for f in os.listdir(run / "checkpoints") if f.startswith("ckpt-")}
    assert saved and max(saved) < bad_step
    for name, value in weights.items():
        assert np.all(np.isfinite(value)) and np.abs(value).max() < 1e3, name
    assert f"latest checkpoint: {run}/checkpoints/ckpt-{bad_step - 1}" in errors[0]


def test_missing_paths_fail_before_any_run_dir(tmp_path):
    """The original recipe on a machine without its data: exit 2, one line naming the keys, nothing created."""
    log_dir = tmp_path / "log"
    proc = subprocess.run(_train_py(os.path.join(REPO, "configs", "resface64_msarcface.py"),
                                    [f"log_base_dir={log_dir}"]),
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("train.py: error: "), proc.stderr[-3000:]
    assert "config key 'restore_model'" in errors[0] and "log/resface64/20200122-214343-arc" in errors[0]
    assert "config key 'train_dataset_path'" in errors[0]
    assert os.listdir(tmp_path) == []  # no log_base_dir, no run dir, nothing else
