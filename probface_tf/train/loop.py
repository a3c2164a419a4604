"""ProbFace head training (stage 2): frozen, restored backbone; only ``UncertaintyModule`` learns.

One step = the original's: forward the batch (backbone in inference mode, head BN in training mode), the
weighted losses of ``probface_tf.losses.probface_loss`` plus the head's weight decay (``regu``), one momentum
update of the head variables. The learning rate follows the config's piecewise schedule by global step.

Resumable: a ``tf.train.CheckpointManager`` under ``<run>/checkpoints`` holds head, optimizer and step; the data
order is a pure function of (seed, step), so resuming at step k replays exactly the batches an uninterrupted
run would have seen. TensorFlow writes a checkpoint's files before it updates the ``checkpoint`` state file
(atomically, by rename), so a crash mid-save leaves the previous checkpoint as the latest.

Nothing non-finite is ever written. A state's loss is only known once the next step computes it, so saving is
deferred: the checkpoint / ``model.keras`` / evaluation due after update g run inside step g+1, after its losses
(computed on exactly state g: the forward pass is side-effect free, BN moving statistics are committed together
with the update) are checked finite and state g's variables are checked finite, and before update g+1 is
applied. The last state of a run is checked the same way on one more batch. So when the losses of step g are
non-finite, training stops before state g (the one that produced them) or anything after it reaches the disk.
"""
from __future__ import annotations

import math
import os
import shutil
import sys

import keras
import tensorflow as tf

from probface_tf.losses import probface_loss
from probface_tf.models.probface import backbone_of, from_config, head_of
from probface_tf.train.logs import TrainingLog, banner, create_run_dir, ensure_run_dir, interactive, \
    latest_run_dir
from probface_tf.train.distribute import distribute_batch, distributed_function, first_replica, gather, is_chief, \
    run, strategy_from_config, worker_scratch_dir
