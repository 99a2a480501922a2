"""The one exception tree of cropseg.

Every error that cropseg raises on purpose derives from :class:`CropSegError`, and most also
derive from the matching built-in so that callers can catch either::

    CropSegError
    ├── InputError (ValueError)            bad user input in general
    │   ├── InputFileNotFoundError (FileNotFoundError)
    │   ├── InvalidRasterError             not a raster, wrong band count, no CRS, ...
    │   ├── InvalidVectorError             unreadable vector file, no CRS, no features
    │   ├── InvalidMetadataError           Planet metadata XML that cannot be used
    │   ├── NoOverlapError                 AOI / labels / image do not overlap
    │   └── LabelError                     empty labels, a single class, unknown attribute
    ├── ConfigError (ValueError)           unknown or bad configuration keys
    ├── ModelError                         not a cropseg model, tampered or incompatible
    └── OutputError (OSError)              an output cannot be written

Messages name the bad value and say how to fix it; the CLI prints them and exits with code 1.
"""

from __future__ import annotations


class CropSegError(Exception):
    """Root of every error cropseg raises on purpose."""


class InputError(CropSegError, ValueError):
    """Bad user input."""


class InputFileNotFoundError(InputError, FileNotFoundError):
    """An input file does not exist."""


class InvalidRasterError(InputError):
    """A raster that cropseg cannot use as it is."""


class InvalidVectorError(InputError):
    """A vector file that cropseg cannot use as it is."""


class InvalidMetadataError(InputError):
    """A Planet metadata XML that cannot be used."""


class NoOverlapError(InputError):
    """Two inputs that should overlap do not."""


class LabelError(InputError):
    """Ground truth that cannot train or evaluate a model."""


class ConfigError(CropSegError, ValueError):
    """A configuration key or value that cropseg does not accept."""


class ModelError(CropSegError):
    """A model directory that is not a valid cropseg model."""


class OutputError(CropSegError, OSError):
    """An output that cannot be written."""


class CropSegWarning(UserWarning):
    """Base class of cropseg's warnings."""
