"""The training state on disk: one checkpoint manager for every task, and the atomic save of a Keras model.

TensorFlow writes a checkpoint's files before it updates the ``checkpoint`` state file (atomically, by rename),
so a crash mid-save leaves the previous checkpoint as the latest.
"""
from __future__ import annotations

import os

import tensorflow as tf

CHECKPOINT_DIR = "checkpoints"


class Checkpoints:
    """``parts`` (name -> trackable: model layers, optimizer) plus the global step, under ``<run>/checkpoints``
    (the newest ``keep`` kept). Restore from any run directory; save into the one given to :meth:`attach`."""

    def __init__(self, parts: dict, keep: int):
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.ckpt = tf.train.Checkpoint(step=self.step, **parts)
        self.keep, self.manager = keep, None

    def restore_latest(self, run_dir: str) -> tuple[int, str | None]:
        """Restore the newest checkpoint of ``run_dir``; returns (its global step, its path) or (0, None)."""
        latest = tf.train.latest_checkpoint(os.path.join(run_dir, CHECKPOINT_DIR))
        if latest:
            self.ckpt.restore(latest).assert_existing_objects_matched()
        return int(self.step.numpy()), latest

    def attach(self, run_dir: str) -> None:
        # CheckpointManager only reads the folder here; it is created by the first save.
        self.manager = tf.train.CheckpointManager(self.ckpt, os.path.join(run_dir, CHECKPOINT_DIR),
                                                  max_to_keep=self.keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint if self.manager is not None else None

    def save(self, global_step: int) -> str:
        self.step.assign(global_step)
        return self.manager.save(checkpoint_number=global_step)


