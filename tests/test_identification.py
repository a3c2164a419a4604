"""1:N evaluation: CMC and TPIR@FPIR against per-probe loops, the IJB-C 1:N and BLUFR readers on generated
files, the folder protocol, and the probface-gallery CLI end to end."""
import json
import math
import os

import numpy as np
import pytest
from scipy.io import savemat

from probface_tf.eval import identification as ident
from probface_tf.eval.blufr import evaluate_blufr, read_blufr, read_image_list
from probface_tf.eval.identification_protocol import (ProtocolError, identification_results,
                                                      read_folder_protocol, score_protocol)
from probface_tf.eval.ijbc_1n import read_ijbc_1n
from probface_tf.search import Gallery
from probface_tf.search.cli import run as gallery_cli


def _loop_metrics(scores, mate, fpir):
    """Per-probe loops: rank of the mate (ties by column), and the open-set TPIR at a threshold chosen by trying
    every candidate threshold."""
    ranks = []
    for p in range(len(mate)):
        if mate[p] < 0:
            continue
        own = scores[p, mate[p]]
        ranks.append(sum(1 for j in range(scores.shape[1])
                         if scores[p, j] > own or (scores[p, j] == own and j < mate[p])))
    best = [max(row) for row in scores]
    nonmated = [best[p] for p in range(len(mate)) if mate[p] < 0]
    candidates = set(best) | {float(np.nextafter(b, np.inf)) for b in nonmated} | {math.inf}
    ok = [t for t in candidates if sum(b >= t for b in nonmated) <= fpir * len(nonmated)]
    t = min(ok) if ok else math.inf
    tpir = np.mean([int(np.argmax(scores[p])) == mate[p] and best[p] >= t for p in range(len(mate)) if mate[p] >= 0])
    return np.array(ranks), tpir


def test_cmc_and_tpir_match_loops():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(300, 40)), 1)  # rounded: many ties
    mate = rng.integers(-1, 40, 300)
    mated = mate >= 0
    scores[np.flatnonzero(mated), mate[mated]] += 1.0
    ranks, _ = _loop_metrics(scores, mate, 0.1)
    cmc = ident.cmc(scores, mate)
    for r in (1, 5, 10):
        assert cmc[f"rank{r}"] == pytest.approx(np.mean(ranks < r))
    out = ident.tpir_at_fpir(scores, mate, [0.01, 0.1])
    for f in (0.01, 0.1):
        assert out[f"tpir@fpir={f:g}"] == pytest.approx(_loop_metrics(scores, mate, f)[1])
    # insightface: k-th largest non-mate pair score with k = ceil(P f), mate score strictly above it
    rows = np.flatnonzero(mated)
    neg = sorted((scores[p, j] for p in rows for j in range(40) if j != mate[p]), reverse=True)
    t = neg[math.ceil(rows.size * 0.01) - 1]
    assert ident.tpir_insightface(scores, mate, [0.01])["tpir_insightface@far=0.01"] == \
        pytest.approx(np.mean([scores[p, mate[p]] > t for p in rows]))


def _features(rng, identities, per, dim=16, noise=0.3):
    centres = rng.normal(size=(identities, dim))
    mu = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(identities * per, dim))
    return mu / np.linalg.norm(mu, axis=1, keepdims=True), rng.uniform(0.05, 0.5, identities * per)


