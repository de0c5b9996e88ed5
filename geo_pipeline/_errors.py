"""The one exception hierarchy of geo_pipeline.

Every error the pipeline raises on purpose derives from :class:`GeoPipelineError`
and, where one fits, from the matching builtin, so callers may catch either.
The CLI prints these cleanly (no traceback) and exits with a non-zero code.
"""

from __future__ import annotations

__all__ = [
    "GeoPipelineError",
    "InputError",
    "CRSError",
    "GeometryError",
    "UnknownCodeError",
    "ConfigError",
    "ChecksumError",
    "MissingInputError",
    "OutputExistsError",
    "StaleInputError",
    "BusyError",
    "StorageError",
    "DataQualityWarning",
]


class GeoPipelineError(Exception):
    """Root of every error raised on purpose by geo_pipeline."""

    exit_code: int = 1


class InputError(GeoPipelineError, ValueError):
    """Input data is not what a stage expects (missing columns, bad values, ...)."""

    exit_code = 2


class CRSError(InputError):
    """A layer has no CRS, the wrong CRS, or two layers' CRSs disagree."""


class GeometryError(InputError):
    """Geometries are missing, empty, invalid or of the wrong type."""


class UnknownCodeError(InputError, KeyError):
    """An administrative code is not known to the boundary or census tables."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(GeoPipelineError, ValueError):
    """The TOML configuration has unknown keys or values of the wrong type."""

    exit_code = 2


class ChecksumError(GeoPipelineError, OSError):
    """A fetched or mirrored file does not have the expected SHA-256."""

    exit_code = 3


class MissingInputError(GeoPipelineError, FileNotFoundError):
    """A required input file (raw data or an earlier stage's output) is missing."""

    exit_code = 3


class OutputExistsError(GeoPipelineError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""

    exit_code = 4


class StaleInputError(ChecksumError):
    """An earlier stage's output is not what the manifest recorded (changed, or made from older inputs)."""


class BusyError(GeoPipelineError):
    """Another geo-pipeline run holds the lock of the output folder."""

    exit_code = 5


class StorageError(GeoPipelineError, OSError):
    """An output cannot be written: disk full, read-only folder, permissions, other I/O failure."""

    exit_code = 6


class DataQualityWarning(UserWarning):
    """Data are usable but something a researcher should know about was found."""
