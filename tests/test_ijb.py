"""IJB-A / IJB-C 1:1 on small generated protocol files in the standard layout, against the original's procedure
written as plain loops (templates by consecutive rows, aggregate_PFE, pair scores, ROC by the k-th impostor)."""
import os

import numpy as np
import pytest

from probface_tf import fusion
from probface_tf.eval import ijb

N_SUBJECTS, TEMPLATES_PER_SUBJECT = 8, 3


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def _templates(rng, first_id=1):
    """[(template id, subject, [(folder, name)])] with 1-3 images each."""
    out, tid, image = [], first_id, 0
    for subject in range(100, 100 + N_SUBJECTS):
        for _ in range(TEMPLATES_PER_SUBJECT):
            files = []
            for _ in range(rng.integers(1, 4)):
                files.append(("img" if image % 2 else "frame", str(1000 + image)))
                image += 1
            out.append((tid, subject, files))
            tid += 1
    return out


def _metadata(templates):
    return ["TEMPLATE_ID,SUBJECT_ID,FILE,MEDIA_ID"] + [
        "%d,%d,%s/%s.jpg,%d" % (t, s, folder, name, 7) for t, s, files in templates for folder, name in files]


def _pairs(rng, templates, n=60):
    ids = [t for t, _, _ in templates]
    return [tuple(rng.choice(ids, 2, replace=False)) for _ in range(n)]


@pytest.fixture(scope="module")
def ijba_layout(tmp_path_factory):
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("ijba")
    templates = _templates(rng)
    missing = {templates[0][2][0], templates[5][2][0]}  # two images absent from the image folder
    for _, _, files in templates:
        for folder, name in files:
            if (folder, name) not in missing:
                _touch(str(root / "images" / folder / (name + ".png")))
    splits = []
    for k in range(1, 11):
        pairs = _pairs(rng, templates)
        split = root / "proto" / "IJB-A_11_sets" / ("split%d" % k)
        _write(str(split / ("verify_metadata_%d.csv" % k)), _metadata(templates))
        _write(str(split / ("verify_comparisons_%d.csv" % k)), ["%d,%d" % p for p in pairs])
        splits.append(pairs)
    return str(root), templates, splits


def _reference_table(templates, pairs_per_split, index_of, mu, s, fars):
    """The original eval_ijb.py as loops: per split, per score, TAR at FAR; then mean and std over splits."""
    feats = {}
    for t, subject, files in templates:
        rows = [index_of[f] for f in files if f in index_of]
        feats[t] = (subject, rows)

    def fuse(rows, temp):
        att = np.exp(np.log(1.0 / s[rows] + 1e-6) / temp)
        att = att / att.sum(axis=0, keepdims=True)
        m = (mu[rows] * att).sum(axis=0)
        return m / (1e-8 + np.linalg.norm(m)), (s[rows] * att).sum(axis=0)

    def mls(a, b):
        m1, s1 = a
        m2, s2 = b
        if s1.size == 1:
            both = s1[0] + s2[0]
            return -(2 * (1 - m1 @ m2) / (1e-10 + both) + np.log(both))
        both = s1 + s2
        return -(np.mean((m1 - m2) ** 2 / both) + np.mean(np.log(both)))

    def score(name, t1, t2):
        r1, r2 = feats[t1][1], feats[t2][1]
        if not r1 or not r2:
            return -9999.0
        if name == "mean":
            v = [np.concatenate([mu[r], s[r]], axis=1).mean(axis=0) for r in (r1, r2)]
            v = [x / (1e-8 + np.linalg.norm(x)) for x in v]
            return -np.sum((v[0] - v[1]) ** 2)
        kind, temp = name.rsplit("_T", 1)
        a, b = fuse(r1, float(temp)), fuse(r2, float(temp))
        return -np.sum((a[0] - b[0]) ** 2) if kind == "uncertainty_pooling" else mls(a, b)

    names = ["mean"] + [k + "_T%g" % t for t in (1, 0.5, 2) for k in ("uncertainty_pooling", "mls")]
    table = {}
    for name in names:
        tars = []
        for pairs in pairs_per_split:
            sc = np.array([score(name, a, b) for a, b in pairs])
            same = np.array([feats[a][0] == feats[b][0] for a, b in pairs])
            neg = np.sort(sc[~same])[::-1]
            row = []
            for far in fars:
                k = int(np.round(len(neg) * far))
                thr = neg[0] + 1e-8 if k == 0 else neg[k - 1]
                row.append(np.mean(sc[same] >= thr))
            tars.append(row)
        table[name] = (np.mean(tars, axis=0), np.std(tars, axis=0))
    return table