from probface_tf.train.optimizer import make_optimizer
from probface_tf.train.preflight import preflight
from probface_tf.train.run_lock import unlock_run
from probface_tf.train.run_record import record_resume
from probface_tf.train.schedule import learning_rate_at


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the loss terms."""


class TrainingInputError(ValueError):
    """A config key names a file or folder that does not exist; the message names the key and the path."""


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

    def __init__(self, model: keras.Model, cfg, learning_rate: float, strategy: tf.distribute.Strategy | None = None):
        self.model, self.cfg = model, cfg
        # Under a multi-replica strategy the model must have been built in ``strategy.scope()``.
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        self.backbone, self.head = backbone_of(model), head_of(model)
        self.variables = self.head.trainable_variables
        self.metric = discriminative_metric(cfg)
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
        """Losses and gradients at the current state, changing nothing: the head's training-mode forward runs in
        a ``StatelessScope`` that collects its BN moving-statistics updates instead of assigning them, so the
        state stays exactly the one the losses describe until :meth:`_commit` (and can be saved in between)."""
        with tf.GradientTape() as tape:
            with keras.StatelessScope() as scope:
                log_sigma_sq = self.head(features, training=True)
            updates = [scope.get_current_value(v) for v in self._stateful]
            # regu reads the weights outside the scope (inside, unmapped variables read as None).
            regu = tf.add_n(self.head.losses) if self.head.losses else tf.constant(0.0)
            if self.cfg.head_type in ("pcnet", "idq"):  # a baseline head: its output is p, not log sigma^2
                from probface_tf.baselines.training import baseline_loss

                total, watch = baseline_loss(self.cfg, labels, mu, log_sigma_sq, regu)
            else:
                total, watch = probface_loss(labels, mu, log_sigma_sq, self.cfg.loss_weights,
                                             self.cfg.output_constraint_type, self.metric, self.cfg.triplet_margin,
                                             regu)
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
        return self._checked(first_replica(self.strategy, watch), global_step), grads, updates

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

    def _checked(self, watch, global_step: int) -> dict:
        values = {k: float(v) for k, v in watch.items()}
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            raise NonFiniteLossError(f"non-finite loss at global step {global_step}: "
                                     + ", ".join(f"{k}={values[k]}" for k in bad))
        return values

    def non_finite_variables(self) -> list[str]:
        """Paths of head and optimizer variables holding NaN/Inf (empty when the state is finite)."""
        return [v.path for v in list(self.head.weights) + list(self.optimizer.variables)
                if keras.backend.is_float_dtype(v.dtype) and not bool(tf.reduce_all(tf.math.is_finite(v)))]

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
    return from_config(cfg, freeze_backbone=True)


def _batches(cfg, trainer: HeadTrainer, start_step: int):
    """Iterator of (features, mu, labels) per step, from images or from the feature cache. The data is opened
    (and the cache built) here, eagerly, so a data error surfaces before the run directory is created."""
    from probface_tf.data import sampler
    from probface_tf.data.dataset import dataset_from_config

    data = dataset_from_config(cfg)
    if cfg.feature_cache:
        from probface_tf.train.feature_cache import FeatureCache

        cache = FeatureCache.build(data, cfg, trainer.extract)  # the compiled forward, over every replica
        return ({"features": f, "mu": m, "labels": y} for f, m, y in cache.batches(start_step))
    return ({"images": x, "labels": y} for x, y in sampler.make_train_dataset(data, cfg, start_step=start_step))


def check_inputs(cfg) -> list[str]:
    """Check the paths the recipe names before anything is built or written; returns warnings.

    Missing ``train_dataset_path`` / ``restore_model`` / ``test_bin_paths`` entries are one error naming every
    such key. A ``test_targets`` file missing from ``test_data_dir_mx`` is a warning: the original evaluates only
    the targets it finds, and a missing evaluation file should not refuse hours of training.
    """
    from probface_tf.data.ensure import ensure_synthetic

    ensure_synthetic(cfg)  # a synthetic recipe renders its data (train folder, .bin) on first use
    problems, warnings = [], []
    if not cfg.train_dataset_path:
        problems.append("config key 'train_dataset_path' is not set")
    elif not os.path.exists(os.path.expanduser(cfg.train_dataset_path)):
        problems.append(f"config key 'train_dataset_path': not found: {cfg.train_dataset_path}")
    if cfg.restore_model:
        path = os.path.expanduser(cfg.restore_model)
        if not (os.path.exists(path) or os.path.isfile(path + ".index")):  # a file, a run dir or a ckpt prefix
            problems.append(f"config key 'restore_model': no such file, run directory or checkpoint prefix: "
                            f"{cfg.restore_model}")
    for path in cfg.test_bin_paths or ():
        if not os.path.isfile(os.path.expanduser(path)):
            problems.append(f"config key 'test_bin_paths': file not found: {path}")
    if cfg.test_data_dir_mx:
        for name in cfg.test_targets:
            path = os.path.join(os.path.expanduser(cfg.test_data_dir_mx), name + ".bin")
            if not os.path.isfile(path):
                warnings.append(f"warning: config key 'test_data_dir_mx': {path} not found; '{name}' (from "
                                f"'test_targets') will not be evaluated after each epoch")
    if problems:
        raise TrainingInputError("; ".join(problems))
    return warnings


class Checkpoints:
    """Head + optimizer + step under ``<run>/checkpoints`` (keep ``keep_checkpoints``)."""

    def __init__(self, run_dir: str, trainer: HeadTrainer, keep: int):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.ckpt = tf.train.Checkpoint(head=trainer.head, optimizer=trainer.optimizer, step=self.step)
        # CheckpointManager only reads the folder here; it is created by the first save.
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
                           resize_method=cfg.resize_method, contrast_stretch=cfg.eval_contrast_stretch,
                           overwrite=True)
    return path


def _resume_target(cfg, run_dir: str | None) -> tuple[str | None, str]:
    """The run ``--resume`` continues and a log note saying which; None = start a new run."""
    if run_dir is not None:
        return run_dir, f"resume: run {run_dir}"
    found = latest_run_dir(cfg)
    if found is None:
        base = os.path.join(os.path.expanduser(cfg.log_base_dir), cfg.name)
        return None, f"resume: no run under {base} has a checkpoint; starting a new run"
    return found, f"resume: newest run with a checkpoint is {found}"


def train(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
          max_steps: int | None = None, evaluate_each_epoch: bool = True) -> dict:
    """Train the head as the config says. Returns {'run_dir', 'global_step', 'last_watch', 'model'}.

    Everything that can fail on the user's input (paths, restore, data, feature cache) runs before the run
    directory is created, so a failed start leaves nothing behind.
    """
    if cfg.head_type == "mc_dropout":  # nothing to train: the head reuses the backbone's bottleneck
        from probface_tf.baselines.training import train_mc_dropout

        return train_mc_dropout(cfg, config_path, resume, run_dir, max_steps, evaluate_each_epoch)
    strategy = strategy_from_config(cfg)  # first: a cluster strategy must exist before other TensorFlow work
    notes = check_inputs(cfg)
    for note in notes:
        print(note, file=sys.stderr, flush=True)
    locked = preflight(cfg, run_dir, resume)  # every input checked and a continued run locked, before any work
    if resume:
        run_dir, note = _resume_target(cfg, run_dir)
        notes.append(note)
    configure_runtime(cfg)
    with strategy.scope():
        model = build_model(cfg)
    if cfg.restore_model:
        from probface_tf.train.restore import restore

        notes.append(restore(model, cfg.restore_model, cfg.restore_scopes, cfg.exclude_restore_scopes))
    trainer = HeadTrainer(model, cfg, learning_rate_at(0, cfg.learning_rate_schedule), strategy)
    global_step, checkpoints = 0, None
    if resume and run_dir is not None:
        checkpoints = Checkpoints(run_dir, trainer, cfg.keep_checkpoints)
        global_step = checkpoints.restore_latest()
        latest = checkpoints.manager.latest_checkpoint
        notes.append(f"resumed from checkpoint {latest} at step {global_step}" if latest
                     else f"no checkpoint in {run_dir}: starting at step 0")
        if is_chief(strategy):
            notes += [f"resume changes {k}: {old!r} -> {new!r}" for k, (old, new) in
                      record_resume(run_dir, cfg, global_step).items()]
    batches = _batches(cfg, trainer, global_step)
    chief = is_chief(strategy)
    if not chief:  # other workers of a cluster write nothing shared: their files go to a private folder
        run_dir, checkpoints, evaluate_each_epoch = worker_scratch_dir(strategy), None, False
        cfg = cfg.replace(export_saved_model=False)
    elif run_dir is None:
        run_dir = create_run_dir(cfg, config_path)
    else:
        ensure_run_dir(run_dir, config_path, cfg)
    if checkpoints is None:
        checkpoints = Checkpoints(run_dir, trainer, cfg.keep_checkpoints)
    if trainer.replicas > 1:
        notes.append(f"distribute_strategy {cfg.distribute_strategy!r}: {trainer.replicas} replicas")
    log = TrainingLog(run_dir)
    for note in notes:
        log.text(note, echo=not note.startswith("warning:"))  # warnings went to stderr already
    log.text(banner(cfg))
    total = cfg.num_epochs * cfg.epoch_size
    stop = min(total, max_steps) if max_steps is not None else total

    # Saves of the current state wait here until its losses are known finite (see the module docstring).
    pending: list = []

    def save_pending():
        if not pending:
            return
        bad = trainer.non_finite_variables()
        if bad:
            raise NonFiniteLossError(f"non-finite variables at global step {global_step}: {', '.join(bad[:5])}")
        for job in pending:
            job()
        pending.clear()

    if global_step == 0:
        pending.append(lambda: save_model(model, run_dir, cfg, 0))
    bar = _progress(global_step, stop)
    watch: dict = {}
    try:
        while global_step < stop:
            epoch, step = divmod(global_step, cfg.epoch_size)
            lr = learning_rate_at(global_step, cfg.learning_rate_schedule)
            trainer.set_learning_rate(lr)
            watch = trainer.step_batch(next(batches), global_step, before_update=save_pending)
            watch["lr"] = lr
            global_step += 1
            if step % cfg.summary_interval == 0:
                log.step(epoch, step, global_step, watch)
            epoch_end = global_step % cfg.epoch_size == 0
            if epoch_end:  # model and evaluation before the checkpoint: a crash between them redoes both
                pending.append(lambda gs=global_step: save_model(model, run_dir, cfg, gs))
                if evaluate_each_epoch:
                    pending.append(lambda gs=global_step: _evaluate_epoch(model, cfg, run_dir, log, gs))
            if global_step % cfg.checkpoint_interval == 0 or epoch_end or global_step == stop:
                pending.append(lambda gs=global_step: checkpoints.save(gs))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(a=f"{watch['a']:.4f}", mls=f"{watch.get('mls', float('nan')):.4f}")
        if pending:  # the last state: no next step checks it, so compute its losses on one more batch
            trainer.batch_losses(next(batches), global_step)
            save_pending()
    except NonFiniteLossError as exc:
        latest = checkpoints.manager.latest_checkpoint
        raise NonFiniteLossError(f"{exc}; training stopped, this state was not saved; latest checkpoint: "
                                 f"{latest or 'none'}") from None
    finally:
        if bar is not None:
            bar.close()
        if not chief:
            shutil.rmtree(run_dir, ignore_errors=True)
    unlock_run(locked)
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
