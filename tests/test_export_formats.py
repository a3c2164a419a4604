"""LiteRT, ONNX and frozen-graph exports: outputs match the Keras model in processes that never import this
package, int8 keeps embeddings and the sigma_sq ranking, bad models and failed writes leave nothing behind."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.stats import spearmanr

from probface_tf import export as E
from probface_tf.eval.model_loader import ModelLoadError, load_model
from probface_tf.export import publishing
from references import tiny_probface

pytest.importorskip("ai_edge_litert", reason="the export extra (ai-edge-litert) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")
pytest.importorskip("tf2onnx", reason="the export extra (tf2onnx) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
FILES = {"litert": "model.tflite", "onnx": "model.onnx", "frozen_pb": "model.pb"}
OPS = [["resize", [32, 32]], ["standardize", "scale"]]


def keras_outputs(model, images):
    out = model(images, training=False)
    return {"mu": out["mu"].numpy(), "sigma_sq": out["sigma_sq"].numpy(), "log_sigma_sq": out["log_sigma_sq"].numpy()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tiny model in every file format, its Keras outputs on held-out images, and int8 files calibrated on
    other images of the same distribution."""
    folder = tmp_path_factory.mktemp("formats")
    model = tiny_probface(seed=3)
    rng = np.random.default_rng(4)
    images, calibration = (rng.uniform(-1, 1, (n, 32, 32, 3)).astype(np.float32) for n in (24, 64))
    paths = {fmt: E.export_file(model, str(folder / name), fmt, preprocess_ops=OPS, resize_method="bilinear")
             for fmt, name in FILES.items()}
    for fmt in ("litert", "onnx"):
        paths[fmt + "_int8"] = E.export_file(model, str(folder / ("int8_" + FILES[fmt])), fmt, quantize="int8",
                                             representative_data=calibration)
    reference = keras_outputs(model, images)
    np.savez(folder / "reference.npz", images=images, **reference)
    return {"model": model, "paths": paths, "images": images, "reference": reference, "folder": folder}


