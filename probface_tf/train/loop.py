"""ProbFace head training (stage 2): frozen, restored backbone; only the ``UncertaintyModule`` learns.

One step = the original's: forward the batch (backbone in inference mode, head BN in training mode), the loss of
the ``head_type`` method (ProbFace: the weighted losses of ``probface_tf.losses.probface_loss``; see
``probface_tf.methods``) plus the head's weight decay (``regu``), one momentum update of the head variables.
:class:`HeadTask` runs it under the one training loop (``probface_tf.train.trainer``), which saves a state only
once the next step's losses show it finite; :meth:`HeadTrainer.batch_losses` therefore changes nothing.
"""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from probface_tf.data import sampler
from probface_tf.data.dataset import dataset_from_config
from probface_tf.export import export_saved_model
from probface_tf.methods import HEAD_STAGE, get_method, model_from_config
from probface_tf.methods.probface import discriminative_metric  # noqa: F401 - its former home
from probface_tf.models.inference import fold_backbone
from probface_tf.models.probface import IMAGES, backbone_of, head_of
from probface_tf import atomic
from probface_tf.train.checks import finite_values
from probface_tf.train.distribute import distribute_batch, distributed_function, first_replica, gather, run
from probface_tf.train.epoch_eval import evaluate_training_bins
from probface_tf.train.feature_cache import FeatureCache
from probface_tf.train.optimizer import make_optimizer
from probface_tf.train.restore import restore
from probface_tf.train.schedule import learning_rate_for
from probface_tf.train.trainer import Trainer, TrainingTask


