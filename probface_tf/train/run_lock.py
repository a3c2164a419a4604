"""One process per run directory: ``<run>/run.lock`` held with an exclusive ``flock``.

The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a stale lock file
never blocks a later ``--resume``; a second process resuming the same run while the first lives is refused
with the holder's pid. A process may take the lock of a run it already holds (train() called again).
"""
from __future__ import annotations

import fcntl
import os
import socket

LOCK_NAME = "run.lock"
_held: dict[str, int] = {}  # run dir -> open lock file descriptor of this process


class RunLockedError(RuntimeError):
    """Another live process trains in this run directory."""


def lock_run(run_dir: str) -> str:
    """Take the run's lock (creating the folder if needed) or raise ``RunLockedError``; returns the lock path."""
    key = os.path.realpath(run_dir)
    path = os.path.join(run_dir, LOCK_NAME)
    if key in _held:
        return path
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise RunLockedError(f"{run_dir} is in use by another training process ({holder}); wait for it to finish "
                             f"or stop it before resuming this run") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    _held[key] = fd
    return path


def unlock_run(run_dir: str | None) -> None:
    """Release this process's lock of ``run_dir`` (nothing if it holds none, or for None)."""
    if run_dir is None:
        return
    fd = _held.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
