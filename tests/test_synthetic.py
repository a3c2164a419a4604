"""The embedded synthetic dataset: determinism, formats, severity semantics, held-out split."""
import csv
import io
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from probface_tf.data import synthetic as syn
from probface_tf.data import synthetic_degrade, synthetic_faces

TINY = dict(num_identities=8, images_per_identity=3, seed=3, image_size=48, bin_pairs=10, split=0.25)


def _files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class _OnlyBuiltins(pickle.Unpickler):
    """Independent check that the .bin holds nothing but plain containers, bytes and bools."""

    def find_class(self, module, name):
        raise AssertionError(f".bin pickle references {module}.{name}")


def _load_bin(path):
    with open(path, "rb") as fh:
        return _OnlyBuiltins(fh).load()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return syn.synthesize(str(root / "a"), workers=1, image_format="png", **TINY)


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    again = syn.synthesize(str(tmp_path / "b"), workers=2, image_format="png", **TINY)
    first, second = _files(tiny.root), _files(again.root)
    assert sorted(first) == sorted(second)
    assert len(first) == 8 * 3 + 5  # images + severity.csv, .bin, its severity and pairs, manifest
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_other_seed_other_images(tiny, tmp_path):
    other = syn.synthesize(str(tmp_path / "c"), workers=1, image_format="png", **dict(TINY, seed=4))
    first, second = _files(tiny.root), _files(other.root)
    images = [n for n in first if n.endswith(".png")]
    same = sum(first[n] == second[n] for n in images)
    assert same == 0
    diff = np.mean([np.abs(_decode(first[n]).astype(float) - _decode(second[n])).mean() for n in images])
    assert diff > 20.0


