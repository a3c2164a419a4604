"""PFE template fusion against brute-force loops, fusion beating mean pooling on templates mixing clean and
degraded images, protocol-file errors, and evaluate.py's --templates mode end to end (TAR@FAR recomputed
independently with sklearn's ROC from the saved features)."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from probface_tf import fusion
from probface_tf.eval.template_protocol import TemplateProtocol, TemplateProtocolError, load_protocol
from probface_tf.eval.templates import tar_table, template_scores
from probface_tf.methods import build_model
from references import tiny_probface

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
FARS = (1e-4, 1e-3, 1e-2, 1e-1)


# ---------------------------------------------------------------------------------------------- references


def _unit(v):
    return v / np.sqrt(np.sum(v * v))


def _brute_fuse(mu, s, ids):
    """PFE fusion template by template, image by image."""
    out = {}
    for t in sorted(set(ids.tolist())):
        num, den = np.zeros(mu.shape[1]), np.zeros(s.shape[1])
        for i in range(len(ids)):
            if ids[i] == t:
                for d in range(mu.shape[1]):
                    w = 1.0 / s[i, d if s.shape[1] > 1 else 0]
                    num[d] += w * _unit(mu[i])[d]
                den += 1.0 / s[i]
        weights = den if s.shape[1] > 1 else np.full(mu.shape[1], den[0])
        out[t] = (_unit(num / weights), 1.0 / den)
    return out


def _tar_sklearn(scores, labels, far):
    """TAR at the k-th highest impostor score (k = round(far * impostors)) read off sklearn's full ROC: the first
    (highest-threshold) point with k false accepts, or the last point with none when k = 0."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    impostors = np.sum(~labels)
    k = int(np.round(far * impostors))
    false_accepts = np.round(fpr * impostors)
    if k == 0:
        return float(tpr[false_accepts == 0].max())
    return float(tpr[np.flatnonzero(false_accepts >= k)[0]])


# ---------------------------------------------------------------------------------------------- fusion math


