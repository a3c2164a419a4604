"""Training of the baseline heads by the same loop as ProbFace's head (``probface_tf.train.loop``).

``head_type`` 'pcnet' and 'idq' train a :class:`~probface_tf.baselines.heads.ProbabilityHead` on the frozen,
restored backbone with :func:`baseline_loss`; 'mc_dropout' trains nothing: :func:`train_mc_dropout` builds the
model, restores the backbone, copies its bottleneck into the dropout head and saves the model.
"""
from __future__ import annotations

import tensorflow as tf

from probface_tf.baselines.losses import idq_loss, pc_loss
from probface_tf.losses import masked_mean, pair_masks


def _watch(labels, mu, p) -> dict:
    """face-uncertainty-pytorch's watch list as scalars: confidence c = 1 - p (mean, extremes) and the mean
    cosine of the positive pairs."""
    confidence = 1.0 - tf.reduce_mean(tf.cast(p, tf.float32), axis=1)
    unit = tf.math.l2_normalize(tf.cast(mu, tf.float32), axis=1)
    positive, _ = pair_masks(labels)
    return {"pconf": tf.reduce_mean(confidence), "pconf_max": tf.reduce_max(confidence),
            "pconf_min": tf.reduce_min(confidence),
            "cos": masked_mean(tf.matmul(unit, unit, transpose_b=True), positive)}


def idq_target_mean(labels, mu, s: float, m: float, target: str) -> tf.Tensor:
    """Mean IDQ target over the positive pairs (the original's ``t_soft`` watch)."""
    unit = tf.math.l2_normalize(tf.cast(mu, tf.float32), axis=1)
    cos = tf.matmul(unit, unit, transpose_b=True)
    t = tf.sigmoid(s * (cos - m)) if target == "soft" else tf.cast(cos > m, tf.float32)
    positive, _ = pair_masks(labels)
    return masked_mean(t, positive)


def baseline_loss(cfg, labels, mu, p, regu) -> tuple[tf.Tensor, dict]:
    """``(total, watch)`` of one PCNet or IDQ step: ``total = loss + regu`` (``regu`` = the head's weight
    decay, the original SGD's ``weight_decay``); the watch list has ``a`` (total), ``loss``, ``regu``,
    ``pconf``/``pconf_max``/``pconf_min``, ``cos`` and, for IDQ, ``t_soft``."""
    if cfg.head_type == "pcnet":
        loss = pc_loss(labels, mu, p, cfg.pc_loss_type)
    elif cfg.head_type == "idq":
        loss = idq_loss(labels, mu, p, cfg.idq_s, cfg.idq_m, cfg.idq_target)
    else:
        raise ValueError(f"head_type {cfg.head_type!r} has no training loss (expected 'pcnet' or 'idq')")
    total = loss + regu
    watch = {"a": total, "loss": loss, "regu": regu, **_watch(labels, mu, p)}
    if cfg.head_type == "idq":
        watch["t_soft"] = idq_target_mean(labels, mu, cfg.idq_s, cfg.idq_m, cfg.idq_target)
    return total, watch


def train_mc_dropout(cfg, config_path: str | None = None, resume: bool = False, run_dir: str | None = None,
                     max_steps: int | None = None, evaluate_each_epoch: bool = True) -> dict:
    """The 'training' of MC dropout: restore the backbone, copy its bottleneck into the dropout head, save
    ``model.keras`` and run the configured per-epoch evaluation once. ``resume``/``max_steps`` have nothing to
    act on (there are no steps) and are accepted for the common ``train`` signature."""
    from probface_tf.baselines.models import copy_bottleneck
    from probface_tf.models.probface import from_config
    from probface_tf.train.logs import TrainingLog, create_run_dir, ensure_run_dir, latest_run_dir
    from probface_tf.train.loop import _evaluate_epoch, configure_runtime, save_model

    configure_runtime(cfg)
    model = from_config(cfg, freeze_backbone=True)
    if run_dir is None:
        run_dir = (latest_run_dir(cfg) if resume else None) or create_run_dir(cfg, config_path)
    ensure_run_dir(run_dir, config_path, cfg)
    log = TrainingLog(run_dir)
    if not cfg.restore_model:
        log.text("warning: no restore_model: MC dropout runs on a randomly initialised backbone")
    else:
        from probface_tf.train.restore import restore

        log.text(restore(model, cfg.restore_model, cfg.restore_scopes, cfg.exclude_restore_scopes))
    copy_bottleneck(model)
    log.text(f"MC dropout: rate {cfg.mc_dropout_rate}, {cfg.mc_samples} passes over the bottleneck; "
             f"nothing to train")
    save_model(model, run_dir, cfg, 0)
    if evaluate_each_epoch:
        _evaluate_epoch(model, cfg, run_dir, log, 0)
    return {"run_dir": run_dir, "global_step": 0, "last_watch": {}, "model": model}
