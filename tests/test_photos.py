"""Faces from real photos: MTCNN on skimage's astronaut and cameraman photographs, alignment against an
independent skimage similarity fit, FaceModel scores, calibrated decisions and the ``probface`` CLI.

The model here is a fixed-weight Keras model (no training): mu = the L2-normalised 8x8 average-pooled
standardised face, sigma_sq = exp(-30 * mean squared Laplacian), which provably rises when the face loses
sharpness. It stands in for a trained model so the test needs no training run; its scores order faces by
pixel similarity, enough to tell a photo's own copies from another person."""
import json
import os

import cv2
import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.transform import SimilarityTransform

import probface_tf as pf
from probface_tf import face_cli
from probface_tf.calibration import Calibration, CalibrationError, fmr_threshold
from probface_tf.eval.model_loader import ModelLoadError
from probface_tf.faces import ARCFACE_TEMPLATE, AlignmentError, align_face, similarity_transform
from probface_tf.faces.photo import PhotoError, read_photo

ASTRONAUT = skimage.data.astronaut()
CAMERAMAN = np.stack([skimage.data.camera()] * 3, -1)
DEMO_MODEL = os.path.join(os.path.dirname(__file__), "assets", "demo_probface.keras")


def _sharpness_model() -> keras.Model:
    images = keras.Input((32, 32, 3))
    mu = keras.layers.UnitNormalization(name="mu")(keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(images)))
    laplacian = keras.layers.DepthwiseConv2D(3, use_bias=False, name="laplacian")
    edges = laplacian(images)
    energy = keras.layers.GlobalAveragePooling2D()(keras.layers.Multiply()([edges, edges]))
    to_sigma = keras.layers.Dense(1, activation="exponential", name="sigma_sq")
    model = keras.Model(images, {"mu": mu, "sigma_sq": to_sigma(energy)})
    kernel = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
    laplacian.set_weights([np.repeat(kernel[:, :, None, None], 3, 2)])
    to_sigma.set_weights([np.full((3, 1), -10.0, np.float32), np.zeros(1, np.float32)])
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("photos") / "sharpness.keras")
    _sharpness_model().save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return pf.load(model_path)


@pytest.fixture(scope="module")
def astronaut_faces(model):
    return model.embed_photo(ASTRONAUT)


@pytest.fixture(scope="module")
def demo(model):
    """The demo's trained ProbFace model (tests/assets/README.md), with the same detector."""
    return pf.load(DEMO_MODEL, detector=model.detector)


# ---------------------------------------------------------------------------------------------------- alignment
def _skimage_fit(src, dst):
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(src, dst)
        assert tform
        return tform
    tform = SimilarityTransform()
    assert tform.estimate(src, dst)
    return tform


@pytest.mark.parametrize("case", ["rotate_scale", "mirror", "noisy", "collinear", "two_points"])
def test_similarity_transform_matches_skimage(case):
    rng = np.random.default_rng(1)
    dst = ARCFACE_TEMPLATE
    angle, scale, shift = 0.7, 2.3, np.array([140.0, -35.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (dst @ rot.T) * scale + shift
    if case == "mirror":
        src = src * [-1, 1]  # a mirrored face: the best proper similarity, as skimage finds it
    elif case == "noisy":
        src = src + rng.normal(0, 3, src.shape)
    elif case == "collinear":
        src = np.stack([np.linspace(0, 50, 5), np.linspace(10, 30, 5)], 1)
    elif case == "two_points":
        src, dst = src[:2], dst[:2]
    matrix = similarity_transform(src, dst)
    reference = _skimage_fit(src, dst)
    moved = src @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(moved, reference(src), atol=1e-3)
    np.testing.assert_allclose(matrix, reference.params[:2], atol=1e-6)
    if case in ("rotate_scale", "two_points"):
        np.testing.assert_allclose(moved, dst, atol=1e-6)


def test_degenerate_landmarks_are_refused():
    with pytest.raises(AlignmentError, match="coincide"):
        similarity_transform(np.full((5, 2), 40.0))
    with pytest.raises(AlignmentError, match=r"\[5, 3\]"):
        similarity_transform(np.zeros((5, 3)))
    with pytest.raises(AlignmentError, match="non-finite"):
        align_face(ASTRONAUT, np.full((5, 2), np.nan))


# ---------------------------------------------------------------------------------------------------- detection
def test_astronaut_has_one_face_with_plausible_landmarks(astronaut_faces):
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    x1, y1, x2, y2 = face.box
    assert face.score > 0.95 and 150 < x1 < x2 < 300 and 40 < y1 < y2 < 200
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    assert lx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
    assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8


def test_redetection_on_the_aligned_crop_lands_where_the_transform_put_the_landmarks(model, astronaut_faces):
    face = astronaut_faces[0]
    matrix = similarity_transform(face.landmarks)
    moved = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    again = model.detector.detect(face.crop)
    assert len(again) == 1
    assert np.linalg.norm(again[0].landmarks - moved, axis=1).max() < 3.0
    # the template itself is a mean face: this face's own shape stays within a few pixels of it
    assert np.linalg.norm(again[0].landmarks - ARCFACE_TEMPLATE, axis=1).max() < 8.0


# ---------------------------------------------------------------------------------------------------- scores
def _rotated(image, degrees):
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h))


