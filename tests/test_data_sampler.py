"""The class-balanced training pipeline: batch structure, determinism, resume, bad images."""
import logging
import os

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from probface_tf.config import from_dict
from probface_tf.data.errors import DatasetFormatError, UnreadableImageError
from probface_tf.data.folder import read_image_folder
from probface_tf.data.sampler import BalancedBatchPlanner, iterate_batches, make_train_dataset

SIZE = 32


def _cfg(**overrides):
    values = {"image_size": [SIZE, SIZE], "batch_size": 12, "batch_format": {"size": 12, "num_classes": 3},
              "epoch_size": 2, "base_random_seed": 7, "data_workers": 2}
    values.update(overrides)
    return from_dict(values)


def _make_folder(root, counts):
    photo = load_sample_image("flower.jpg")
    rng = np.random.default_rng(len(counts))
    for c, n in enumerate(counts):
        os.makedirs(os.path.join(root, f"id{c:02d}"))
        for j in range(n):
            y, x = int(rng.integers(0, photo.shape[0] - 40)), int(rng.integers(0, photo.shape[1] - 40))
            Image.fromarray(photo[y:y + 40, x:x + 40]).save(os.path.join(root, f"id{c:02d}", f"{j}.jpg"), quality=92)
    return read_image_folder(root)


def _reference(path):
    """Original test preprocessing: PIL decode, imresize (PIL bilinear), (x - 128) / 128."""
    img = Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return (np.asarray(img, np.float64) - 128.0) / 128.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _make_folder(str(tmp_path_factory.mktemp("faces")), [5, 2, 1, 6, 3, 4])


def test_batches_are_balanced_and_doubled_with_test_preprocessed_twins(folder):
    cfg = _cfg()
    planner = BalancedBatchPlanner(folder, 3, 4, cfg.base_random_seed)
    batches = list(make_train_dataset(folder, cfg, num_steps=3).as_numpy_iterator())
    flips = 0
    for step, (images, labels) in enumerate(batches):
        assert images.shape == (24, SIZE, SIZE, 3) and images.dtype == np.float32 and labels.dtype == np.int32
        np.testing.assert_array_equal(labels[:12], labels[12:])
        blocks = labels[:12].reshape(3, 4)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0])) == 3
        indices, plan_labels = planner(step)
        np.testing.assert_array_equal(plan_labels, labels[:12])
        for slot, index in enumerate(indices):
            want = _reference(folder.sources[index])
            assert np.abs(images[12 + slot] - want).max() <= 1e-5
            augmented = images[slot]
            same, mirrored = np.abs(augmented - want).max(), np.abs(augmented - want[:, ::-1]).max()
            assert min(same, mirrored) <= 1e-5
            flips += mirrored <= 1e-5 < same
    assert 3 <= flips <= 33


def test_images_of_different_sizes_are_preprocessed_one_by_one(tmp_path):
    data = _make_folder(str(tmp_path / "f"), [2, 2, 2])
    odd = data.sources[2]
    Image.open(odd).resize((48, 36)).save(odd, quality=92)  # now 36 x 48 among 40 x 40 images
    cfg = _cfg(batch_format={"size": 6, "num_classes": 3})
    planner = BalancedBatchPlanner(data, 3, 2, cfg.base_random_seed)
    images, labels = next(iter(make_train_dataset(data, cfg, num_steps=1)))
    indices, _ = planner(0)
    assert 2 in indices
    for slot, index in enumerate(indices):
        assert np.abs(images.numpy()[6 + slot] - _reference(data.sources[index])).max() <= 1e-5


