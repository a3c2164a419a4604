"""The two errors of the export package: a bad model / option / path, and a bad input to an exported model."""


class ExportError(ValueError):
    """A model, option or export path is unusable (or cannot be written); the message names it."""


class ExportInputError(ValueError):
    """An input given to an exported signature has the wrong dtype or shape; the message names the expected."""