class HeadTrainer:
    """The compiled pieces of one training step; usable on images or on cached backbone features.

    Build it after the backbone weights are restored: the frozen backbone is copied (BN-folded) here.
    """

    def __init__(self, model: keras.Model, cfg, learning_rate: float, strategy: tf.distribute.Strategy | None = None):
        self.model, self.cfg = model, cfg
        # Under a multi-replica strategy the model must have been built in ``strategy.scope()``.
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.backbone, self.head = backbone_of(model), head_of(model)
        self.variables = self.head.trainable_variables
        self.method = get_method(cfg.head_type, HEAD_STAGE)
        self._stateful = list(self.head.non_trainable_variables)  # BN moving statistics
        with self.strategy.scope():
            self.optimizer = make_optimizer(cfg, learning_rate)
            self.optimizer.build(self.variables)
            self.feature_backbone  # fold now, eagerly: the backbone's weights must be restored before this point
        self._gradients = {
            False: tf.function(lambda f, m, y: run(self.strategy, self._replica_losses, (f, m, y)),
                               reduce_retracing=True),
            True: tf.function(lambda x, y: run(self.strategy, self._replica_image_losses, (x, y)),
                              reduce_retracing=True)}
        self._apply = tf.function(lambda g, u: run(self.strategy, self._commit, (g, u)), reduce_retracing=True)

    def features(self, images):
        end_points = {**self.feature_backbone(images, training=False), IMAGES: images}
        return end_points[self.cfg.uncertainty_module_input], end_points["mu"]

    @property
    def feature_backbone(self) -> keras.Model:
        """The frozen backbone, BN-folded when configured (its weights never change during head training)."""
        if not hasattr(self, "_feature_backbone"):
            self._feature_backbone = self.backbone
            if self.cfg.fold_frozen_backbone:
                dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(self.cfg.mixed_precision)
                self._feature_backbone = fold_backbone(self.backbone, dtype)
        return self._feature_backbone

    def _compute(self, features, mu, labels):
        """Losses and gradients at the current state, changing nothing: the head's training-mode forward runs in
        a ``StatelessScope`` that collects its BN moving-statistics updates instead of assigning them, so the
        state stays exactly the one the losses describe until :meth:`_commit` (and can be saved in between)."""
        with tf.GradientTape() as tape:
            with keras.StatelessScope() as scope:
                head_output = self.head(features, training=True)
            updates = [scope.get_current_value(v) for v in self._stateful]
            # regu reads the weights outside the scope (inside, unmapped variables read as None).
            regu = tf.add_n(self.head.losses) if self.head.losses else tf.constant(0.0)
            total, watch = self.method.loss(self.cfg, labels, mu, head_output, regu)
            scaled = self.optimizer.scale_loss(total)
        updates = [u if u is not None else v for u, v in zip(updates, self._stateful)]
        return watch, tape.gradient(scaled, self.variables), updates

    def _replica_losses(self, features, mu, labels):
        """One replica's part of a step on backbone features: the batch is gathered back whole (see
        ``probface_tf.train.distribute``), so every replica computes the single-device losses; the optimizer sums
        the replicas' gradients, hence the division."""
        features, mu, labels = (gather(t) for t in (features, mu, labels))
        return self._scaled(*self._compute(features, mu, labels))

    def _replica_image_losses(self, images, labels):
        """As :meth:`_replica_losses`, from this replica's images: only the backbone forward is split."""
        halves = self.cfg.double_batch
        features, mu = self._local_batch_features(images)
        features, mu, labels = (gather(t, halves) for t in (features, mu, labels))
        return self._scaled(*self._compute(features, mu, labels))

    def _scaled(self, watch, grads, updates):
        if self.replicas > 1:
            grads = [g / self.replicas for g in grads]
        return watch, grads, updates

    def _commit(self, grads, updates):
        """The state change of one step: BN moving statistics, then the optimizer update."""
        for var, value in zip(self._stateful, updates):
            var.assign(value)
        self.optimizer.apply_gradients(zip(grads, self.variables))

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def batch_losses(self, batch: dict, global_step: int):
        """Losses of the current state on a batch (the state is not changed); raises NonFiniteLossError.

        ``batch``: ``{'images', 'labels'}`` (the backbone runs here, split over the replicas) or
        ``{'features', 'mu', 'labels'}`` (backbone outputs, e.g. from the feature cache)."""
        from_images = "images" in batch
        inputs = (batch["images"], batch["labels"]) if from_images else (batch["features"], batch["mu"],
                                                                          batch["labels"])
        if self.replicas > 1:
            inputs = distribute_batch(self.strategy, inputs, halves=from_images and self.cfg.double_batch)
        watch, grads, updates = self._gradients[from_images](*inputs)
        return finite_values(first_replica(self.strategy, watch), global_step), grads, updates

    def step_batch(self, batch: dict, global_step: int, before_update=None) -> dict:
        """One update. The losses are computed and checked on the current state first; on NaN/Inf this raises
        NonFiniteLossError with the state untouched. ``before_update()`` runs once they are known finite and
        before anything changes: the loop saves the current state there."""
        values, grads, updates = self.batch_losses(batch, global_step)
        if before_update is not None:
            before_update()
        self._apply(grads, updates)
        return values

    def step(self, features, mu, labels, global_step: int, before_update=None) -> dict:
        return self.step_batch({"features": features, "mu": mu, "labels": labels}, global_step, before_update)

    def state_variables(self) -> list:
        """What is saved and must be finite: head and optimizer variables."""
        return list(self.head.weights) + list(self.optimizer.variables)

    def image_step(self, images, labels, global_step: int, before_update=None) -> dict:
        return self.step_batch({"images": images, "labels": labels}, global_step, before_update)

    def batch_features(self, images):
        """Backbone features of a whole training batch on one device (see :meth:`_local_batch_features`)."""
        if not hasattr(self, "_batch_features_compiled"):
            self._batch_features_compiled = tf.function(self._local_batch_features, reduce_retracing=True)
        return self._batch_features_compiled(images)

    def _local_batch_features(self, images):
        """Backbone features of a training batch. In a doubled batch (augmented half, then the same images
        test-preprocessed) every augmented image that was not mirrored is identical to its twin: with
        ``reuse_twin_features`` only the twins and the mirrored images go through the backbone (~3/4 of the
        work), and the others take their twin's features."""
        if not (self.cfg.double_batch and self.cfg.reuse_twin_features):
            return self.features(images)
        return self._twin_features(images)

    def extract(self, images):
        """Features of any number of images (the feature cache's build), split over the replicas."""
        if self.replicas == 1:
            return self._features_fn(images)
        if not hasattr(self, "_distributed_features"):
            self._distributed_features = distributed_function(self.strategy, self.features, jit=self.cfg.jit_compile)
        return self._distributed_features(images)

    def _twin_features(self, images):
        half = tf.shape(images)[0] // 2
        augmented, plain = images[:half], images[half:]
        differs = tf.where(tf.reduce_any(tf.not_equal(augmented, plain), axis=[1, 2, 3]))
        feats, mu = self.features(tf.concat([plain, tf.gather_nd(augmented, differs)], 0))
        plain_feats, plain_mu = feats[:half], mu[:half]
        aug_feats = tf.tensor_scatter_nd_update(plain_feats, differs, feats[half:])
        aug_mu = tf.tensor_scatter_nd_update(plain_mu, differs, mu[half:])
        return tf.concat([aug_feats, plain_feats], 0), tf.concat([aug_mu, plain_mu], 0)

    @property
    def _features_fn(self):
        if not hasattr(self, "_features_compiled"):
            self._features_compiled = tf.function(self.features, reduce_retracing=True,
                                                  jit_compile=self.cfg.jit_compile)
        return self._features_compiled


