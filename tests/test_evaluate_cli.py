"""End to end: generated .bin files through tiny models (Keras, SavedModel, TF1 checkpoint), checked against an
independent Pillow/NumPy preprocessing, direct model calls, per-pair formulas and a loop 10-fold; the CLI's
stdout lines, files and bad-input errors."""
import json
import os
import pickle
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from probface_tf.data.binfile import read_bin, write_bin
from probface_tf.eval import report
from probface_tf.eval.model_loader import ModelLoadError, load_model
from probface_tf.eval.risk import legacy_percentile
from probface_tf.eval.runner import EvaluationError, evaluate_bins, image_pipeline, resolve_bins
from references import png_bytes, ten_fold_loop, tiny_probface

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1], embedding_size=16)
PAIRS = 60
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _tiny(sigma_size=1, seed=0):
    return tiny_probface(seed, uncertainty_module_output_size=sigma_size)


_png = png_bytes


def _images(rng, n, size=48):
    # smooth random faces-to-be: low-frequency patterns with varied contrast, so the stretch matters
    base = rng.random((n, 6, 6, 3))
    big = np.stack([np.asarray(Image.fromarray((b * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
                    for b in base]).astype(np.float64)
    lo, hi = rng.uniform(0, 100, (n, 1, 1, 1)), rng.uniform(150, 255, (n, 1, 1, 1))
    return (lo + big / 255 * (hi - lo)).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(0)
    images = _images(rng, 2 * PAIRS)
    issame = np.arange(PAIRS) % 2 == 0
    images[1::2][issame] = np.clip(images[0::2][issame].astype(int) + rng.integers(-6, 7, images[0::2][issame].shape),
                                   0, 255)
    pairs = [(_png(images[2 * k]), _png(images[2 * k + 1]), issame[k]) for k in range(PAIRS)]
    write_bin(str(root / "lfw.bin"), pairs)
    write_bin(str(root / "cfp_fp.bin"), pairs[: PAIRS // 2 + 10])
    model = _tiny()
    model.save(str(root / "tiny.keras"))
    return {"root": root, "images": images, "issame": issame, "model": model}


def _reference_preprocess(images, size=(32, 32)):
    """Original eval preprocessing written independently: float32 min-max stretch (scipy bytescale), Pillow
    bilinear resize, (x - 128)/128."""
    out = []
    for img in images.astype(np.float32):
        lo, hi = img.min(), img.max()
        scaled = np.floor(np.clip((img - lo) * np.float32(255.0 / (float(hi) - float(lo))), 0, 255) + 0.5)
        resized = Image.fromarray(scaled.astype(np.uint8)).resize(size[::-1], Image.BILINEAR)
        out.append((np.asarray(resized, np.float32) - 128.0) / 128.0)
    return np.stack(out)


def _loop_ten_fold(scores, labels):
    return ten_fold_loop(scores, labels)[0]


def test_pipeline_matches_independent_preprocessing(data):
    model = load_model(str(data["root"] / "tiny.keras"))
    binset = read_bin(str(data["root"] / "lfw.bin"))
    got = np.concatenate([b.numpy() for b in image_pipeline(binset, model.preprocessing, 16)])
    np.testing.assert_array_equal(got, _reference_preprocess(data["images"]))


def test_keras_model_end_to_end_numbers(data, tmp_path):
    model = load_model(str(data["root"] / "tiny.keras"))
    assert model.has_sigma and model.image_size == (32, 32) and model.kind == "keras"
    lines = []
    results = evaluate_bins(model, [str(data["root"] / "lfw.bin")], str(tmp_path), batch_size=16,
                            save_scores=True, plots=False, echo=lines.append)
    scores = np.load(tmp_path / "lfw" / "scores.npz")
    assert sorted(scores.files) == ["cosine", "fastmls", "issame", "sigma_sq_1", "sigma_sq_2"]
    # independent features: the unfolded Keras model on the reference preprocessing
    out = data["model"](_reference_preprocess(data["images"]), training=False)
    mu, sigma = out["mu"].numpy().astype(np.float64), out["sigma_sq"].numpy().astype(np.float64)
    np.testing.assert_array_equal(scores["issame"], data["issame"])
    np.testing.assert_allclose(scores["sigma_sq_1"], sigma[0::2], rtol=1e-4)
    np.testing.assert_allclose(scores["sigma_sq_2"], sigma[1::2], rtol=1e-4)
    cos = np.sum(mu[0::2] * mu[1::2], axis=1) / np.linalg.norm(mu[0::2], axis=1) / np.linalg.norm(mu[1::2], axis=1)
    np.testing.assert_allclose(scores["cosine"], cos, atol=1e-5)
    mutual = sigma[0::2, 0] + sigma[1::2, 0]
    fast = -(2 * (1 - np.sum(mu[0::2] * mu[1::2], axis=1)) / (1e-10 + mutual) + np.log(mutual))
    np.testing.assert_allclose(scores["fastmls"], fast, rtol=1e-4, atol=1e-4)
    # the reported accuracies are the protocol applied to exactly these scores
    result = json.loads((tmp_path / "results.json").read_text())["datasets"][0]
    assert result["verification"]["cosine"]["accuracy"] == pytest.approx(
        _loop_ten_fold(scores["cosine"], scores["issame"]))
    assert result["verification"]["fastmls"]["accuracy"] == pytest.approx(
        _loop_ten_fold(scores["fastmls"], scores["issame"]))
    fused = np.maximum(scores["sigma_sq_1"], scores["sigma_sq_2"]).ravel()
    keep = fused <= np.float32(np.percentile(fused.astype(np.float64), 70))
    assert result["risk"][3]["kept"] == keep.sum()
    assert result["risk"][3]["cosine"]["accuracy"] == pytest.approx(
        _loop_ten_fold(scores["cosine"][keep], scores["issame"][keep]))
    # the text block carries the original lines, number for number
    text = lines[0]
    sigma_all = np.concatenate([scores["sigma_sq_1"], scores["sigma_sq_2"]])
    assert report.percentile_line(legacy_percentile(sigma_all, [0, 10, 30, 50, 70, 90, 100])) in text
    row = result["risk"][1]
    assert ("risk_factor 0.1 risk_threshold %r keep_idxes %d / %d Cosine score acc %f threshold %f" % (
        row["risk_threshold"], row["kept"], PAIRS, row["cosine"]["accuracy"], row["cosine"]["threshold"])) in text
    assert results[0]["name"] == "lfw" and "(md)" not in lines[-1]
    assert "| Method | LFW | Avg |" in lines[-1]


def test_ddim_sigma_uses_mls(data, tmp_path):
    model_d = _tiny(sigma_size=16, seed=1)
    model_d.save(str(tmp_path / "d.keras"))
    model = load_model(str(tmp_path / "d.keras"))
    evaluate_bins(model, [str(data["root"] / "lfw.bin")], str(tmp_path), 32, save_scores=True, plots=False,
                  echo=lambda _: None)
    scores = np.load(tmp_path / "lfw" / "scores.npz")
    assert "mls" in scores.files and "fastmls" not in scores.files
    out = model_d(_reference_preprocess(data["images"]), training=False)
    mu, s = out["mu"].numpy().astype(np.float64), out["sigma_sq"].numpy().astype(np.float64)
    mutual = s[0::2] + s[1::2]
    mls = -(np.mean((mu[0::2] - mu[1::2]) ** 2 / mutual, axis=1) + np.mean(np.log(mutual), axis=1))
    np.testing.assert_allclose(scores["mls"], mls, rtol=1e-4, atol=1e-5)
    assert scores["sigma_sq_1"].shape == (PAIRS, 16)


def test_plain_embedding_model_is_cosine_only(data, tmp_path):
    inp = keras.Input((32, 32, 3))
    emb = keras.layers.Dense(8)(keras.layers.Flatten()(inp))
    keras.Model(inp, emb).save(str(tmp_path / "plain.keras"))
    model = load_model(str(tmp_path / "plain.keras"))
    assert not model.has_sigma
    lines = []
    results = evaluate_bins(model, [str(data["root"] / "lfw.bin")], str(tmp_path), save_scores=True, plots=False,
                            echo=lines.append)
    assert "no sigma_sq output" in lines[0] and "cosine only" in lines[0]
    assert "no sigma_sq output" in lines[1] and "risk_factor" not in lines[1]
    assert sorted(np.load(tmp_path / "lfw" / "scores.npz").files) == ["cosine", "issame"]
    assert list(results[0]["verification"]) == ["cosine"]


def test_saved_model_export_gives_the_same_features(data, tmp_path):
    from probface_tf.export import export_saved_model

    export_saved_model(data["model"], str(tmp_path / "export"))
    saved = load_model(str(tmp_path / "export"))
    keras_model = load_model(str(data["root"] / "tiny.keras"))
    assert saved.kind == "saved_model" and saved.image_size == (32, 32) and saved.has_sigma
    assert saved.preprocessing.source == "saved_model metadata"
    x = _reference_preprocess(data["images"][:8])
    a, b = saved(x), keras_model(x)
    np.testing.assert_allclose(a["mu"], b["mu"], atol=1e-5)
    np.testing.assert_allclose(a["sigma_sq"], b["sigma_sq"], rtol=1e-4)


def test_tf1_checkpoint_matches_original_graph(data, tmp_path):
    from probface_tf.models.resface import BackboneSpec
    from tf1_reference import TF1ProbFace

    graph = TF1ProbFace(BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1)), (32, 32), 16, 1)
    x = _reference_preprocess(data["images"][:8])
    graph.randomize(np.random.default_rng(2), calibrate_images=x)
    graph.save(str(tmp_path / "run" / "model-20200101.ckpt"), global_step=7)
    model = load_model(str(tmp_path / "run"))
    assert model.kind == "tf1_checkpoint" and model.has_sigma
    ref = graph.run(x)
    got = model(x)
    np.testing.assert_allclose(got["mu"], ref["mu"], atol=2e-5)
    np.testing.assert_allclose(got["sigma_sq"], ref["sigma_sq"], rtol=2e-4)


def test_bad_inputs_give_clear_errors(data, tmp_path):
    from probface_tf.data.errors import DatasetFormatError, UnreadableImageError, UnsafePickleError

    model = load_model(str(data["root"] / "tiny.keras"))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Evil()], [True])))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        evaluate_bins(model, [str(tmp_path / "evil.bin")], None, echo=lambda _: None)
    (tmp_path / "junk.bin").write_bytes(os.urandom(300))
    with pytest.raises(DatasetFormatError, match="junk.bin: not a readable .bin pickle"):
        evaluate_bins(model, [str(tmp_path / "junk.bin")], None, echo=lambda _: None)
    good = [_png(img) for img in data["images"][:24]]
    write_bin(str(tmp_path / "broken.bin"), [(good[0], good[1], True)] * 5 + [(good[2], b"not an image", False)]
              + [(good[3], good[4], False)] * 6)
    with pytest.raises(UnreadableImageError, match=r"broken.bin image 11: not a decodable image"):
        evaluate_bins(model, [str(tmp_path / "broken.bin")], None, echo=lambda _: None)
    small = _png(np.zeros((20, 20, 3), np.uint8))
    write_bin(str(tmp_path / "sizes.bin"), [(good[0], good[1], True)] * 6 + [(small, good[1], False)] * 6)
    with pytest.raises(EvaluationError, match=r"sizes.bin image 12: size \(20, 20\) differs from image 0's"):
        evaluate_bins(model, [str(tmp_path / "sizes.bin")], None, echo=lambda _: None)
    with pytest.raises(EvaluationError, match=".bin file not found: .*nope.bin"):
        resolve_bins([str(tmp_path / "nope.bin")])
    assert resolve_bins([], str(data["root"]), ["lfw", "agedb_30"], skip_missing=True) == [
        str(data["root"] / "lfw.bin")]
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "missing.keras"))
    (tmp_path / "bad.keras").write_bytes(b"zip? no")
    with pytest.raises(ModelLoadError, match="bad.keras: cannot load the Keras model"):
        load_model(str(tmp_path / "bad.keras"))
    # preprocessing to 48x48 for a 32x32 model
    from probface_tf.config import from_dict

    cfg = from_dict({"image_size": [48, 48]})
    mismatched = load_model(str(data["root"] / "tiny.keras"), cfg)
    with pytest.raises(EvaluationError, match="gives 48x48 images but the model takes 32x32"):
        evaluate_bins(mismatched, [str(data["root"] / "lfw.bin")], None, echo=lambda _: None)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=600)


