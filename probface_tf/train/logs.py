"""Run directories and the original training log: stdout, ``training-log.txt`` and TensorBoard scalars."""
from __future__ import annotations

import os
import shutil
import sys
import time

from tqdm import tqdm

from probface_tf.config import overrides_text


def create_run_dir(cfg, config_path: str | None = None) -> str:
    """``log_base_dir/name/YYYYmmdd-HHMMSS/`` with the config copied in as ``config.py`` (as the original)."""
    base = os.path.join(os.path.expanduser(cfg.log_base_dir), cfg.name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(base, stamp)
    suffix = 1
    while os.path.exists(run_dir):  # two runs started in the same second
        run_dir = os.path.join(base, f"{stamp}-{suffix}")
        suffix += 1
    os.makedirs(run_dir)
    copy_config(run_dir, config_path, cfg)
    return run_dir


def ensure_run_dir(run_dir: str, config_path: str | None, cfg=None) -> str:
    """An explicit run directory (``--run_dir``): created with its ``config.py`` when new, kept as is otherwise."""
    if not os.path.isdir(run_dir):
        os.makedirs(run_dir)
        copy_config(run_dir, config_path, cfg)
    return run_dir


def copy_config(run_dir: str, config_path: str | None, cfg=None) -> None:
    """The recipe as ``<run>/config.py``, with this run's ``--set`` overrides appended so that the copy alone
    reproduces the run."""
    if not config_path:
        return
    target = os.path.join(run_dir, "config.py")
    shutil.copyfile(config_path, target)
    extra = overrides_text(cfg) if cfg is not None else ""
    if extra:
        with open(target, "a", encoding="utf-8") as f:
            f.write(extra)


def latest_run_dir(cfg) -> str | None:
    """The newest run of ``cfg.name`` that holds a checkpoint (``checkpoints/checkpoint``), or None.

    Runs are ordered by their timestamp names; one that stopped before its first checkpoint (a failed start)
    has nothing to resume and is skipped.
    """
    base = os.path.join(os.path.expanduser(cfg.log_base_dir), cfg.name)
    if not os.path.isdir(base):
        return None
    for name in sorted(os.listdir(base), reverse=True):
        if os.path.isfile(os.path.join(base, name, "checkpoints", "checkpoint")):
            return os.path.join(base, name)
    return None


def banner(cfg) -> str:
    return "\nStart Training\nname: {}\n# epochs: {}\nepoch_size: {}\nbatch_size: {}\n".format(
        cfg.name, cfg.num_epochs, cfg.epoch_size, cfg.batch_format["size"])


def format_line(epoch: int, step: int, duration: float, watch: dict) -> str:
    """The original ``display_info`` line: 1-based epoch and step, then every watched value by sorted key."""
    line = "[%d][%d] time: %2.2f" % (epoch + 1, step + 1, duration)
    return line + "".join(" %s %2.4f" % (k, float(watch[k])) for k in sorted(watch))


def interactive() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


def progress(start: int, stop: int):
    """A tqdm bar over the global steps on a terminal; None otherwise (pipes, CI)."""
    return tqdm(total=stop, initial=start, unit="step", dynamic_ncols=True) if interactive() else None


class TrainingLog:
    """Writes log lines to stdout and ``training-log.txt``, scalars to TensorBoard."""

    def __init__(self, run_dir: str):
        import tensorflow as tf

        self.path = os.path.join(run_dir, "training-log.txt")
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
        self.last_time = time.time()

    def text(self, text: str, echo: bool = True) -> None:
        if echo:
            print(text, flush=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def step(self, epoch: int, step: int, global_step: int, watch: dict) -> str:
        import tensorflow as tf

        now = time.time()
        line = format_line(epoch, step, now - self.last_time, watch)
        self.last_time = now
        self.text(line)
        with self.writer.as_default(step=global_step):
            for key, value in watch.items():
                tf.summary.scalar(key, float(value))
        self.writer.flush()
        return line

    def scalars(self, values: dict, global_step: int, prefix: str = "") -> None:
        import tensorflow as tf

        with self.writer.as_default(step=global_step):
            for key, value in values.items():
                tf.summary.scalar(prefix + key, float(value))
        self.writer.flush()
