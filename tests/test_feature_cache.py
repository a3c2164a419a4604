"""Feature-cache mode serves exactly the head inputs of the image pipeline, so training is the same."""
import numpy as np
import pytest

from probface_tf.config import from_dict
from probface_tf.data.dataset import open_dataset
from probface_tf.data.sampler import make_train_dataset
from probface_tf.data.synthetic import synthesize
from probface_tf.models.probface import build_probface
from probface_tf.train.feature_cache import FeatureCache, FeatureCacheError, check_cacheable
from probface_tf.train.loop import HeadTrainer


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    manifest = synthesize(str(root), num_identities=10, images_per_identity=3, seed=3, image_size=48, bin_pairs=0,
                          split=0.0, workers=1)
    return open_dataset(manifest.train_dir)


def _cfg(**extra):
    values = {"image_size": [32, 32], "embedding_size": 16, "backbone_filters": [8, 8, 16, 16],
              "backbone_blocks": [1, 1, 1, 1], "batch_size": 16, "batch_format": {"size": 16, "num_classes": 4},
              "base_random_seed": 5, "jit_compile": False, "eval_batch_size": 7}
    return from_dict({**values, **extra})


def _model():
    model = build_probface(image_size=(32, 32), embedding_size=16, backbone_filters=(8, 8, 16, 16),
                           backbone_blocks=(1, 1, 1, 1))
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-trivial, asymmetric backbone so a mirrored image gives other features
        if "moving_variance" not in w.path:
            w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("double", [True, False])
def test_cache_batches_equal_image_pipeline_batches(small_data, double):
    cfg = _cfg(double_batch=double)
    trainer = HeadTrainer(_model(), cfg, 0.01)
    cache = FeatureCache.build(small_data, cfg, trainer.features)
    pipeline = iter(make_train_dataset(small_data, cfg, start_step=3))
    mirrored = 0
    for step in (3, 4, 5):
        images, labels = next(pipeline)
        feats, mu = trainer.features(images)
        c_feats, c_mu, c_labels = cache.batch(step)
        np.testing.assert_array_equal(c_labels.numpy(), labels.numpy())
        np.testing.assert_allclose(c_feats.numpy(), feats.numpy(), atol=1e-5)
        np.testing.assert_allclose(c_mu.numpy(), mu.numpy(), atol=1e-5)
        plain = cache.features[cache.row_of[cache.planner(step)[0]], 0]
        mirrored += int(np.sum(np.abs(c_feats.numpy()[:16] - plain).max(axis=1) > 1e-4))
    assert mirrored > 0  # some images really were mirrored: the flip replay is exercised


def test_training_from_cache_matches_training_from_images(small_data):
    cfg = _cfg()
    model_a, model_b = _model(), _model()
    model_b.set_weights(model_a.get_weights())  # same (random) head initialisation
    a, b = HeadTrainer(model_a, cfg, 0.01), HeadTrainer(model_b, cfg, 0.01)
    cache = FeatureCache.build(small_data, cfg, a.features)
    pipeline = iter(make_train_dataset(small_data, cfg))
    for step in range(3):
        images, labels = next(pipeline)
        from_images = a.image_step(images, labels, step)
        from_cache = b.step(*cache.batch(step), step)
        for key in from_images:
            assert from_cache[key] == pytest.approx(from_images[key], rel=1e-4, abs=1e-6), key


def test_uncacheable_augmentation_is_refused():
    cfg = _cfg(preprocess_train=[["resize", (40, 40)], ["random_crop", (32, 32)], ["random_flip"],
                                 ["standardize", "mean_scale"]])
    with pytest.raises(FeatureCacheError, match="random_crop"):
        check_cacheable(cfg)