def test_folder_protocol_scores_and_thresholds(tmp_path):
    rows_g = [f"id{i},img/{i}_{k}.png" for i in range(6) for k in range(3)]
    rows_p = [f"id{i},img/{i}_{k}.png" for i in range(10) for k in range(3, 5)]
    (tmp_path / "gallery.csv").write_text("\n".join(rows_g) + "\n")
    (tmp_path / "probes.csv").write_text("\n".join(rows_p) + "\n")
    protocol = read_folder_protocol(str(tmp_path))
    assert protocol.summary()["mated_probes"] == 12 and protocol.summary()["nonmated_probes"] == 8
    rng = np.random.default_rng(1)
    mu, s = rng.normal(size=(len(protocol.images), 16)), rng.uniform(0.1, 0.5, len(protocol.images))
    scored = score_protocol(protocol, mu, s)
    g = Gallery(16)
    for i in range(6):
        rows = protocol.gallery_image[protocol.gallery_identity == f"id{i}"]
        g.add(f"id{i}", mu[rows], s[rows])
    first = protocol.probe_image[0]
    expected, _ = g.search(mu[[first]], s[[first]], k=6)
    np.testing.assert_allclose(np.sort(scored["fastmls"][0])[::-1], expected[0], rtol=1e-5)
    result = identification_results(scored)
    t = result["thresholds"]["fastmls"]["0.1"]["score_threshold"]
    best = scored["fastmls"].max(axis=1)[scored["mate"] < 0]
    assert np.mean(best >= t) <= 0.1
    risk = result["thresholds"]["fastmls"]["0.1"]["sigma_sq_threshold"]
    assert np.mean(scored["probe_sigma_sq"] > risk) == pytest.approx(0.1, abs=1 / len(scored["probes"]))
    assert set(result["rows"]) == {"cosine", "fastmls", "fastmls_reject10", "fastmls_reject20", "fastmls_reject30"}
    (tmp_path / "probes.csv").unlink()
    with pytest.raises(ProtocolError, match="missing probes.csv"):
        read_folder_protocol(str(tmp_path))


