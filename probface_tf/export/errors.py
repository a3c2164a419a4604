"""The errors of the export package (a bad model / option / path; a bad input to an exported model) and the
import of optional runtimes that names the extra to install."""
import importlib


class ExportError(ValueError):
    """A model, option or export path is unusable (or cannot be written); the message names it."""


class ExportInputError(ValueError):
    """An input given to an exported signature has the wrong dtype or shape; the message names the expected."""


def require(module: str, fmt: str):
    """Import an optional runtime of the ``export`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"--format {fmt} needs the '{module}' package: pip install -e \".[export]\" ({exc})") \
            from exc
