"""Every input of a training run checked before its first step, so that no hour of training is lost to a bad
evaluation ``.bin``, restore source or output location found at the first epoch end.

``preflight(cfg, run_dir, resume)`` checks, in order, and raises one ``PreflightError`` naming the config key,
the path and what is wrong:

* where the run writes: ``log_base_dir``, ``log_base_dir/name`` and ``--run_dir`` are folders (or can be
  created), not files;
* the training set opens (folder, list file or RecordIO) and holds at least one image;
* every evaluation ``.bin`` (``test_bin_paths`` and the ``test_targets`` found in ``test_data_dir_mx``) is a
  safe, consistent pickle whose every image decodes;
* ``restore_model`` can be read: a Keras archive, or a checkpoint whose index lists its variables;
* and, when an existing run folder is continued, takes that run's lock (``run_lock``), so two ``--resume`` of one run
  cannot race.
"""
from __future__ import annotations

import os
import zipfile

import tensorflow as tf

from probface_tf.convert import CheckpointError, find_checkpoint
from probface_tf.data.binfile import bin_summary
from probface_tf.data.dataset import open_dataset
from probface_tf.data.errors import DataError
from probface_tf.train.epoch_eval import training_bin_paths
from probface_tf.train.logs import latest_run_dir
from probface_tf.train.run_lock import lock_run


class PreflightError(ValueError):
    """An input of the run is unusable; the message names the config key (or flag) and the path."""


def check_output_location(cfg, run_dir: str | None) -> None:
    """The run's folders, and every existing parent of them, are folders."""
    base = os.path.expanduser(cfg.log_base_dir)
    for label, path in (("config key 'log_base_dir'", base), ("log_base_dir/name", os.path.join(base, cfg.name)),
                        ("--run_dir", run_dir)):
        if path is None:
            continue
        probe = os.path.abspath(path)
        while probe and not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if probe and not os.path.isdir(probe):
            raise PreflightError(f"{label}: {path} cannot be a run folder: {probe} is a file")


def check_dataset(cfg) -> None:
    if not cfg.train_dataset_path:
        return
    try:
        data = open_dataset(os.path.expanduser(cfg.train_dataset_path), max_identities=None)
    except DataError as exc:
        raise PreflightError(f"config key 'train_dataset_path': {exc}") from None
    if len(data) == 0:
        raise PreflightError(f"config key 'train_dataset_path': {cfg.train_dataset_path} holds no image")


def check_bins(cfg) -> None:
    """Each evaluation .bin is read and every image decoded, as the epoch-end evaluation will."""
    for path in training_bin_paths(cfg):
        key = "test_bin_paths" if path in (cfg.test_bin_paths or ()) else "test_data_dir_mx"
        try:
            info = bin_summary(os.path.expanduser(path), decode=True)
        except DataError as exc:
            raise PreflightError(f"config key '{key}': {exc}") from None
        if info["unreadable"]:
            raise PreflightError(f"config key '{key}': {path}: {info['unreadable']} image(s) cannot be decoded, "
                                 f"e.g. {info['unreadable_examples'][0]}")
        if info["pairs"] == 0:
            raise PreflightError(f"config key '{key}': {path} holds no pair")


def check_restore_model(cfg) -> None:
    """The restore source is readable (weights are matched to the model later, before any step)."""
    if not cfg.restore_model:
        return
    path = os.path.expanduser(cfg.restore_model)
    keras_files = [path] if path.endswith(".keras") else [
        os.path.join(path, n) for n in ("model.keras", "backbone.keras") if os.path.isfile(os.path.join(path, n))]
    try:
        if keras_files:
            if not zipfile.is_zipfile(keras_files[0]):
                raise CheckpointError(f"{keras_files[0]} is not a Keras archive (missing or truncated)")
            return
        prefix = find_checkpoint(path)
        if not tf.train.load_checkpoint(prefix).get_variable_to_shape_map():
            raise CheckpointError(f"checkpoint {prefix} holds no variable")
    except (CheckpointError, tf.errors.OpError) as exc:
        raise PreflightError(f"config key 'restore_model': {getattr(exc, 'message', exc)}") from None


def preflight(cfg, run_dir: str | None = None, resume: bool = False) -> str | None:
    """Check every input (see the module docstring); returns the locked run folder, or None for a new run."""
    check_output_location(cfg, run_dir)
    check_dataset(cfg)
    check_bins(cfg)
    check_restore_model(cfg)
    target = run_dir or (latest_run_dir(cfg) if resume else None)
    if target is None or not os.path.isdir(target):  # a new run: nobody else can be in it yet
        return None
    lock_run(target)
    return target
