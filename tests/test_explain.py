"""Grad-CAM of sigma_sq and mu: the original's CAM formula as a loop, the forward values, the PNG panels, and a
map that responds where the image is occluded."""
import os

import numpy as np
import pytest
from PIL import Image

from probface_tf.eval import explain
from references import png_bytes, tiny_probface


@pytest.fixture(scope="module")
def setup():
    model = tiny_probface(3, image_size=(64, 64))
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    faces = np.stack([np.asarray(Image.fromarray(s).resize((64, 64), Image.BICUBIC)) for s in small])
    return model, explain.GradCam(model), faces


def _std(x):
    return (np.asarray(x, np.float32) - 128.0) / 128.0


def test_cam_is_the_original_formula():
    rng = np.random.default_rng(0)
    feature, grads = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    ours = explain.cam(feature, grads)
    for n in range(2):  # the original returnCAM, one image at a time
        g = grads[n] / (np.sqrt(np.mean(np.square(grads[n]))) + 1e-5)
        weights = np.mean(g, axis=(0, 1))
        ref = np.ones((3, 4))
        for i, w in enumerate(weights):
            ref += w * feature[n, :, :, i]
        ref = np.maximum(ref, 0)
        np.testing.assert_allclose(ours[n], ref / ref.max(), rtol=1e-12)


def test_maps_shapes_values_and_png(setup, tmp_path):
    model, explainer, faces = setup
    maps = explainer.maps(_std(faces))
    assert maps["sigma_sq"].shape == (2, 4, 4) and maps["mu"].shape == (2, 4, 4)
    assert maps["sigma_sq"].max() == pytest.approx(1.0) and maps["sigma_sq"].min() >= 0
    out = model(_std(faces), training=False)
    np.testing.assert_allclose(maps["sigma_sq_value"], out["sigma_sq"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(maps["mu_value"], out["mu"].numpy(), atol=1e-6)
    panel = explain.write_panels(str(tmp_path / "a.png"), faces[0], maps, 0)
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.shape == (64, 192, 3) and np.array_equal(back, panel)
    np.testing.assert_array_equal(back[:, :64], faces[0])
    heat = np.asarray(Image.open(tmp_path / "a.png")).astype(int)[:, 64:128] - faces[0]
    assert np.abs(heat).mean() > 5  # the overlay is visible


def test_sigma_map_responds_to_an_occluded_region(setup):
    _, explainer, faces = setup
    occluded = faces.copy()
    occluded[:, :32, :32] = 128  # grey square over the top-left quarter
    before = explainer.maps(_std(faces))
    after = explainer.maps(_std(occluded))
    change = np.abs(after["sigma_sq"] - before["sigma_sq"])  # [2, 4, 4] cells of 16 x 16 pixels
    assert (change[:, :2, :2].mean(axis=(1, 2)) > change[:, 2:, 2:].mean(axis=(1, 2))).all()
    assert not np.allclose(after["sigma_sq_value"], before["sigma_sq_value"])


def test_explain_files_writes_one_png_per_image(setup, tmp_path):
    model, _, faces = setup
    paths = []
    for k, face in enumerate(faces):
        path = tmp_path / ("face%d.png" % k)
        path.write_bytes(png_bytes(face))
        paths.append(str(path))
    results = explain.explain_files(model, paths, str(tmp_path / "cam"), _std, echo=lambda _: None)
    assert [np.asarray(Image.open(r["png"])).shape for r in results] == [(64, 192, 3)] * 2
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(explain.ExplainError, match="bad.png: not a decodable image"):
        explain.explain_files(model, [str(tmp_path / "bad.png")], str(tmp_path / "cam"), _std)


def test_model_file_entry_point(setup, tmp_path):
    model, _, faces = setup
    model.save(str(tmp_path / "m.keras"))
    (tmp_path / "img").mkdir()
    for k, face in enumerate(faces):
        (tmp_path / "img" / ("f%d.png" % k)).write_bytes(png_bytes(face))
    lines = []
    results = explain.explain_model_file(str(tmp_path / "m.keras"), str(tmp_path / "img"), str(tmp_path / "out"),
                                         echo=lines.append)
    assert [os.path.basename(r["png"]) for r in results] == ["f0.png", "f1.png"]
    assert "f1.png sigma_sq " in lines[1]
    direct = model(_std(faces), training=False)["sigma_sq"].numpy()  # default preprocessing: no resize needed
    np.testing.assert_allclose([r["sigma_sq"] for r in results], direct, rtol=1e-5)
    with pytest.raises(explain.ExplainError, match="needs a .keras"):
        explain.explain_model_file(str(tmp_path / "m.h5"), str(tmp_path / "img"), str(tmp_path / "out"))
