"""Atomic file writes: every output is written under a temporary sibling name, flushed to disk and renamed over
its final name, so a full disk, a crash or a kill leaves the previous file (or none), never a truncated one."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """``open(path, mode)`` for writing, made atomic (text modes are UTF-8)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_model(model, path: str) -> str:
    """``model.save(path)`` made atomic; the temporary name keeps ``.keras`` because Keras insists on it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = "%s.%d.tmp.keras" % (path[: -len(".keras")] if path.endswith(".keras") else path, os.getpid())
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
