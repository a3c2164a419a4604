"""Remove only files a tool wrote itself: a folder holding anything else is refused before anything is removed."""
from __future__ import annotations

import os

from probface_tf.data.errors import DataError


class ForeignFilesError(DataError):
    """A folder to clear holds files that are not in the writer's list of its own outputs."""


def foreign_files(root: str, owned) -> list[str]:
    """Files under ``root`` (relative, '/'-separated) that are not in ``owned`` (nor an owned name + '.tmp')."""
    owned = set(owned)
    owned_dirs = _parents(owned)
    foreign = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        if rel_folder != "." and rel_folder not in owned_dirs:
            foreign.append(rel_folder + "/")
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if rel not in owned and not (rel.endswith(".tmp") and rel[:-4] in owned):
                foreign.append(rel)
        # A symlinked folder is not walked into: removing through it would reach outside root.
        for name in [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            dirs.remove(name)
            foreign.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return foreign


def _parents(paths) -> set[str]:
    return {"/".join(p.split("/")[:k]) for p in paths for k in range(1, p.count("/") + 1)}


def remove_owned(root: str, owned, what: str, error: type = ForeignFilesError) -> None:
    """Delete the ``owned`` files under ``root`` and the folders they leave empty; if ``root`` holds anything
    else, raise ``error`` (a ``DataError``) naming it and delete nothing."""
    foreign = foreign_files(root, owned)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise error(f"{root} holds files that {what} did not write ({shown}); nothing was removed: "
                                "choose an empty or new folder, or move those files out")
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            os.remove(os.path.join(folder, name))
        if folder != root and not os.listdir(folder):
            os.rmdir(folder)
