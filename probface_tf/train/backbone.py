"""Stage 1: train a ResFace backbone with a margin softmax, optionally with the UniformFace term.

Unlike head training, every backbone variable learns and batch norm runs in training mode (batch statistics,
moving averages updated). One step: a shuffled batch (``probface_tf.data.shuffled``) goes through the backbone;
``mu`` is scored against the class centres by the head ``margin_loss`` names (ArcFace, CosFace, ScaleFace with
its per-image scale from a ``ScaleHead`` on the ``uncertainty_module_input`` end point, or the normalised
softmax); the loss is

    softmax cross-entropy + uniform_loss_weight * UniformFace(centres of the batch's classes) + regu

with ``regu = weight_decay * sum(||W||^2) / 2`` over the conv/dense kernels (slim's form); then one optimizer
update of backbone, centres and scale head. UniformFace is taken over the classes present in the batch, as the
paper's mini-batch form: its cost then does not grow with the number of identities.

Watch list (the original log line, sorted keys): ``loss`` (total), ``softmax``, ``acc`` (fraction of the batch
whose nearest centre is its own class), ``lr``, ``regu`` and ``uniform`` (unweighted) when weighted, and for
ScaleFace ``scale_mean`` / ``scale_min`` / ``scale_max``.

:class:`BackboneTask` runs it under the one training loop (``probface_tf.train.trainer``); the margin head is
the method ``margin_loss`` names in ``probface_tf.methods``. The run directory gets ``backbone.keras`` (the
backbone alone: ``restore_model`` for head training), for ScaleFace ``scale_head.keras`` (features of
``uncertainty_module_input`` -> scale, whose inverse is the uncertainty), ``checkpoints/`` (backbone, centres,
scale head, optimizer and step; resumable: the data order is a pure function of the step),
``training-log.txt`` and ``tensorboard/``. After each epoch the backbone's cosine 10-fold accuracy on the
configured ``.bin`` files is logged (with ScaleFace also the risk table of the method's uncertainty read-out).
"""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from probface_tf.data.dataset import dataset_from_config
from probface_tf.data.sampler import DecodeStats, iterate_batches
from probface_tf.data.shuffled import make_shuffled_dataset
from probface_tf.methods import BACKBONE_STAGE, get_method
from probface_tf.models.heads import BACKBONE_FILE, SCALE_HEAD_FILE, ScaleHead, softmax_cross_entropy, \
    uniform_loss
from probface_tf.models.probface import build_probface
from probface_tf.models.resface import backbone_spec, build_resface
from probface_tf import atomic
from probface_tf.train.checks import finite_values
from probface_tf.train.distribute import distribute_batch, first_replica, gather, replica_sum, run
from probface_tf.train.epoch_eval import evaluate_training_bins, training_bin_paths
from probface_tf.train.optimizer import make_optimizer
from probface_tf.train.restore import restore
from probface_tf.train.schedule import learning_rate_for
from probface_tf.train.trainer import Trainer, TrainingTask


class BackboneConfigError(ValueError):
    """The recipe cannot train a backbone as written; the message names the key."""


def build_backbone(cfg) -> keras.Model:
    spec = backbone_spec(cfg.embedding_network, cfg.backbone_filters, cfg.backbone_blocks)
    return build_resface(spec, cfg.image_size, cfg.embedding_size, cfg.keep_prob, cfg.channels)