def test_layout_split_and_severity_csv(tiny):
    train = sorted(os.listdir(tiny.train_dir))
    held = sorted(os.listdir(tiny.heldout_dir))
    assert train == [f"{i:05d}" for i in range(6)] and held == ["00006", "00007"]
    assert set(train).isdisjoint(held)
    with open(tiny.severity_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24
    for row in rows:
        image = _decode(open(os.path.join(tiny.root, row["path"]), "rb").read())
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        identity, index, s = int(row["identity"]), int(row["index"]), float(row["severity"])
        assert row["split"] == ("train" if identity < 6 else "heldout")
        # PNG is lossless: the file is exactly the rendered image with the recorded severity.
        expected, expected_s = synthetic_degrade.render_image(TINY["seed"], identity, index, 48, "mixed")
        assert s == expected_s
        np.testing.assert_array_equal(image, expected)
    assert syn.read_severity(tiny.severity_csv)["heldout/00007/002.png"] == (7, float(rows[-1]["severity"]))


def test_bin_holds_balanced_heldout_pairs_with_their_severity(tiny):
    bins, issame = _load_bin(tiny.bin_path)
    assert isinstance(bins, list) and isinstance(issame, list)
    assert len(bins) == 20 and len(issame) == 10
    assert all(isinstance(b, bytes) for b in bins) and all(type(x) is bool for x in issame)
    assert sum(issame) == 5
    severity = np.load(tiny.bin_severity_path)
    assert severity.shape == (20,) and severity.dtype == np.float32
    table = syn.read_severity(tiny.severity_csv)
    pairs = []
    for line in open(tiny.bin_pairs_path).read().splitlines():  # LFW style, relative to heldout/
        fields = line.split()
        if len(fields) == 3:
            pairs.append((f"heldout/{fields[0]}/{fields[1]}", f"heldout/{fields[0]}/{fields[2]}", True))
        else:
            pairs.append((f"heldout/{fields[0]}/{fields[1]}", f"heldout/{fields[2]}/{fields[3]}", False))
    assert len(pairs) == 10
    seen = set()
    for k, (*paths, same) in enumerate(pairs):
        assert all(p in table for p in paths)
        ids = [table[p][0] for p in paths]
        assert (ids[0] == ids[1]) == issame[k] == same
        assert paths[0] != paths[1] and frozenset(paths) not in seen
        seen.add(frozenset(paths))
        for j, p in enumerate(paths):
            assert bins[2 * k + j] == open(os.path.join(tiny.root, p), "rb").read()
            assert severity[2 * k + j] == pytest.approx(table[p][1], abs=1e-7)
            assert _decode(bins[2 * k + j]).shape == (48, 48, 3)


def test_matching_manifest_skips_and_other_spec_regenerates(tmp_path):
    spec = dict(TINY, num_identities=5, split=0.4, bin_pairs=4)
    first = syn.synthesize(str(tmp_path), workers=1, **spec)
    image = os.path.join(first.train_dir, "00000", "000.jpg")
    before = (os.stat(image).st_mtime_ns, open(image, "rb").read())
    os.utime(image, ns=(1, 1))
    assert syn.synthesize(str(tmp_path), workers=1, **spec) == first
    assert os.stat(image).st_mtime_ns == 1  # untouched
    assert syn.load_manifest(str(tmp_path)) == first
    os.remove(first.bin_path)  # an incomplete folder is rendered again
    assert syn.synthesize(str(tmp_path), workers=1, **spec) == first
    assert os.path.isfile(first.bin_path) and os.stat(image).st_mtime_ns != 1
    assert open(image, "rb").read() == before[1]
    changed = syn.synthesize(str(tmp_path), workers=1, **dict(spec, seed=9))
    assert changed.spec.seed == 9 and open(image, "rb").read() != before[1]
    assert len(os.listdir(changed.train_dir)) == 3


def test_refuses_a_root_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(syn.SyntheticDataError, match="not a folder"):
        syn.synthesize(str(tmp_path / "f"), workers=1, **TINY)


def test_refuses_a_folder_that_is_not_a_synthetic_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(syn.SyntheticDataError, match="notes.txt"):
        syn.synthesize(str(tmp_path), workers=1, **TINY)
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("key, value", [("num_identities", 0), ("images_per_identity", 1.5), ("seed", -1),
                                        ("severity", "heavy"), ("severity", 1.5), ("split", 1.0),
                                        ("split", "0.2"), ("image_format", "bmp"), ("bin_pairs", 400),
                                        ("image_size", 8)])
def test_bad_arguments_name_the_key(tmp_path, key, value):
    with pytest.raises(syn.SyntheticDataError, match=key):
        syn.synthesize(str(tmp_path), workers=1, **dict(TINY, **{key: value}))
    assert not os.path.exists(tmp_path / syn.MANIFEST)


def test_severity_distributions():
    mixed = np.array([synthetic_degrade.draw_severity(0, i, n, "mixed") for i in range(200) for n in range(10)])
    uniform = np.array([synthetic_degrade.draw_severity(0, i, n, "uniform") for i in range(200) for n in range(10)])
    assert mixed.min() >= 0 and mixed.max() <= 1 and uniform.min() >= 0 and uniform.max() <= 1
    # mixed: half below 0.1 plus a uniform half, i.e. P(s < 0.1) = 0.55 and P(s > 0.5) = 0.25
    assert abs(np.mean(mixed < 0.1) - 0.55) < 0.04
    assert abs(np.mean(mixed > 0.5) - 0.25) < 0.04
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    assert synthetic_degrade.draw_severity(0, 1, 2, 0.3) == 0.3 and synthetic_degrade.draw_severity(0, 1, 2, "clean") == 0.0


def test_degradation_grows_with_severity():
    levels = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    errors = {s: [] for s in levels}
    for identity in range(12):
        clean = synthetic_faces.render_clean(5, identity, 0, 64)
        for s in levels:
            image, _ = synthetic_degrade.render_image(5, identity, 0, 64, s)
            errors[s].append(np.abs(image.astype(np.float64) - clean).mean())
    means = [np.mean(errors[s]) for s in levels]
    assert means[0] < 1.5  # severity 0 is the clean render up to 1-level noise and rounding
    assert all(b > a + 2.0 for a, b in zip(means, means[1:])), means


def _features(image):
    # Central crop, 24x24 colour thumbnail, zero mean, unit norm: Pearson correlation by dot product.
    x = np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR), np.float64)[4:28, 4:28]
    x = x.ravel() - x.mean()
    return x / np.linalg.norm(x)