def test_cli_outputs_and_refused_bin(data, tmp_path):
    out = tmp_path / "out"
    run = _cli("--model", str(data["root"] / "tiny.keras"), "--bin_dir", str(data["root"]), "--skip_missing",
               "--out", str(out), "--save-scores", "--batch_size", "32")
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "--- lfw ---" in text and "--- cfp_fp ---" in text
    assert re.search(r"^Cosine score acc \d\.\d{6} threshold -?\d+\.\d{6}$", text, re.M)
    assert re.search(r"^MLS score acc \d\.\d{6} threshold -?\d+\.\d{6}$", text, re.M)
    assert len(re.findall(r"^risk_factor 0\.[0-3] risk_threshold \d\.\d+(e-\d+)? keep_idxes \d+ / 60 Cosine score "
                          r"acc \d\.\d{6} threshold -?\d+\.\d{6}$", text, re.M)) == 4
    assert len(re.findall(r"^reject_factor 0\.\d{4} risk_threshold \d\.\d{6} keep_idxes \d+ / 60 Cosine score eer "
                          r"\d\.\d{6} fmr100 \d\.\d{6} fmr1000 \d\.\d{6}$", text, re.M)) == 7
    assert re.search(r"^AUERC30: \d\.\d{4}$", text, re.M)
    assert "| Method | LFW | CFP-FP | Avg |" in text  # README column order, only the sets present
    for name in ("results.json", "results.md", "lfw_reject_verification.png", "lfw_sigma_sq_hist.png",
                 "cfp_fp/scores.npz", "lfw/scores.npz"):
        assert (out / name).is_file(), name
    payload = json.loads((out / "results.json").read_text())
    assert [d["name"] for d in payload["datasets"]] == ["lfw", "cfp_fp"]
    assert payload["datasets"][1]["pairs"] == 40
    # calibration.json: thresholds recomputed from the pooled pairs of both sets (sorted impostor scores)
    calibration = json.loads((out / "calibration.json").read_text())
    pooled = [dict(np.load(out / name / "scores.npz")) for name in ("lfw", "cfp_fp")]
    issame = np.concatenate([p["issame"] for p in pooled])
    for score in ("fastmls", "cosine"):
        impostors = np.sort(np.concatenate([p[score] for p in pooled])[~issame])[::-1]
        for fmr in ("0.01", "0.001", "0.0001"):
            expected = impostors[int(np.floor(float(fmr) * impostors.size))]
            assert calibration["fmr_thresholds"][score][fmr] == pytest.approx(expected, abs=1e-6)
    fused = np.concatenate([(p["sigma_sq_1"] + p["sigma_sq_2"]).ravel() for p in pooled])
    assert calibration["reject_sigma_sq"]["0.1"] == pytest.approx(np.quantile(fused, 0.9), abs=1e-6)
    assert calibration["pairs"] == 100 and calibration["impostors"] == int((~issame).sum())

    (tmp_path / "evil.bin").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    refused_out = tmp_path / "refused_out"
    run = _cli("--model", str(data["root"] / "tiny.keras"), "--bin", str(tmp_path / "evil.bin"),
               "--out", str(refused_out))
    assert run.returncode == 2
    assert not refused_out.exists()  # a refused .bin leaves no empty output folder behind
    assert "Traceback" not in run.stderr and "pwned" not in run.stdout
    assert run.stderr.strip().splitlines()[-1].startswith("evaluate.py: error: ")
    assert "refused to load" in run.stderr and "'os.system'" in run.stderr


