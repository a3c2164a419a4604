"""SavedModel export: signatures reproduce the Keras model outside this package, atomic versioned layout."""
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from probface_tf import export as E
from probface_tf.data.preprocess import decode_image, preprocess_batch
from references import tiny_probface

SIZE = (32, 32)
TINY = dict(image_size=SIZE, backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1], embedding_size=16)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def tiny_model(seed=0, **kwargs):
    return tiny_probface(seed, **kwargs)


def encode(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def sample_images():
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (9, 11, 3)), np.ones((5, 5, 1))).astype(np.uint8)  # 45x55
    return {"a.png": encode(smooth, "PNG"),
            "b.jpg": encode(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8), "JPEG"),
            "c.png": encode(rng.integers(0, 256, (20, 30), dtype=np.uint8), "PNG"),  # grey: decoded as RGB
            "d.png": encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "PNG")}  # already the input size


def pil_reference(encoded):
    """Independent of the package: Pillow decode + BILINEAR resize (what scipy.misc.imresize did) + (x-128)/128."""
    image = Image.open(io.BytesIO(encoded)).convert("RGB").resize(SIZE[::-1], Image.BILINEAR)
    return (np.asarray(image, np.float64) - 128.0) / 128.0


def np_scores(mu1, s1, mu2, s2):
    """Brute force, one pair at a time: (mls, cosine) of the original pair_MLS_score / pair_cosin_score."""
    mu1, s1, mu2, s2 = (np.asarray(a, np.float64) for a in (mu1, s1, mu2, s2))
    mls, cos = [], []
    for a, sa, b, sb in zip(mu1, s1, mu2, s2):
        if sa.size == 1:
            mutual = sa[0] + sb[0]
            mls.append(-(2 * (1 - a @ b) / (1e-10 + mutual) + np.log(mutual)))
        else:
            mutual = sa + sb
            mls.append(-(np.mean((a - b) ** 2 / mutual) + np.mean(np.log(mutual))))
        cos.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    return np.array(mls), np.array(cos)


def np_scores_all(mu1, s1, mu2, s2):
    pairs = [np_scores(mu1[i:i + 1], s1[i:i + 1], mu2[j:j + 1], s2[j:j + 1]) for i in range(len(mu1))
             for j in range(len(mu2))]
    shape = (len(mu1), len(mu2))
    return np.array([p[0][0] for p in pairs]).reshape(shape), np.array([p[1][0] for p in pairs]).reshape(shape)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_model()
    base = str(tmp_path_factory.mktemp("export"))
    path = E.export_saved_model(model, base, preprocess_ops=[["resize", SIZE], ["standardize", "mean_scale"]])
    return model, base, path


@pytest.fixture(scope="module")
def module(exported):
    return E.build_serving_module(exported[0])


def keras_outputs(model, images):
    out = model(images, training=False)
    mu, s = out["mu"].numpy(), out["sigma_sq"].numpy()
    return {"mu": mu, "sigma_sq": s, "log_sigma_sq": out["log_sigma_sq"].numpy(),
            "embeddings_with_sigma": np.concatenate([mu, s], 1)}


SUBPROCESS = textwrap.dedent(r"""
    import json, os, sys
    import numpy as np
    import tensorflow as tf

    work, export_dir = sys.argv[1], sys.argv[2]
    sig = tf.saved_model.load(export_dir).signatures
    load = lambda name: np.load(os.path.join(work, name + ".npy"))
    results = {
        "serving_default": sig["serving_default"](input=tf.constant(load("images"))),
        "from_image_bytes": sig["from_image_bytes"](image_bytes=tf.constant(
            [open(os.path.join(work, n), "rb").read() for n in json.load(open(os.path.join(work, "names.json")))])),
    }
    pair = {k: tf.constant(load(k)) for k in ("mu1", "sigma_sq1", "mu2", "sigma_sq2")}
    results["compare"] = sig["compare"](**pair)
    results["compare_all"] = sig["compare_all"](mu1=pair["mu1"], sigma_sq1=pair["sigma_sq1"],
                                                mu2=pair["mu2"][:2], sigma_sq2=pair["sigma_sq2"][:2])
    for name, outputs in results.items():
        for key, value in outputs.items():
            np.save(os.path.join(work, f"out.{name}.{key}.npy"), value.numpy())
    leaked = sorted(m for m in sys.modules if m.startswith("probface"))
    assert not leaked, leaked
    print("signatures", sorted(sig.keys()))
""")


