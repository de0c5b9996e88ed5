"""CLI wrapper of the export stage."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pandas as pd
import pyogrio

from .._errors import DataQualityWarning
from .._io import list_layers, read_layer, read_table
from ..export import assemble_layers, write_styled_gpkg
from . import StageContext

log = logging.getLogger("geo_pipeline.cli.export")

OUTPUT = "shrinkage.gpkg"

#: (file, layer in file, export layer name, spatial) of the optional inputs.
_OPTIONAL_LAYERS = (
    ("population.gpkg", "prefectures", "prefectures", True),
    ("boundaries.gpkg", "provinces", "provinces", True),
    ("distance.gpkg", "rings", "distance_rings", True),
    ("distance.gpkg", "cores", "cores", True),
    ("distance.gpkg", "band_summary", "band_summary", False),
    ("autocorrelation.gpkg", "global_moran", "global_moran", False),
    ("infrastructure.gpkg", "rail_lines", "rail_lines", True),
    ("infrastructure.gpkg", "rail_stations", "rail_stations", True),
    ("infrastructure.gpkg", "corridors", "corridors", True),
    ("infrastructure.gpkg", "corridor_summary", "corridor_summary", False),
)
#: Stages whose ``units`` layer is merged into the export units.
_UNIT_STAGES = ("raster", "distance", "autocorrelation", "infrastructure")


def _missing(what: str, stage: str) -> None:
    warnings.warn(
        f"{what} not found; the export leaves it out (run `geo-pipeline {stage}` to include it)",
        DataQualityWarning, stacklevel=3,
    )


def run(ctx: StageContext) -> None:
    """Merge every stage's results into data_processed/shrinkage.gpkg, styled for QGIS.

    Units get every indicator (joined on unit_id); prefectures, provinces,
    LISA clusters, distance rings and cores, rail lines, stations and
    corridors are added when their stage has run (a warning names any that is
    missing). Each spatial layer gets a default QGIS style in the GeoPackage's
    layer_styles table, and layers and fields are described in the GeoPackage
    metadata (gpkg_contents, gpkg_data_columns).
    """
    processed = ctx.processed
    population = processed / "population.gpkg"
    units = read_layer(population, "units", hint="run `geo-pipeline population` first")
    inputs: dict[str, Path] = {"population": population}
    layer_cache: dict[Path, list[str]] = {}

    def layers_of(path: Path) -> list[str]:
        if path not in layer_cache:
            layer_cache[path] = list_layers(path) if path.is_file() else []
        return layer_cache[path]

    unit_tables: dict[str, pd.DataFrame] = {}
    for stage in _UNIT_STAGES:
        path = processed / f"{stage}.gpkg"
        if "units" in layers_of(path):
            # attributes only: the export keeps the population geometry (reading the real distance,
            # autocorrelation and infrastructure units without their 3 x 4 M vertices: 0.8 s -> 0.1 s)
            unit_tables[stage] = read_table(path, "units")
            inputs[stage] = path
        elif stage == "raster" and not ctx.settings.raster.path:
            log.debug("export: raster stage not configured; no gridded population columns")
        else:
            _missing(f"{path.name} (layer units)", stage)

    extra: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for fname, lname, export_name, spatial in _OPTIONAL_LAYERS:
        path = processed / fname
        if lname not in layers_of(path):
            _missing(f"{fname} layer {lname}", fname.removesuffix(".gpkg"))
            continue
        extra[export_name] = read_layer(path, lname) if spatial else read_table(path, lname)
        sources[export_name] = f"{fname}:{lname}"
        layer_md = pyogrio.read_info(path, layer=lname).get("layer_metadata") or {}
        descriptions[export_name] = str(layer_md.get("DESCRIPTION") or "")
        inputs[fname.removesuffix(".gpkg")] = path

    layers = assemble_layers(units, unit_tables=unit_tables, layers=extra, sources=sources,
                             descriptions=descriptions)
    out = write_styled_gpkg(ctx.output(OUTPUT), layers, overwrite=ctx.overwrite)
    n_styles = sum(len(layer.styles) for layer in layers.values())
    ctx.manifest(
        inputs=inputs, outputs={"shrinkage": out},
        summary={"layers": {n: len(layer.frame) for n, layer in layers.items()}, "styles": n_styles},
    )
    log.info(
        "export: wrote %d layers (%d units, %d columns; %d QGIS styles), EPSG:4326, to %s",
        len(layers), len(layers["units"].frame), layers["units"].frame.shape[1] - 1, n_styles, out,
    )