def _kernels(layers) -> list:
    """Conv/dense kernels: what weight decay applies to (not BN, not the normalised class centres)."""
    return [layer.kernel for layer in layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


class BackboneTrainer:
    """Backbone + margin head (+ ScaleFace scale head), optimizer and the compiled training step."""

    def __init__(self, cfg, num_classes: int, learning_rate: float, strategy: tf.distribute.Strategy | None = None):
        self.cfg = cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = int(self.strategy.num_replicas_in_sync)
        with self.strategy.scope():
            self.backbone = build_backbone(cfg)
            self.method = get_method(cfg.margin_loss, BACKBONE_STAGE)
            self.head = self.method.build_head(num_classes, float(cfg.margin_s), float(cfg.margin_m))
            self.head.build((None, cfg.embedding_size))
            self.scale_head = self._build_scale_head() if self.method.scale_head else None
            extra = [self.scale_head] if self.scale_head is not None else []
            self.variables = (self.backbone.trainable_variables + self.head.trainable_variables
                              + [v for layer in extra for v in layer.trainable_variables])
            scale_layers = [self.scale_head.hidden, self.scale_head.out] if extra else []
            self.decayed = _kernels(self.backbone.layers + [layer for layer in scale_layers if layer is not None])
            self.optimizer = make_optimizer(cfg, learning_rate)
            self.optimizer.build(self.variables)
        self.set_batch_norm_sync(self.replicas > 1 and cfg.sync_batch_norm)
        self._gradients = tf.function(lambda x, y: run(self.strategy, self._compute, (x, y)), reduce_retracing=True)
        self._apply = tf.function(lambda g: run(self.strategy, self._apply_gradients, (g,)), reduce_retracing=True)

    def set_batch_norm_sync(self, synchronized: bool) -> None:
        """Batch statistics of the global batch across replicas (only ever on with several replicas: on one
        device Keras' synchronised form would change the single-device numbers)."""
        owners = [self.backbone] + ([self.scale_head] if self.scale_head is not None else [])
        for owner in owners:
            for layer in owner._flatten_layers():
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.synchronized = synchronized

    def _build_scale_head(self) -> ScaleHead:
        end_point = self.cfg.uncertainty_module_input
        if end_point not in self.backbone.output:
            raise BackboneConfigError(f"config key 'uncertainty_module_input' = {end_point!r} (the ScaleFace scale "
                                      f"head's input) is not a backbone end point; choose one of "
                                      f"{sorted(self.backbone.output)}")
        # The scale is bounded by margin_s, the fixed scale ArcFace would use.
        head = ScaleHead(coefficient=float(self.cfg.margin_s), name="ScaleHead")
        head.build(tuple(self.backbone.output[end_point].shape))
        return head

    def losses(self, images, labels, training: bool = True):
        """(loss, watch dict) of this replica's slice of the batch; BN statistics update when ``training``.

        ``loss`` is this replica's share of the global-batch loss: the per-image terms are averaged over the global
        batch (local mean / replicas) and the batch-level terms (UniformFace over the gathered labels, weight
        decay) split evenly, so the optimizer's sum over replicas is the single-device gradient. The watch values
        are of the whole global batch, the same on every replica."""
        share = 1.0 / self.replicas
        end_points = self.backbone(images, training=training)
        mu = end_points["mu"]
        watch = {}
        if self.scale_head is not None:
            scale = self.scale_head(end_points[self.cfg.uncertainty_module_input], training=training)
            logits = self.head(mu, labels, scale)
            every_scale = gather(tf.stop_gradient(scale))
            watch.update(scale_mean=tf.reduce_mean(every_scale), scale_min=tf.reduce_min(every_scale),
                         scale_max=tf.reduce_max(every_scale))
        else:
            logits = self.head(mu, labels)
        softmax = softmax_cross_entropy(labels, logits)
        loss = share * softmax
        batch_terms = 0.0
        if self.cfg.uniform_loss_weight > 0:
            uniform = uniform_loss(self.head.normalized_centers(), gather(labels))
            batch_terms += self.cfg.uniform_loss_weight * uniform
            watch["uniform"] = uniform
        if self.cfg.weight_decay > 0:
            regu = self.cfg.weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(w, tf.float32)) for w in self.decayed])
            batch_terms += regu
            watch["regu"] = regu
        loss += share * batch_terms
        nearest = tf.argmax(self.head.cosine(mu), axis=1, output_type=tf.int32)
        acc = tf.reduce_mean(tf.cast(tf.equal(nearest, tf.reshape(tf.cast(labels, tf.int32), [-1])), tf.float32))
        softmax, acc = (replica_sum(share * tf.stop_gradient(t)) for t in (softmax, acc))
        watch.update(loss=softmax + tf.stop_gradient(batch_terms), softmax=softmax, acc=acc)
        return loss, watch

    def _compute(self, images, labels):
        with tf.GradientTape() as tape:
            total, watch = self.losses(images, labels, training=True)
            scaled = self.optimizer.scale_loss(total)
        return watch, tape.gradient(scaled, self.variables)

    def _apply_gradients(self, grads):
        self.optimizer.apply_gradients(zip(grads, self.variables))

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.learning_rate = lr

    def step(self, images, labels, global_step: int) -> dict:
        """One update; raises NonFiniteLossError (before the optimizer touches the weights) on NaN/Inf."""
        inputs = (images, labels)
        if self.replicas > 1:
            inputs = distribute_batch(self.strategy, inputs)
        watch, grads = self._gradients(*inputs)
        values = finite_values(first_replica(self.strategy, watch), global_step)
        self._apply(grads)
        return values

    def state_variables(self) -> list:
        """What is saved and must be finite: backbone, centres, scale head and optimizer variables."""
        owners = [self.backbone, self.head] + ([self.scale_head] if self.scale_head is not None else [])
        return [v for owner in owners for v in owner.weights] + list(self.optimizer.variables)

    def scale_model(self) -> keras.Model:
        """The scale head alone as a model: features of ``uncertainty_module_input`` -> scale [N, 1]."""
        shape = tuple(self.backbone.output[self.cfg.uncertainty_module_input].shape[1:])
        features = keras.Input(shape, name="features")
        return keras.Model(features, self.scale_head(features), name="ScaleFaceScale")


def save_models(trainer: BackboneTrainer, run_dir: str) -> list[str]:
    """``backbone.keras`` and, for ScaleFace, ``scale_head.keras``. Saved with batch norm unsynchronised: the
    synchronisation belongs to this run's strategy, not to the model."""
    synchronized = trainer.replicas > 1 and trainer.cfg.sync_batch_norm
    trainer.set_batch_norm_sync(False)
    try:
        paths = [atomic.save_model(trainer.backbone, os.path.join(run_dir, BACKBONE_FILE))]
        if trainer.scale_head is not None:
            paths.append(atomic.save_model(trainer.scale_model(), os.path.join(run_dir, SCALE_HEAD_FILE)))
    finally:
        trainer.set_batch_norm_sync(synchronized)
    return paths