def build_model(cfg) -> keras.Model:
    return model_from_config(cfg, freeze_backbone=True)


def save_model(model: keras.Model, run_dir: str, cfg, global_step: int) -> str:
    """Save the whole model (``model.keras``) and, when configured, a versioned SavedModel export."""
    path = atomic.save_model(model, os.path.join(run_dir, "model.keras"))
    if cfg.export_saved_model and "sigma_sq" in model.output:  # the serving signatures need sigma_sq
        export_saved_model(model, os.path.join(run_dir, "saved_model"), version=max(global_step, 1),
                           preprocess_ops=cfg.preprocess_test, image_size=cfg.image_size,
                           resize_method=cfg.resize_method, contrast_stretch=cfg.eval_contrast_stretch,
                           overwrite=True)
    return path


class HeadTask(TrainingTask):
    """Stage 2 of the method ``head_type`` for the :class:`~probface_tf.train.trainer.Trainer`."""

    def __init__(self, cfg, strategy):
        super().__init__(cfg, strategy)
        self.method = get_method(cfg.head_type, HEAD_STAGE)
        self.trains = self.method.trains
        self.trainer = None

    def build(self) -> list[str]:
        cfg, notes = self.cfg, []
        with self.strategy.scope():
            self.model = build_model(cfg)
        if cfg.restore_model:
            notes.append(restore(self.model, cfg.restore_model, cfg.restore_scopes, cfg.exclude_restore_scopes))
        if self.method.prepare is not None:
            notes += self.method.prepare(self.model, cfg)
        if self.trains:
            self.trainer = HeadTrainer(self.model, cfg, learning_rate_for(0, cfg),
                                       self.strategy)
            if self.trainer.replicas > 1:
                notes.append(f"distribute_strategy {cfg.distribute_strategy!r}: {self.trainer.replicas} replicas")
        return notes

    def checkpoint_parts(self) -> dict:
        return dict(head=self.trainer.head, optimizer=self.trainer.optimizer) if self.trains else {}

    def batches(self, start_step: int):
        """Batches from images or from the feature cache. The data is opened (and the cache built) here, eagerly,
        so a data error surfaces before the run directory is created."""
        data = dataset_from_config(self.cfg)
        if self.cfg.feature_cache:
            cache = FeatureCache.build(data, self.cfg, self.trainer.extract)  # the compiled forward, all replicas
            return ({"features": f, "mu": m, "labels": y} for f, m, y in cache.batches(start_step))
        return ({"images": x, "labels": y}
                for x, y in sampler.make_train_dataset(data, self.cfg, start_step=start_step))

    def set_learning_rate(self, lr: float) -> None:
        self.trainer.set_learning_rate(lr)

    def step(self, batch, global_step: int, before_update=None) -> dict:
        return self.trainer.step_batch(batch, global_step, before_update)

    def batch_losses(self, batch, global_step: int):
        return self.trainer.batch_losses(batch, global_step)

    def state_variables(self) -> list:
        return self.trainer.state_variables() if self.trains else list(self.model.weights)

    def save(self, run_dir: str, global_step: int, publish: bool) -> None:
        save_model(self.model, run_dir, self.cfg if publish else self.cfg.replace(export_saved_model=False),
                   global_step)

    def evaluate(self, global_step: int):
        """The original per-epoch evaluation on the configured .bin files (cfp_fp by default)."""
        return evaluate_training_bins(self.model, self.cfg)

    def postfix(self, watch: dict) -> dict:
        return dict(a=f"{watch['a']:.4f}", mls=f"{watch.get('mls', float('nan')):.4f}")


def train(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
          max_steps: int | None = None, evaluate_each_epoch: bool = True) -> dict:
    """Train the head as the config says. Returns {'run_dir', 'global_step', 'last_watch', 'model'}."""
    return Trainer(HeadTask, cfg, config_path, resume, run_dir, max_steps, evaluate_each_epoch).run()