@pytest.mark.parametrize("width", [1, 6])
def test_fusion_matches_brute_force(rng, width):
    mu = rng.normal(size=(23, 6))
    s = rng.uniform(0.05, 2.0, (23, width))
    ids = rng.choice(np.array([7, 3, 11, 5, 40]), 23)  # interleaved, unsorted ids
    got_ids, got_mu, got_s = fusion.fuse_templates(mu, s, ids)
    ref = _brute_fuse(mu, s, ids)
    assert got_ids.tolist() == sorted(ref)
    for k, t in enumerate(got_ids):
        np.testing.assert_allclose(got_mu[k], ref[t][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_s[k], ref[t][1], rtol=1e-12)
        one_mu, one_s = fusion.fuse_template(mu[ids == t], s[ids == t])
        assert one_mu.shape == (6,) and one_s.shape == (width,)
        np.testing.assert_allclose(one_mu, ref[t][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(one_s, ref[t][1], rtol=1e-12)
        mean = _unit(sum(_unit(m) for m in mu[ids == t]))
        np.testing.assert_allclose(fusion.mean_template(mu[ids == t]), mean, rtol=1e-12, atol=1e-12)
    weights = fusion.fusion_weights(s, ids)
    for t in got_ids:
        np.testing.assert_allclose(weights[ids == t].sum(axis=0), 1.0)
        np.testing.assert_allclose(weights[ids == t], (1 / s[ids == t]) / np.sum(1 / s[ids == t], axis=0))


def test_equal_variances_give_mean_pooling_and_shrink_the_variance(rng):
    mu = rng.normal(size=(4, 5))
    fused_mu, fused_s = fusion.fuse_template(mu, np.full((4, 1), 0.6))
    np.testing.assert_allclose(fused_mu, fusion.mean_template(mu), atol=1e-12)
    np.testing.assert_allclose(fused_s, [0.15])  # sigma^2 / n


@pytest.mark.parametrize("call, needle", [
    (lambda: fusion.fuse_template(np.zeros((0, 4)), np.zeros((0, 1))), "empty template"),
    (lambda: fusion.fuse_template(np.ones((3, 4)), np.ones((3, 2))), "sigma_sq must be [n, 1] or [n, D]"),
    (lambda: fusion.fuse_template(np.ones((3, 4)), np.array([1.0, 0.0, 1.0])), "finite and > 0"),
    (lambda: fusion.fuse_templates(np.ones((3, 4)), np.ones((3, 1)), [1, 2]), "one id per row ([3])"),
    (lambda: fusion.mean_template(np.zeros((2, 3))), "zero length"),
])
def test_fusion_errors(call, needle):
    with pytest.raises(fusion.FusionError, match=__import__("re").escape(needle)):
        call()


# ---------------------------------------------------------------------------------------------- synthetic features


def _synthetic_templates(rng, identities=60, dim=64):
    """Two templates per identity, each 1-2 clean images (near the identity centre, small sigma^2) and 3-5
    degraded ones (mostly noise, large sigma^2)."""
    centres = rng.normal(size=(identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    mu, sigma, tids, degraded = [], [], [], []
    for i in range(identities):
        for half in range(2):
            n_clean, n_bad = rng.integers(1, 3), rng.integers(3, 6)
            for bad in [False] * n_clean + [True] * n_bad:
                noise = rng.normal(size=dim) / np.sqrt(dim)
                mu.append(0.1 * centres[i] + noise if bad else centres[i] + 0.3 * noise)
                sigma.append(rng.uniform(0.8, 1.2) if bad else rng.uniform(0.03, 0.06))
                tids.append("%d_%d" % (i, half))
                degraded.append(bad)
    names = np.unique(tids)
    pairs = np.array([(a, b) for k, a in enumerate(names) for b in names[k + 1:]])
    labels = np.array([a.split("_")[0] == b.split("_")[0] for a, b in pairs])
    protocol = TemplateProtocol("synthetic", "-", "-", [], np.arange(len(mu)), np.array(tids), pairs, labels)
    return np.array(mu), np.array(sigma)[:, None], np.array(degraded), protocol


def test_pfe_fusion_beats_mean_pooling_on_mixed_templates(rng):
    mu, sigma, degraded, protocol = _synthetic_templates(rng)
    scores = template_scores(mu, sigma, True, protocol)
    assert sorted(scores) == ["mean_cosine", "pfe_cosine", "pfe_fastmls"]
    table = tar_table(scores, protocol.labels, FARS)
    for name in scores:  # the reported TAR is the one sklearn's ROC gives
        assert table[name]["tar"] == pytest.approx([_tar_sklearn(scores[name], protocol.labels, f) for f in FARS])
    at = FARS.index(1e-3)
    mean_tar = table["mean_cosine"]["tar"][at]
    assert mean_tar < 0.7
    assert table["pfe_fastmls"]["tar"][at] >= mean_tar + 0.25
    assert table["pfe_cosine"]["tar"][at] >= mean_tar + 0.25
    # degraded images are 3-5 of every 4-7 but carry a small share of each template's weight
    weights = fusion.fusion_weights(sigma, protocol.row_template).ravel()
    share = np.array([weights[(protocol.row_template == t) & degraded].sum()
                      for t in np.unique(protocol.row_template)])
    assert degraded.mean() > 0.6  # most images are degraded ...
    assert share.mean() < 0.15 and share.max() < 0.25  # ... yet they hold a small share of each template
    assert weights[degraded].max() < 0.07 < 0.3 < weights[~degraded].min()  # uniform weights would be 1/7 ... 1/4


# ---------------------------------------------------------------------------------------------- protocol files


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_protocol_reading_and_errors(tmp_path):
    for name in ("a/1.png", "a/2.png", "b/1.png"):
        _png(tmp_path / "imgs" / name)
    pairs = _write(tmp_path / "pairs.txt", "ta tb 0\nta ta 1\n")
    listing = _write(tmp_path / "list.csv", "TEMPLATE_ID,SUBJECT_ID,FILENAME\nta,1,imgs/a/1.png\nta,1,imgs/a/2.png\n"
                                           "tb,2,imgs/b/1.png\ntb,2,imgs/a/1.png\n")
    p = load_protocol(listing, pairs)
    assert p.images == [str(tmp_path / "imgs" / n) for n in ("a/1.png", "a/2.png", "b/1.png")]  # each once
    assert p.row_image.tolist() == [0, 1, 2, 0] and p.row_template.tolist() == ["ta", "ta", "tb", "tb"]
    assert p.labels.tolist() == [False, True] and p.summary()["templates"] == 2
    folder = load_protocol(str(tmp_path / "imgs"), _write(tmp_path / "p2.csv", "t1,t2,label\na,b,false\na,a,true\n"))
    assert folder.row_template.tolist() == ["a", "a", "b"]

    def fails(templates, pairs_file, needle, image_root=None):
        with pytest.raises(TemplateProtocolError, match=__import__("re").escape(needle)):
            load_protocol(templates, pairs_file, image_root)

    fails(_write(tmp_path / "l1.csv", "ta,imgs/a/1.png\ntb,imgs/nope.png\n"), pairs,
          "1 of 2 template images are missing: %s line 2: image %s not found" % (
              tmp_path / "l1.csv", tmp_path / "imgs" / "nope.png"))
    fails(listing, _write(tmp_path / "p3.txt", "ta tb 0\nta tz 1\n"),
          "1 template id(s) of the pairs are not in --templates %s: %s line 2: template id 'tz'" % (
              listing, tmp_path / "p3.txt"))
    fails(_write(tmp_path / "l2.csv", "ta,imgs/a/1.png\ntb,\n"), pairs, "l2.csv line 2: template 'tb' has an empty "
          "image path")
    (tmp_path / "imgs" / "c").mkdir()
    fails(str(tmp_path / "imgs"), pairs, "template 'c' (%s) is empty: no image file" % (tmp_path / "imgs" / "c"))
    fails(listing, _write(tmp_path / "p4.txt", "ta tb 0\nta ta yes\n"), "p4.txt line 2: label 'yes' is not 1/0")
    fails(listing, _write(tmp_path / "p5.txt", "ta ta 1\ntb tb 1\n"), "needs genuine (1) and impostor (0) pairs")
    fails(str(tmp_path / "none.csv"), pairs, "--templates %s: no such file or directory" % (tmp_path / "none.csv"))
    fails(listing, str(tmp_path / "none.txt"), "--template_pairs %s: no such file" % (tmp_path / "none.txt"))
    fails(_write(tmp_path / "l3.csv", "template_id,subject\nta,1\n"), pairs, "needs a template column")


# ---------------------------------------------------------------------------------------------- end to end


def _tiny_probface(seed=0):
    return tiny_probface(seed, uncertainty_module_output_size=1)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], capture_output=True,
                          text=True, env=ENV, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def protocol_dir(tmp_path_factory):
    from probface_tf.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("templates")
    synthesize(str(root / "faces"), 12, 6, image_size=32, bin_pairs=0, split=0.0, image_format="png", workers=1)
    rows = ["template_id,image_path"]
    for i in range(12):  # three templates of two images per identity
        rows += ["id%02d%s,faces/train/%05d/%03d.png" % (i, "abc"[k // 2], i, k) for k in range(6)]
    rows += ["mix,faces/train/00000/000.png", "mix,faces/train/00001/004.png"]  # images shared with other templates
    (root / "templates.csv").write_text("\n".join(rows) + "\n")
    names = sorted({r.split(",")[0] for r in rows[1:]})
    pairs = [(a, b, int(a[:4] == b[:4] and "mix" not in (a, b))) for k, a in enumerate(names) for b in names[k + 1:]]
    (root / "pairs.txt").write_text("".join("%s %s %d\n" % p for p in pairs))  # IJB-C style: no header, spaces
    model = _tiny_probface()
    model.save(str(root / "probface.keras"))
    keras.utils.set_random_seed(1)
    build_model("pcnet", image_size=(32, 32), embedding_size=8, backbone_filters=[4, 8, 8, 8],
                   backbone_blocks=[1, 1, 1, 1]).save(str(root / "pcnet.keras"))
    return root, model


def test_templates_mode_end_to_end(protocol_dir):
    root, keras_model = protocol_dir
    out = root / "out"
    run = _cli("--model", str(root / "probface.keras"), "--model", str(root / "pcnet.keras"),
               "--method", "ProbFace", "--method", "PCNet", "--templates", str(root / "templates.csv"),
               "--template_pairs", str(root / "pairs.txt"), "--out", str(out), "--save-scores", "--batch_size", "16")
    assert run.returncode == 0, run.stderr
    assert "--- templates templates: 37 templates of 72 images, 666 pairs (36 genuine, 630 impostor) ---" in run.stdout
    payload = json.loads((out / "results.json").read_text())
    probface, pcnet = payload["methods"]
    assert list(probface["tar_at_far"]) == ["pfe_fastmls", "pfe_cosine", "mean_cosine"]
    assert list(pcnet["tar_at_far"]) == ["mean_cosine"] and pcnet["sigma"] == "uncertainty"

    feats = np.load(out / "ProbFace" / "template_features.npz")
    # features: the Keras model itself on Pillow-decoded images, (x - 128)/128 (32x32 files: no resize)
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in feats["images"]])
    direct = keras_model((images - 128) / 128, training=False)
    np.testing.assert_allclose(feats["mu"], direct["mu"].numpy(), atol=2e-5)
    np.testing.assert_allclose(feats["sigma_sq"], direct["sigma_sq"].numpy(), rtol=2e-4)

    # scores and TAR@FAR recomputed from the saved features with loops and sklearn
    mu = feats["mu"].astype(np.float64)[feats["row_image"]]
    sigma = feats["sigma_sq"].astype(np.float64)[feats["row_image"]]
    tids = feats["row_template"]
    fused = _brute_fuse(mu, sigma, tids)
    means = {t: _unit(sum(_unit(m) for m in mu[tids == t])) for t in set(tids.tolist())}
    lines = [line.split() for line in (root / "pairs.txt").read_text().splitlines()]
    labels = np.array([line[2] == "1" for line in lines])
    ref = {"pfe_fastmls": [], "pfe_cosine": [], "mean_cosine": []}
    for a, b, _ in lines:
        (ma, sa), (mb, sb) = fused[a], fused[b]
        mutual = sa[0] + sb[0]
        ref["pfe_fastmls"].append(-(2 * (1 - ma @ mb) / (1e-10 + mutual) + np.log(mutual)))
        ref["pfe_cosine"].append(ma @ mb)
        ref["mean_cosine"].append(means[a] @ means[b])
    saved = np.load(out / "ProbFace" / "template_scores.npz")
    np.testing.assert_array_equal(saved["issame"], labels)
    for name, values in ref.items():
        np.testing.assert_allclose(saved[name], values, rtol=1e-9, atol=1e-12)
        expected = [_tar_sklearn(np.array(values), labels, f) for f in FARS]
        assert probface["tar_at_far"][name]["tar"] == pytest.approx(expected), name
        assert ("TAR@FAR %s: " % {"pfe_fastmls": "PFE fusion + FastMLS", "pfe_cosine": "PFE fusion + cosine",
                                  "mean_cosine": "mean pooling + cosine"}[name]
                + " ".join("FAR=%g %.6f" % (f, t) for f, t in zip(FARS, expected))) in run.stdout
    assert "| ProbFace | PFE fusion + FastMLS | %.4f |" % probface["tar_at_far"]["pfe_fastmls"]["tar"][0] in (
        out / "results.md").read_text()


def test_templates_mode_errors(protocol_dir, tmp_path):
    root, _ = protocol_dir
    run = _cli("--model", str(root / "probface.keras"), "--templates", str(root / "templates.csv"))
    assert run.returncode == 1 and "--templates LIST_OR_DIR and --template_pairs FILE go together" in run.stderr
    run = _cli("--model", str(root / "probface.keras"), "--templates", str(root / "templates.csv"),
               "--template_pairs", str(root / "pairs.txt"), "--bin", "x.bin")
    assert run.returncode == 1 and "cannot be combined with --bin" in run.stderr
    (tmp_path / "pairs.txt").write_text("id00a id00b 1\nid00a nobody 0\n")
    run = _cli("--model", str(root / "probface.keras"), "--templates", str(root / "templates.csv"),
               "--template_pairs", str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "out"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "evaluate.py: error: 1 template id(s) of the pairs are not in --templates %s: %s line 2: template id "
        "'nobody'" % (root / "templates.csv", tmp_path / "pairs.txt"))
    assert not (tmp_path / "out").exists()