def _jpeg(image, quality=30):
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_UNCHANGED)


def test_copies_of_a_photo_score_higher_than_another_person(demo):
    """The demo model (trained on synthetic faces only) still ranks the astronaut's mirrored, rotated and
    JPEG-recompressed copies above the cameraman (measured: FastMLS -0.38 / -0.03 / -0.05 against -2.16)."""
    face = demo.embed_photo(ASTRONAUT)[0]
    other = demo.embed_photo(CAMERAMAN)
    assert len(other) == 1
    unrelated = demo.compare(face, other[0])
    assert unrelated.decision is None and "no calibration" in unrelated.note
    for copy in (ASTRONAUT[:, ::-1], _rotated(ASTRONAUT, 12), _jpeg(ASTRONAUT)):
        same = demo.compare(face, demo.embed_photo(copy)[0])
        assert same.fastmls > unrelated.fastmls + 1.0 and same.cosine > unrelated.cosine
    # FastMLS as scoring.py defines it, from the embeddings FaceModel returned
    s = face.sigma_sq[0] + other[0].sigma_sq[0]
    cos = float(face.mu @ other[0].mu)
    assert unrelated.fastmls == pytest.approx(-(2 * (1 - cos) / s + np.log(s)), rel=1e-5)
    assert unrelated.fused_sigma_sq == pytest.approx(s, rel=1e-6)


def test_blurred_copy_has_larger_sigma_sq(demo):
    """A heavily blurred copy of the aligned face gets a larger sigma^2 from the demo model (measured 0.565
    against 0.520)."""
    face = demo.embed_photo(ASTRONAUT)[0]
    blurred = cv2.GaussianBlur(face.crop, (0, 0), 6.0)
    assert demo.embed(blurred)["sigma_sq"][0, 0] > face.sigma_sq[0] + 0.02


def test_embed_takes_raw_crops_or_preprocessed_images(model, astronaut_faces):
    crop = astronaut_faces[0].crop
    raw = model.embed(crop)
    pre = model.embed(model.preprocess(crop[None]))
    np.testing.assert_allclose(raw["mu"], pre["mu"], atol=1e-6)
    np.testing.assert_allclose(raw["mu"][0], astronaut_faces[0].mu, atol=1e-6)
    with pytest.raises(ValueError, match=r"model input \(32, 32\)"):
        model.embed(np.zeros((1, 112, 112, 3), np.float32))


# ---------------------------------------------------------------------------------------------------- calibration
def _pairs(rng, n=3000):
    issame = rng.random(n) < 0.5
    fastmls = np.where(issame, rng.normal(1, 1, n), rng.normal(-2, 1, n))
    cosine = np.where(issame, rng.normal(0.6, 0.1, n), rng.normal(0.1, 0.1, n))
    return issame, {"fastmls": fastmls, "cosine": cosine}, rng.uniform(0.1, 1, n), rng.uniform(0.1, 1, n)


