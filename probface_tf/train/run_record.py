"""What a resumed run changed, appended to the run's ``config.py`` so that the copy stays the truth.

A ``--resume`` with another schedule, dataset or any other key trains the rest of the run differently from its
start; the run's ``config.py`` gets the changed keys as assignments (the file then loads as the configuration
that continues) with the old value and the step they took effect at in a comment.
"""
from __future__ import annotations

import os
import time

from probface_tf.config import ConfigError, load_config


def changed_keys(old, new) -> dict:
    """{key: (old value, new value)} for every key whose value differs (keys only one side has included)."""
    a, b = _values(old), _values(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _values(cfg) -> dict:
    return {k: v for k, v in vars(cfg).items() if not k.startswith("_")}


def record_resume(run_dir: str, cfg, global_step: int) -> dict:
    """Append the keys ``cfg`` changes against ``<run_dir>/config.py`` to that file; returns them.

    A run without a ``config.py`` (started from a dict) has nothing to compare against and is left alone."""
    path = os.path.join(run_dir, "config.py")
    if not os.path.isfile(path):
        return {}
    try:
        recorded = load_config(path)
    except ConfigError:  # written by an older version: nothing reliable to compare against
        return {}
    changes = changed_keys(recorded, cfg)
    if changes:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        lines = [f"\n# --resume at global step {global_step} ({stamp}) changed:\n"]
        lines += [f"{k} = {new!r}  # was {old!r}\n" for k, (old, new) in changes.items()]
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
    return changes
