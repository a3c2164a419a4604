"""Training inputs are checked before the first step (evaluation .bins, restore source, dataset, where the run
writes), two processes cannot continue one run, and a resume that changes the recipe is recorded in the run's
config.py."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from probface_tf.config import load_config
from probface_tf.data.binfile import write_bin
from probface_tf.data.synthetic import synthesize
from probface_tf.train.preflight import PreflightError, preflight
from probface_tf.train.run_lock import LOCK_NAME, RunLockedError, lock_run, unlock_run
from probface_tf.train.run_record import record_resume

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    train_dir = synthesize(str(root / "synth"), num_identities=6, images_per_identity=2, seed=2, image_size=32,
                           bin_pairs=0, split=0.0, workers=1).train_dir
    rng = np.random.default_rng(0)
    good = str(root / "good.bin")
    write_bin(good, [(rng.integers(0, 255, (32, 32, 3), np.uint8), rng.integers(0, 255, (32, 32, 3), np.uint8),
                      k % 2 == 0) for k in range(4)])
    garbage = root / "garbage.bin"
    garbage.write_bytes(b"\x80\x04not a pickle at all")
    broken = str(root / "broken_image.bin")
    write_bin(broken, [(b"\xff\xd8\xff truncated jpeg", b"\x89PNG truncated", True)])
    return {"root": root, "train": train_dir, "good": good, "garbage": str(garbage), "broken": broken}


def _cfg(data, tmp_path, *sets):
    base = [f"log_base_dir={tmp_path / 'log'}", f"train_dataset_path={data['train']}", "synthetic=None",
            "export_saved_model=False", "test_bin_paths=None"]
    return load_config(TINY, base + list(sets))


@pytest.mark.parametrize("which, expect", [("garbage", "not a readable .bin pickle"),
                                           ("broken", "image(s) cannot be decoded")])
def test_bad_evaluation_bin_is_found_before_training(data, tmp_path, which, expect):
    cfg = _cfg(data, tmp_path, f"test_bin_paths=[{data['good']!r}, {data[which]!r}]")
    with pytest.raises(PreflightError, match="config key 'test_bin_paths'") as err:
        preflight(cfg)
    assert data[which] in str(err.value) and expect in str(err.value)
    preflight(_cfg(data, tmp_path, f"test_bin_paths=[{data['good']!r}]"))  # the good one passes


def test_bad_bin_in_test_data_dir_mx_is_named(data, tmp_path):
    folder = tmp_path / "bins"
    folder.mkdir()
    (folder / "lfw.bin").write_bytes(open(data["garbage"], "rb").read())
    with pytest.raises(PreflightError, match=r"config key 'test_data_dir_mx'.*lfw\.bin"):
        preflight(_cfg(data, tmp_path, f"test_data_dir_mx={str(folder)!r}", "test_targets=['lfw']"))


def test_train_with_a_bad_bin_fails_before_any_run_dir(data, tmp_path):
    from probface_tf.train.loop import train

    cfg = _cfg(data, tmp_path, f"test_bin_paths=[{data['garbage']!r}]", "num_epochs=1", "epoch_size=2",
               "batch_format={'size': 4, 'num_classes': 2}")
    with pytest.raises(PreflightError, match="garbage.bin"):
        train(cfg, TINY)
    assert not (tmp_path / "log").exists()


def test_output_location_that_is_a_file(data, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PreflightError, match="config key 'log_base_dir'.*afile is a file"):
        preflight(load_config(TINY, [f"log_base_dir={tmp_path / 'afile' / 'log'}",
                                     f"train_dataset_path={data['train']}", "synthetic=None"]))
    with pytest.raises(PreflightError, match="--run_dir"):
        preflight(_cfg(data, tmp_path), run_dir=str(tmp_path / "afile"))


def test_unreadable_restore_model_and_dataset(data, tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PreflightError, match="config key 'restore_model'.*not a Keras archive"):
        preflight(_cfg(data, tmp_path, f"restore_model={str(bad)!r}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreflightError, match="config key 'train_dataset_path'"):
        preflight(_cfg(data, tmp_path, f"train_dataset_path={str(tmp_path / 'empty')!r}"))


def test_second_resume_of_a_run_is_refused_while_the_first_lives(data, tmp_path):
    cfg = _cfg(data, tmp_path)
    run = tmp_path / "log" / cfg.name / "20260101-000000"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-5"\n')
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from probface_tf.train.run_lock import lock_run; "
         "lock_run(sys.argv[1]); print('held', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            preflight(cfg, resume=True)  # --resume finds the newest run, the one being trained
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK_NAME).exists()  # a stale file from a killed holder ...
    lock_run(str(run))  # ... does not block: the kernel released its lock
    lock_run(str(run))  # this process may take its own lock again
    unlock_run(str(run))


def test_resume_with_changed_schedule_is_recorded_in_config_py(data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(TINY) as src:
        (run / "config.py").write_text(src.read())
    first = load_config(str(run / "config.py"))
    cfg = load_config(TINY, ["learning_rate_schedule={0: 0.01, 50: 0.001}", "train_dataset_path='/data/other'"])
    changes = record_resume(str(run), cfg, 40)
    assert set(changes) == {"learning_rate_schedule", "train_dataset_path"}
    assert changes["train_dataset_path"] == (first.train_dataset_path, "/data/other")
    again = load_config(str(run / "config.py"))  # the run's copy now loads as what continues
    assert again.learning_rate_schedule == {0: 0.01, 50: 0.001} and again.train_dataset_path == "/data/other"
    assert "# --resume at global step 40" in (run / "config.py").read_text()
    assert record_resume(str(run), cfg, 41) == {}  # nothing new: nothing appended
