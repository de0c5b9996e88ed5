"""CLI wrapper of the infrastructure stage.

Reads and validates the inputs, calls :mod:`geo_pipeline.rail` and
:mod:`geo_pipeline.infrastructure`, writes ``infrastructure.gpkg``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import geopandas as gpd
import pandas as pd
import pyogrio
import shapely

from .. import infrastructure as inf
from .. import rail, roads
from .. import rail_geometry as rgeo
from .. import rail_network as rnet
from .. import underused as und
from .._errors import ConfigError, DataQualityWarning, InputError, MissingInputError
from .._io import attribute_table, check_writable, read_layer, sha256
from .._validate import check_frame

if TYPE_CHECKING:
    from . import StageContext

log = logging.getLogger("geo_pipeline.cli.infrastructure")

#: Raw inputs (copied into data_raw/ by the fetch stage, same names as the mirror).
CATALOGUE = Path("rail") / "railways_lines.csv"
CORRIDORS = Path("rail") / "approx_corridors_keystations.geojson"
TRAIN_COUNTS = Path("rail") / "derived_station_train_counts.csv"
OSM_STATIONS = Path("rail") / "osm_railway_stations.zip"
#: OSM extract whose railway ways check the line geometry (Guixi: 沪昆线, 皖赣线).
CHECK_OSM = Path("osm") / "guixi_jiangxi.osm"

_ID_COLUMNS = ["unit_id", "name", "province", "prefecture"]
_INDICATORS = ["pop_2010", "pop_2020", "change_pct", "shrinking"]
_FETCH_HINT = "run `geo-pipeline fetch` first"

#: Runs once per unit level ([pipeline] levels): infrastructure_prefecture.gpkg and
#: corridor_summary_prefecture.csv at the prefecture level.
PER_LEVEL = True

#: Layer descriptions written to gpkg_contents (QGIS shows them as the layer abstract).
DESCRIPTIONS = {
    "rail_lines": "Rail lines with class (high-speed/fast/conventional), design speed, opening year and a "
    "utilisation ratio (see utilisation_basis: 'proxy' = key-station trains/day relative to the p90 of "
    "the class, not design capacity). open_year is railways_lines.csv 建成年份, for a few lines the start of "
    "construction (e.g. 沪昆高铁-长昆段 2010, opened 2016).",
    "rail_stations": "Railway stations; high_speed from G/D/C train counts (~Jan 2021) matched by name "
    "and key stations of high-speed lines (high_speed_basis).",
    "corridors": "Union of buffers around high-speed lines (buffer_km).",
    "units": "Analysis units with high-speed rail measures (hsr_station_km geodesic, corridor_share "
    "equal-area).",
    "corridor_summary": "Shrinkage inside vs outside high-speed corridors and by period of first service; "
    "census years 2010 and 2020 only, descriptive.",
    "time_band_summary": "Shrinkage and net outflow by door-to-core travel time band (road access to a "
    "station, rail to the nearest core; see rail_network.py for the model).",
    "access_change_summary": "Population change by minutes saved between the 2010 network (lines opened "
    "before 2010 by the catalogue) and today's.",
    "underused_lines": "Underused rail lines (utilisation below the threshold; see rail_lines "
    "utilisation_basis) with the analysis units they cross and those units' shrinking share.",
    "expressways": "Your expressway lines (the --expressways layer), overlaid on the units like the rail "
    "corridors.",
    "expressway_summary": "Shrinkage inside vs outside expressway corridors (expressway_buffer_km).",
    "network_check": "Rail minutes of the network between known station pairs against timetable minutes.",
    "geometry_check": "Straight vs threaded line geometry: distance from points every 100 m along the OSM "
    "tracks of the Guixi extract to our line of the same name (metres), and the change in corridor "
    "membership of the units.",
}

OPTIONS = [
    click.Option(
        ["--lines"],
        type=str,
        default=None,
        help="Rail lines: corridors (approximate file), osm (--osm-file) or a .gpkg/.geojson path "
        "[config: lines].",
    ),
    click.Option(
        ["--stations"],
        type=str,
        default=None,
        help="Stations: osm_stations (OSM station file), osm (--osm-file) or a path [config: stations].",
    ),
    click.Option(
        ["--osm-file"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Local .osm XML read offline with osmnx when lines/stations = osm [config: osm_file].",
    ),
    click.Option(
        ["--utilisation-file"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="CSV: line, design_capacity, ridership or trains_per_day (or station, trains_per_day) "
        "[config: utilisation_file].",
    ),
    click.Option(
        ["--expressways"],
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Your GeoPackage/GeoJSON of expressway lines (EPSG:4326), overlaid like the rail corridors "
        "[config: expressways].",
    ),
    click.Option(
        ["--buffer-km"],
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Half-width of a high-speed corridor in km [config: corridor_buffer_km].",
    ),
    click.Option(
        ["--underused-threshold"],
        type=click.FloatRange(0, 1, min_open=True),
        default=None,
        help="A line is underused below this utilisation [config: underused_threshold].",
    ),
]


def read_vector(path: str | Path, *, what: str, hint: str = "") -> gpd.GeoDataFrame:
    """Read the only (or first) layer of a GeoPackage, GeoJSON, shapefile or zipped shapefile.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputError
        The file cannot be read.
    """
    p = Path(path)
    if not p.is_file():
        extra = f"; {hint}" if hint else ""
        raise MissingInputError(f"{what} {p} not found{extra}")
    source = str(p)
    if p.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(p) as zf:
                shps = [n for n in zf.namelist() if n.lower().endswith(".shp")]
        except zipfile.BadZipFile as exc:
            raise InputError(f"{what} {p}: not a readable zip file ({exc}); fetch it again") from exc
        if not shps:
            raise InputError(f"{what} {p}: no .shp inside the zip; expected a zipped shapefile")
        source = f"/vsizip/{p.resolve().as_posix()}/{shps[0]}"
    try:
        layers = pyogrio.list_layers(source)
        layer = str(layers[0][0])
        if p.suffix.lower() == ".gpkg" and len(layers) > 1:
            names = [str(n) for n in layers[:, 0]]
            log.warning("%s %s has %d layers %s; reading %r", what, p, len(names), names, layer)
        return pyogrio.read_dataframe(source, layer=layer, use_arrow=True)
    except Exception as exc:  # pyogrio raises several error types for unreadable files
        raise InputError(f"{what} {p}: cannot read: {exc}") from exc


def read_csv(path: str | Path, *, what: str, hint: str = "") -> pd.DataFrame:
    """Read a UTF-8 CSV; a missing or unreadable file is a pipeline error."""
    p = Path(path)
    if not p.is_file():
        extra = f"; {hint}" if hint else ""
        raise MissingInputError(f"{what} {p} not found{extra}")
    try:
        return pd.read_csv(p, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{what} {p}: not a readable UTF-8 CSV: {exc}") from exc


def read_osm(path: str | Path, tags: dict[str, Any]) -> gpd.GeoDataFrame:
    """Features of a local ``.osm`` XML file through :func:`osmnx.features_from_xml` (offline)."""
    import osmnx as ox

    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"OSM file {p} not found; set [infrastructure] osm_file or --osm-file")
    try:
        return ox.features_from_xml(p, tags=tags)
    except ox._errors.InsufficientResponseError:  # no matching features
        return gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs="EPSG:4326"), crs="EPSG:4326")
    except Exception as exc:  # XML errors and friends
        raise InputError(f"OSM file {p}: cannot read with osmnx: {exc}") from exc


@contextlib.contextmanager
def _data_quality_to_log() -> Iterator[None]:
    """Report the stage's :class:`DataQualityWarning` s as WARNING log records.

    The CLI shows warnings through logging anyway; recording them here keeps a
    known gap of the inputs (e.g. corridor lines without geometry) from
    aborting a run under ``-W error``. Other warnings are re-emitted unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataQualityWarning)
        yield
    for w in caught:
        if issubclass(w.category, DataQualityWarning):
            log.warning("data quality: %s", w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def run(
    ctx: StageContext,
    *,
    lines: str | None = None,
    stations: str | None = None,
    osm_file: Path | None = None,
    utilisation_file: Path | None = None,
    buffer_km: float | None = None,
    underused_threshold: float | None = None,
    expressways: Path | None = None,
) -> None:
    """High-speed rail lines, stations and corridors overlaid on the units.

    Reads data_processed/population.gpkg (layer units, or prefectures at the
    prefecture level) and the rail inputs in
    data_raw/rail/ (line catalogue railways_lines.csv, APPROXIMATE corridor
    polylines with errors up to tens of km, station train counts, OSM
    station points) or an OSM extract (--lines osm --osm-file x.osm, read
    offline with osmnx) or your own line layer. Per unit: geodesic distance to
    the nearest high-speed station, whether a high-speed line crosses it, the
    share of its area within 30 km of one (equal-area), and the year of its
    first high-speed service. Writes data_processed/infrastructure.gpkg
    (rail_lines, rail_stations, corridors, units, corridor_summary) and
    corridor_summary.csv (infrastructure_prefecture.gpkg and
    corridor_summary_prefecture.csv at the prefecture level).
    """
    s = ctx.settings.infrastructure
    lines_src = lines or s.lines
    stations_src = stations or s.stations
    osm_path = osm_file if osm_file is not None else (Path(s.osm_file) if s.osm_file else None)
    util_path = (
        utilisation_file
        if utilisation_file is not None
        else (Path(s.utilisation_file) if s.utilisation_file else None)
    )
    buffer = float(buffer_km if buffer_km is not None else s.corridor_buffer_km)
    threshold = float(underused_threshold if underused_threshold is not None else s.underused_threshold)
    if "osm" in (lines_src, stations_src) and osm_path is None:
        raise ConfigError(
            "lines or stations = 'osm' needs an OSM file: set [infrastructure] osm_file or --osm-file"
        )
    gpkg_name, csv_name = ctx.level_file("infrastructure.gpkg"), ctx.level_file("corridor_summary.csv")
    check_name = ctx.level_file("geometry_check.csv")
    net_names = {n: ctx.level_file(f"{n}.csv") for n in ("time_band_summary", "access_change_summary",
                                                          "network_check", "underused_lines",
                                                          "expressway_summary")}
    for name in (gpkg_name, csv_name, check_name, *net_names.values()):  # fail before the work, not after
        check_writable(ctx.output(name), overwrite=ctx.overwrite)

    cores_path = ctx.level_output("distance.gpkg")
    if s.network and lines_src == "corridors" and not cores_path.is_file():
        raise MissingInputError(
            f"{cores_path} not found: the rail network needs the cores of the distance stage; run "
            "`geo-pipeline distance` first or set [infrastructure] network = false"
        )
    pop_path = ctx.output("population.gpkg")
    units = read_layer(pop_path, ctx.units_layer, hint="run `geo-pipeline population` first")
    check_frame(
        units,
        name=f"{pop_path} layer {ctx.units_layer}",
        columns={
            "unit_id": "string",
            "pop_2010": "numeric",
            "pop_2020": "numeric",
            "change_pct": "numeric",
            "shrinking": "bool",
        },
        crs="EPSG:4326",
        geometry=True,
        geom_types=("Polygon", "MultiPolygon"),
        unique=["unit_id"],
        not_null=["unit_id"],
    ).raise_if_any()
    inputs: dict[str, Path] = {"population": pop_path}

    t0 = time.perf_counter()
    with _data_quality_to_log():
        prep = _rail_prep(ctx, s, lines_src=lines_src, stations_src=stations_src, osm_path=osm_path,
                          util_path=util_path, buffer=buffer, threshold=threshold)
        inputs.update(prep.inputs)
        station_frame, versions = prep.stations, prep.versions

        # -- overlay --------------------------------------------------------------------------------
        # the units are projected to the equal-area CRS once for both line versions (0.9 s CPU each)
        units_area = inf.area_geometry(units) if versions else None
        overlay = inf.unit_overlay(
            units,
            prep.lines,
            station_frame,
            buffer_km=buffer,
            min_share=s.corridor_min_share,
            buffers=prep.buffers,
            units_area=units_area,
        )
        check = None
        if versions:
            other = "straight" if s.geometry == "threaded" else "threaded"
            # only in_corridor, corridor_share and hsr_crosses of the other version are used:
            # no year search or nearest station (county overlay 0.8 -> 0.6 s CPU)
            alt = inf.unit_overlay(units, versions[other], station_frame, buffer_km=buffer,
                                   min_share=s.corridor_min_share, buffers=prep.alt_buffers,
                                   units_area=units_area, corridor_only=True)
            by_version = {s.geometry: overlay, other: alt}
            change = rgeo.membership_change(by_version["straight"], by_version["threaded"])
            overlay = overlay.assign(
                in_corridor_straight=by_version["straight"]["in_corridor"].to_numpy(),
                in_corridor_threaded=by_version["threaded"]["in_corridor"].to_numpy(),
            )
            check = _geometry_check(change, prep.osm_offsets)
        summary = inf.corridor_summary(units, overlay)
        road_path = expressways if expressways is not None else Path(s.expressways) if s.expressways else None
        road_frame = road_overlay = road_summary = None
        if road_path is not None:
            road_frame = roads.prepare_expressways(read_vector(road_path, what="expressways layer"))
            inputs["expressways"] = road_path
            road_overlay = roads.expressway_overlay(units, road_frame, buffer_km=s.expressway_buffer_km,
                                                    min_share=s.corridor_min_share)
            road_summary = roads.expressway_summary(units, road_overlay)
        line_frame, corridors = prep.lines_out, prep.corridors
        under_lines = und.underused_lines(line_frame, units)
        # the layers made from the lines say which geometry they hold, like rail_lines
        source = str(line_frame["geometry_source"].iloc[0]) if len(line_frame) else ""
        under_lines = under_lines.assign(geometry_source=source)

        # -- rail network: door-to-core minutes, 2010 vs now ----------------------------------------
        access = net_tables = None
        if s.network and versions:
            cores = read_layer(cores_path, "cores", hint="run `geo-pipeline distance` first")
            inputs["cores"] = cores_path
            access, net_tables = _network(units, line_frame, cores, prep.stops, s, prep.network_check,
                                          prep.searches)
        elif s.network:
            log.warning("rail network skipped: it needs the station sequences of the corridor-file lines "
                        "(lines = 'corridors'); lines = %r", lines_src)
    elapsed = time.perf_counter() - t0

    ids = [c for c in _ID_COLUMNS if c in units.columns]
    extra = [c for c in _INDICATORS if c in units.columns]
    table_units = pd.DataFrame(units[ids + extra]).assign(unit_id=lambda d: d["unit_id"].astype(str))
    joined = table_units.merge(pd.DataFrame(overlay.drop(columns=overlay.geometry.name)), on="unit_id")
    cols = ids + [c for c in inf.UNIT_COLUMNS if c != "unit_id"] + extra
    cols += [c for c in ("in_corridor_straight", "in_corridor_threaded") if c in joined.columns]
    if access is not None:
        joined = joined.merge(access, on="unit_id", how="left", validate="one_to_one")
        cols += [c for c in access.columns if c != "unit_id"]
    if road_overlay is not None:
        joined = joined.merge(pd.DataFrame(road_overlay.drop(columns=road_overlay.geometry.name)),
                              on="unit_id", how="left", validate="one_to_one")
        cols += [c for c in roads.EXPRESSWAY_COLUMNS if c != "unit_id"]
    out_units = gpd.GeoDataFrame(joined[cols], geometry=overlay.geometry.to_numpy(), crs=units.crs)
    layers: dict[str, pd.DataFrame] = {
        "rail_lines": line_frame,
        "rail_stations": station_frame,
        "corridors": corridors,
        "units": attribute_table(out_units),
        "corridor_summary": summary,
    }
    if check is not None:
        layers["geometry_check"] = check
    if net_tables is not None:
        layers.update(net_tables)
    layers["underused_lines"] = under_lines
    if road_frame is not None and road_summary is not None:
        layers["expressways"] = road_frame
        layers["expressway_summary"] = road_summary
    descriptions = dict(DESCRIPTIONS)
    if bool(line_frame["approximate"].any()):
        for layer in ("rail_lines", "corridors"):
            descriptions[layer] += " " + rail.APPROXIMATE_NOTE
    # set in the new file before write_gpkg caches its layers (an edit afterwards changes the file's version)
    gpkg = ctx.write_gpkg(gpkg_name, layers, descriptions=descriptions)
    csv = ctx.write_csv(csv_name, summary)
    outputs = {"infrastructure": gpkg, "corridor_summary": csv}
    if check is not None:
        outputs["geometry_check"] = ctx.write_csv(check_name, check)
    for name, table in (net_tables or {}).items():
        outputs[name] = ctx.write_csv(net_names[name], table)
    if road_summary is not None:
        outputs["expressway_summary"] = ctx.write_csv(net_names["expressway_summary"], road_summary)
    outputs["underused_lines"] = ctx.write_csv(
        net_names["underused_lines"], pd.DataFrame(under_lines.drop(columns=under_lines.geometry.name)))

    hs_lines = int((line_frame["class"] == "high-speed").sum())
    hs_stations = int(station_frame["high_speed"].sum())
    inside = summary.loc[(summary["grouping"] == "corridor") & (summary["group"] == "inside")].iloc[0]
    outside = summary.loc[(summary["grouping"] == "corridor") & (summary["group"] == "outside")].iloc[0]
    ctx.manifest(
        inputs=inputs,
        outputs=outputs,
        parameters={
            "lines": lines_src,
            "stations": stations_src,
            "osm_file": str(osm_path or ""),
            "utilisation_file": str(util_path or ""),
            "corridor_buffer_km": buffer,
            "underused_threshold": threshold,
            "corridor_min_share": s.corridor_min_share,
            "hsr_min_trains": s.hsr_min_trains,
            "add_key_stations": s.add_key_stations,
            "utilisation_quantile": s.utilisation_quantile,
            "geometry": s.geometry if versions else str(lines_src),
            "thread_max_lateral_km": s.thread_max_lateral_km,
            "thread_max_lateral_km_conventional": s.thread_max_lateral_km_conventional,
            "thread_max_detour": s.thread_max_detour,
            "network": bool(access is not None),
            "rail_speed_factor": s.rail_speed_factor,
            "rail_dwell_min": s.rail_dwell_min,
            "rail_transfer_min": s.rail_transfer_min,
            "road_kmh": s.road_kmh,
            "road_detour": s.road_detour,
            "access_radius_km": s.access_radius_km,
            "time_breaks_min": list(s.time_breaks_min),
            "expressways": str(road_path or ""),
            "expressway_buffer_km": s.expressway_buffer_km,
        },
        summary={
            "units": len(out_units),
            "lines": len(line_frame),
            "high_speed_lines": hs_lines,
            "stations": len(station_frame),
            "high_speed_stations": hs_stations,
            "units_in_corridor": int(inside["n_units"]),
            "seconds": round(elapsed, 3),
        },
    )
    log.info(
        "%s: %d units, %d lines (%d high-speed, source %s), %d stations (%d high-speed), "
        "EPSG:4326 -> %s; in corridors (%g km): %d units, %.0f%% shrinking; outside: %d units, %.0f%% "
        "shrinking (%.1f s)",
        ctx.label,
        len(out_units),
        len(line_frame),
        hs_lines,
        lines_src,
        len(station_frame),
        hs_stations,
        gpkg,
        buffer,
        int(inside["n_units"]),
        100 * float(inside["shrinking_share"] if inside["n_units"] else 0),
        int(outside["n_units"]),
        100 * float(outside["shrinking_share"] if outside["n_units"] else 0),
        elapsed,
    )


@dataclass(frozen=True)
class _RailPrep:
    """The level-independent part of the stage: a function of the rail inputs and the settings only."""

    inputs: dict[str, Path]  # read files, in the manifest's order
    lines: gpd.GeoDataFrame  # the chosen geometry, overlaid on the units
    lines_out: gpd.GeoDataFrame  # the same with map_class and underused_threshold (layer rail_lines)
    stations: gpd.GeoDataFrame
    versions: dict[str, gpd.GeoDataFrame]  # straight and threaded (corridor file only)
    stops: set[str]
    buffers: gpd.GeoDataFrame  # corridor_buffers of lines
    alt_buffers: gpd.GeoDataFrame | None  # corridor_buffers of the other version
    corridors: gpd.GeoDataFrame
    osm_offsets: list[dict[str, Any]]  # geometry_check rows of the OSM track offsets
    network_check: pd.DataFrame | None
    notes: tuple[str, ...]  # data-quality warnings raised while it was made
    #: rail_network.core_search results by cores (names and WKB), shared by the levels
    searches: dict[Any, dict[str, Any]] = dataclasses.field(default_factory=dict)


#: The last :class:`_RailPrep` made in this process, by key (see :func:`_rail_prep`).
_PREP_MEMO: dict[tuple[Any, ...], _RailPrep] = {}


def _rail_prep(
    ctx: StageContext,
    s: Any,
    *,
    lines_src: str,
    stations_src: str,
    osm_path: Path | None,
    util_path: Path | None,
    buffer: float,
    threshold: float,
) -> _RailPrep:
    """Read and prepare the rail inputs, once per process for all unit levels.

    ``geo-pipeline run`` runs the stage at each level in one process; the rail
    inputs, the line versions (threading), the buffers, the dissolved corridors,
    the OSM geometry check and the network check do not depend on the units, so
    the second level reuses them. The key is every file that can be read (path
    and SHA-256, the digests cached per process by :func:`geo_pipeline._io.sha256`)
    and every setting, so a changed input or setting makes them again. The data
    frames are handed out as copies; the data-quality warnings of the first make
    are raised again. Measured on the real data (one process, both levels): the prefecture
    level 2.58 -> 1.61 s CPU.
    """
    cat_path = ctx.raw_file(CATALOGUE)
    corr_path = ctx.raw_file(CORRIDORS)
    counts_path = ctx.raw_file(TRAIN_COUNTS)
    st_path = ctx.raw_file(OSM_STATIONS) if stations_src == "osm_stations" else None
    check_path = ctx.raw / CHECK_OSM
    candidates = [cat_path, corr_path, counts_path, st_path, check_path, osm_path, util_path,
                  None if lines_src in ("corridors", "osm") else Path(lines_src),
                  None if stations_src in ("osm_stations", "osm") else Path(stations_src)]
    files = tuple((str(p), sha256(p) if p.is_file() else None) for p in candidates if p is not None)
    key = (files, repr(s), lines_src, stations_src, str(osm_path), str(util_path), buffer, threshold)
    prep = _PREP_MEMO.get(key)
    if prep is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataQualityWarning)
            prep = _make_rail_prep(ctx, s, lines_src=lines_src, stations_src=stations_src, osm_path=osm_path,
                                   util_path=util_path, buffer=buffer, threshold=threshold,
                                   cat_path=cat_path, corr_path=corr_path, counts_path=counts_path,
                                   st_path=st_path, check_path=check_path)
        notes = []
        for w in caught:
            if issubclass(w.category, DataQualityWarning):
                notes.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        prep = dataclasses.replace(prep, notes=tuple(notes))
        _PREP_MEMO.clear()
        _PREP_MEMO[key] = prep
    else:
        log.debug("rail inputs and line geometry reused from the previous level")
    for note in prep.notes:
        warnings.warn(note, DataQualityWarning, stacklevel=2)

    def copy(frame: Any) -> Any:
        return None if frame is None else frame.copy()

    return dataclasses.replace(
        prep,
        inputs=dict(prep.inputs),
        lines=copy(prep.lines),
        lines_out=copy(prep.lines_out),
        stations=copy(prep.stations),
        versions={k: copy(v) for k, v in prep.versions.items()},
        stops=set(prep.stops),
        buffers=copy(prep.buffers),
        alt_buffers=copy(prep.alt_buffers),
        corridors=copy(prep.corridors),
        osm_offsets=[dict(r) for r in prep.osm_offsets],
        network_check=copy(prep.network_check),
    )