def _run_eval(*args):
    return subprocess.run(["bash", os.path.join(ROOT, "run_eval.sh"), *args], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=600)


def test_run_eval_sh_evaluates_known_bins_and_ends_with_the_summary_table(data, tmp_path):
    bins = tmp_path / "bins"
    bins.mkdir()
    # found and listed in the README's column order, whatever the folder order
    (bins / "agedb_30.bin").write_bytes((data["root"] / "cfp_fp.bin").read_bytes())
    (bins / "lfw.bin").write_bytes((data["root"] / "lfw.bin").read_bytes())
    (bins / "not_a_benchmark.bin").write_bytes(b"ignored: not a known dataset name")
    out = tmp_path / "out"
    run = _run_eval(str(data["root"] / "tiny.keras"), str(bins), "--out", str(out), "--batch_size", "32")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("evaluating lfw agedb_30 from ")
    lines = run.stdout.strip().splitlines()
    header = lines.index("| Method | LFW | AgeDB30 | Avg |")
    rows = [line.strip("| ").split(" | ") for line in lines[header + 2:]]
    assert len(lines) == header + 2 + len(rows) and [r[0] for r in rows] == ["tiny.keras (Cosine)",
                                                                                "tiny.keras (FastMLS)"]
    payload = json.loads((out / "results.json").read_text())
    assert [d["pairs"] for d in payload["datasets"]] == [60, 40]
    for row, score in zip(rows, ("cosine", "fastmls")):
        accs = [100 * d["verification"][score]["accuracy"] for d in payload["datasets"]]
        assert row[1:] == ["%.2f" % a for a in accs] + ["%.2f" % (sum(accs) / 2)]


