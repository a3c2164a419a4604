"""probface-convert refuses what it cannot convert faithfully: partial heads, NaN weights, a copied run's
foreign checkpoint path, truncated data files; every refusal is one line naming the cause."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from probface_tf.convert import CheckpointError, find_checkpoint, load_tf1_checkpoint, run
from probface_tf.models.resface import BackboneSpec
from probface_tf.tf1_reference import TF1ProbFace

SPEC = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))
HEAD_VAR = "UncertaintyModule/scale_and_shift/alpha"


@pytest.fixture(scope="module")
def graph():
    g = TF1ProbFace(SPEC, (32, 32), 16, 1)
    g.randomize(np.random.default_rng(4))
    return g


def _save_without(graph, prefix, drop=(), nan=None):
    """A TF1 checkpoint of ``graph`` leaving out ``drop``; ``nan`` names a variable saved as all NaN."""
    variables = {n: v for n, v in graph.variables().items() if n not in drop}
    with graph.graph.as_default():
        if nan:
            variables[nan].load(np.full(variables[nan].shape, np.nan, np.float32), graph.sess)
        return tf.compat.v1.train.Saver(variables).save(graph.sess, prefix, write_meta_graph=False)


def test_allow_missing_head_refuses_a_head_missing_one_variable(graph, tmp_path):
    _save_without(graph, str(tmp_path / "ckpt"), drop=[HEAD_VAR])
    for allow in (False, True):
        with pytest.raises(CheckpointError, match=f"missing from the checkpoint:\n  {HEAD_VAR}"):
            load_tf1_checkpoint(str(tmp_path), allow_missing_head=allow)


def test_a_missing_core_head_variable_is_named_not_called_a_base_model(graph, tmp_path):
    _save_without(graph, str(tmp_path / "ckpt"), drop=["UncertaintyModule/fc1/weights"])
    with pytest.raises(CheckpointError, match="missing UncertaintyModule/fc1/weights: an incomplete head"):
        load_tf1_checkpoint(str(tmp_path), allow_missing_head=True)


def test_nan_weights_are_refused_naming_the_variable(tmp_path, capsys):
    g = TF1ProbFace(SPEC, (32, 32), 16, 1)
    _save_without(g, str(tmp_path / "ckpt"), nan="Resface/Bottleneck/weights")
    out = tmp_path / "m.keras"
    assert run([str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and f"Resface/Bottleneck/weights: {2 * 2 * 16 * 16} NaN/inf value(s)" in err
    assert not out.exists()


def test_copied_run_dir_converts_its_own_checkpoint(graph, tmp_path):
    first = tmp_path / "run"
    first.mkdir()
    prefix = graph.save(str(first / "model.ckpt"), global_step=1)
    assert os.path.isabs(open(first / "checkpoint").read().split('"')[1])  # the saver writes absolute paths
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert find_checkpoint(str(copy)) == str(copy / os.path.basename(prefix))
    for name in os.listdir(copy):
        if name != "checkpoint":
            os.remove(copy / name)
    (copy / "other-7.index").write_bytes(b"")  # the copy holds some other checkpoint only
    with pytest.raises(CheckpointError, match="points outside its folder"):
        find_checkpoint(str(copy))


def test_truncated_data_file_is_one_clear_line(graph, tmp_path, capsys):
    prefix = graph.save(str(tmp_path / "model.ckpt"), global_step=1)
    data = prefix + ".data-00000-of-00001"
    with open(data, "r+b") as fh:
        fh.truncate(os.path.getsize(data) // 2)
    out = tmp_path / "m.keras"
    assert run([str(tmp_path), "--out", str(out)]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("probface-convert")]
    assert len(lines) == 1 and "truncated or corrupt .data" in lines[0] and prefix in lines[0]
    assert not out.exists()
