"""CLI wrapper of the export stage."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyogrio

from .._errors import DataQualityWarning
from .._io import check_writable, list_layers, read_layer, read_table
from .._levels import BASE_LEVEL, UNITS_LAYER, level_layer, level_title
from ..export import add_level_layers, assemble_layers, write_styled_gpkg
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
#: The optional layers that do not depend on the unit level (when counties are not run).
_SHARED_LAYERS = tuple(spec for spec in _OPTIONAL_LAYERS if spec[0] in ("population.gpkg", "boundaries.gpkg"))
#: Summary tables of a further level, read from its own files (``band_summary`` of
#: ``distance_prefecture.gpkg``), written as ``<level>_<name>`` by :func:`add_level_layers`.
_LEVEL_TABLES = (
    ("distance.gpkg", "band_summary", "band_summary", False),
    ("autocorrelation.gpkg", "global_moran", "global_moran", False),
    ("infrastructure.gpkg", "corridor_summary", "corridor_summary", False),
)
#: Summaries (distance) and rail layers (infrastructure) exported when their stage wrote them (no warning
#: when absent), at every level.
_IF_PRESENT_TABLES = (
    ("distance.gpkg", "band_summary_by_region", "band_summary_by_region", False),
    ("distance.gpkg", "band_summary_by_kind", "band_summary_by_kind", False),
    ("distance.gpkg", "core_set_sensitivity", "core_set_sensitivity", False),
    ("infrastructure.gpkg", "underused_lines", "underused_lines", True),
    ("infrastructure.gpkg", "time_band_summary", "time_band_summary", False),
    ("infrastructure.gpkg", "access_change_summary", "access_change_summary", False),
)
#: Stages whose ``units`` layer is merged into the export units.
_UNIT_STAGES = ("raster", "distance", "autocorrelation", "infrastructure")


def _missing(what: str, stage: str) -> None:
    warnings.warn(
        f"{what} not found; the export leaves it out (run `geo-pipeline {stage}` to include it)",
        DataQualityWarning, stacklevel=3,
    )


def _read_units_tables(ctx: StageContext, level: str, layers_of: Callable[[Path], list[str]],
                       inputs: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Per-unit tables of the unit stages at ``level`` (attributes only), warning for missing ones."""
    tables: dict[str, pd.DataFrame] = {}
    for stage in _UNIT_STAGES:
        path = ctx.level_output(f"{stage}.gpkg", level)
        if "units" in layers_of(path):
            # attributes only: the export keeps the population geometry (reading the real distance,
            # autocorrelation and infrastructure units without their 3 x 4 M vertices: 0.8 s -> 0.1 s)
            tables[stage] = read_table(path, "units")
            inputs[path.stem] = path
        elif stage == "raster" and not ctx.settings.raster.path:
            log.debug("export: raster stage not configured; no gridded population columns")
        else:
            _missing(f"{path.name} (layer units)", stage)
    return tables


def _read_layers(ctx: StageContext, specs: tuple[tuple[str, str, str, bool], ...], level: str,
                 layers_of: Callable[[Path], list[str]], inputs: dict[str, Path], *, quiet: bool = False,
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, str], dict[str, str]]:
    extra: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for fname, lname, export_name, spatial in specs:
        path = ctx.level_output(fname, level)
        if lname not in layers_of(path):
            if not quiet:
                _missing(f"{path.name} layer {lname}", fname.removesuffix(".gpkg"))
            continue
        extra[export_name] = read_layer(path, lname) if spatial else read_table(path, lname)
        sources[export_name] = f"{path.name}:{lname}"
        layer_md = pyogrio.read_info(path, layer=lname).get("layer_metadata") or {}
        descriptions[export_name] = str(layer_md.get("DESCRIPTION") or "")
        inputs[path.stem] = path
    return extra, sources, descriptions


#: Stages that read shrinkage.gpkg's spatial layers.
_READERS = frozenset({"report", "atlas", "qgis_project"})


