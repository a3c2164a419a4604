"""ProbFace head training (stage 2): frozen, restored backbone; only ``UncertaintyModule`` learns.

One step = the original's: forward the batch (backbone in inference mode, head BN in training mode), the
weighted losses of ``probface_tf.losses.probface_loss`` plus the head's weight decay (``regu``), one momentum
update of the head variables. The learning rate follows the config's piecewise schedule by global step.

Resumable: a ``tf.train.CheckpointManager`` under ``<run>/checkpoints`` holds head, optimizer and step; the data
order is a pure function of (seed, step), so resuming at step k replays exactly the batches an uninterrupted
run would have seen. TensorFlow writes a checkpoint's files before it updates the ``checkpoint`` state file
(atomically, by rename), so a crash mid-save leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from probface_tf.losses import probface_loss
from probface_tf.models.probface import backbone_of, from_config, head_of
from probface_tf.train.logs import TrainingLog, banner, create_run_dir, interactive, latest_run_dir
from probface_tf.train.optimizer import make_optimizer
from probface_tf.train.schedule import learning_rate_at


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the loss terms."""


def configure_runtime(cfg) -> None:
    """Seeds, determinism and the mixed-precision policy, before any layer is built."""
    keras.utils.set_random_seed(cfg.base_random_seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy(cfg.mixed_precision)


def discriminative_metric(cfg) -> str:
    # The original's test of the config key is inverted, so it always trains with triplet_semihard.
    return cfg.discriminat_metric_type if cfg.honour_discriminat_metric_type else "triplet_semihard"


class HeadTrainer:
    """The compiled pieces of one training step; usable on images or on cached backbone features.

    Build it after the backbone weights are restored: the frozen backbone is copied (BN-folded) here.
    """

    def __init__(self, model: keras.Model, cfg, learning_rate: float):
        self.model, self.cfg = model, cfg
        self.backbone, self.head = backbone_of(model), head_of(model)
        self.variables = self.head.trainable_variables
        self.optimizer = make_optimizer(cfg, learning_rate)
        self.optimizer.build(self.variables)
        self.metric = discriminative_metric(cfg)
        self.feature_backbone  # fold now, eagerly: the backbone's weights must be restored before this point
        self._gradients = tf.function(self._compute, reduce_retracing=True)
        self._apply = tf.function(self._apply_gradients, reduce_retracing=True)

    def features(self, images):
        end_points = self.feature_backbone(images, training=False)
        return end_points[self.cfg.uncertainty_module_input], end_points["mu"]

    @property
    def feature_backbone(self) -> keras.Model:
        """The frozen backbone, BN-folded when configured (its weights never change during head training)."""
        if not hasattr(self, "_feature_backbone"):
            self._feature_backbone = self.backbone
            if self.cfg.fold_frozen_backbone:
                from probface_tf.models.inference import fold_backbone

                dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(self.cfg.mixed_precision)
                self._feature_backbone = fold_backbone(self.backbone, dtype)
        return self._feature_backbone

    def _compute(self, features, mu, labels):
        with tf.GradientTape() as tape:
            log_sigma_sq = self.head(features, training=True)
            regu = tf.add_n(self.head.losses) if self.head.losses else tf.constant(0.0)
            if self.cfg.head_type in ("pcnet", "idq"):  # a baseline head: its output is p, not log sigma^2
                from probface_tf.baselines.training import baseline_loss

                total, watch = baseline_loss(self.cfg, labels, mu, log_sigma_sq, regu)
            else:
                total, watch = probface_loss(labels, mu, log_sigma_sq, self.cfg.loss_weights,
                                             self.cfg.output_constraint_type, self.metric, self.cfg.triplet_margin,
                                             regu)
            scaled = self.optimizer.scale_loss(total)
        return watch, tape.gradient(scaled, self.variables)

    def _apply_gradients(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.variables))

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def step(self, features, mu, labels, global_step: int) -> dict:
        """One update; raises NonFiniteLossError (before touching the weights) on NaN/Inf."""
        watch, grads = self._gradients(features, mu, labels)
        values = {k: float(v) for k, v in watch.items()}
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            raise NonFiniteLossError(f"non-finite loss at global step {global_step}: "
                                     + ", ".join(f"{k}={values[k]}" for k in bad)
                                     + "; training stopped, no checkpoint written for this state")
        self._apply(grads)
        return values

    def image_step(self, images, labels, global_step: int) -> dict:
        features, mu = self.batch_features(images)
        return self.step(features, mu, labels, global_step)

    def batch_features(self, images):
        """Backbone features of a training batch. In a doubled batch (augmented half, then the same images
        test-preprocessed) every augmented image that was not mirrored is identical to its twin: with
        ``reuse_twin_features`` only the twins and the mirrored images go through the backbone (~3/4 of the
        work), and the others take their twin's features."""
        if not (self.cfg.double_batch and self.cfg.reuse_twin_features):
            return self._features_fn(images)
        return self._twin_features_fn(images)

    @property
    def _twin_features_fn(self):
        if not hasattr(self, "_twin_compiled"):
            self._twin_compiled = tf.function(self._twin_features, reduce_retracing=True)
        return self._twin_compiled

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
    return from_config(cfg, freeze_backbone=True)


