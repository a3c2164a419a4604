"""LFW from a folder + pairs.txt: the standard file layout, uint8 images (no contrast stretch), the original's
printed lines, against Pillow preprocessing, direct model calls and the loop 10-fold."""
import os

import numpy as np
import pytest
from PIL import Image

from probface_tf.eval import lfw_pairs
from probface_tf.eval.extraction import extract_files
from probface_tf.eval.model_loader import wrap_keras_model
from references import ten_fold_loop, tiny_probface

PEOPLE, PER_PERSON, HALF = 6, 4, 2


def _pairs_lines(rng):
    lines = ["10\t%d" % HALF]
    for _ in range(10):
        for _ in range(HALF):
            p = rng.integers(PEOPLE)
            i, j = rng.choice(PER_PERSON, 2, replace=False) + 1
            lines.append("Person_%d\t%d\t%d" % (p, i, j))
        for _ in range(HALF):
            p, q = rng.choice(PEOPLE, 2, replace=False)
            lines.append("Person_%d\t%d\tPerson_%d\t%d" % (p, rng.integers(PER_PERSON) + 1, q,
                                                          rng.integers(PER_PERSON) + 1))
    return lines


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    root = tmp_path_factory.mktemp("lfw")
    rng = np.random.default_rng(4)
    faces = {}
    for p in range(PEOPLE):
        base = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
        person = np.asarray(Image.fromarray(base).resize((40, 40), Image.BICUBIC)).astype(int)
        for k in range(1, PER_PERSON + 1):
            name = "Person_%d_%04d" % (p, k)
            face = np.clip(person // 2 + 40 + rng.integers(-25, 26, person.shape), 0, 255).astype(np.uint8)
            os.makedirs(root / "lfw" / ("Person_%d" % p), exist_ok=True)
            Image.fromarray(face).save(str(root / "lfw" / ("Person_%d" % p) / (name + ".png")))
            faces[name] = face
    lines = _pairs_lines(rng)
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root, faces, lines


def test_pairs_file_is_read_in_order(lfw):
    root, _, lines = lfw
    pairs = lfw_pairs.load_lfw_pairs(str(root / "lfw"), str(root / "pairs.txt"))
    assert pairs.n_folds == 10 and pairs.labels.size == 40
    names = [os.path.splitext(os.path.basename(p))[0] for p in pairs.images]
    for k, line in enumerate(lines[1:]):
        f = line.split("\t")
        want = (("%s_%04d" % (f[0], int(f[1])), "%s_%04d" % (f[0], int(f[2]))) if len(f) == 3 else
                ("%s_%04d" % (f[0], int(f[1])), "%s_%04d" % (f[2], int(f[3]))))
        assert (names[pairs.first[k]], names[pairs.second[k]]) == want
        assert pairs.labels[k] == (len(f) == 3) == (k % (2 * HALF) < HALF)


def test_folder_evaluation_matches_uint8_pillow_preprocessing(lfw, tmp_path):
    root, faces, _ = lfw
    pairs = lfw_pairs.load_lfw_pairs(str(root / "lfw"), str(root / "pairs.txt"))
    keras_model = tiny_probface(1)
    out = lfw_pairs.run_lfw_pairs([wrap_keras_model(keras_model)], pairs, str(tmp_path), echo=lambda _: None)[0]
    # reference: Pillow bilinear on the uint8 file pixels (no stretch), (x - 128) / 128, the model itself
    names = [os.path.splitext(os.path.basename(p))[0] for p in pairs.images]
    x = np.stack([np.asarray(Image.fromarray(faces[n]).resize((32, 32), Image.BILINEAR)) for n in names])
    result = keras_model((x.astype(np.float32) - 128) / 128, training=False)
    mu, s = np.asarray(result["mu"]), np.asarray(result["sigma_sq"])  # float32, as extracted
    a, b = pairs.first, pairs.second
    cos = np.sum(mu[a] * mu[b], axis=1) / np.linalg.norm(mu[a], axis=1) / np.linalg.norm(mu[b], axis=1)
    both = s[a, 0] + s[b, 0]
    mls = -(2 * (1 - np.sum(mu[a] * mu[b], axis=1)) / (1e-10 + both) + np.log(both))
    on_reference = lfw_pairs.evaluate_features(mu, s, pairs)
    for name, scores in (("cosine", cos), ("mls", mls)):
        acc, thr = ten_fold_loop(scores, pairs.labels)  # the protocol on the same features: exact
        assert on_reference[name].accuracy == pytest.approx(acc, abs=1e-6), name
        assert on_reference[name].threshold == pytest.approx(thr, abs=2e-4), name
        # the file pipeline's features equal the reference ones to float32 round-off; an untrained model's
        # scores are close together, so a round-off may move a pair or two of 4-pair folds across the threshold
        assert out[name]["accuracy"] == pytest.approx(acc, abs=0.051), name
    (extracted_mu, extracted_s, _), = extract_files([wrap_keras_model(keras_model)], pairs.images)
    np.testing.assert_allclose(extracted_mu, mu, atol=1e-5)
    np.testing.assert_allclose(extracted_s, s, rtol=1e-4)
    assert 0.5 < out["cosine"]["accuracy"] <= 1.0
    assert os.path.isfile(tmp_path / "results.json")
    lines = lfw_pairs.result_lines(lfw_pairs.evaluate_features(mu, s, pairs))
    assert lines[0].startswith("Euclidean (cosine) accuracy: ") and lines[1].startswith("MLS accuracy: ")


def test_bad_pairs_files_name_the_line(lfw, tmp_path):
    root, _, lines = lfw
    bad = tmp_path / "pairs.txt"
    bad.write_text("\n".join(lines[:3] + ["Person_1\t1"] + lines[4:]) + "\n")
    with pytest.raises(lfw_pairs.LfwPairsError, match=r"pairs.txt:4: a mismatched pair has 4 fields"):
        lfw_pairs.read_pairs_file(str(bad))
    bad.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(lfw_pairs.LfwPairsError, match="found 39 rows"):
        lfw_pairs.read_pairs_file(str(bad))
    missing = tmp_path / "p2.txt"
    missing.write_text("\n".join(lines).replace("Person_5", "Nobody") + "\n")
    with pytest.raises(lfw_pairs.LfwPairsError, match="not under"):
        lfw_pairs.load_lfw_pairs(str(root / "lfw"), str(missing))
