"""Atomic publishing: a model appears complete, in one rename, or not at all.

Directory formats (the SavedModel) are versioned the TF Serving way: ``EXPORT_BASE/<version>/`` appears in one
``os.rename`` of a finished, fsynced sibling ``.tmp-<version>-<pid>`` directory, so Serving (which only loads
numeric directories) never sees half a model. Single-file formats (``.tflite``, ``.onnx``, ``.pb``) are
written to a sibling ``.tmp-<name>-<pid>`` file, fsynced and renamed onto the target. On any failure (an
exception, a full disk, Ctrl-C) the temporary is removed and the target is untouched.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Callable

import numpy as np

from probface_tf.export.errors import ExportError

_VERSION_DIR = re.compile(r"^\d+$")


def list_versions(export_base: str) -> list[int]:
    """Numeric version directories under ``export_base`` (complete or not), ascending."""
    if not os.path.isdir(export_base):
        return []
    return sorted(int(n) for n in os.listdir(export_base)
                  if _VERSION_DIR.match(n) and os.path.isdir(os.path.join(export_base, n)))


def next_version(export_base: str) -> int:
    """The version a new export gets: one more than the largest existing, or 1."""
    versions = list_versions(export_base)
    return versions[-1] + 1 if versions else 1


def fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """Flush every file and directory, so the rename publishes data that is already on disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync(os.path.join(dirpath, name))
        fsync(dirpath)


def publish(tmp: str, export_base: str, version: int, overwrite: bool) -> str:
    """Rename the finished directory ``tmp`` to ``export_base/<version>``; returns that path."""
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        if not overwrite:
            raise ExportError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
        old = os.path.join(export_base, f".old-{version}-{os.getpid()}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)  # put the previous model back rather than lose it
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp, final)  # fails on a non-empty target: another export took this version meanwhile
        except OSError as exc:
            raise ExportError(f"{final} appeared while exporting ({exc}); nothing was overwritten") from exc
    fsync(export_base)
    return final


def check_version(version) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, np.integer))
                                or version < 1):
        raise ExportError(f"version must be a positive integer, got {version!r}")


def check_export_base(export_base: str) -> None:
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise ExportError(f"export base {export_base} exists and is not a directory")


def publish_version(write: Callable[[str], None], export_base: str, version: int | None = None,
                    overwrite: bool = False) -> str:
    """``write(directory)`` into a temporary sibling, then publish it as ``export_base/<version>/``.

    ``version`` defaults to ``next_version(export_base)``; an existing version is an error unless ``overwrite``.
    """
    check_version(version)
    check_export_base(export_base)
    os.makedirs(export_base, exist_ok=True)
    version = next_version(export_base) if version is None else int(version)
    final = os.path.join(export_base, str(version))
    if os.path.exists(final) and not overwrite:
        raise ExportError(f"{final} already exists (pass overwrite=True / --overwrite to replace it)")
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        fsync_tree(tmp)
        return publish(tmp, export_base, version, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_file(data: bytes, path: str, overwrite: bool = False) -> str:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename); returns ``path``."""
    if os.path.isdir(path):
        raise ExportError(f"{path} is a directory; single-file formats need a file name")
    if os.path.exists(path) and not overwrite:
        raise ExportError(f"{path} already exists (pass overwrite=True / --overwrite to replace it)")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