def _nearest_identity_accuracy(severity, k=30):
    gallery = np.stack([_features(synthetic_degrade.render_image(1, i, 0, 112, 0.0)[0]) for i in range(k)])
    hits = []
    for index in (1, 2):
        probes = np.stack([_features(synthetic_degrade.render_image(1, i, index, 112, severity)[0]) for i in range(k)])
        hits.append(np.argmax(probes @ gallery.T, axis=1) == np.arange(k))
    return float(np.mean(hits))


def test_high_severity_destroys_identity():
    low, high = _nearest_identity_accuracy(0.05), _nearest_identity_accuracy(0.95)
    # Chance is 1/30. Clean probes are found far above chance despite pose/light/background nuisance;
    # severe probes hardly at all.
    assert low >= 0.4, low
    assert high <= 0.15, high
    assert low >= 3 * high


def test_nuisance_keeps_identity_but_varies_images():
    a = synthetic_faces.render_clean(2, 0, 0, 64)
    b = synthetic_faces.render_clean(2, 0, 1, 64)
    np.testing.assert_array_equal(a, synthetic_faces.render_clean(2, 0, 0, 64))
    assert np.abs(a - b).mean() > 5.0
    p = synthetic_faces.identity_params(2, 0)
    assert p == synthetic_faces.identity_params(2, 0)
    assert synthetic_faces.identity_params(2, 0).skin != synthetic_faces.identity_params(2, 1).skin


def test_never_removes_a_users_own_train_folder(tmp_path):
    """A root whose train/ is the user's (same folder names as ours) is refused, and nothing is removed."""
    mine = tmp_path / "train" / "00000"
    mine.mkdir(parents=True)
    (mine / "000.jpg").write_bytes(b"my photo")
    (tmp_path / "train" / "notes.txt").write_text("mine")
    with pytest.raises(syn.SyntheticDataError, match="train/00000/000.jpg"):
        syn.synthesize(str(tmp_path), workers=1, **TINY)
    assert (mine / "000.jpg").read_bytes() == b"my photo" and (tmp_path / "train" / "notes.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["train"]


def test_regenerating_keeps_a_file_the_user_added(tmp_path):
    spec = dict(TINY, num_identities=5, split=0.4, bin_pairs=4)
    first = syn.synthesize(str(tmp_path), workers=1, **spec)
    added = os.path.join(first.train_dir, "00001", "extra.jpg")
    open(added, "wb").write(b"added")
    before = _files(first.root)
    with pytest.raises(syn.SyntheticDataError, match="train/00001/extra.jpg"):
        syn.synthesize(str(tmp_path), workers=1, **dict(spec, seed=9))
    assert _files(first.root) == before


def test_an_interrupted_synthesis_is_ours_to_redo(tmp_path):
    """Files of a run that stopped before its manifest (the pending spec names them) are replaced."""
    spec = dict(TINY, num_identities=5, split=0.4, bin_pairs=4)
    done = syn.synthesize(str(tmp_path / "ref"), workers=1, **spec)
    root = tmp_path / "cut"
    syn.synthesize(str(root), workers=1, **spec)
    pending = json.dumps({"spec": json.load(open(root / syn.MANIFEST))["spec"]})
    (root / syn.PENDING).write_text(pending)
    os.remove(root / syn.MANIFEST)
    os.remove(root / syn.BIN_NAME)
    again = syn.synthesize(str(root), workers=1, **spec)
    assert not (root / syn.PENDING).exists()
    ref = _files(done.root)
    assert _files(again.root) == ref
