"""CLI wrapper of the distance stage: read, validate, call :mod:`geo_pipeline.distance`, write."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import geopandas as gpd
import pandas as pd

from .. import distance as dist
from .._errors import CRSError, InputError, MissingInputError
from .._io import attribute_table, check_writable, list_layers, read_layer
from .._validate import check_frame
from ..cores import cores_from_census as census_cores

if TYPE_CHECKING:
    from . import StageContext

log = logging.getLogger("geo_pipeline.cli.distance")

#: Population indicator columns copied into distance.gpkg/units for convenience.
INDICATORS = [
    "pop_2010", "pop_2020", "change", "change_pct", "annual_rate", "shrinking",
    "hukou_2010", "net_outflow_ratio", "net_outflow", "region", "region_zh", "unit_kind", "comparable",
]
#: Grouped band summaries: grouping column -> (output name, group order).
GROUPED_SUMMARIES = {
    "region": ("band_summary_by_region", ("East", "Central", "West", "Northeast")),
    "unit_kind": ("band_summary_by_kind", ("district", "city", "county", "other", "mixed")),
}
#: Layer (and CSV stem) of the core-set sensitivity table.
SENSITIVITY = "core_set_sensitivity"
_ID_COLUMNS = ["unit_id", "name", "province", "prefecture"]

#: Runs once per unit level ([pipeline] levels); outputs named by level (distance_prefecture.gpkg).
PER_LEVEL = True


def _parse_breaks(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        breaks = [float(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers such as 50,100,150, found {value!r}"
        ) from None
    return breaks


OPTIONS = [
    click.Option(
        ["--cores"], type=click.Choice(dist.CORE_SETS), default=None,
        help="Default core set: all, central (9 national central cities), capitals, subprovincial (15 "
             "sub-provincial cities) or metro (centres of the approved metropolitan areas) [config: cores].",
    ),
    click.Option(
        ["--cores-from-census", "cores_from_census"], type=click.IntRange(min=0), default=None, metavar="N",
        help="Cores = seats of the prefectures whose urban districts had >= N residents in 2020; 0 = off "
             "[config: cores_from_census].",
    ),
    click.Option(
        ["--cores-file"], type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="CSV (name, lon, lat in WGS84) or GeoPackage point layer of cores; overrides --cores.",
    ),
    click.Option(
        ["--point"], type=click.Choice(dist.POINT_METHODS), default=None,
        help="Point of each unit measured from: representative, centroid or population [config: point].",
    ),
    click.Option(
        ["--breaks-km"], type=str, default=None, callback=_parse_breaks,
        help="Band edges in km, comma-separated, e.g. 50,100,150 [config: breaks_km].",
    ),
]


def read_cores_file(path: str | Path) -> gpd.GeoDataFrame:
    """Read and validate a user file of cores (CSV or GeoPackage).

    Parameters
    ----------
    path : path-like
        ``.csv`` (UTF-8, columns ``name``, ``lon``, ``lat`` in WGS84 degrees;
        ``longitude``/``latitude``/``lng`` accepted) or ``.gpkg`` with one
        point layer (or a layer named ``cores``), any CRS.

    Returns
    -------
    geopandas.GeoDataFrame
        Standardised cores, see :func:`geo_pipeline.distance.cores_from_frame`.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputError, CRSError, GeometryError
        Unsupported format or invalid content.
    """
    p = Path(path)
    source = f"cores file {p}"
    if not p.is_file():
        raise MissingInputError(
            f"{source} not found; set [distance] cores_file to an existing CSV or GeoPackage"
        )
    suffix = p.suffix.lower()
    if suffix == ".csv":
        try:
            frame = pd.read_csv(p, encoding="utf-8-sig", dtype={"adcode": str})
        except UnicodeDecodeError as exc:
            raise InputError(f"{source}: not UTF-8 ({exc}); save the CSV as UTF-8") from exc
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise InputError(f"{source}: not a readable CSV: {exc}") from exc
        return dist.cores_from_frame(frame, source=source)
    if suffix == ".gpkg":
        layers = list_layers(p)
        if len(layers) == 1:
            layer = layers[0]
        elif "cores" in layers:
            layer = "cores"
        else:
            raise InputError(
                f"{source}: {len(layers)} layers {layers}; expected one layer or a layer named 'cores'"
            )
        frame = read_layer(p, layer)
        if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry.isna().all():
            raise InputError(f"{source}: layer {layer!r} has no geometry; expected a point layer")
        return dist.cores_from_frame(frame, source=source)
    raise InputError(f"{source}: expected a .csv or .gpkg file, found {suffix or 'no extension'!r}")


def run(
    ctx: StageContext,
    *,
    cores: str | None = None,
    cores_file: Path | None = None,
    cores_from_census: int | None = None,
    point: str | None = None,
    breaks_km: list[float] | None = None,
) -> None:
    """Distance of every unit to the nearest metropolitan core, in bands.

    Reads data_processed/population.gpkg (layer units; prefectures at the
    prefecture level) and, with point = population, raster.gpkg. Measures
    the geodesic (WGS84) distance from each unit's representative point to
    the nearest core (default: 9 national central cities and 31 provincial
    capitals), cuts it into bands [0,50), [50,100),
    [100,150), 150+ km, and writes data_processed/distance.gpkg (layers units,
    cores, rings, band_summary, band_summary_by_region, band_summary_by_kind)
    and the summaries as CSV (band_summary.csv, band_summary_by_region.csv,
    band_summary_by_kind.csv). Units with comparable = False are left out of
    the summaries. The layer core_set_sensitivity (and core_set_sensitivity.csv)
    gives the shrinkage beyond the last band edge under every core set
    (the named sets and census-derived ones, see --cores-from-census).
    At the prefecture level the files are named
    distance_prefecture.gpkg, band_summary_prefecture.csv, ...
    """
    s = ctx.settings.distance
    cores_set = cores or s.cores
    cores_path = cores_file if cores_file is not None else (Path(s.cores_file) if s.cores_file else None)
    point = point or s.point
    breaks = list(breaks_km) if breaks_km is not None else list(s.breaks_km)
    dist.band_labels(breaks)  # validates the breaks before any reading
    census_n = s.cores_from_census if cores_from_census is None else int(cores_from_census)
    stems = ("band_summary", *(n for n, _ in GROUPED_SUMMARIES.values()), SENSITIVITY)
    csv_names = [ctx.level_file(f"{n}.csv") for n in stems]
    gpkg_name, csv_name = ctx.level_file("distance.gpkg"), csv_names[0]
    for name in (gpkg_name, *csv_names):  # fail before the work, not after
        check_writable(ctx.output(name), overwrite=ctx.overwrite)

    pop_path = ctx.output("population.gpkg")
    units = read_layer(pop_path, ctx.units_layer, hint="run `geo-pipeline population` first")
    present = [c for c in INDICATORS if c in units.columns]
    where = f"{pop_path} layer {ctx.units_layer}"
    check_frame(
        units, name=where,
        columns={"unit_id": "string", "pop_2010": "numeric", "pop_2020": "numeric",
                 "change_pct": "numeric", "shrinking": "bool"},
        unique=["unit_id"], not_null=["unit_id", "pop_2010", "pop_2020"],
    ).raise_if_any()
    # Geometry validity is checked once, inside distance_bands; here only the CRS of the contract.
    if units.crs is None or not units.crs.equals(dist.WGS84):
        found = units.crs.to_string() if units.crs is not None else "no CRS"
        raise CRSError(
            f"{where}: expected EPSG:4326 (WGS84 lon/lat), found {found}; rerun the population stage"
        )
    inputs: dict[str, Path] = {"population": pop_path}
    if point == "population":
        raster_path = ctx.level_output("raster.gpkg")
        raster = read_layer(
            raster_path, "units", read_geometry=False,
            hint="run `geo-pipeline raster` (needs [raster] path) or set [distance] point = 'representative'",
        )
        check_frame(
            raster, name=f"{raster_path} layer units",
            columns={"unit_id": "string", "pop_centroid_lon": "numeric", "pop_centroid_lat": "numeric"},
            unique=["unit_id"],
        ).raise_if_any()
        centres = pd.DataFrame(raster)[["unit_id", "pop_centroid_lon", "pop_centroid_lat"]]
        units = units.merge(centres, on="unit_id", how="left")
        inputs["raster"] = raster_path

    county_units = units if ctx.units_layer == "units" else None
    needs_county = census_n > 0 or bool(s.sensitivity_census_min_pop)
    if county_units is None and needs_county and "units" in list_layers(pop_path):
        county_units = read_layer(pop_path, "units", read_geometry=False)  # census cores come from counties
    if cores_path is not None:
        core_frame = read_cores_file(cores_path)
        inputs["cores_file"] = cores_path
        cores_desc = str(cores_path)
        run_set = f"file {cores_path.name}"
    elif census_n > 0:
        if county_units is None or "pop_2020_districts" not in county_units.columns:
            raise InputError(
                f"{pop_path}: cores_from_census needs the county units with pop_2020_districts; "
                "rerun `geo-pipeline population`"
            )
        core_frame = census_cores(county_units, min_pop=census_n)
        cores_desc = f"census-derived: prefectures with >= {census_n} residents in urban districts (2020)"
        run_set = f"census>={census_n}"
    else:
        core_frame = dist.default_cores(cores_set)
        cores_desc = f"default set {cores_set!r}"
        run_set = cores_set

    t0 = time.perf_counter()
    banded = dist.distance_bands(units, core_frame, breaks_km=breaks, point=point)
    # units whose population is not comparable between the censuses (Sansha) are left out of the summaries
    if "comparable" in banded.columns:
        comparable = banded["comparable"].astype("boolean").fillna(True).to_numpy(dtype=bool)
    else:
        comparable = pd.Series(True, index=banded.index).to_numpy(dtype=bool)
    summed = banded[comparable]
    summary = dist.band_summary(summed, breaks_km=breaks)
    grouped = {}
    for col, (name, order) in GROUPED_SUMMARIES.items():
        if col in summed.columns:  # units outside the 31 provinces (synthetic data) have no region
            values = summed[col].astype(object).where(summed[col].notna(), "unknown")
            extra = ["unknown"] if (values == "unknown").any() else []
            grouped[name] = dist.band_summary_by(summed.assign(**{col: values}), col, breaks_km=breaks,
                                                 groups=[*order, *extra])
    # sensitivity: shrinkage beyond the last band edge under each core set
    default_run = cores_path is None and census_n <= 0  # the run's own default set is not read again
    core_sets = {name: core_frame if default_run and name == cores_set else dist.default_cores(name)
                 for name in dist.CORE_SETS}
    if county_units is not None and "pop_2020_districts" in county_units.columns:
        for n in sorted({*s.sensitivity_census_min_pop, *([census_n] if census_n > 0 else [])}):
            core_sets[f"census>={n}"] = census_cores(county_units, min_pop=n)
    core_sets.setdefault(run_set, core_frame)
    # the units' points were found by distance_bands: not computed again
    sensitivity = dist.core_set_sensitivity(summed, core_sets, threshold_km=breaks[-1], point=point,
                                            points=summed[["point_lon", "point_lat"]])
    sensitivity["used_in_run"] = sensitivity["core_set"].eq(run_set)
    rings = dist.geodesic_rings(core_frame, radii_km=breaks)
    elapsed = time.perf_counter() - t0

    keep = [c for c in _ID_COLUMNS if c in banded.columns] + dist.RESULT_COLUMNS + present
    out_units = gpd.GeoDataFrame(banded[keep], geometry=banded.geometry.values, crs=banded.crs)
    gpkg = ctx.write_gpkg(
        gpkg_name,
        {"units": attribute_table(out_units), "cores": core_frame, "rings": rings, "band_summary": summary,
         **grouped, SENSITIVITY: sensitivity},
    )
    csv = ctx.write_csv(csv_name, summary)
    csvs = {name: ctx.write_csv(ctx.level_file(f"{name}.csv"), table)
            for name, table in {**grouped, SENSITIVITY: sensitivity}.items()}
    excluded = banded.loc[~comparable, "unit_id"].astype(str).tolist()
    bands = summary[summary["band_index"] >= 0]
    shares = ", ".join(
        f"{b}: {sh:.0%} shrinking" if pd.notna(sh) else f"{b}: no units"
        for b, sh in zip(bands["band"], bands["shrinking_share"], strict=True)
    )
    ctx.manifest(
        inputs=inputs,
        outputs={"distance": gpkg, "band_summary": csv, **csvs},
        parameters={"cores": cores_desc, "cores_from_census": census_n, "point": point, "breaks_km": breaks,
                    "sensitivity_census_min_pop": list(s.sensitivity_census_min_pop)},
        summary={"units": len(banded), "cores": len(core_frame), "seconds": round(elapsed, 3),
                 "units_not_comparable_left_out_of_summaries": excluded,
                 "shrinking_share_beyond_last_break_by_core_set": {
                     r.core_set: (round(float(r.shrinking_share_beyond), 4)
                                  if r.shrinking_share_beyond == r.shrinking_share_beyond else None)
                     for r in sensitivity.itertuples()},
                 "n_units_per_band": dict(zip(bands["band"], bands["n_units"].tolist(), strict=True))},
    )
    log.info(
        "%s: %d units, %d cores (%s), point=%s, EPSG:4326 -> %s; %s (%.2f s)",
        ctx.label, len(banded), len(core_frame), cores_desc, point, gpkg, shares, elapsed,
    )
