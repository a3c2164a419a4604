"""What training checks: the paths the recipe names before anything is built (:func:`check_inputs`; the deeper
checks and the run lock are ``probface_tf.train.preflight``), the runtime it sets up, and the finiteness of every
step's losses and of every state before it is saved."""
from __future__ import annotations

import math
import os

import keras
import tensorflow as tf

from probface_tf.data.ensure import ensure_synthetic


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the step and the loss terms."""


class TrainingInputError(ValueError):
    """A config key names a file or folder that does not exist; the message names the key and the path."""


def check_inputs(cfg) -> list[str]:
    """Check the paths the recipe names before anything is built or written; returns warnings.

    Missing ``train_dataset_path`` / ``restore_model`` / ``test_bin_paths`` entries are one error naming every
    such key. A ``test_targets`` file missing from ``test_data_dir_mx`` is a warning: the original evaluates only
    the targets it finds, and a missing evaluation file should not refuse hours of training.
    """
    ensure_synthetic(cfg)  # a synthetic recipe renders its data (train folder, .bin) on first use
    problems, warnings = [], []
    if not cfg.train_dataset_path:
        problems.append("config key 'train_dataset_path' is not set")
    else:
        roots = cfg.train_dataset_path if isinstance(cfg.train_dataset_path, (list, tuple)) else [cfg.train_dataset_path]
        problems += [f"config key 'train_dataset_path': not found: {root}" for root in roots
                     if not os.path.exists(os.path.expanduser(root))]
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


def configure_runtime(cfg) -> None:
    """Seeds, determinism and the mixed-precision policy, before any layer is built."""
    keras.utils.set_random_seed(cfg.base_random_seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy(cfg.mixed_precision)


def finite_values(watch: dict, global_step: int) -> dict:
    """The watch list as floats; NonFiniteLossError naming every NaN/Inf term."""
    values = {k: float(v) for k, v in watch.items()}
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise NonFiniteLossError(f"non-finite loss at global step {global_step}: "
                                 + ", ".join(f"{k}={values[k]}" for k in bad))
    return values


def non_finite_variables(variables) -> list[str]:
    """Paths of the float variables holding NaN/Inf (empty when the state is finite)."""
    return [v.path for v in variables
            if keras.backend.is_float_dtype(v.dtype) and not bool(tf.reduce_all(tf.math.is_finite(v)))]
