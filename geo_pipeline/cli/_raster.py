"""CLI wrapper of the raster stage: read, validate, call :mod:`geo_pipeline.raster`, write."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import geopandas as gpd

from .. import raster as rs
from .._io import attribute_table, check_writable, read_layer
from .._validate import check_frame

if TYPE_CHECKING:
    from . import StageContext

log = logging.getLogger("geo_pipeline.cli.raster")

#: Runs once per unit level ([pipeline] levels): raster.gpkg, raster_prefecture.gpkg.
PER_LEVEL = True

OPTIONS = [
    click.Option(
        ["--raster", "raster_path"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Population GeoTIFF (people per cell, any CRS) [config: path]; none: the stage is skipped.",
    ),
    click.Option(
        ["--method"],
        type=click.Choice(rs.METHODS),
        default=None,
        help="Cell assignment: auto, centre (cell centres) or exact (fractional coverage) [config: method].",
    ),
    click.Option(
        ["--window-rows"],
        type=click.IntRange(min=1),
        default=None,
        help="Raster rows read per window [config: window_rows].",
    ),
    click.Option(
        ["--dask/--no-dask", "use_dask"],
        default=None,
        help="Run the raster windows on Dask (a local cluster or [dask] scheduler) [config: dask].",
    ),
    click.Option(
        ["--scheduler"],
        type=str,
        default=None,
        help="Dask scheduler address, e.g. tcp://host:8786; empty: a local cluster "
        "[config: [dask] scheduler].",
    ),
]


def run(
    ctx: StageContext,
    *,
    raster_path: Path | None = None,
    method: str | None = None,
    window_rows: int | None = None,
    use_dask: bool | None = None,
    scheduler: str | None = None,
) -> None:
    """Zonal statistics of a gridded population raster over the units.

    Reads data_processed/population.gpkg (layer units, or prefectures at the
    prefecture level: raster_prefecture.gpkg) and the GeoTIFF of
    people per cell given by [raster] path or --raster (WorldPop / GHS-POP, any
    CRS; the units are reprojected to it, never the raster). Streams the raster
    in windows and writes data_processed/raster.gpkg, layer units: unit_id,
    pop_raster_sum, pop_raster_mean, pop_centroid_lon, pop_centroid_lat (the
    population-weighted centroid, used by `distance` with point = population),
    n_cells and zonal_method (centre or exact per unit). Skipped, with exit
    code 0, when no raster is configured.
    """
    s = ctx.settings.raster
    path = raster_path if raster_path is not None else (Path(s.path) if s.path else None)
    if path is None:
        log.info("raster: no population raster configured ([raster] path is empty); stage skipped")
        return
    method = method or s.method
    rows = window_rows or s.window_rows
    dask_on = s.dask if use_dask is None else use_dask
    d = ctx.settings.dask
    address = d.scheduler if scheduler is None else scheduler
    gpkg_name = ctx.level_file("raster.gpkg")
    check_writable(ctx.output(gpkg_name), overwrite=ctx.overwrite)
    rs.open_grid(path, band=s.band)  # fail on a bad raster before reading the units

    pop_path = ctx.output("population.gpkg")
    units = read_layer(pop_path, ctx.units_layer, hint="run `geo-pipeline population` first")
    check_frame(
        units,
        name=f"{pop_path} layer {ctx.units_layer}",
        columns={"unit_id": "string"},
        crs="EPSG:4326",
        geometry=True,
        geom_types=("Polygon", "MultiPolygon"),
        unique=["unit_id"],
        not_null=["unit_id"],
    ).raise_if_any()

    with contextlib.ExitStack() as stack:
        client: Any = None
        if dask_on:
            from ..parallel import dask_client

            client = stack.enter_context(
                dask_client(address, n_workers=d.workers, threads_per_worker=d.threads_per_worker)
            )
        result = rs.zonal_population(
            units,
            path,
            method=method,
            window_rows=rows,
            window_cols=s.window_cols,
            min_cells=s.min_cells,
            band=s.band,
            client=client,
        )
    info = dict(result.attrs.get("raster", {}))
    out = gpd.GeoDataFrame(result, geometry="geometry", crs=result.crs)
    out.attrs = {}
    gpkg = ctx.write_gpkg(gpkg_name, {"units": attribute_table(out)})
    total = float(out["pop_raster_sum"].sum())
    ctx.manifest(
        inputs={"population": pop_path, "raster": path},
        outputs={"raster": gpkg},
        parameters={
            "path": str(path),
            "method": method,
            "window_rows": rows,
            "window_cols": s.window_cols,
            "min_cells": s.min_cells,
            "band": s.band,
            "dask": dask_on,
            "scheduler": address,
        },
        summary={"units": len(out), "population_sum": total, **info},
    )
    log.info(
        "%s: %d units from %s (%s); %d by cell centres, %d by exact coverage, %d without data; "
        "total %.0f people; %.1f Mcells/s%s -> %s",
        ctx.label, len(out),
        path,
        info.get("crs", "?"),
        info.get("n_centre", 0),
        info.get("n_exact", 0),
        info.get("n_none", 0),
        total,
        info.get("cells_per_second", float("nan")) / 1e6,
        " on Dask" if dask_on else "",
        gpkg,
    )
