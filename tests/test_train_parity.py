"""Head training steps vs the original TF1 training graph: same losses, same updated head variables."""
import numpy as np
import pytest

from probface_tf.config import from_dict
from probface_tf.convert import assign_checkpoint
from probface_tf.models.probface import build_probface, head_of
from probface_tf.models.resface import BackboneSpec
from tf1_reference import TF1ProbFace
from probface_tf.train.loop import HeadTrainer

SPEC = BackboneSpec((8, 8, 16, 16), (1, 1, 1, 1))


def _config(out_size, oc):
    return from_dict({"image_size": [32, 32], "embedding_size": 16, "backbone_filters": [8, 8, 16, 16],
                      "backbone_blocks": [1, 1, 1, 1], "uncertainty_module_output_size": out_size,
                      "output_constraint_type": oc, "weight_decay": 5e-4,
                      "loss_weights": {"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 1e-3},
                      "batch_size": 16, "learning_rate_schedule": {0: 0.01, 2: 0.001}})


@pytest.mark.parametrize("out_size,oc", [(1, "L2"), (1, "L1"), (16, "L2")])
def test_training_steps_match_tf1_graph(out_size, oc):
    rng = np.random.default_rng(11)
    images = rng.normal(0, 1, (16, 32, 32, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4).astype(np.int32)
    graph = TF1ProbFace(SPEC, (32, 32), 16, out_size, weight_decay=5e-4, output_constraint=oc, with_train_op=True,
                        loss_weights={"mls_loss": 1.0, "output_constraint_loss": 1e-3, "discriminate_loss": 1e-3})
    graph.randomize(rng, calibrate_images=images)
    cfg = _config(out_size, oc)
    model = build_probface(image_size=(32, 32), embedding_size=16, backbone_filters=(8, 8, 16, 16),
                           backbone_blocks=(1, 1, 1, 1), uncertainty_module_output_size=out_size)
    assign_checkpoint(model, graph.get_weights())
    trainer = HeadTrainer(model, cfg, 0.01)
    initial_alpha = float(head_of(model).scale_and_shift.alpha.numpy())
    # Four steps across an LR change: the TF1 momentum form rescales the accumulated velocity.
    for step, lr in enumerate((0.01, 0.01, 0.001, 0.001)):
        batch = images[rng.permutation(16)] if step % 2 else images
        ref = graph.train_step(batch, labels, lr)
        trainer.set_learning_rate(lr)
        ours = trainer.image_step(batch, labels, step)
        assert set(ours) == set(ref)
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], rel=2e-4, abs=2e-5), (step, key)
    after = graph.get_weights()
    for name, var in head_of(model).tf1_variable_map().items():
        np.testing.assert_allclose(var.numpy(), after[name], rtol=2e-4, atol=2e-6, err_msg=name)
    # The head really moved, so equality is not the trivial one of two untouched models.
    assert abs(float(after["UncertaintyModule/scale_and_shift/alpha"]) - initial_alpha) > 1e-4


def test_regu_matches_slim_l2_on_fresh_head():
    """ORIGINAL_SPEC §10: fresh Glorot-uniform head at 96x96, regu ~= 5e-4 * E[sum w^2] / 2 ~= 0.1267."""
    model = build_probface(embedding_network="resface64_relu", image_size=(96, 96))
    regu = float(sum(head_of(model).losses))
    assert regu == pytest.approx(0.12674, rel=0.01)


def test_twin_feature_reuse_equals_full_forward():
    rng = np.random.default_rng(12)
    model = build_probface(image_size=(32, 32), embedding_size=16, backbone_filters=(8, 8, 16, 16),
                           backbone_blocks=(1, 1, 1, 1))
    for w in model.weights:
        if "moving_variance" not in w.path:
            w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype(np.float32))
    plain = rng.normal(0, 1, (8, 32, 32, 3)).astype(np.float32)
    mirrored = np.array([1, 0, 0, 1, 1, 0, 1, 0], bool)
    images = np.concatenate([np.where(mirrored[:, None, None, None], plain[:, :, ::-1], plain), plain])
    trainer = HeadTrainer(model, _config(1, "L2"), 0.01)
    reused, reused_mu = trainer.batch_features(images)
    full, full_mu = trainer.extract(images)
    np.testing.assert_allclose(reused.numpy(), full.numpy(), atol=1e-5)
    np.testing.assert_allclose(reused_mu.numpy(), full_mu.numpy(), atol=1e-6)
    assert np.abs(full.numpy()[0] - full.numpy()[8]).max() > 1e-3  # mirrored images really differ