def test_calibration_thresholds_match_sorted_impostor_quantiles(rng, tmp_path):
    issame, scores, s1, s2 = _pairs(rng)
    calib = Calibration.from_pairs(issame, scores, s1, s2)
    for name, values in scores.items():
        impostors = sorted(values[~issame], reverse=True)
        for fmr in (1e-2, 1e-3, 1e-4):
            expected = impostors[int(np.floor(fmr * len(impostors)))]
            assert calib.threshold(name, fmr) == pytest.approx(expected, abs=1e-6)
            assert np.mean(values[~issame] > expected) <= fmr
    fused = np.sort(s1 + s2)
    for reject in (0.1, 0.2, 0.3):  # rejecting r: a fraction r of the pairs lies above the threshold
        assert np.mean(fused > calib.risk_threshold(reject)) == pytest.approx(reject, abs=1 / len(fused))
    assert calib.to_dict()["measured"] == {"0.01": True, "0.001": True, "0.0001": False}
    calib.save(str(tmp_path / "c.json"))
    again = Calibration.load(str(tmp_path / "c.json"))
    assert again.thresholds == calib.thresholds and again.reject == calib.reject
    assert Calibration.from_metadata(calib.to_metadata()).thresholds == calib.thresholds
    t, r = calib.threshold("fastmls", 1e-3), calib.risk_threshold(0.1)
    assert calib.decide("fastmls", t + 0.01, r - 0.01) == "same"
    assert calib.decide("fastmls", t - 0.01, r - 0.01) == "different"
    assert calib.decide("fastmls", t + 0.01, r + 0.01, reject=0.1) == "uncertain"
    with pytest.raises(CalibrationError, match="FMR 0.05"):
        calib.threshold("fastmls", 0.05)
    (tmp_path / "bad.json").write_text('{"pairs": 3}')
    with pytest.raises(CalibrationError, match="bad.json: not a calibration"):
        Calibration.load(str(tmp_path / "bad.json"))
    with pytest.raises(CalibrationError, match="no impostor"):
        fmr_threshold([], 1e-3)


def test_calibrated_model_decides(model_path, model, astronaut_faces, rng):
    issame, scores, s1, s2 = _pairs(rng)
    calib = Calibration.from_pairs(issame, scores, s1, s2)
    calibrated = pf.load(model_path, calibration=calib, detector=model.detector)
    face = astronaut_faces[0]
    same = calibrated.compare(face, face, fmr=1e-2)
    assert same.decision == "same" and same.threshold == calib.threshold("fastmls", 1e-2)
    far = calibrated.compare(face, {"mu": -face.mu, "sigma_sq": face.sigma_sq})
    assert far.decision == "different"


# ---------------------------------------------------------------------------------------------------- loading
def test_truncated_keras_file_says_so(model_path, tmp_path):
    data = open(model_path, "rb").read()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as err:
        pf.load(str(cut))
    assert "cut.keras" in str(err.value) and "not found" not in str(err.value).lower()
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(data)
    assert pf.load(str(run), detector=None).engine.path == str(run / "model.keras")


# ---------------------------------------------------------------------------------------------------- photos and CLI
def _photo_folder(root):
    Image.fromarray(ASTRONAUT).save(root / "astronaut.jpg")
    Image.fromarray(ASTRONAUT).convert("L").save(root / "grey.png")
    Image.fromarray(ASTRONAUT).convert("RGBA").save(root / "alpha.png")
    Image.fromarray(ASTRONAUT).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "empty.png")
    (root / "cut.jpg").write_bytes((root / "astronaut.jpg").read_bytes()[:4000])
    (root / "notes.jpg").write_text("not an image")
    return root


