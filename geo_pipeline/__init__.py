"""geo_pipeline: population net outflow and shrinking cities in China.

Each stage is a module with a pure function (GeoDataFrame in, GeoDataFrame out,
no I/O); the command line ``geo-pipeline`` wraps them with reading, validation,
atomic writing and logging.
"""

from __future__ import annotations

from ._errors import (
    ChecksumError,
    ConfigError,
    CRSError,
    DataQualityWarning,
    GeometryError,
    GeoPipelineError,
    InputError,
    MissingInputError,
    OutputExistsError,
    UnknownCodeError,
)
from .config import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "ChecksumError",
    "ConfigError",
    "CRSError",
    "DataQualityWarning",
    "GeometryError",
    "GeoPipelineError",
    "InputError",
    "MissingInputError",
    "OutputExistsError",
    "UnknownCodeError",
    "Settings",
    "load_settings",
]