def _make_rail_prep(
    ctx: StageContext,
    s: Any,
    *,
    lines_src: str,
    stations_src: str,
    osm_path: Path | None,
    util_path: Path | None,
    buffer: float,
    threshold: float,
    cat_path: Path,
    corr_path: Path,
    counts_path: Path,
    st_path: Path | None,
    check_path: Path,
) -> _RailPrep:
    """:func:`_rail_prep` without the memo."""
    inputs: dict[str, Path] = {}
    catalogue = None
    if cat_path.is_file():
        catalogue = rail.prepare_catalogue(read_csv(cat_path, what="rail line catalogue"))
        inputs["rail_catalogue"] = cat_path
    elif lines_src == "corridors":
        raise MissingInputError(f"rail line catalogue {cat_path} not found; {_FETCH_HINT}")
    raw_corridors = None
    if lines_src == "corridors" or corr_path.is_file():
        raw_corridors = read_vector(corr_path, what="rail corridor file", hint=_FETCH_HINT)
        inputs["rail_corridors"] = corr_path
    reference = raw_corridors.loc[raw_corridors.geometry.notna()] if raw_corridors is not None else None

    # -- lines --------------------------------------------------------------------------------------
    if lines_src == "corridors" and raw_corridors is not None:
        line_frame = rail.lines_from_corridors(raw_corridors)
    elif lines_src == "osm" and osm_path is not None:
        line_frame = rail.lines_from_osm(
            read_osm(osm_path, {"railway": "rail"}), catalogue=catalogue, reference=reference
        )
        inputs["osm_file"] = osm_path
    else:
        line_frame = rail.lines_from_user(
            read_vector(lines_src, what="rail lines layer"), catalogue=catalogue, reference=reference
        )
        inputs["lines"] = Path(lines_src)

    if line_frame.empty:  # an error, not a warning: it would replace a good output with no rail
        source = {"corridors": str(corr_path), "osm": str(osm_path)}.get(lines_src, lines_src)
        raise InputError(
            f"rail lines from {source}: no line with a geometry was found; expected railway lines "
            "(LineString/MultiLineString). Check the file or [infrastructure] lines"
        )

    # -- stations -----------------------------------------------------------------------------------
    if stations_src == "osm_stations" and st_path is not None:
        station_frame = rail.stations_from_points(
            read_vector(st_path, what="OSM station file", hint=_FETCH_HINT)
        )
        inputs["osm_stations"] = st_path
    elif stations_src == "osm" and osm_path is not None:
        feats = read_osm(osm_path, {"railway": ["station", "halt"]})
        station_frame = rail.stations_from_points(
            feats if "name" in feats.columns else feats.assign(name=""),
            kinds=("station", "halt"),
            kind_column="railway",
        )
        inputs["osm_file"] = osm_path
    else:
        user = read_vector(stations_src, what="rail stations layer")
        station_frame = rail.stations_from_points(user, kinds=None, source="user")
        if "high_speed" in user.columns:
            station_frame["high_speed"] = user["high_speed"].fillna(False).astype(bool).to_numpy()
            station_frame.loc[station_frame["high_speed"], "high_speed_basis"] = "user"
        inputs["stations"] = Path(stations_src)

    train_counts = None
    if counts_path.is_file():
        train_counts = read_csv(counts_path, what="station train counts")
        inputs["train_counts"] = counts_path
    line_table = None
    if util_path is not None:
        table = read_csv(util_path, what="utilisation file")
        inputs["utilisation_file"] = util_path
        if "line" in table.columns:
            line_table = table
        elif "station" in table.columns:
            train_counts = table
        else:
            raise InputError(
                f"utilisation file {util_path}: expected a 'line' column (with design_capacity and "
                "ridership or trains_per_day) or a 'station' column (with trains_per_day); "
                f"found {list(table.columns)}"
            )
    key = rail.key_stations(raw_corridors) if (raw_corridors is not None and s.add_key_stations) else None
    if station_frame.crs is not None and not station_frame.empty and key is not None:
        key = key.to_crs(station_frame.crs) if not key.crs.equals(station_frame.crs) else key
    station_frame = rail.flag_high_speed(
        station_frame,
        train_counts=train_counts,
        key=key,
        min_hsr_trains=s.hsr_min_trains,
        add_missing_key_stations=s.add_key_stations,
    )
    line_frame = rail.line_utilisation(
        line_frame,
        train_counts=train_counts,
        line_table=line_table,
        threshold=threshold,
        reference_quantile=s.utilisation_quantile,
    )

    # -- geometry: threaded through the stations, or straight ---------------------------------------
    versions: dict[str, gpd.GeoDataFrame] = {}
    stops: set[str] = set()
    if lines_src == "corridors" and raw_corridors is not None:
        versions, stops = _line_versions(line_frame, raw_corridors, station_frame, train_counts, s)
        line_frame = versions[s.geometry]
    else:
        line_frame = line_frame.assign(geometry_source=str(line_frame["source"].iloc[0])
                                       if len(line_frame) else "")

    buffers = inf.corridor_buffers(line_frame, buffer_km=buffer)
    alt_buffers = None
    osm_offsets: list[dict[str, Any]] = []
    if versions:
        other = "straight" if s.geometry == "threaded" else "threaded"
        alt_buffers = inf.corridor_buffers(versions[other], buffer_km=buffer)
        if check_path.is_file():
            inputs["check_osm"] = check_path
            osm_offsets = _osm_offsets(versions, check_path, catalogue, reference)
    corridors = inf.dissolve_corridors(buffers, approximate=bool(line_frame["approximate"].any()))
    lines_out = line_frame.assign(map_class=und.map_class(line_frame).to_numpy(),
                                  underused_threshold=threshold)
    # the layers made from the lines say which geometry they hold, like rail_lines
    source = str(lines_out["geometry_source"].iloc[0]) if len(lines_out) else ""
    corridors = corridors.assign(geometry_source=source)
    network_check = None
    if s.network and versions:
        graph = rnet.build_network(lines_out, speed_factor=s.rail_speed_factor, dwell_min=s.rail_dwell_min,
                                   transfer_min=s.rail_transfer_min, stops=stops)
        network_check = rnet.reference_check(graph)
    return _RailPrep(inputs=inputs, lines=line_frame, lines_out=lines_out, stations=station_frame,
                     versions=versions, stops=stops, buffers=buffers, alt_buffers=alt_buffers,
                     corridors=corridors, osm_offsets=osm_offsets, network_check=network_check, notes=())