@pytest.mark.parametrize("make_args, needle", [
    (lambda tmp: [], "usage:"),
    (lambda tmp: ["m.keras", str(tmp / "missing")], "is not a directory"),
    (lambda tmp: ["m.keras", str(tmp)], "no known .bin"),
])
def test_run_eval_sh_usage_errors(make_args, needle, tmp_path):
    run = _run_eval(*make_args(tmp_path))
    assert run.returncode == 2 and needle in run.stderr


def test_bfloat16_backbone_keeps_the_numbers_close_and_refuses_other_models(data, tmp_path):
    """``--compute_dtype bfloat16`` through the model loader: the folded backbone in bfloat16 (8-bit mantissa)
    moves this tiny model's 16-d mu by 4.8e-3 at most (measured; a short embedding has larger entries, hence
    larger absolute round-off). The README's bound for ResFace64's 256-d mu, 2.5e-3, is asserted in
    test_parity.py::test_converted_checkpoint_matches_original_graph."""
    images = _reference_preprocess(data["images"][:16])
    exact = load_model(str(data["root"] / "tiny.keras"))(images)
    fast = load_model(str(data["root"] / "tiny.keras"), compute_dtype="bfloat16")(images)
    assert fast["mu"].dtype == np.float32
    error = np.abs(fast["mu"] - exact["mu"]).max()
    assert 1e-4 < error <= 1e-2  # really reduced precision, and still close
    np.testing.assert_allclose(fast["sigma_sq"], exact["sigma_sq"], rtol=5e-2)
    with pytest.raises(ModelLoadError, match="--compute_dtype must be one of"):
        load_model(str(data["root"] / "tiny.keras"), compute_dtype="int8")
    plain = keras.Model(data["model"].input, data["model"].output["mu"])
    plain.save(str(tmp_path / "plain.keras"))
    with pytest.raises(ModelLoadError, match="only ProbFace models"):
        load_model(str(tmp_path / "plain.keras"), compute_dtype="bfloat16")