def _read_later(ctx: StageContext) -> bool:
    """Whether a stage run after this one in the same process reads shrinkage.gpkg's layers.

    Then the written layers are kept in the process's frame cache (``write_styled_gpkg(cache=)``):
    report and atlas read units, prefecture_units and provinces again. Measured in
    ``run --from export --to atlas`` (old and new alternated, 3 each, CPU): read_layer 1.21-1.26 ->
    0.89-0.92 s, write_styled_gpkg 0.73-0.75 -> 0.95-1.00 s (0.08 s of it hashing the manifest did
    later, write_manifest 0.11 -> 0.03 s): about 0.2 s less. A run that stops at export does not
    pay for it.
    """
    return bool(_READERS & set(ctx.later))


def run(ctx: StageContext) -> None:
    """Merge every stage's results into data_processed/shrinkage.gpkg, styled for QGIS.

    Units get every indicator (joined on unit_id); prefectures, provinces,
    LISA clusters, distance rings and cores, rail lines, stations and
    corridors are added when their stage has run (a warning names any that is
    missing). With the prefecture level in [pipeline] levels, the prefecture
    units with every indicator of their level are added as prefecture_units
    (styled like units), with prefecture_lisa and the prefecture_* summary
    tables. Each spatial layer gets a default QGIS style in the GeoPackage's
    layer_styles table, and layers and fields are described in the GeoPackage
    metadata (gpkg_contents, gpkg_data_columns).
    """
    processed = ctx.processed
    check_writable(ctx.output(OUTPUT), overwrite=ctx.overwrite)  # before the work, not after
    population = processed / "population.gpkg"
    units = read_layer(population, "units", hint="run `geo-pipeline population` first")
    inputs: dict[str, Path] = {"population": population}
    layer_cache: dict[Path, list[str]] = {}

    def layers_of(path: Path) -> list[str]:
        if path not in layer_cache:
            layer_cache[path] = list_layers(path) if path.is_file() else []
        return layer_cache[path]

    levels = ctx.levels
    if BASE_LEVEL in levels:
        unit_tables = _read_units_tables(ctx, BASE_LEVEL, layers_of, inputs)
    else:
        unit_tables = {}
    extra, sources, descriptions = _read_layers(
        ctx, _OPTIONAL_LAYERS if BASE_LEVEL in levels else _SHARED_LAYERS, BASE_LEVEL, layers_of, inputs)
    if BASE_LEVEL in levels:
        present = _read_layers(ctx, _IF_PRESENT_TABLES, BASE_LEVEL, layers_of, inputs, quiet=True)
        for target, more in zip((extra, sources, descriptions), present, strict=True):
            target.update(more)
    layers = assemble_layers(units, unit_tables=unit_tables, layers=extra, sources=sources,
                             descriptions=descriptions)
    for level in levels:
        if level == BASE_LEVEL:
            continue
        ulayer = UNITS_LAYER[level]
        if ulayer not in layers_of(population):
            _missing(f"population.gpkg layer {ulayer}", "population")
            continue
        lunits = read_layer(population, ulayer)
        ltables = _read_units_tables(ctx, level, layers_of, inputs)
        lextra, lsources, ldesc = _read_layers(ctx, _LEVEL_TABLES, level, layers_of, inputs)
        for target, more in zip((lextra, lsources, ldesc),
                                _read_layers(ctx, _IF_PRESENT_TABLES, level, layers_of, inputs, quiet=True),
                                strict=True):
            target.update(more)
        assembled = assemble_layers(lunits, unit_tables=ltables, layers=lextra, sources=lsources,
                                    descriptions=ldesc)
        layers = add_level_layers(layers, assembled, level=level)
    out = write_styled_gpkg(ctx.output(OUTPUT), layers, overwrite=ctx.overwrite, cache=_read_later(ctx))
    n_styles = sum(len(layer.styles) for layer in layers.values())
    ctx.manifest(
        inputs=inputs, outputs={"shrinkage": out},
        parameters={"levels": levels},
        summary={"layers": {n: len(layer.frame) for n, layer in layers.items()}, "styles": n_styles},
    )
    per_level = ", ".join(
        f"{len(layers[level_layer('units', lv)].frame)} {level_title(lv)}"
        for lv in levels if level_layer("units", lv) in layers
    )
    log.info(
        "export: wrote %d layers (%s; %d unit columns; %d QGIS styles), EPSG:4326, to %s",
        len(layers), per_level or f"{len(layers['units'].frame)} units", layers["units"].frame.shape[1] - 1,
        n_styles, out,
    )