def _line_versions(
    lines: gpd.GeoDataFrame,
    raw_corridors: gpd.GeoDataFrame,
    stations: gpd.GeoDataFrame,
    train_counts: pd.DataFrame | None,
    s: Any,
) -> tuple[dict[str, gpd.GeoDataFrame], set[str]]:
    """The straight and the threaded version of the corridor lines, and the stations where trains stop."""
    unmatched = dict(zip(raw_corridors["line"].astype(str), raw_corridors.get("unmatched", ""), strict=True))
    pool_st = stations.loc[stations["source"] != "corridor_key_station"]
    pools = rgeo.threading_pools(pool_st, train_counts=train_counts, min_hsr_trains=s.hsr_min_trains)
    threaded = rgeo.thread_lines(
        lines.assign(unmatched=lines["name"].map(unmatched)),
        pools,
        max_lateral_km=s.thread_max_lateral_km,
        max_lateral_km_conventional=s.thread_max_lateral_km_conventional,
        max_detour=s.thread_max_detour,
    ).drop(columns=["unmatched"])
    threaded["note"] = rgeo.THREADED_NOTE
    empty = {k: v.iloc[:0] for k, v in pools.items()}  # no station to thread: the straight lines, with ids
    straight = rgeo.thread_lines(lines.assign(unmatched=lines["name"].map(unmatched)), empty).drop(
        columns=["unmatched"]).assign(geometry_source="straight", note=lines["note"])
    stops = {str(i) for p in pools.values() for i in p.loc[p["hub"], "station_id"]}
    return {"straight": straight, "threaded": threaded}, stops


