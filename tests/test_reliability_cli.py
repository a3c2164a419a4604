"""Command lines fail with one clear line (OSError, TensorFlow op errors included) but keep a real bug's
traceback; evaluation checks --out, --batch_size and its .bin labels before extracting; result files and
figures are written atomically."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

from probface_tf.cli_support import DEBUG_ENV, fail_cleanly
from probface_tf.data.binfile import write_bin
from probface_tf.eval import plots, report
from probface_tf.eval.preflight import EvaluationInputError, check_both_classes, check_out_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fail(exc, capsys, monkeypatch, debug=""):
    monkeypatch.setenv(DEBUG_ENV, debug)
    with pytest.raises(SystemExit) as stop:
        with fail_cleanly("tool"):
            raise exc
    return stop.value.code, capsys.readouterr().err.splitlines()


def test_system_and_tensorflow_errors_are_one_line(capsys, monkeypatch):
    code, lines = _fail(OSError(errno.ENOSPC, "No space left on device", "/out/lfw.png"), capsys, monkeypatch)
    assert code == 2 and lines == [f"tool: error: No space left on device: '/out/lfw.png' (set {DEBUG_ENV}=1 for "
                                   "the traceback)"]
    code, lines = _fail(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/log/x"), capsys, monkeypatch)
    assert lines == [f"tool: error: Not a directory: '/log/x' (set {DEBUG_ENV}=1 for the traceback)"]
    op = tf.errors.DataLossError(None, None, "Checksum does not match: stored 1 vs. calculated 2\n\t[[node x]]")
    code, lines = _fail(op, capsys, monkeypatch)
    assert lines == [f"tool: error: DataLossError: Checksum does not match: stored 1 vs. calculated 2 (set "
                     f"{DEBUG_ENV}=1 for the traceback)"]
    code, lines = _fail(ValueError("config key 'x': bad\n  detail"), capsys, monkeypatch)
    assert lines == ["tool: error: config key 'x': bad", "  detail"]  # own errors keep their whole message


def test_bugs_and_debug_mode_keep_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "")
    with pytest.raises(KeyError):
        with fail_cleanly("tool"):
            raise KeyError("a bug")
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(OSError):
        with fail_cleanly("tool"):
            raise OSError(errno.ENOSPC, "No space left on device", "f")
    assert capsys.readouterr().err == ""


def test_out_dir_is_checked_before_extraction(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EvaluationInputError, match="file is a file, not a folder"):
        check_out_dir(str(tmp_path / "file"))
    with pytest.raises(EvaluationInputError, match="is a file"):
        check_out_dir(str(tmp_path / "file" / "sub"))
    check_out_dir(str(tmp_path / "new" / "deep"))
    assert not (tmp_path / "new").exists()  # checking creates nothing
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "results.json").write_text("{}")
    with pytest.raises(EvaluationInputError, match="already holds results.json of an earlier evaluation"):
        check_out_dir(str(tmp_path / "done"))


def test_single_class_bin_is_refused_before_extraction(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    write_bin(str(tmp_path / "pos.bin"), [(img, img, True)] * 4)
    write_bin(str(tmp_path / "mixed.bin"), [(img, img, k % 2 == 0) for k in range(4)])
    check_both_classes([str(tmp_path / "mixed.bin")])
    with pytest.raises(EvaluationInputError, match=r"pos.bin: all 4 pairs are same-identity pairs.*need both"):
        check_both_classes([str(tmp_path / "mixed.bin"), str(tmp_path / "pos.bin")])


def _evaluate(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def test_evaluate_refuses_bad_out_and_batch_size_with_one_line(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    write_bin(str(tmp_path / "pos.bin"), [(img, img, True)] * 4)
    (tmp_path / "file").write_text("x")
    for args, needle in ((["--out", tmp_path / "file"], "is a file, not a folder"),
                         (["--out", tmp_path / "o"], "pos.bin: all 4 pairs are same-identity pairs"),
                         (["--batch_size", "0"], "--batch_size must be >= 1, got 0")):
        proc = _evaluate("--model", tmp_path / "missing.keras", "--bin", tmp_path / "pos.bin", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr
    assert not (tmp_path / "o").exists()


def _disk_full_savefig(self, target, **kwargs):
    """Writes half a PNG, then the disk is full."""
    if isinstance(target, str):
        with open(target, "wb") as f:
            f.write(b"\x89PNG half")
    else:
        target.write(b"\x89PNG half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_leaves_no_truncated_figure_or_json(tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text('{"earlier": 1}')
    monkeypatch.setattr(Figure, "savefig", _disk_full_savefig)
    with pytest.raises(OSError):
        plots.plot_sigma_histogram(np.ones(10), str(tmp_path / "lfw_sigma_sq_hist.png"))
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        report.write_json(str(tmp_path / "results.json"), {"new": 2})
    assert sorted(os.listdir(tmp_path)) == ["results.json"]  # no PNG, no temporary file
    assert json.loads((tmp_path / "results.json").read_text()) == {"earlier": 1}