def test_read_photo_modes(tmp_path):
    root = _photo_folder(tmp_path)
    grey, cmyk = read_photo(str(root / "grey.png")), read_photo(str(root / "cmyk.jpg"))
    assert grey.shape == cmyk.shape == ASTRONAUT.shape and grey.dtype == np.uint8
    np.testing.assert_array_equal(read_photo(str(root / "alpha.png")), ASTRONAUT)
    with pytest.raises(PhotoError, match="cut.jpg: truncated"):
        read_photo(str(root / "cut.jpg"))
    with pytest.raises(PhotoError, match="notes.jpg: not a readable image"):
        read_photo(str(root / "notes.jpg"))


def test_cli_embed_keeps_every_face_and_names_every_failure(model_path, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    root = _photo_folder(tmp_path / "photos")
    out = tmp_path / "faces.npz"
    code = face_cli.main(["embed", str(root), "--model", model_path, "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["faces"] == 4 and summary["skipped"] == 3 and summary["photos"] == 7
    faces = np.load(out)
    assert sorted(os.path.basename(p) for p in faces["path"]) == ["alpha.png", "astronaut.jpg", "cmyk.jpg",
                                                                   "grey.png"]
    assert faces["mu"].shape == (4, 192) and faces["sigma_sq"].shape == (4, 1) and faces["landmarks"].shape == (4, 5, 2)
    reasons = dict(zip((os.path.basename(p) for p in faces["skipped_path"]), faces["skipped_reason"]))
    assert "no face" in reasons["empty.png"] and "truncated" in reasons["cut.jpg"]
    assert "not a readable image" in reasons["notes.jpg"]
    assert all(name in captured.err for name in reasons)
    code = face_cli.main(["embed", str(root / "cut.jpg"), "--model", model_path, "--out", str(tmp_path / "x.npz")])
    assert code == 1 and not (tmp_path / "x.npz").exists()


def test_cli_verify_prints_faces_scores_and_decision(model_path, tmp_path, capsys, rng):
    Image.fromarray(ASTRONAUT).save(tmp_path / "a.jpg")
    Image.fromarray(ASTRONAUT[:, ::-1]).save(tmp_path / "b.png")
    args = ["verify", str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--model", model_path]
    assert face_cli.main(args) == 0
    text = capsys.readouterr().out
    assert "1 face(s)" in text and "sigma_sq" in text and "FastMLS" in text and "no calibration" in text
    fastmls = float(text.split("FastMLS ")[1].split(",")[0])
    issame, scores, s1, s2 = _pairs(rng)
    scores["fastmls"] += fastmls - 4.0  # impostors ~3 sigma below this pair's score
    Calibration.from_pairs(issame, scores, s1, s2).save(str(tmp_path / "calibration.json"))
    assert face_cli.main(args + ["--calibration", str(tmp_path / "calibration.json"), "--fmr", "1e-2",
                                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (comparison,) = result["comparisons"]
    assert comparison["decision"] == "same" and comparison["fmr"] == 0.01
    assert face_cli.main(["verify", str(tmp_path / "a.jpg"), "--model", model_path]) == 1
    assert "two photos" in capsys.readouterr().err


def test_export_metadata_calibration_is_used(model, astronaut_faces, tmp_path, rng):
    from probface_tf.export import cli as export_cli
    from references import tiny_probface

    keras_path = str(tmp_path / "tiny.keras")
    tiny_probface().save(keras_path)
    issame, scores, s1, s2 = _pairs(rng)
    calib = Calibration.from_pairs(issame, scores, s1, s2, source="lfw.bin")
    calib.save(str(tmp_path / "calibration.json"))
    assert export_cli.main(["--model", keras_path, "--out", str(tmp_path / "export"),
                            "--calibration", str(tmp_path / "calibration.json")]) == 0
    loaded = pf.load(str(tmp_path / "export"), detector=model.detector)  # the export base: newest version
    assert loaded.engine.kind == "saved_model" and loaded.calibration.thresholds == calib.thresholds
    out = loaded.embed(astronaut_faces[0].crop)
    assert out["mu"].shape == (1, 16) and out["sigma_sq"].shape == (1, 1)
    same = loaded.compare(out, out, score="cosine")
    assert same.decision == "same" and same.threshold == calib.threshold("cosine", 1e-3)
