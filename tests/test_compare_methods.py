"""Several uncertainty methods in one evaluate.py call: tiny ProbFace, PCNet, MC-dropout and ScaleFace models on
generated .bin files. The comparison table must carry each model's own results.json numbers, and a few entries
are recomputed from scores.npz with independent NumPy code; shared decoding must give single-run features."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from probface_tf.data.binfile import read_bin, write_bin
from probface_tf.eval import report
from probface_tf.eval.compare import COLUMNS, folder_names, method_labels
from probface_tf.eval.extraction import extract_bin, group_by_preprocessing, image_pipeline, shared_bin_pipeline
from probface_tf.eval.model_loader import Preprocessing, load_model
from probface_tf.eval.runner import evaluate_bins
from references import png_bytes, ten_fold_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
ARCH = dict(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1])
PAIRS = 60
METHODS = ("ProbFace", "PCNet", "MC dropout", "ScaleFace")
FOLDERS = ("ProbFace", "PCNet", "MC_dropout", "ScaleFace")


_png = png_bytes


def _images(rng, n, size=40):
    base = rng.random((n, 5, 5, 3))
    return np.stack([np.asarray(Image.fromarray((b * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
                     for b in base])


def _probface():
    from probface_tf.models.probface import build_probface

    keras.utils.set_random_seed(0)
    model = build_probface(uncertainty_module_output_size=1, embedding_size=16, **ARCH)
    head = model.get_layer("UncertaintyModule")  # spread sigma_sq across images
    r = np.random.default_rng(0)
    for bn in (head.fc1_bn, head.fc_log_sigma_sq_bn):
        bn.moving_mean.assign(r.normal(0, 0.5, bn.moving_mean.shape).astype("float32"))
        bn.moving_variance.assign(r.uniform(0.5, 2.0, bn.moving_variance.shape).astype("float32"))
    head.scale_and_shift.alpha.assign(0.8)
    return model


def _scaleface_run(folder):
    from probface_tf.models.heads import ScaleHead
    from probface_tf.models.resface import build_resface

    keras.utils.set_random_seed(3)
    backbone = build_resface("resface64_relu", ARCH["image_size"], 8)
    features = keras.Input(backbone.output["conv_final"].shape[1:])
    folder.mkdir()
    backbone.save(folder / "backbone.keras")
    keras.Model(features, ScaleHead(hidden_units=4, activation="exp", batch_norm=False)(features)).save(
        folder / "scale_head.keras")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from probface_tf.methods import build_model as build_baseline
    from probface_tf.methods.mc_dropout import copy_bottleneck

    root = tmp_path_factory.mktemp("compare")
    rng = np.random.default_rng(0)
    images = _images(rng, 2 * PAIRS)
    issame = np.arange(PAIRS) % 2 == 0
    # genuine partners: the first image blended with another one to a varying degree, so some are hard
    alpha = rng.uniform(0.2, 1.0, (issame.sum(), 1, 1, 1))
    others = _images(rng, int(issame.sum()))
    images[1::2][issame] = np.clip(alpha * images[0::2][issame] + (1 - alpha) * others, 0, 255).astype(np.uint8)
    pairs = [(_png(images[2 * k]), _png(images[2 * k + 1]), issame[k]) for k in range(PAIRS)]
    write_bin(str(root / "lfw.bin"), pairs)
    write_bin(str(root / "cfp_fp.bin"), pairs[:40])
    _probface().save(str(root / "probface.keras"))
    keras.utils.set_random_seed(1)
    build_baseline("pcnet", embedding_size=8, **ARCH).save(str(root / "pcnet.keras"))
    keras.utils.set_random_seed(2)
    mc = build_baseline("mc_dropout", embedding_size=8, mc_samples=4, seed=5, **ARCH)
    copy_bottleneck(mc)
    mc.save(str(root / "mc.keras"))
    _scaleface_run(root / "scaleface_run")
    models = [str(root / name) for name in ("probface.keras", "pcnet.keras", "mc.keras", "scaleface_run")]
    out = root / "out"
    args = [a for path, method in zip(models, METHODS) for a in ("--model", path, "--method", method)]
    run = _cli(*args, "--bin", str(root / "lfw.bin"), "--bin", str(root / "cfp_fp.bin"), "--out", str(out),
               "--save-scores", "--batch_size", "32")
    return {"root": root, "out": out, "run": run, "models": models}


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=900)


# ---------------------------------------------------------------------------------------------- references


def _ten_fold(scores, labels):
    """The original 10-fold protocol, written as plain loops."""
    return ten_fold_loop(scores, labels)[0]


def _fnmr_at_fmr(genuine, impostor, target=1e-3):
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    fmr = np.array([np.mean(impostor >= t) for t in thresholds])
    fnmr = np.array([np.mean(genuine < t) for t in thresholds])
    return fnmr[np.argmin(np.abs(fmr - target))]


def _tar_at_far_after_reject(scores, labels, uncertainty, far, rejected):
    order = np.argsort(uncertainty, kind="stable")
    keep = order[: int(len(scores) * (1 - rejected))]
    genuine, impostor = scores[keep][labels[keep]], np.sort(scores[keep][~labels[keep]])[::-1]
    k = int(round(far * len(impostor)))
    threshold = impostor[k - 1] if k else impostor[0] + 1e-8
    return np.mean(genuine >= threshold)


# ---------------------------------------------------------------------------------------------- tests


def test_one_call_compares_every_method(data):
    run, out = data["run"], data["out"]
    assert run.returncode == 0, run.stderr
    payload = json.loads((out / "results.json").read_text())
    assert [m["label"] for m in payload["methods"]] == list(METHODS)
    assert [m["folder"] for m in payload["methods"]] == list(FOLDERS)
    assert [m["uncertainty"] for m in payload["methods"]] == ["sigma_sq", "uncertainty", "uncertainty",
                                                              "uncertainty"]
    rows = payload["comparison"]["rows"]
    assert [(r["dataset"], r["method"]) for r in rows] == [(d, m) for d in ("lfw", "cfp_fp") for m in METHODS]
    assert [c["key"] for c in payload["comparison"]["columns"]] == [k for k, _, _ in COLUMNS]
    for row in rows:
        own = json.loads((out / FOLDERS[METHODS.index(row["method"])] / "results.json").read_text())
        d = next(x for x in own["datasets"] if x["name"] == row["dataset"])
        fnmr, rv = d["reject_fnmr"], d["reject_verification"]
        assert rv["rejected_portions"][4] == 0.2 and fnmr["rows"][4]["reject_factor"] == 0.2
        expected = {
            "acc_cosine": d["verification"]["cosine"]["accuracy"],
            "acc_mls": d["verification"]["fastmls"]["accuracy"] if row["method"] == "ProbFace" else None,
            "acc_reject10": d["risk"][1]["cosine"]["accuracy"], "acc_reject20": d["risk"][2]["cosine"]["accuracy"],
            "acc_reject30": d["risk"][3]["cosine"]["accuracy"],
            "eer": fnmr["rows"][0]["eer"], "fnmr_fmr1e-3": fnmr["rows"][0]["fmr1000"],
            "eer_reject20": fnmr["rows"][4]["eer"], "fnmr_fmr1e-3_reject20": fnmr["rows"][4]["fmr1000"],
            "AUERC": fnmr["AUERC"], "AUERC30": fnmr["AUERC30"], "AUC": fnmr["AUC"], "AUC30": fnmr["AUC30"],
            "tar_far1e-2_reject20": rv["curves"]["cosine+max"]["0.01"][4]}
        assert {k: row[k] for k in expected} == expected, (row["method"], row["dataset"])
        # each model's full per-dataset text is on stdout
        assert report.dataset_text(d) in run.stdout
    assert run.stdout.count("--- lfw ---") == 4 and run.stdout.count("=== method ") == 4
    table = "| Method | Dataset | " + " | ".join(t for _, t, _ in COLUMNS) + " |"
    assert table in run.stdout and table in (out / "results.md").read_text()
    probface_lfw = rows[0]
    assert ("| ProbFace | LFW | %.4f | %.4f |" % (probface_lfw["acc_cosine"], probface_lfw["acc_mls"])
            in run.stdout)
    assert "| PCNet | LFW | %.4f | - |" % rows[1]["acc_cosine"] in run.stdout
    for name in ("lfw_compare_reject.png", "cfp_fp_compare_reject.png", "ProbFace/lfw_reject_verification.png",
                 "MC_dropout/results.md", "ScaleFace/cfp_fp/scores.npz"):
        assert (out / name).is_file(), name
    assert "![lfw reject curves of every method](lfw_compare_reject.png)" in (out / "results.md").read_text()


@pytest.mark.parametrize("folder, column", [("ProbFace", "sigma_sq"), ("PCNet", "uncertainty"),
                                            ("ScaleFace", "uncertainty")])
def test_table_entries_match_independent_recomputation(data, folder, column):
    rows = json.loads((data["out"] / "results.json").read_text())["comparison"]["rows"]
    row = next(r for r in rows if r["dataset"] == "lfw" and FOLDERS[METHODS.index(r["method"])] == folder)
    s = np.load(data["out"] / folder / "lfw" / "scores.npz")
    cosine, issame = s["cosine"].astype(np.float64), s["issame"]
    fused = np.maximum(s[column + "_1"], s[column + "_2"]).ravel()
    keep = fused <= fused.dtype.type(np.percentile(fused.astype(np.float64), 80))  # reject the riskiest 20 %
    assert keep.sum() == 48
    assert row["acc_reject20"] == pytest.approx(_ten_fold(s["cosine"][keep], issame[keep]), abs=1e-7)
    assert row["acc_cosine"] == pytest.approx(_ten_fold(s["cosine"], issame), abs=1e-7)
    assert row["fnmr_fmr1e-3"] == pytest.approx(_fnmr_at_fmr(cosine[issame], cosine[~issame]))
    assert row["tar_far1e-2_reject20"] == pytest.approx(
        _tar_at_far_after_reject(cosine, issame, fused, 1e-2, 0.2))


def test_shared_decoding_gives_single_run_numbers(data, tmp_path):
    probface = load_model(data["models"][0])
    single = evaluate_bins(probface, [str(data["root"] / "lfw.bin")], None, 32, echo=lambda _: None)[0]
    rows = json.loads((data["out"] / "results.json").read_text())["comparison"]["rows"]
    assert rows[0]["acc_cosine"] == single["verification"]["cosine"]["accuracy"]
    assert rows[0]["acc_mls"] == single["verification"]["fastmls"]["accuracy"]
    assert rows[0]["AUERC"] == single["reject_fnmr"]["AUERC"]
    # two preprocessings, one decode: each batch of the shared pipeline is the single pipeline's batch
    other = load_model(data["models"][1])
    other.preprocessing = Preprocessing([["resize", [32, 32]], ["standardize", "scale"]], source="test")
    groups, index = group_by_preprocessing([probface, load_model(data["models"][2]), other])
    assert len(groups) == 2 and index == [0, 0, 1]
    binset = read_bin(str(data["root"] / "cfp_fp.bin"))
    shared = list(shared_bin_pipeline(binset, groups, 16))
    for k, p in enumerate(groups):
        alone = np.concatenate([b.numpy() for b in image_pipeline(binset, p, 16)])
        np.testing.assert_array_equal(np.concatenate([b[k].numpy() for b in shared]), alone)
    mu, sigma, _ = extract_bin([probface, other], binset, 16)[0]
    mu_alone = np.concatenate([probface(b)["mu"] for b in image_pipeline(binset, probface.preprocessing, 16)])
    np.testing.assert_array_equal(mu, mu_alone)


def test_labels_and_folders():
    assert method_labels(["a/x.keras", "b/x.keras", "exp/1", "c/x.keras"]) == [
        "x.keras", "x.keras-2", "exp/1", "x.keras-3"]
    assert folder_names(["exp/1", "MC dropout", "exp_1", "..", "a"]) == ["exp_1", "MC_dropout", "exp_1-2", "method",
                                                                         "a"]
    assert method_labels(["a", "b"], ["A", "B"]) == ["A", "B"]


@pytest.mark.parametrize("args, needle", [
    (["--model", "a.keras", "--model", "b.keras", "--method", "A", "--method", "B", "--method", "C"],
     "--method given 3 time(s) for 2 --model(s)"),
    (["--model", "a.keras", "--method", "A", "--method", "B"], "--method given 2 time(s) for 1 --model(s)"),
    (["--model", "a.keras", "--model", "b.keras", "--method", "A", "--method", "A"], "must be unique"),
    (["--model", "a", "--model", "b", "--model", "c", "--config", "x.py", "--config", "y.py"],
     "--config given 2 times for 3 --model(s)"),
    (["--bin", "x.bin"], "--model is required"),
])
def test_usage_errors(args, needle, tmp_path):
    run = _cli(*args, *([] if "--bin" in args else ["--bin", "x.bin"]), "--out", str(tmp_path / "out"))
    assert run.returncode == 1 and needle in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