def _network(
    units: gpd.GeoDataFrame,
    lines: gpd.GeoDataFrame,
    cores: gpd.GeoDataFrame,
    stops: set[str],
    s: Any,
    network_check: pd.DataFrame | None = None,
    searches: dict[Any, dict[str, Any]] | None = None,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Door-to-core minutes now and in 2010, their summaries and the timetable check.

    ``network_check`` is the timetable check when already made (it depends on the lines only);
    ``searches`` keeps the cores' network searches (:func:`rail_network.core_search`) of these
    lines and settings by cores, for the next level.
    """
    check_frame(cores, name="distance.gpkg layer cores", columns={"name": "any"}, crs="EPSG:4326",
                geometry=True, geom_types=("Point",)).raise_if_any()
    opts = {
        "speed_factor": s.rail_speed_factor,
        "dwell_min": s.rail_dwell_min,
        "transfer_min": s.rail_transfer_min,
        "road_kmh": s.road_kmh,
        "detour": s.road_detour,
        "access_radius_km": s.access_radius_km,
        "breaks_min": list(s.time_breaks_min),
        "stops": stops,
    }
    # the cores' side of the network search depends on the lines, the settings and the cores only:
    # made once for both levels when their cores are the same (0.25 s CPU per level)
    key = (tuple(cores["name"].astype(str)), tuple(shapely.to_wkb(cores.geometry.values)), str(cores.crs))
    found = {} if searches is None else searches.setdefault(key, {})
    access = rnet.access_then_and_now(units, lines, cores, year=inf.CENSUS_YEARS[0], searches=found, **opts)
    pop_cols = [c for c in ("unit_id", "pop_2010", "pop_2020", "change_pct", "shrinking", "hukou_2010",
                            "net_outflow") if c in units.columns]
    joined = pd.DataFrame(units[pop_cols]).assign(unit_id=lambda d: d["unit_id"].astype(str)).merge(
        access, on="unit_id", validate="one_to_one")
    if network_check is None:
        graph = rnet.build_network(lines, speed_factor=s.rail_speed_factor, dwell_min=s.rail_dwell_min,
                                   transfer_min=s.rail_transfer_min, stops=stops)
        network_check = rnet.reference_check(graph)
    tables = {
        "time_band_summary": rnet.time_band_summary(joined, breaks_min=list(s.time_breaks_min)),
        "access_change_summary": rnet.access_change_summary(joined),
        "network_check": network_check,
    }
    return access, tables


def _geometry_check(change: pd.DataFrame, osm_offsets: list[dict[str, Any]]) -> pd.DataFrame:
    """The membership change of the units, then the offsets of both versions to the OSM tracks."""
    rows = [
        {"check": "corridor_membership", "geometry": "both", "track": "", "line": "", "measure": m,
         "value": float(v)}
        for m, v in zip(change["measure"], change["value"], strict=True)
    ]
    rows += osm_offsets
    return pd.DataFrame(rows, columns=["check", "geometry", "track", "line", "measure", "value"])


def _osm_offsets(
    versions: dict[str, gpd.GeoDataFrame],
    osm_path: Path,
    catalogue: pd.DataFrame | None,
    reference: gpd.GeoDataFrame | None,
) -> list[dict[str, Any]]:
    """Offsets of both line versions to the OSM tracks of the check extract (geometry_check rows)."""
    rows: list[dict[str, Any]] = []
    osm = rail.lines_from_osm(read_osm(osm_path, {"railway": "rail"}), catalogue=catalogue,
                              reference=reference)
    osm = osm.loc[osm["catalogue_line"].isin(set(versions["straight"]["name"]))]
    tracks = gpd.GeoDataFrame({"track": osm["name"].to_numpy(), "line": osm["catalogue_line"].to_numpy()},
                              geometry=osm.geometry.to_numpy(), crs=osm.crs)
    for version, frame in versions.items():
        off = rgeo.track_offset(frame, tracks)
        for _, r in off.iterrows():
            for m in ("n_points", "mean_m", "median_m", "max_m", "share_within_5km"):
                rows.append({"check": f"offset_to_osm:{osm_path.name}", "geometry": version,
                             "track": r["track"], "line": r["line"], "measure": m, "value": float(r[m])})
    log.info("geometry check against %s: %s", osm_path.name, "; ".join(
        f"{v} mean {r['value']:.0f} m" for v in versions for r in rows
        if r["geometry"] == v and r["track"] == "all" and r["measure"] == "mean_m"))
    return rows
