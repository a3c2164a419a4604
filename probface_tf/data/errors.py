"""Errors raised by the data package.

All are ``ValueError`` subclasses whose message names the offending file, key, op or shape, so that bad input
is reported where it is found instead of as a failure deep inside TensorFlow.
"""


class DataError(ValueError):
    """Base class of every data-package error."""


class PreprocessError(DataError):
    """A preprocessing op list, op argument or image tensor shape is invalid."""


class DatasetFormatError(DataError):
    """A dataset (folder, list file, RecordIO, .bin) is malformed, inconsistent or empty."""


class UnreadableImageError(DataError):
    """One image could not be read or decoded; the message names its file (and record offset)."""


class UnsafePickleError(DataError):
    """A .bin file asks the unpickler for something a verification file never contains."""