# Each script runs the file with its own runtime only and prints the largest differences as JSON.
FRESH = {
    "litert": """
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=path).get_signature_runner("serving_default")
        out = runner(input=ref["images"])
    """,
    "onnx": """
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        out = dict(zip(names, session.run(None, {"input": ref["images"]})))
    """,
    "frozen_pb": """
        import tensorflow as tf
        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(open(path, "rb").read())
        with tf.Graph().as_default() as graph:
            tf.compat.v1.import_graph_def(graph_def, name="")
            with tf.compat.v1.Session(graph=graph) as sess:
                out = sess.run({k: k + ":0" for k in ("mu", "sigma_sq", "log_sigma_sq")},
                               {"input:0": ref["images"]})
                meta = json.loads(sess.run("probface_metadata:0").decode())
                assert meta["image_size"] == [32, 32], meta
    """,
}
FRESH_HEAD = "import json, sys\nimport numpy as np\npath, ref = sys.argv[1], np.load(sys.argv[2])\n"
FRESH_TAIL = """
assert "probface_tf" not in sys.modules
print(json.dumps({k: float(np.abs(np.asarray(out[k]) - ref[k]).max()) for k in ("mu", "sigma_sq", "log_sigma_sq")}))
"""


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_file_matches_keras_in_a_process_without_the_package(exported, fmt):
    script = FRESH_HEAD + textwrap.dedent(FRESH[fmt]) + FRESH_TAIL
    proc = subprocess.run([sys.executable, "-c", script, exported["paths"][fmt],
                           str(exported["folder"] / "reference.npz")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = json.loads(proc.stdout.strip().splitlines()[-1])
    assert diff["mu"] <= 1e-5 and diff["log_sigma_sq"] <= 1e-4 and diff["sigma_sq"] <= 1e-4, diff


@pytest.mark.parametrize("fmt", sorted(FILES))
def test_evaluator_loads_the_file_with_its_preprocessing(exported, fmt):
    loaded = load_model(exported["paths"][fmt])
    assert loaded.kind == fmt and loaded.image_size == (32, 32) and loaded.has_sigma
    assert loaded.preprocessing.ops == OPS and loaded.preprocessing.resize_method == "bilinear"
    out = loaded(exported["images"])
    np.testing.assert_allclose(out["mu"], exported["reference"]["mu"], atol=1e-5)
    np.testing.assert_allclose(out["sigma_sq"], exported["reference"]["sigma_sq"], rtol=1e-4, atol=1e-6)
    runtime = E.open_runtime(exported["paths"][fmt])
    assert runtime(exported["images"][:0])["mu"].shape == (0, 16)
    with pytest.raises(E.ExportInputError, match=r"must be float32 \[N, 32, 32, 3\].*got shape \[2, 32, 31, 3\]"):
        runtime(exported["images"][:2, :, :31])
    with pytest.raises(E.ExportInputError, match="got dtype uint8"):
        runtime(np.zeros((1, 32, 32, 3), np.uint8))
    corrupt = exported["folder"] / ("corrupt_" + FILES[fmt])
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=f"--model {corrupt}: (cannot load as {fmt}|no 'probface' metadata)"):
        load_model(str(corrupt))


@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_int8_keeps_embeddings_and_the_sigma_ranking(exported, fmt):
    runtime = E.open_runtime(exported["paths"][fmt + "_int8"])
    assert runtime.quantization == "int8"
    if fmt == "litert":
        kinds = {d["dtype"] for d in runtime.interpreter.get_tensor_details()}
    else:
        kinds = {n.op_type for n in onnx.load(runtime.path).graph.node}
    assert ({np.int8} <= kinds) if fmt == "litert" else ({"QuantizeLinear", "DequantizeLinear"} <= kinds), kinds
    out, ref = runtime(exported["images"]), exported["reference"]
    cosine = np.sum(out["mu"] * ref["mu"], axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.9, cosine
    assert not np.allclose(out["mu"], ref["mu"], atol=1e-5)  # really quantised
    assert spearmanr(out["sigma_sq"][:, 0], ref["sigma_sq"][:, 0]).correlation >= 0.95


def test_ops_a_format_cannot_hold_are_named():
    import keras
    import tensorflow as tf

    class Bessel(keras.layers.Layer):
        def call(self, x):
            return tf.math.special.bessel_i1e(tf.reduce_sum(x, axis=1, keepdims=True)) + 1.0

    inputs = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, {"mu": keras.layers.UnitNormalization()(keras.layers.Dense(8)(pooled)),
                                 "sigma_sq": Bessel()(pooled)})
    for fmt in ("litert", "onnx"):
        with pytest.raises(E.ExportError, match=f"--format {fmt} cannot hold the op.* BesselI1e"):
            E.export_file(model, "/nonexistent/never-written." + fmt, fmt)


def test_non_finite_weights_are_refused_by_every_format(tmp_path):
    model = tiny_probface(seed=5)
    kernel = model.get_layer("UncertaintyModule").weights[0]
    kernel.assign(np.where(np.arange(kernel.shape[-1]) == 1, np.nan, kernel.numpy()).astype(np.float32))
    message = f"weight {kernel.path} holds {kernel.shape[0]} non-finite"
    with pytest.raises(E.ExportError, match=message):
        E.export_saved_model(model, str(tmp_path / "serving"))
    for fmt, name in FILES.items():
        with pytest.raises(E.ExportError, match=message):
            E.export_file(model, str(tmp_path / name), fmt)
    model.save(tmp_path / "nan.keras")
    assert E.main(["--model", str(tmp_path / "nan.keras"), "--out", str(tmp_path / "serving")]) == 2
    assert sorted(os.listdir(tmp_path)) == ["nan.keras"]


def test_disk_full_gives_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    tiny_probface(seed=6).save(tmp_path / "m.keras")
    out = tmp_path / "out"
    out.mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publishing.os, "fsync", full)  # every format fsyncs before it publishes
    for fmt, target in (("frozen_pb", out / "m.pb"), ("saved_model", out / "serving")):
        capsys.readouterr()
        assert E.main(["--model", str(tmp_path / "m.keras"), "--format", fmt, "--out", str(target)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"probface-export: error: cannot write {target}: No space left on device (nothing was "
                       f"written)"], err
    assert os.listdir(out) in ([], ["serving"]) and not os.listdir(out / "serving")


def test_interrupted_file_export_keeps_the_previous_file(exported, tmp_path, monkeypatch):
    target = tmp_path / "model.pb"
    target.write_bytes(b"previous")

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(publishing.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        E.export_file(exported["model"], str(target), "frozen_pb", overwrite=True)
    assert os.listdir(tmp_path) == ["model.pb"] and target.read_bytes() == b"previous"
    with pytest.raises(E.ExportError, match="model.pb already exists"):
        E.export_file(exported["model"], str(target), "frozen_pb")
    with pytest.raises(E.ExportError, match="--quantize int8 needs calibration images"):
        E.export_file(exported["model"], str(tmp_path / "q.tflite"), "litert", quantize="int8")
    with pytest.raises(E.ExportError, match="not frozen_pb"):
        E.export_file(exported["model"], str(tmp_path / "q.pb"), "frozen_pb", quantize="int8", representative_data="x")


def test_console_script_writes_a_file_format(exported, tmp_path, capsys):
    exported["model"].save(tmp_path / "m.keras")
    target = tmp_path / "m.onnx"
    assert E.main(["--model", str(tmp_path / "m.keras"), "--format", "onnx", "--out", str(target)]) == 0
    assert f"exported {target}" in capsys.readouterr().out
    np.testing.assert_allclose(E.open_runtime(str(target))(exported["images"])["mu"], exported["reference"]["mu"],
                               atol=1e-5)
    assert E.main(["--model", str(tmp_path / "m.keras"), "--format", "onnx", "--out", str(target),
                   "--version", "2"]) == 2
    assert "--version applies to --format saved_model only" in capsys.readouterr().err