def test_ijbc_meta_files(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    (meta / "ijbc_1N_gallery_G1.csv").write_text(header + "1,100,a.jpg\n1,100,b.jpg\n2,200,c.jpg\n")
    (meta / "ijbc_1N_gallery_G2.csv").write_text(header + "3,300,d.jpg\n")
    (meta / "ijbc_1N_probe_mixed.csv").write_text(header + "10,100,e.jpg\n11,300,f.jpg\n11,300,g.jpg\n")
    faces = ["a.jpg 1 5", "b.jpg 1 5", "c.jpg 2 6", "d.jpg 3 7", "e.jpg 10 8", "f.jpg 11 9", "g.jpg 11 9",
             "x.jpg 99 1"]
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    p = read_ijbc_1n(str(meta), "/imgs", gallery="G1")
    assert p.images == [f"/imgs/{n}.jpg" for n in "abcefg"]  # x.jpg belongs to no chosen template
    assert p.gallery_identity.tolist() == ["100", "100", "200"]
    assert p.probe_template.tolist() == ["t10", "t11", "t11"] and p.probe_identity == {"t10": "100", "t11": "300"}
    assert p.summary()["mated_probes"] == 1 and p.summary()["nonmated_probes"] == 1
    assert read_ijbc_1n(str(meta), "/imgs").summary()["nonmated_probes"] == 0
    (meta / "ijbc_face_tid_mid.txt").write_text("\n".join(faces[:2] + faces[3:]) + "\n")  # template 2 lost
    with pytest.raises(ProtocolError, match="no face of 1 gallery template"):
        read_ijbc_1n(str(meta), "/imgs", gallery="G1")


def test_blufr_rank1_dir_at_far(tmp_path):
    rng = np.random.default_rng(2)
    mu, s = _features(rng, 30, 4, noise=0.8)
    labels = np.repeat(np.arange(30) + 1, 4)
    savemat(tmp_path / "id_lfw.mat", {"id_lfw": labels[:, None].astype(float)})
    trials = {}
    for t in (1, 2):
        order = rng.permutation(30)
        enrolled, strangers = order[:20], order[20:]
        g = np.concatenate([np.flatnonzero(labels == e + 1)[:2] for e in enrolled])
        gen = np.concatenate([np.flatnonzero(labels == e + 1)[2:] for e in enrolled])
        imp = np.concatenate([np.flatnonzero(labels == e + 1) for e in strangers])
        trials[t] = (g, gen, imp)
    for name, kind, part in (("lfw_gallery_index", "gallery_index", 0),
                             ("lfw_genuine_probe_index", "genuine_probe_index", 1),
                             ("lfw_impostor_probe_index", "impostor_probe_index", 2)):
        savemat(tmp_path / f"{name}.mat", {f"{kind}_{t}": (v[part] + 1)[None].astype(float)
                                           for t, v in trials.items()})
    savemat(tmp_path / "imagelist_lfw.mat",
            {"imagelist_lfw": np.array([[f"A\\a_{i}.jpg"] for i in range(120)], dtype=object)})
    config = read_blufr(str(tmp_path))
    out = evaluate_blufr(config, mu, s, fars=[0.1])
    assert read_image_list(str(tmp_path), "/lfw")[3] == "/lfw/A/a_3.jpg"
    expected = []
    for g, gen, imp in trials.values():  # per-image loop reference (cosine)
        best = lambda p: max((float(mu[p] @ mu[q]), -q) for q in g)  # noqa: E731
        imp_best = sorted((best(p)[0] for p in imp), reverse=True)
        t = np.nextafter(imp_best[int(np.floor(0.1 * len(imp)))], np.inf)
        expected.append(np.mean([labels[-best(p)[1]] == labels[p] and best(p)[0] >= t for p in gen]))
    assert out["cosine"]["dir@far=0.1"] == pytest.approx(np.mean(expected))
    assert out["trials"] == 2 and 0 <= out["fastmls"]["dir@far=0.1"] <= 1


def test_gallery_cli_with_precomputed_features(tmp_path, capsys):
    rng = np.random.default_rng(3)
    mu, s = _features(rng, 5, 3)
    labels = np.repeat([f"p{i}" for i in range(5)], 3)
    np.savez(tmp_path / "enrol.npz", mu=mu, sigma_sq=s, labels=labels)
    np.savez(tmp_path / "probes.npz", mu=mu[[0, 7]], sigma_sq=s[[0, 7]], labels=np.array(["q0", "q1"]))
    gallery = str(tmp_path / "g.npz")
    gallery_cli(["enrol", gallery, str(tmp_path / "enrol.npz")])
    assert "5 identities enrolled" in capsys.readouterr().out
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"thresholds": {"fastmls": {"0.01": {
        "score_threshold": -5.0, "sigma_sq_threshold": 10.0}}}}))
    gallery_cli(["calibrate", gallery, str(results)])
    capsys.readouterr()
    gallery_cli(["search", gallery, str(tmp_path / "probes.npz"), "--top", "2", "--json", "--method", "flat"])
    out = json.loads(capsys.readouterr().out)["results"]
    assert [r["matches"][0]["label"] for r in out] == ["p0", "p2"]
    assert [r["decision"] for r in out] == ["identified", "identified"]
    before = open(gallery, "rb").read()
    with pytest.raises(SystemExit):
        gallery_cli(["enrol", gallery, str(tmp_path / "enrol.npz")])
    assert "'p0' is already enrolled" in capsys.readouterr().err
    assert open(gallery, "rb").read() == before
    np.savez(tmp_path / "wide.npz", mu=np.ones((1, 8)), sigma_sq=[0.1], labels=["z"])
    with pytest.raises(SystemExit):
        gallery_cli(["search", gallery, str(tmp_path / "wide.npz")])
    assert "probes: mu must be [n, 16]" in capsys.readouterr().err
    open(tmp_path / "cut.npz", "wb").write(before[:100])
    with pytest.raises(SystemExit):
        gallery_cli(["info", str(tmp_path / "cut.npz")])
    assert "cut.npz is truncated" in capsys.readouterr().err
    gallery_cli(["remove", gallery, "p1"])
    gallery_cli(["info", gallery, "--json"])
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["identities"] == 4 and info["images"] == 12