def _batches(cfg, trainer: HeadTrainer, start_step: int):
    """Yields (features, mu, labels) per step, from images or from the feature cache."""
    from probface_tf.data import sampler
    from probface_tf.data.dataset import dataset_from_config
    from probface_tf.data.ensure import ensure_synthetic

    ensure_synthetic(cfg)
    data = dataset_from_config(cfg)
    if cfg.feature_cache:
        from probface_tf.train.feature_cache import FeatureCache

        cache = FeatureCache.build(data, cfg, trainer.features)
        yield from cache.batches(start_step)
        return
    dataset = sampler.make_train_dataset(data, cfg, start_step=start_step)
    for images, labels in dataset:
        features, mu = trainer.batch_features(images)
        yield features, mu, labels


class Checkpoints:
    """Head + optimizer + step under ``<run>/checkpoints`` (keep ``keep_checkpoints``)."""

    def __init__(self, run_dir: str, trainer: HeadTrainer, keep: int):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.ckpt = tf.train.Checkpoint(head=trainer.head, optimizer=trainer.optimizer, step=self.step)
        self.manager = tf.train.CheckpointManager(self.ckpt, os.path.join(run_dir, "checkpoints"), max_to_keep=keep)

    def restore_latest(self) -> int:
        if self.manager.latest_checkpoint:
            self.ckpt.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return int(self.step.numpy())

    def save(self, global_step: int) -> str:
        self.step.assign(global_step)
        return self.manager.save(checkpoint_number=global_step)


def save_model(model: keras.Model, run_dir: str, cfg, global_step: int) -> str:
    """Save the whole model (``model.keras``) and, when configured, a versioned SavedModel export."""
    path = os.path.join(run_dir, "model.keras")
    tmp = path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, path)  # never a half-written model.keras
    if cfg.export_saved_model and cfg.head_type == "probface":  # the serving signatures need sigma_sq
        from probface_tf.export import export_saved_model

        export_saved_model(model, os.path.join(run_dir, "saved_model"), version=max(global_step, 1),
                           preprocess_ops=cfg.preprocess_test, image_size=cfg.image_size,
                           resize_method=cfg.resize_method, overwrite=True)
    return path


def train(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
          max_steps: int | None = None, evaluate_each_epoch: bool = True) -> dict:
    """Train the head as the config says. Returns {'run_dir', 'global_step', 'last_watch'}."""
    if cfg.head_type == "mc_dropout":  # nothing to train: the head reuses the backbone's bottleneck
        from probface_tf.baselines.training import train_mc_dropout

        return train_mc_dropout(cfg, config_path, resume, run_dir, max_steps, evaluate_each_epoch)
    configure_runtime(cfg)
    model = build_model(cfg)
    if run_dir is None:
        run_dir = (latest_run_dir(cfg) if resume else None) or create_run_dir(cfg, config_path)
    os.makedirs(run_dir, exist_ok=True)
    log = TrainingLog(run_dir)
    if cfg.restore_model:
        from probface_tf.train.restore import restore

        log.text(restore(model, cfg.restore_model, cfg.restore_scopes, cfg.exclude_restore_scopes))
    trainer = HeadTrainer(model, cfg, learning_rate_at(0, cfg.learning_rate_schedule))
    checkpoints = Checkpoints(run_dir, trainer, cfg.keep_checkpoints)
    global_step = checkpoints.restore_latest() if resume else 0
    if resume:
        log.text(f"resumed from {checkpoints.manager.latest_checkpoint or 'scratch'} at step {global_step}")
    log.text(banner(cfg))
    total = cfg.num_epochs * cfg.epoch_size
    stop = min(total, max_steps) if max_steps is not None else total
    if global_step == 0:
        save_model(model, run_dir, cfg, 0)
    bar = _progress(global_step, stop)
    watch: dict = {}
    batches = _batches(cfg, trainer, global_step)
    while global_step < stop:
        epoch, step = divmod(global_step, cfg.epoch_size)
        lr = learning_rate_at(global_step, cfg.learning_rate_schedule)
        trainer.set_learning_rate(lr)
        features, mu, labels = next(batches)
        watch = trainer.step(features, mu, labels, global_step)
        watch["lr"] = lr
        global_step += 1
        if step % cfg.summary_interval == 0:
            log.step(epoch, step, global_step, watch)
        if global_step % cfg.checkpoint_interval == 0 or global_step % cfg.epoch_size == 0 or global_step == stop:
            checkpoints.save(global_step)
        if global_step % cfg.epoch_size == 0:
            save_model(model, run_dir, cfg, global_step)
            if evaluate_each_epoch:
                _evaluate_epoch(model, cfg, run_dir, log, global_step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(a=f"{watch['a']:.4f}", mls=f"{watch.get('mls', float('nan')):.4f}")
    if bar is not None:
        bar.close()
    return {"run_dir": run_dir, "global_step": global_step, "last_watch": watch, "model": model}


def _progress(start: int, stop: int):
    if not interactive():
        return None
    from tqdm import tqdm

    return tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True)


def _evaluate_epoch(model, cfg, run_dir: str, log: TrainingLog, global_step: int) -> None:
    """The original per-epoch evaluation on the configured .bin files (cfp_fp by default)."""
    from probface_tf.train.epoch_eval import evaluate_training_bins, training_bin_paths

    if not training_bin_paths(cfg):
        return
    for name, text, scalars in evaluate_training_bins(model, cfg):
        log.text(f"--- {name} ---")
        log.text(text)
        log.scalars(scalars, global_step, prefix=f"{name}/")