def test_same_seed_same_batches_and_resume_continues_the_sequence(folder):
    cfg = _cfg()
    full = list(make_train_dataset(folder, cfg, num_steps=5).as_numpy_iterator())
    again = list(make_train_dataset(folder, cfg, num_steps=5).as_numpy_iterator())
    resumed = list(make_train_dataset(folder, cfg, start_step=3, num_steps=2).as_numpy_iterator())
    for (a, la), (b, lb) in zip(full, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    for (a, la), (b, lb) in zip(full[3:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    other = list(make_train_dataset(folder, _cfg(base_random_seed=8), num_steps=5).as_numpy_iterator())
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(full, other))


def test_small_identities_are_sampled_with_replacement_like_the_original(folder):
    planner = BalancedBatchPlanner(folder, 6, 4, seed=0)  # every identity in every batch
    members = folder.class_indices()
    for step in range(5):
        indices, labels = planner(step)
        for c in range(6):
            drawn = indices[labels == c]
            assert len(drawn) == 4 and set(drawn) <= set(members[c])
            counts = np.bincount(drawn - members[c][0], minlength=len(members[c]))
            if len(members[c]) >= 4:
                assert counts.max() == 1  # without replacement
            else:  # consecutive permutations: every image as often as possible, evenly
                assert counts.max() - counts.min() <= 1 and counts.min() == 4 // len(members[c])


def test_identities_are_drawn_uniformly(folder):
    planner = BalancedBatchPlanner(folder, 3, 4, seed=1)
    seen = np.zeros(6)
    for step in range(600):
        seen += np.bincount(planner(step)[1][::4], minlength=6)
    assert np.abs(seen / 600 - 0.5).max() < 0.08  # each of 6 identities in half of the batches


def test_max_identities_cut_restricts_the_labels(tmp_path):
    _make_folder(str(tmp_path / "f"), [2, 2, 2, 2, 2, 2])
    data = read_image_folder(str(tmp_path / "f"), max_identities=4)
    assert data.class_names == ["id00", "id01", "id02", "id03"]
    labels = np.concatenate([l for _, l in make_train_dataset(data, _cfg(), num_steps=6).as_numpy_iterator()])
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_single_batch_option_and_no_doubling(folder):
    images, labels = next(iter(make_train_dataset(folder, _cfg(double_batch=False), num_steps=1)))
    assert images.shape == (12, SIZE, SIZE, 3) and labels.shape == (12,)


def _folder_with_bad_images(root):
    data = _make_folder(root, [3, 2, 2])
    truncated = os.path.join(root, "id00", "0.jpg")
    with open(truncated, "rb") as f:
        blob = f.read()
    with open(truncated, "wb") as f:
        f.write(blob[:len(blob) // 2])
    fake = os.path.join(root, "id00", "1.jpg")
    with open(fake, "wb") as f:
        f.write(b"plain text, not a JPEG\n")
    return data, truncated, fake


def test_unreadable_images_are_skipped_replaced_and_counted(tmp_path, caplog):
    data, truncated, fake = _folder_with_bad_images(str(tmp_path / "f"))
    cfg = _cfg(batch_format={"size": 12, "num_classes": 3}, epoch_size=2)
    ds = make_train_dataset(data, cfg, num_steps=4)
    with caplog.at_level(logging.INFO):
        batches = list(ds.as_numpy_iterator())
    stats = ds.decode_stats
    assert all(data.sources[i] in message for i, message in stats.bad_files.items())
    assert {data.sources[i] for i in stats.bad_files} == {truncated, fake}
    assert stats.total_skipped >= 2
    good = _reference(os.path.join(str(tmp_path / "f"), "id00", "2.jpg"))
    for images, labels in batches:  # identity 0 is in every batch; only its readable image can appear
        for slot in np.flatnonzero(labels[:12] == 0):
            assert np.abs(images[12 + slot] - good).max() <= 1e-5
    messages = [r.getMessage() for r in caplog.records]
    assert sum("skipping unreadable image" in m for m in messages) == 2
    assert any(m.startswith("epoch 1:") for m in messages) and any(m.startswith("epoch 2:") for m in messages)
    assert stats.skipped_between(0, 2) + stats.skipped_between(2, 4) == stats.total_skipped


def test_strict_mode_stops_with_the_file_name(tmp_path):
    data, truncated, fake = _folder_with_bad_images(str(tmp_path / "f"))
    ds = make_train_dataset(data, _cfg(strict_data=True), num_steps=2)
    with pytest.raises(UnreadableImageError, match=r"id00/[01]\.jpg"):
        for _ in iterate_batches(ds):
            pass


def test_identity_without_any_readable_image_is_an_error(tmp_path):
    data = _make_folder(str(tmp_path / "f"), [1, 2, 2])
    with open(data.sources[0], "wb") as f:
        f.write(b"broken")
    ds = make_train_dataset(data, _cfg(), num_steps=3)
    with pytest.raises(DatasetFormatError, match="identity 'id00'.*none of its 1 images"):
        for _ in iterate_batches(ds):
            pass


def test_configuration_errors_are_reported_before_training(folder):
    with pytest.raises(DatasetFormatError, match="preprocess_train"):
        make_train_dataset(folder, _cfg(preprocess_train=[["random_flip"]]))
    with pytest.raises(DatasetFormatError, match="fewer than the 8 per batch"):
        make_train_dataset(folder, _cfg(batch_format={"size": 16, "num_classes": 8}))
