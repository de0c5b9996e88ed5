"""geo_pipeline: population net outflow and shrinking cities in China.

Each stage is a module with a pure function (GeoDataFrame in, GeoDataFrame out,
no I/O); the command line ``geo-pipeline`` wraps them with reading, validation,
atomic writing and logging.
"""

from __future__ import annotations

from ._errors import (
    BusyError,
    ChecksumError,
    ConfigError,
    CRSError,
    DataQualityWarning,
    GeometryError,
    GeoPipelineError,
    InputError,
    MissingInputError,
    OutputExistsError,
    StaleInputError,
    StorageError,
    UnknownCodeError,
)
from .config import Settings, load_settings

__version__ = "0.1.0"

# Stage functions are imported lazily (PEP 562) so that ``import geo_pipeline``
# and the CLI's start-up stay fast: matplotlib, osmnx and esda load only when used.
_LAZY = {
    "fetch_inputs": "fetch",
    "load_registry": "fetch",
    "read_cnmaps": "boundaries",
    "build_boundaries": "boundaries",
    "gcj02_to_wgs84": "_gcj02",
    "build_population": "population",
    "PopulationResult": "population",
    "distance_bands": "distance",
    "band_summary": "distance",
    "default_cores": "distance",
    "geodesic_rings": "distance",
    "build_weights": "weights",
    "UnitWeights": "weights",
    "spatial_autocorrelation": "autocorrelation",
    "AutocorrelationResult": "autocorrelation",
    "unit_overlay": "infrastructure",
    "corridor_summary": "infrastructure",
    "zonal_population": "raster",
    "assemble_layers": "export",
    "atlas_pages": "atlas",
    "build_report": "report",
    "render_html": "report",
    "render_markdown": "report",
    "segmented_regression": "findings",
    "spatial_regression": "findings",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geo_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "BusyError",
    "ChecksumError",
    "ConfigError",
    "CRSError",
    "DataQualityWarning",
    "GeometryError",
    "GeoPipelineError",
    "InputError",
    "MissingInputError",
    "OutputExistsError",
    "StaleInputError",
    "StorageError",
    "UnknownCodeError",
    "Settings",
    "load_settings",
    *_LAZY,
]