def _features(n, d, s_dim, seed):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n, d))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    return mu, rng.uniform(0.2, 2.0, size=(n, s_dim))


@pytest.mark.parametrize("s_dim", [1, 6])
def test_ijba_ten_splits_match_the_original_procedure(ijba_layout, s_dim):
    root, templates, splits = ijba_layout
    protocol = ijb.load_ijba(os.path.join(root, "images"), os.path.join(root, "proto"))
    assert len(protocol.splits) == 10 and protocol.fars == (1e-3, 1e-2)
    index_of = {(os.path.basename(os.path.dirname(p)), os.path.splitext(os.path.basename(p))[0]): i
                for i, p in enumerate(protocol.images)}
    mu, s = _features(len(protocol.images), 6, s_dim, seed=s_dim)
    table = ijb.evaluate_features(mu, s, protocol)
    # bigger FARs so that the k-th impostor is not always the first
    protocol.fars = (1e-2, 0.1, 0.3)
    wide = ijb.evaluate_features(mu, s, protocol)
    expected = _reference_table(templates, splits, index_of, mu, s, (1e-3, 1e-2))
    expected_wide = _reference_table(templates, splits, index_of, mu, s, (1e-2, 0.1, 0.3))
    assert list(table) == list(expected)
    for name in expected:
        np.testing.assert_allclose(table[name]["tar"], expected[name][0], atol=1e-12, err_msg=name)
        np.testing.assert_allclose(table[name]["std"], expected[name][1], atol=1e-12, err_msg=name)
        np.testing.assert_allclose(wide[name]["tar"], expected_wide[name][0], atol=1e-12, err_msg=name)
    assert any(0 < t < 1 for name in expected_wide for t in expected_wide[name][0])  # the check is not vacuous
    lines = ijb.result_lines(table)
    # the original prints the achieved FAR (mean over splits), "{:.5}" formatted
    assert lines[0] == "---- mean"
    assert lines[1] == "TAR: {:.5} +- {:.5} FAR: {:.5}".format(expected["mean"][0][0], expected["mean"][1][0],
                                                               table["mean"]["far"][0])


def test_ijbc_reads_subject_folders_and_the_match_list(tmp_path):
    rng = np.random.default_rng(5)
    templates = _templates(rng)
    thirds = [templates[0::3], templates[1::3], templates[2::3]]
    for name, part in zip(ijb.IJBC_FILES, thirds):
        _write(str(tmp_path / "proto" / name), _metadata(part))
    pairs = _pairs(rng, templates)
    _write(str(tmp_path / "proto" / ijb.IJBC_PAIRS), ["%d,%d" % p for p in pairs])
    for _, subject, files in templates:
        for folder, name in files[1:] if subject == 101 else files:  # subject 101 loses an image per template
            _touch(str(tmp_path / "images" / str(subject) / ("%s_%s.jpg" % (folder, name))))
    _touch(str(tmp_path / "images" / "NaN" / "img_1.jpg"))
    protocol = ijb.load_ijbc(str(tmp_path / "images"), str(tmp_path / "proto"))
    assert len(protocol.images) == sum(len(f) - (s == 101) for _, s, f in templates) + 1
    index_of = {}
    for i, p in enumerate(protocol.images):
        folder, name = os.path.splitext(os.path.basename(p))[0].split("_", 1)
        if os.path.basename(os.path.dirname(p)) != "NaN":
            index_of[(folder, name)] = i
    mu, s = _features(len(protocol.images), 5, 1, seed=9)
    protocol.fars = (0.05, 0.2)
    table = ijb.evaluate_features(mu, s, protocol)
    expected = _reference_table(templates, [pairs], index_of, mu, s, protocol.fars)
    for name in expected:
        np.testing.assert_allclose(table[name]["tar"], expected[name][0], atol=1e-12, err_msg=name)
        assert table[name]["std"] == [0.0, 0.0]


