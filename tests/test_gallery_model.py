"""Gallery enrolment and 1:N evaluation through a real (tiny) model: the probface-gallery CLI on image folders,
the demo protocol writer and evaluate.py's --gallery_protocol path."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from probface_tf.data.identification_protocol import write_identification_protocol
from probface_tf.eval.identification import identification_metrics
from probface_tf.eval.identification_run import run_protocol_folder
import probface_tf as pf
from probface_tf.fusion import fuse_template
from probface_tf.search import Gallery, GalleryError
from probface_tf.search.cli import run as gallery_cli
from probface_tf.search.embedder import ModelEmbedder
from references import tiny_probface

TINY = dict(image_size=(32, 32), backbone_filters=[8, 8, 16, 16], backbone_blocks=[1, 1, 1, 1], embedding_size=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    for i in range(6):  # 6 identities x 5 images: a base pattern plus noise
        base = rng.integers(0, 256, (32, 32, 3))
        os.makedirs(root / "faces" / f"id{i}")
        for k in range(5):
            img = np.clip(base + rng.integers(-30, 31, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "faces" / f"id{i}" / f"{k}.png")
    tiny_probface(0, **TINY).save(str(root / "tiny.keras"))
    embedder = ModelEmbedder(pf.load(str(root / "tiny.keras"), detector=None))
    return {"root": root, "model": str(root / "tiny.keras"), "embedder": embedder}


def test_cli_enrols_folders_with_pfe_fusion_and_refuses_another_model(setup, capsys):
    root, gallery = setup["root"], str(setup["root"] / "g.npz")
    gallery_cli(["enrol", gallery, "--model", setup["model"], str(root / "faces")])
    g = Gallery.load(gallery)
    assert g.labels == [f"id{i}" for i in range(6)] and g.counts.tolist() == [5] * 6
    embedder = setup["embedder"]
    assert g.model_id == embedder.model_id
    paths = [str(root / "faces" / "id3" / f"{k}.png") for k in range(5)]
    mu, s = embedder.embed_files(paths)
    fused_mu, fused_s = fuse_template(mu, s)
    np.testing.assert_allclose(g.mu[3], fused_mu, atol=1e-5)
    np.testing.assert_allclose(g.sigma_sq[3], fused_s[0], rtol=1e-5)
    capsys.readouterr()
    gallery_cli(["search", gallery, "--model", setup["model"], paths[0], "--top", "3", "--json"])
    out = json.loads(capsys.readouterr().out)["results"][0]
    expected, rows = g.search(mu[:1], s[:1], k=3)
    assert [m["label"] for m in out["matches"]] == [g.labels[r] for r in rows[0]]
    g.model_id = "another-model"  # the CLI passes the embedder's fingerprint, as here
    with pytest.raises(GalleryError, match="made with model 'another-model'"):
        g.search(mu[:1], s[:1], model_id=embedder.model_id)


def test_demo_protocol_through_evaluate(setup):
    root = setup["root"]
    counts = write_identification_protocol(str(root / "faces"), str(root / "protocol"), 0.5, 2)
    assert counts == {"enrolled": 3, "non_enrolled": 3, "gallery_images": 6, "probes": 24}
    embedder = setup["embedder"]
    result = run_protocol_folder(embedder.loaded, str(root / "protocol"), None, str(root / "out"), echo=lambda text: None)
    assert os.path.isfile(root / "out" / "results.md") and os.path.isfile(root / "out" / "det.png")
    saved = json.load(open(root / "out" / "results.json"))
    assert saved["protocol"]["mated_probes"] == 9 and saved["protocol"]["nonmated_probes"] == 15
    # recompute the FastMLS row from embeddings taken outside the protocol code
    g = Gallery(16)
    for i in range(3):
        g.add(f"id{i}", *embedder.embed_files([str(root / "faces" / f"id{i}" / f"{k}.png") for k in range(2)]))
    probes = [(f"id{i}", str(root / "faces" / f"id{i}" / f"{k}.png")) for i in range(6)
              for k in (range(2, 5) if i < 3 else range(5))]
    mu, s = embedder.embed_files([p for _, p in probes])
    scores, rows = g.search(mu, s, k=3, method="brute")
    full = np.full((len(probes), 3), -np.inf)
    np.put_along_axis(full, rows, scores, axis=1)
    mate = np.array([int(label[2:]) if int(label[2:]) < 3 else -1 for label, _ in probes])
    expected = identification_metrics(full, mate)
    for key in ("rank1", "tpir@fpir=0.1"):
        assert saved["rows"]["fastmls"][key] == pytest.approx(expected[key])


def test_cli_enrols_and_searches_photos_and_names_a_probe_without_a_face(setup, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    photos = tmp_path / "photos"
    for label, image in (("astronaut", skimage_data.astronaut()), ("cameraman", skimage_data.camera())):
        os.makedirs(photos / label)
        Image.fromarray(image).convert("RGB").save(photos / label / "0.png")
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(tmp_path / "wall.png")  # no face at all
    gallery = str(tmp_path / "people.npz")
    gallery_cli(["enrol", gallery, "--model", setup["model"], "--photos", str(photos)])
    g = Gallery.load(gallery)
    assert g.labels == ["astronaut", "cameraman"]
    face = pf.load(setup["model"]).embed_photo(str(photos / "astronaut" / "0.png"), largest_face=True)[0]
    np.testing.assert_allclose(g.mu[0], face.mu / np.linalg.norm(face.mu), atol=1e-5)  # one image: itself
    capsys.readouterr()
    gallery_cli(["search", gallery, "--model", setup["model"], "--photos", str(photos / "astronaut" / "0.png"),
                 "--json"])
    assert json.loads(capsys.readouterr().out)["results"][0]["matches"][0]["label"] == "astronaut"
    before = open(gallery, "rb").read()
    with pytest.raises(SystemExit):
        gallery_cli(["search", gallery, "--model", setup["model"], "--photos", str(tmp_path / "wall.png")])
    assert "wall.png: no face found" in capsys.readouterr().err
    mixed = tmp_path / "mixed"  # a new identity whose only photo has no face, after one that has
    os.makedirs(mixed / "nobody")
    os.makedirs(mixed / "astronaut")
    os.link(photos / "astronaut" / "0.png", mixed / "astronaut" / "0.png")
    os.link(tmp_path / "wall.png", mixed / "nobody" / "wall.png")
    with pytest.raises(SystemExit):
        gallery_cli(["enrol", gallery, "--model", setup["model"], "--photos", "--reenrol", str(mixed)])
    assert "no face found" in capsys.readouterr().err and open(gallery, "rb").read() == before