def test_fresh_process_without_package_reproduces_every_signature(exported, tmp_path):
    model, _, path = exported
    rng = np.random.default_rng(2)
    images = rng.uniform(-1, 1, (3, *SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    encoded = sample_images()
    for name, data in encoded.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "names.json").write_text(json.dumps(list(encoded)))
    direct = keras_outputs(model, images)
    # Two sets of (mu, sigma_sq) with different images on each side.
    pair = {"mu1": direct["mu"], "sigma_sq1": direct["sigma_sq"], "mu2": direct["mu"][[1, 2, 0]],
            "sigma_sq2": direct["sigma_sq"][[1, 2, 0]]}
    for k, v in pair.items():
        np.save(tmp_path / f"{k}.npy", v)

    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, str(tmp_path), path], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'compare', 'compare_all', 'from_image_bytes', 'serving_default'" in proc.stdout
    got = lambda name, key: np.load(tmp_path / f"out.{name}.{key}.npy")  # noqa: E731

    for key in E.OUTPUT_KEYS:
        np.testing.assert_allclose(got("serving_default", key), direct[key], atol=1e-5, rtol=0)

    # from_image_bytes = the Python evaluation path (decode_image -> preprocess_batch -> model) ...
    python_path = np.concatenate([preprocess_batch(decode_image(data)[None], [["resize", SIZE],
                                  ["standardize", "mean_scale"]]).numpy() for data in encoded.values()])
    from_bytes = keras_outputs(model, python_path)
    for key in E.OUTPUT_KEYS:
        np.testing.assert_allclose(got("from_image_bytes", key), from_bytes[key], atol=1e-5, rtol=0)
    # ... and, for the lossless PNGs, Pillow's decode + bilinear resize, independently of the package.
    png = [i for i, n in enumerate(encoded) if n.endswith(".png")]
    pil = keras_outputs(model, np.stack([pil_reference(encoded[n]) for n in encoded if n.endswith(".png")]))
    np.testing.assert_allclose(got("from_image_bytes", "mu")[png], pil["mu"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got("from_image_bytes", "sigma_sq")[png], pil["sigma_sq"], atol=1e-5, rtol=0)

    mls, cos = np_scores(*pair.values())
    np.testing.assert_allclose(got("compare", "mls"), mls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got("compare", "cosine"), cos, atol=1e-5, rtol=0)
    mls_all, cos_all = np_scores_all(pair["mu1"], pair["sigma_sq1"], pair["mu2"][:2], pair["sigma_sq2"][:2])
    assert got("compare_all", "mls").shape == (3, 2)
    np.testing.assert_allclose(got("compare_all", "mls"), mls_all, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got("compare_all", "cosine"), cos_all, atol=1e-5, rtol=0)


BAD_INPUTS = textwrap.dedent(r"""
    import json, os, sys
    import numpy as np
    import tensorflow as tf

    work, export_dir = sys.argv[1], sys.argv[2]
    sig = tf.saved_model.load(export_dir).signatures
    png, jpg = (open(os.path.join(work, n), "rb").read() for n in ("a.png", "b.jpg"))
    z = lambda *shape: tf.zeros(shape, tf.float32)  # noqa: E731
    pair = lambda m1=(2, 16), s1=(2, 1), m2=(2, 16), s2=(2, 1): dict(  # noqa: E731
        mu1=z(*m1), sigma_sq1=z(*s1) + 1, mu2=z(*m2), sigma_sq2=z(*s2) + 1)
    cases = {
        "width": ("serving_default", dict(input=z(1, 32, 31, 3))),
        "size": ("serving_default", dict(input=z(1, 48, 48, 3))),
        "channels": ("serving_default", dict(input=z(2, 32, 32, 1))),
        "rank3": ("serving_default", dict(input=z(32, 32, 3))),  # aborted the process inside oneDNN before
        "rank5": ("serving_default", dict(input=z(1, 1, 32, 32, 3))),
        "dtype": ("serving_default", dict(input=tf.zeros([1, 32, 32, 3], tf.int32))),
        "bytes_rank2": ("from_image_bytes", dict(image_bytes=tf.constant([[png]]))),
        "truncated": ("from_image_bytes", dict(image_bytes=tf.constant([png, jpg, jpg[:len(jpg) // 2],
                                                                        png[:len(png) // 2]]))),
        "mu1_width": ("compare", pair(m1=(2, 15))),
        "sigma_sq2_width": ("compare", pair(s2=(2, 16))),
        "mu2_rank1": ("compare", pair(m2=(16,))),
        "all_mu2_width": ("compare_all", pair(m2=(3, 17), s2=(3, 1))),
        "all_sigma_sq1_rank3": ("compare_all", pair(s1=(2, 1, 1))),
        "rows": ("compare", pair(m2=(3, 16), s2=(3, 1))),
        "all_rows": ("compare_all", pair(s1=(3, 1))),
    }
    report = {}
    for case, (name, inputs) in cases.items():
        try:
            sig[name](**inputs)
            report[case] = ["no error", ""]
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            report[case] = [type(exc).__name__, str(exc)]
    # Still alive, and the signatures still work after the rejections.
    ok = sig["serving_default"](input=z(2, 32, 32, 3))["mu"].shape.as_list()
    json.dump({"report": report, "ok": ok, "leaked": sorted(m for m in sys.modules if m.startswith("probface"))},
              open(os.path.join(work, "bad.json"), "w"))
""")


def test_raw_signatures_reject_bad_inputs_in_the_graph(exported, tmp_path):
    """As TF Serving calls them: no probface_tf, no Python-side checks; the graph's own asserts must speak."""
    _, _, path = exported
    encoded = sample_images()
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(encoded[name])
    proc = subprocess.run([sys.executable, "-c", BAD_INPUTS, str(tmp_path), path], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]  # in particular no SIGABRT on the rank-3 input
    result = json.loads((tmp_path / "bad.json").read_text())
    assert result["leaked"] == [] and result["ok"] == [2, 16]
    report = result["report"]
    sd = "serving_default: input must be float32 [N, 32, 32, 3] (preprocessed faces), got shape "
    expected = {
        "width": sd + "[1 32 31 3]", "size": sd + "[1 48 48 3]", "channels": sd + "[2 32 32 1]",
        "rank3": sd + "[32 32 3]", "rank5": sd + "[1 1 32 32 3]",
        "bytes_rank2": "from_image_bytes: image_bytes must be string [N] (one encoded image per element), "
                       "got shape [1 1]",
        "truncated": f"from_image_bytes: 2 element(s) of image_bytes could not be decoded (truncated or corrupt "
                     f"image data); the first is element 2 ({len(encoded['b.jpg']) // 2} bytes)",
        "mu1_width": "compare: mu1 must be float32 [N, 16] (L2-normalised embeddings), got shape [2 15]",
        "sigma_sq2_width": "compare: sigma_sq2 must be float32 [N, 1] (sigma_sq of this model), "
                           "got shape [2 16]",
        "mu2_rank1": "compare: mu2 must be float32 [N, 16] (L2-normalised embeddings), got shape [16]",
        "all_mu2_width": "compare_all: mu2 must be float32 [N2, 16] (L2-normalised embeddings), "
                         "got shape [3 17]",
        "all_sigma_sq1_rank3": "compare_all: sigma_sq1 must be float32 [N1, 1] (sigma_sq of this model), "
                               "got shape [2 1 1]",
        "rows": "compare is element-wise: both sets need the same number of rows (use compare_all for all pairs)",
        "all_rows": "compare_all: mu1 and sigma_sq1 must have the same number of rows",
    }
    for case, text in expected.items():
        kind, message = report[case]
        assert kind == "InvalidArgumentError" and text in message, (case, kind, message)
    # The dtype is fixed by the signature; TensorFlow itself refuses a wrong one before the graph runs.
    kind, message = report["dtype"]
    assert kind == "InvalidArgumentError" and "expected to be a float tensor but is a int32 tensor" in message


def saved_model_cli():
    exe = shutil.which("saved_model_cli")
    return [exe] if exe else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


def test_saved_model_cli_show_lists_the_signatures(exported):
    _, _, path = exported
    proc = subprocess.run([*saved_model_cli(), "show", "--all", "--dir", path], env=ENV, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    blocks = {name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0] for name in E.SIGNATURES}
    assert "inputs['input']" in blocks["serving_default"] and "shape: (-1, 32, 32, 3)" in blocks["serving_default"]
    assert "inputs['image_bytes']" in blocks["from_image_bytes"] and "DT_STRING" in blocks["from_image_bytes"]
    for name in ("serving_default", "from_image_bytes"):
        for key, shape in (("mu", "(-1, 16)"), ("sigma_sq", "(-1, 1)"), ("log_sigma_sq", "(-1, 1)"),
                           ("embeddings_with_sigma", "(-1, 17)")):
            part = blocks[name].split(f"outputs['{key}']")[1]
            assert shape in part.split("name:")[0], (name, key)
    for name, out_shape in (("compare", "(-1)"), ("compare_all", "(-1, -1)")):
        for key in ("mu1", "sigma_sq1", "mu2", "sigma_sq2"):
            assert f"inputs['{key}']" in blocks[name]
        for key in ("mls", "cosine"):
            assert out_shape in blocks[name].split(f"outputs['{key}']")[1].split("name:")[0]


def test_saved_model_cli_run(exported, tmp_path):
    model, _, path = exported
    images = np.random.default_rng(3).uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    proc = subprocess.run([*saved_model_cli(), "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                           "serving_default", "--inputs", f"input={tmp_path / 'x.npy'}", "--outdir",
                           str(tmp_path / "out")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    direct = keras_outputs(model, images)
    for key in ("mu", "sigma_sq", "embeddings_with_sigma"):
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{key}.npy"), direct[key], atol=1e-5, rtol=0)

    # A wrong shape is refused by the TF1 session saved_model_cli feeds, before the graph runs.
    np.save(tmp_path / "bad.npy", images[:, :, :31])
    proc = subprocess.run([*saved_model_cli(), "run", "--dir", path, "--tag_set", "serve", "--signature_def",
                           "serving_default", "--inputs", f"input={tmp_path / 'bad.npy'}", "--outdir",
                           str(tmp_path / "bad_out")], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Cannot feed value of shape (2, 32, 31, 3) for Tensor serving_default_input:0, which has shape " \
           "(None, 32, 32, 3)" in proc.stderr


def test_metadata_describes_the_preprocessing(exported):
    _, _, path = exported
    with open(os.path.join(path, "assets", E.METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["preprocess_ops"] == [["resize", [32, 32]], ["standardize", "mean_scale"]]
    assert (meta["image_size"], meta["embedding_size"], meta["sigma_size"]) == ([32, 32], 16, 1)
    assert meta["signatures"]["serving_default"]["inputs"] == {"input": ["float32", [None, 32, 32, 3]]}
    loaded = E.load_export(path)
    assert loaded.metadata == meta
    assert loaded.loaded.metadata_file.asset_path.numpy().decode().endswith("assets/" + E.METADATA_FILE)


def test_python_api_rejects_wrong_dtype_and_shape(exported):
    _, base, _ = exported
    model = E.load_export(base)  # an export base resolves to its latest version
    with pytest.raises(E.ExportInputError, match=r"'input' must be float32 \[None, 32, 32, 3\], got dtype uint8"):
        model.embed(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(E.ExportInputError, match=r"\[None, 32, 32, 3\], got shape \[1, 32, 31, 3\]"):
        model.embed(np.zeros((1, 32, 31, 3), np.float32))
    with pytest.raises(E.ExportInputError, match=r"got shape \[32, 32, 3\]"):
        model.embed(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(E.ExportInputError, match="element 1 of 'image_bytes' must be bytes"):
        model.embed_image_bytes([sample_images()["a.png"], "face.jpg"])
    with pytest.raises(E.ExportInputError, match=r"\(string \[None\]\), got bytes"):
        model.embed_image_bytes(sample_images()["a.png"])
    mu, s = np.eye(3, 16, dtype=np.float32), np.ones((3, 1), np.float32)
    with pytest.raises(E.ExportInputError, match=r"element-wise .*\(2 vs 3\); use compare_all"):
        model.compare(mu, s, mu[:2], s[:2])
    with pytest.raises(E.ExportInputError, match="mu1 has 3 rows but sigma_sq1 has 2"):
        model.compare_all(mu, s[:2], mu, s)
    with pytest.raises(E.ExportInputError, match=r"'sigma_sq2' must be float32 \[None, 1\]"):
        model.compare_all(mu, s, mu, np.ones((3, 16), np.float32))
    # Valid calls still agree with the brute force (float64 inputs are accepted and cast).
    mls, cos = np_scores(mu, s, mu[::-1], 2 * s)
    out = model.compare(mu.astype(np.float64), s, mu[::-1], 2 * s)
    np.testing.assert_allclose(out["mls"], mls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["cosine"], cos, atol=1e-6, rtol=0)


def test_undecodable_bytes_give_a_clear_graph_error(exported):
    _, _, path = exported
    sig = tf.saved_model.load(path).signatures["from_image_bytes"]
    good = sample_images()["a.png"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"2 element\(s\) of image_bytes are not encoded JPEG, PNG, GIF or BMP images; "
                             r"the first is element 1 \(10 bytes\)"):
        sig(image_bytes=tf.constant([good, b"not a face", b"", good]))


def test_empty_batches_give_empty_outputs(exported):
    _, _, path = exported
    model = E.load_export(path)
    for out in (model.embed(np.zeros((0, *SIZE, 3), np.float32)), model.embed_image_bytes([])):
        assert out["mu"].shape == (0, 16) and out["embeddings_with_sigma"].shape == (0, 17)


def test_compare_for_a_d_dimensional_sigma():
    model = tiny_model(seed=4, uncertainty_module_output_size=16)
    module = E.build_serving_module(model)
    rng = np.random.default_rng(5)
    mu1, mu2 = (tf.math.l2_normalize(rng.normal(size=(3, 16)), axis=1).numpy().astype(np.float32) for _ in "ab")
    s1, s2 = (rng.uniform(0.1, 2.0, (3, 16)).astype(np.float32) for _ in "ab")
    out = module.compare(tf.constant(mu1), tf.constant(s1), tf.constant(mu2), tf.constant(s2))
    mls, cos = np_scores(mu1, s1, mu2, s2)
    np.testing.assert_allclose(out["mls"].numpy(), mls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["cosine"].numpy(), cos, atol=1e-6, rtol=0)
    out = module.compare_all(tf.constant(mu1), tf.constant(s1), tf.constant(mu2[:2]), tf.constant(s2[:2]))
    mls_all, _ = np_scores_all(mu1, s1, mu2[:2], s2[:2])
    np.testing.assert_allclose(out["mls"].numpy(), mls_all, atol=1e-5, rtol=0)
    assert json.loads(module.metadata_text)["mls"] == "D-dim MLS"


def test_versions_are_numbered_and_never_overwritten_silently(exported, module, tmp_path):
    model = exported[0]
    base = str(tmp_path / "models")
    assert E.next_version(base) == 1
    assert E.write_serving_module(module, base) == os.path.join(base, "1")
    os.makedirs(os.path.join(base, ".tmp-5-12345"))  # a crashed export's leftover: not a version
    assert E.write_serving_module(module, base) == os.path.join(base, "2")
    assert E.write_serving_module(module, base, version=10) == os.path.join(base, "10")
    assert E.list_versions(base) == [1, 2, 10] and E.next_version(base) == 11
    with pytest.raises(E.ExportError, match="10 already exists .*overwrite"):
        E.write_serving_module(module, base, version=10)
    # Overwriting replaces the model: version 10 now holds other weights.
    other = tiny_model(seed=7)
    E.export_saved_model(other, base, version=10, overwrite=True)
    x = np.random.default_rng(8).uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(E.load_export(base).embed(x)["mu"], keras_outputs(other, x)["mu"], atol=1e-5)
    assert not np.allclose(keras_outputs(other, x)["mu"], keras_outputs(model, x)["mu"], atol=1e-3)
    assert sorted(os.listdir(base)) == [".tmp-5-12345", "1", "10", "2"]
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(E.ExportError, match="version must be a positive integer"):
            E.write_serving_module(module, base, version=bad)


def test_interrupted_export_leaves_no_version_directory(module, tmp_path, monkeypatch):
    base = str(tmp_path / "models")
    real_save = tf.saved_model.save

    def save_then_interrupt(obj, path, signatures=None, **kwargs):
        real_save(obj, path, signatures=signatures, **kwargs)
        assert os.path.isfile(os.path.join(path, "saved_model.pb")) and E.list_versions(base) == []
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        E.write_serving_module(module, base)
    assert os.listdir(base) == []  # neither a version nor the temporary directory


CRASH = textwrap.dedent(r"""
    import os, sys
    from probface_tf import export as E
    from probface_tf.export import publishing as P
    from probface_tf.models.probface import build_probface

    model = build_probface(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1],
                           embedding_size=16)
    P.publish = lambda *args: os._exit(17)  # the process dies after writing, before the rename
    E.export_saved_model(model, sys.argv[1])
""")


def test_killed_export_leaves_only_a_temporary_directory(tmp_path):
    base = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(base)], env=ENV, capture_output=True, text=True)
    assert proc.returncode == 17, proc.stderr[-3000:]
    (left,) = os.listdir(base)
    assert left.startswith(".tmp-1-") and os.path.isfile(base / left / "saved_model.pb")
    assert E.list_versions(str(base)) == [] and E.next_version(str(base)) == 1
    with pytest.raises(E.ExportError, match="neither a SavedModel directory nor an export base"):
        E.resolve_export(str(base))


def test_bad_models_and_options_are_reported(tmp_path):
    import keras

    model = tiny_model(seed=10)
    with pytest.raises(E.ExportError, match=r"image_size \[48, 48\] does not match the model input \[32, 32\]"):
        E.build_serving_module(model, image_size=(48, 48))
    with pytest.raises(E.ExportError, match=r"preprocess_ops .* produce float32 images of shape \[48, 48, 3\]"):
        E.build_serving_module(model, preprocess_ops=[["resize", (48, 48)], ["standardize", "mean_scale"]])
    with pytest.raises(E.ExportError, match="preprocess_ops .* cannot be applied: .*'blur'"):
        E.build_serving_module(model, preprocess_ops=[["blur", 3]])
    with pytest.raises(E.ExportError, match="resize_method"):
        E.build_serving_module(model, resize_method="nearest")
    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(E.ExportError, match="must output a dict with 'mu' and 'sigma_sq'"):
        E.build_serving_module(plain)
    (tmp_path / "file").write_text("x")
    with pytest.raises(E.ExportError, match="is not a directory"):
        E.export_saved_model(model, str(tmp_path / "file"))


def test_console_script(tmp_path, capsys):
    setup_py = open(os.path.join(os.path.dirname(__file__), os.pardir, "setup.py"), encoding="utf-8").read()
    assert '"probface-export=probface_tf.export.cli:run"' in setup_py
    assert callable(E.cli.run)
    model = tiny_model(seed=11)
    model.save(tmp_path / "m.keras")
    config = tmp_path / "cfg.py"
    config.write_text("image_size = [32, 32]\npreprocess_test = [['resize', (32, 32)], ['standardize', 'scale']]\n"
                      "resize_method = 'bilinear'\n")
    base = tmp_path / "serving"
    argv = ["--model", str(tmp_path / "m.keras"), "--out", str(base), "--version", "3", "--config", str(config)]
    assert E.main(argv) == 0
    assert f"exported {base / '3'}" in capsys.readouterr().out
    loaded = E.load_export(str(base))
    assert loaded.metadata["preprocess_ops"] == [["resize", [32, 32]], ["standardize", "scale"]]
    assert loaded.metadata["resize_method"] == "bilinear"
    x = np.random.default_rng(12).uniform(-1, 1, (2, *SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.embed(x)["sigma_sq"], keras_outputs(model, x)["sigma_sq"], atol=1e-5)
    # 'scale' standardisation: x / 255 of the (unchanged) 32x32 image.
    image = np.random.default_rng(13).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.embed_image_bytes([encode(image, "PNG")])["mu"],
                               keras_outputs(model, image[None] / 255.0)["mu"], atol=1e-5)

    assert E.main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert E.main(["--out", str(base)]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert E.main(["--model", str(tmp_path / "missing.keras"), "--out", str(base)]) == 2
    assert "missing.keras: no such file" in capsys.readouterr().err
    (tmp_path / "junk.keras").write_bytes(b"junk")
    assert E.main(["--model", str(tmp_path / "junk.keras"), "--out", str(base)]) == 2
    assert "junk.keras: cannot load the Keras model" in capsys.readouterr().err
    assert E.main(["--help"]) == 0 and "--overwrite" in capsys.readouterr().out