def test_pfe_fusion_is_the_alternative(ijba_layout):
    root, _, _ = ijba_layout
    protocol = ijb.load_ijba(os.path.join(root, "images"), os.path.join(root, "proto"))
    mu, s = _features(len(protocol.images), 6, 1, seed=2)
    scores = ijb.split_scores(mu, s, protocol.splits[0], "pfe")
    assert sorted(scores) == ["mean_cosine", "pfe_cosine", "pfe_mls"]
    split = protocol.splits[0]
    t1, t2 = split.pairs[0]
    rows = [split.row_image[split.row_template == t] for t in (t1, t2)]
    if all(len(r) for r in rows):  # PFE: precision-weighted mean, combined variance 1/sum(1/s)
        fused = []
        for r in rows:
            m = (mu[r] / s[r]).sum(axis=0) / (1 / s[r]).sum()
            fused.append((m / np.linalg.norm(m), 1 / (1 / s[r]).sum()))
        both = fused[0][1] + fused[1][1]
        want = -(2 * (1 - fused[0][0] @ fused[1][0]) / (1e-10 + both) + np.log(both))
        assert scores["pfe_mls"][0] == pytest.approx(want, rel=1e-10)


def test_protocol_errors_name_the_file(tmp_path, ijba_layout):
    root, _, _ = ijba_layout
    with pytest.raises(ijb.IjbError, match="verify_metadata_1.csv: no such file"):
        ijb.load_ijba(os.path.join(root, "images"), str(tmp_path))
    _write(str(tmp_path / "m.csv"), ["TEMPLATE_ID,SUBJECT_ID,FILE", "x,1,img/1.jpg"])
    with pytest.raises(ijb.IjbError, match="m.csv:2: TEMPLATE_ID must be an integer"):
        ijb.read_templates(str(tmp_path / "m.csv"), lambda s, f: None)


def test_temperature_weights_sum_to_one_and_sharpen():
    s = np.array([[0.5], [1.0], [2.0], [1.0]])
    ids = np.array([7, 7, 7, 9])
    for temp in fusion.ORIGINAL_TEMPERATURES:
        w = fusion.temperature_weights(s, ids, temp)
        assert w[:3].sum() == pytest.approx(1.0) and w[3, 0] == pytest.approx(1.0)
    assert fusion.temperature_weights(s, ids, 0.5)[0, 0] > fusion.temperature_weights(s, ids, 2)[0, 0]
    with pytest.raises(fusion.FusionError, match="temperature"):
        fusion.temperature_weights(s, ids, 0)


def test_run_ijb_extracts_files_and_writes_results(tmp_path):
    import json

    from probface_tf.eval.model_loader import wrap_keras_model
    from references import png_bytes, tiny_probface

    rng = np.random.default_rng(8)
    rows, faces = [], {}
    for t in range(1, 9):
        subject = 10 + (t - 1) // 2
        for k in range(2):
            name = "%d_%d" % (t, k)
            face = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
            path = tmp_path / "images" / str(subject) / ("img_%s.png" % name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(face))
            faces[str(path)] = face
            rows.append("%d,%d,img/%s.jpg,1" % (t, subject, name))
    for name in ijb.IJBC_FILES:
        header = ["TEMPLATE_ID,SUBJECT_ID,FILENAME,MEDIA"]
        _write(str(tmp_path / "proto" / name), header + (rows if "G1" in name else []))
    _write(str(tmp_path / "proto" / ijb.IJBC_PAIRS), ["%d,%d" % (a, b) for a in range(1, 9) for b in range(a + 1, 9)])
    protocol = ijb.load_ijbc(str(tmp_path / "images"), str(tmp_path / "proto"))
    protocol.fars = (0.1, 0.5)
    model = tiny_probface(2)
    results = ijb.run_ijb([wrap_keras_model(model)], protocol, str(tmp_path / "out"), echo=lambda _: None)
    x = np.stack([faces[p] for p in protocol.images]).astype(np.float32)
    out = model((x - 128) / 128, training=False)  # 32 x 32 images: the default preprocessing only standardizes
    expected = ijb.evaluate_features(out["mu"].numpy(), out["sigma_sq"].numpy(), protocol)
    assert list(results[0]["table"]) == list(expected)
    for name, row in expected.items():
        np.testing.assert_allclose(results[0]["table"][name]["tar"], row["tar"], atol=1e-9, err_msg=name)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["protocol"] == "ijbc" and saved["methods"][0]["fusion"] == "original"
    assert "mls_T0.5" in (tmp_path / "out" / "results.md").read_text()