def _num_classes(cfg, data) -> int:
    if cfg.num_classes is None:
        return data.num_classes
    if cfg.num_classes < data.num_classes:
        raise BackboneConfigError(f"config key 'num_classes' = {cfg.num_classes} is smaller than the "
                                  f"{data.num_classes} identities of {cfg.train_dataset_path}")
    return cfg.num_classes


def _restore_initial_weights(trainer: BackboneTrainer, cfg) -> str:
    """Start from ``restore_model`` (fine-tuning): any source ``probface_tf.train.restore`` accepts."""
    holder = build_probface(backbone=trainer.backbone, freeze_backbone=False,
                            uncertainty_module_input=cfg.uncertainty_module_input)
    exclude = list(cfg.exclude_restore_scopes or []) + ["UncertaintyModule"]
    message = restore(holder, cfg.restore_model, cfg.restore_scopes, exclude)
    trainer.backbone.trainable = True
    return message


class BackboneTask(TrainingTask):
    """Stage 1 for the :class:`~probface_tf.train.trainer.Trainer`: backbone + margin head, batch norm in
    training mode (so each step checks its losses before its update and saves right after it)."""

    verify_before_save = False

    def build(self) -> list[str]:
        cfg, notes = self.cfg, []
        self.data = dataset_from_config(cfg)
        self.num_classes = _num_classes(cfg, self.data)
        self.trainer = BackboneTrainer(cfg, self.num_classes, learning_rate_for(0, cfg),
                                       self.strategy)
        self.model = self.trainer.backbone
        if self.trainer.replicas > 1:
            notes.append(f"distribute_strategy {cfg.distribute_strategy!r}: {self.trainer.replicas} replicas, "
                         f"batch norm {'synchronised' if cfg.sync_batch_norm else 'per replica'}")
        if cfg.restore_model:
            notes.append(_restore_initial_weights(self.trainer, cfg))
        return notes

    def describe(self) -> list[str]:
        return [f"backbone: {len(self.data)} images of {self.data.num_classes} identities, {self.cfg.margin_loss} "
                f"head over {self.num_classes} classes"]

    def checkpoint_parts(self) -> dict:
        t = self.trainer
        parts = dict(backbone=t.backbone, head=t.head, optimizer=t.optimizer)
        if t.scale_head is not None:
            parts["scale_head"] = t.scale_head
        return parts

    def batches(self, start_step: int):
        self.stats = DecodeStats(self.cfg.epoch_size)
        return iterate_batches(make_shuffled_dataset(self.data, self.cfg, start_step=start_step, stats=self.stats))

    def set_learning_rate(self, lr: float) -> None:
        self.trainer.set_learning_rate(lr)

    def step(self, batch, global_step: int, before_update=None) -> dict:
        images, labels = batch
        return self.trainer.step(images, labels, global_step)

    def state_variables(self) -> list:
        return self.trainer.state_variables()

    def save(self, run_dir: str, global_step: int, publish: bool) -> None:
        save_models(self.trainer, run_dir)

    def epoch_notes(self, global_step: int) -> list[str]:
        skipped = self.stats.end_epoch(global_step // self.cfg.epoch_size)
        if not skipped:
            return []
        return [f"{skipped} unreadable image(s) skipped this epoch ({len(self.stats.bad_files)} distinct files)"]

    def evaluate(self, global_step: int):
        """The cosine 10-fold accuracy line and, for a margin with an uncertainty read-out (ScaleFace), the
        original risk lines with that uncertainty."""
        if training_bin_paths(self.cfg):
            yield from evaluate_training_bins(evaluation_model(self.trainer), self.cfg, cosine_line=True)

    def postfix(self, watch: dict) -> dict:
        return dict(loss=f"{watch['loss']:.4f}", acc=f"{watch['acc']:.3f}")


def train(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
          max_steps: int | None = None) -> dict:
    """Train a backbone as the config says. Returns {'run_dir', 'global_step', 'last_watch', 'model'} (the
    backbone)."""
    return Trainer(BackboneTask, cfg, config_path, resume, run_dir, max_steps).run()


def evaluation_model(trainer: BackboneTrainer) -> keras.Model:
    """In-memory model for the evaluator: {mu} or, for ScaleFace, {mu, sigma_sq = 1 / scale}."""
    images = keras.Input(trainer.backbone.input.shape[1:], name="images")
    end_points = trainer.backbone(images)
    outputs = {"mu": end_points["mu"]}
    if trainer.scale_head is not None:
        scale = trainer.scale_head(end_points[trainer.cfg.uncertainty_module_input])
        read_out = trainer.method.uncertainty
        outputs["sigma_sq"] = keras.layers.Lambda(lambda s: read_out({"scale": s}), name="sigma_sq")(scale)
    return keras.Model(images, outputs, name="BackboneEval")
