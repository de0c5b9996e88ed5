"""Export stage: one QGIS-ready GeoPackage with every result, styled and described.

:func:`merge_unit_columns` joins the per-unit columns of every stage onto the
population units by ``unit_id``; :func:`assemble_layers` turns the stage
outputs into the layers of ``shrinkage.gpkg``, each with a description, field
descriptions and QGIS styles (QML, see :mod:`geo_pipeline.styles`). Writing the
file (pyogrio, then the ``layer_styles`` and ``gpkg_data_columns`` tables with
sqlite3, atomically) is done by :func:`write_styled_gpkg`, the one function here
that touches the disk; everything else is pure.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyogrio

from . import styles
from ._errors import CRSError, DataQualityWarning, InputError
from ._io import _write_through, atomic_path
from ._levels import UNITS_LAYER, level_layer, level_title
from ._validate import Problems, check_frame

__all__ = [
    "ExportLayer",
    "LayerStyle",
    "merge_unit_columns",
    "assemble_layers",
    "add_level_layers",
    "field_descriptions",
    "write_styled_gpkg",
    "LAYER_ORDER",
]

log = logging.getLogger(__name__)

#: Layers of ``shrinkage.gpkg`` in the order they are written (absent ones are skipped).
LAYER_ORDER = (
    "units", "prefectures", "provinces", "lisa", "distance_rings", "cores",
    "rail_lines", "rail_stations", "corridors", "underused_lines",
    "band_summary", "global_moran", "corridor_summary", "time_band_summary", "access_change_summary",
)

LAYER_DESCRIPTIONS = {
    "units": "Analysis units (harmonised counties) with every indicator of the pipeline: population "
             "2010/2020 and change, net outflow (hukou vs resident), distance to metropolitan cores, "
             "spatial autocorrelation, rail access and, if run, gridded population.",
    "prefectures": "Prefecture-level cities with population 2010/2020 and change (census city table).",
    "provinces": "Province-level divisions (outline).",
    "lisa": "Local Moran's I (LISA) clusters of the analysis units: High-High, Low-Low, Low-High, "
            "High-Low, not significant.",
    "distance_rings": "Geodesic distance bands (rings) around the metropolitan cores.",
    "cores": "Metropolitan cores used for the distance bands.",
    "rail_lines": "Rail lines by class (high-speed, fast, conventional); approximate corridor geometry.",
    "rail_stations": "Rail stations (OpenStreetMap) with derived train counts where known.",
    "corridors": "Buffers around high-speed rail corridors.",
    "band_summary": "Population change summarised by distance band.",
    "global_moran": "Global Moran's I of each analysed variable (statistic moran) and bivariate Moran's I "
                    "of each pair (moran_bv: x at the unit with y at its neighbours).",
    "corridor_summary": "Population change inside and outside the rail corridors.",
    "underused_lines": "Underused rail lines (utilisation below the threshold) with the units they cross "
                       "and those units' shrinking share.",
    "time_band_summary": "Population change by door-to-core travel time band (road + rail).",
    "access_change_summary": "Population change by minutes saved between the 2010 rail network and today's.",
}

LAYER_TITLES = {
    "units": "Analysis units (all indicators)",
    "prefectures": "Prefecture-level cities",
    "provinces": "Provinces",
    "lisa": "LISA clusters",
    "distance_rings": "Distance bands to cores",
    "cores": "Metropolitan cores",
    "rail_lines": "Rail lines",
    "rail_stations": "Rail stations",
    "corridors": "High-speed rail corridors",
    "band_summary": "Summary by distance band",
    "global_moran": "Global Moran's I",
    "corridor_summary": "Summary by rail corridor",
    "underused_lines": "Underused rail lines",
    "time_band_summary": "Summary by travel-time band",
    "access_change_summary": "Summary by minutes saved since 2010",
}

_FIELD_DESCRIPTIONS = {
    "unit_id": "Identifier of the analysis unit (key shared by every stage)",
    "name": "Name",
    "province": "Province name",
    "province_code": "Province code (6-digit administrative code)",
    "prefecture": "Prefecture-level city name",
    "prefecture_code": "Prefecture code (6-digit administrative code)",
    "adcode": "Administrative code (6 digits)",
    "level": "Administrative level of the unit (county, prefecture, province)",
    "in_census": "True when census rows exist for the unit",
    "n_members": "Number of boundary polygons merged into the unit",
    "pop_2010": "Resident population, 2010 census (6th)",
    "pop_2020": "Resident population, 2020 census (7th)",
    "change": "Population change 2010-2020 (persons) = pop_2020 - pop_2010",
    "change_pct": "Population change 2010-2020 in % = 100 * (pop_2020 - pop_2010) / pop_2010",
    "annual_rate": "Compound annual growth rate 2010-2020 in % per year",
    "shrinking": "True when change_pct is below the shrinking threshold",
    "hukou_2010": "Registered (hukou) population, 2010 census",
    "net_outflow_ratio": "Net outflow ratio = (hukou_2010 - pop_2010) / hukou_2010; positive: net outflow",
    "net_outflow": "True when the net outflow ratio is positive (more registered than resident people)",
    "region": "NBS economic region of the province: East, Central, West or Northeast",
    "region_zh": "Economic region in Chinese: 东部, 中部, 西部, 东北",
    "unit_kind": "Kind of county unit: district (市辖区), city (county-level), county, other (banner, "
                 "特区, 林区), mixed (merged units of several kinds)",
    "share_60plus_2010": "Residents aged 60+ in % of residents, 2010 census",
    "share_60plus_2020": "Residents aged 60+ in % of residents, 2020 census",
    "share_65plus_2010": "Residents aged 65+ in % of residents, 2010 census",
    "share_65plus_2020": "Residents aged 65+ in % of residents, 2020 census",
    "share_60plus_change_pts": "Change of the 60+ share 2010-2020, percentage points",
    "share_65plus_change_pts": "Change of the 65+ share 2010-2020, percentage points",
    "old_age_dependency_2010": "Old-age dependency ratio 2010: residents aged 65+ per 100 aged 15-64",
    "old_age_dependency_2020": "Old-age dependency ratio 2020: residents aged 65+ per 100 aged 15-64",
    "comparable": "False when the population is not comparable between the censuses (e.g. Sansha: "
                  "2010 rows empty); left out of weights and statistics",
    "pop_raster_sum": "Sum of gridded population inside the unit",
    "pop_raster_mean": "Mean gridded population density inside the unit",
    "pop_centroid_lon": "Longitude of the population-weighted centroid",
    "pop_centroid_lat": "Latitude of the population-weighted centroid",
    "change_pct_eb": "Empirical-Bayes standardised population change (Assuncao-Reis z of pop_2020 / pop_2010 "
                     "against the national ratio; dimensionless; GeoDa EB rate, esda Moran_Rate)",
    "change_pct_eb_smooth": "Empirical-Bayes smoothed population change in % (Marshall global EB: small "
                            "units pulled toward the national change)",
    "w_included": "True when the unit is in the spatial weights and statistics (False: population not "
                  "comparable between the censuses; statistics left empty)",
    "w_neighbors": "Number of neighbours in the spatial weights (added island links included)",
    "w_component": "Connected component of the contiguity weights before island links (0: largest; -1: "
                   "not in the weights)",
    "w_linked": "True when an island link was added to this unit",
    "rail_minutes_to_core": "Door-to-core minutes: road to a station and rail to the nearest core, or road "
                            "alone when faster (rail_network.py)",
    "rail_time_band": "Travel-time band of rail_minutes_to_core (< 60, 60-120, 120-180, 180+ min)",
    "rail_minutes_to_core_2010": "rail_minutes_to_core on the 2010 network (lines opened before 2010)",
    "rail_time_band_2010": "Travel-time band on the 2010 network",
    "rail_minutes_saved": "rail_minutes_to_core_2010 - rail_minutes_to_core (minutes)",
    "rail_core": "Core reached by the fastest route",
    "rail_station": "Station where the fastest rail route starts",
    "rail_access_minutes": "Road minutes from the unit to that station",
    "rail_route": "rail (road to a station, then rail) or road (straight to the core)",
    "in_corridor_straight": "In a high-speed corridor with the straight key-station lines",
    "in_corridor_threaded": "In a high-speed corridor with the lines threaded through their stations",
}

_PATTERNS = (
    (r"bv_(.+)_vs_(.+)_cluster", "Bivariate LISA cluster of {0} with the neighbours' {1} (HH: high {0}, high "
     "{1} around; LL, HL, LH; not significant; not comparable: left out)"),
    (r"bv_(.+)_vs_(.+)_p", "Pseudo p-value of the bivariate local Moran's I of {0} with the neighbours' {1}"),
    (r"bv_(.+)_vs_(.+)_q", "Benjamini-Hochberg q-value of the bivariate local Moran's I of {0} with {1}"),
    (r"bv_(.+)_vs_(.+)_I", "Bivariate local Moran's I of {0} with the neighbours' {1} (esda Moran_Local_BV)"),
    (r"bv_(.+)_vs_(.+)_std", "Standardised {0} (x of the bivariate LISA with {1})"),
    (r"bv_(.+)_vs_(.+)_lag", "Spatial lag of the standardised {1} (neighbours' mean; bivariate LISA "
     "with {0})"),
    (r"lisa_(.+)_cluster", "LISA cluster of {0} (HH, LL, LH, HL, not significant; not comparable: left out)"),
    (r"lisa_(.+)_(p|p_sim|pvalue)", "Pseudo p-value of the local Moran's I of {0}"),
    (r"lisa_(.+)_(I|i|is)", "Local Moran's I of {0}"),
    (r"lisa_(.+)_q", "Benjamini-Hochberg q-value (false discovery rate) of the LISA p-value of {0}"),
    (r"lisa_(.+)_std", "Standardised value of {0} (z-score used by the LISA)"),
    (r"lisa_(.+)_lag", "Spatial lag (row-standardised mean of the neighbours) of the standardised {0}"),
    (r"gi_(.+)_z", "Getis-Ord Gi* z-score of {0}"),
    (r"gi_(.+)_p", "Pseudo p-value of Getis-Ord Gi* of {0}"),
    (r"gi_(.+)_(class|cluster)", "Getis-Ord Gi* hot/cold spot class of {0}"),
)


@dataclass(frozen=True)
class LayerStyle:
    """One QGIS style of a layer, as stored in ``layer_styles``."""

    name: str
    qml: str
    description: str
    default: bool = False


@dataclass(frozen=True)
class ExportLayer:
    """A layer of the export GeoPackage with its descriptions and styles.

    Attributes
    ----------
    name : layer (table) name.
    frame : GeoDataFrame (spatial layer) or DataFrame (attribute table).
    title : short title (``gpkg_contents.identifier``).
    description : layer description (``gpkg_contents.description``).
    fields : column name to description (``gpkg_data_columns``).
    styles : QGIS styles; exactly one is the default for spatial layers.
    sources : stage outputs the layer was made from.
    view_of : when set, the layer is written as a GeoPackage view of that
        layer (same rows and geometry, only ``frame``'s columns), so the
        geometry is stored once.
    """

    name: str
    frame: pd.DataFrame
    title: str
    description: str
    fields: dict[str, str] = field(default_factory=dict)
    styles: tuple[LayerStyle, ...] = ()
    sources: tuple[str, ...] = ()
    view_of: str | None = None

    @property
    def spatial(self) -> bool:
        """True for layers with geometry."""
        return isinstance(self.frame, gpd.GeoDataFrame)


def field_descriptions(columns: Sequence[str], provenance: Mapping[str, str] | None = None) -> dict[str, str]:
    """Human-readable description of each column (known names, LISA patterns, else its stage).

    Parameters
    ----------
    columns : sequence of str
        Column names (the geometry column is skipped).
    provenance : mapping, optional
        Column to the stage that made it, used for columns without a known description.

    Returns
    -------
    dict
        Column name to description.
    """
    out = {}
    prov = provenance or {}
    for col in columns:
        if col in ("geometry", "geom"):
            continue
        if col in _FIELD_DESCRIPTIONS:
            out[col] = _FIELD_DESCRIPTIONS[col]
            continue
        for pattern, template in _PATTERNS:
            m = re.fullmatch(pattern, col)
            if m:
                out[col] = template.format(*m.groups())
                break
        else:
            stage = prov.get(col)
            out[col] = f"{col} (from the {stage} stage)" if stage else col
    return out


def merge_unit_columns(
    units: gpd.GeoDataFrame,
    tables: Mapping[str, pd.DataFrame],
) -> tuple[gpd.GeoDataFrame, dict[str, str]]:
    """Join the per-unit columns of each stage onto ``units`` by ``unit_id``.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        The population stage's ``units`` layer (keeps its geometry and columns).
    tables : mapping of str to DataFrame
        Stage name to that stage's ``units`` layer: ``unit_id`` plus new
        columns (a geometry column, if any, is ignored).

    Returns
    -------
    merged : geopandas.GeoDataFrame
        ``units`` with the new columns, same rows and order.
    provenance : dict
        Column name to the stage it came from (``"population"`` for the
        columns of ``units``).

    Raises
    ------
    InputError
        If ``unit_id`` is missing or not unique in ``units`` or in a table.

    Warns
    -----
    DataQualityWarning
        When a table has ``unit_id`` values that are not in ``units``, or
        does not cover every unit, or repeats a column with different values
        (the first stage's column is kept).
    """
    check_frame(units, name="population units", columns={"unit_id": "any"}, unique=["unit_id"],
                not_null=["unit_id"]).raise_if_any()
    geom = units.geometry.name
    provenance = {c: "population" for c in units.columns if c != geom}
    merged = pd.DataFrame(units.drop(columns=geom)).copy()
    merged["unit_id"] = merged["unit_id"].astype(str)
    for stage, table in tables.items():
        check_frame(table, name=f"{stage} units", columns={"unit_id": "any"}, unique=["unit_id"],
                    not_null=["unit_id"]).raise_if_any()
        tab = pd.DataFrame(table).copy()
        if isinstance(table, gpd.GeoDataFrame):
            tab = tab.drop(columns=table.geometry.name)
        tab["unit_id"] = tab["unit_id"].astype(str)
        extra = sorted(set(tab["unit_id"]) - set(merged["unit_id"]))
        if extra:
            warnings.warn(
                f"{stage} units: {len(extra)} unit_id value(s) not in the population units "
                f"(e.g. {extra[:5]}); those rows are left out of the export",
                DataQualityWarning, stacklevel=2,
            )
        missing = len(set(merged["unit_id"]) - set(tab["unit_id"]))
        if missing:
            warnings.warn(
                f"{stage} units: {missing} of {len(merged)} units have no row; their {stage} "
                "columns are empty in the export",
                DataQualityWarning, stacklevel=2,
            )
        new_cols = []
        # the columns this stage repeats, compared after one join for all of them (a join per column
        # took 0.12 s of the 0.2 s of the two levels' merges; the same rows and comparisons)
        repeated = [c for c in tab.columns if c != "unit_id" and c in merged.columns]
        joined = merged[["unit_id", *repeated]].merge(tab[["unit_id", *repeated]], on="unit_id", how="inner")
        for col in tab.columns:
            if col == "unit_id":
                continue
            if col in merged.columns:
                a, b = joined[f"{col}_x"], joined[f"{col}_y"]
                same = (a.astype(str) == b.astype(str)) | (a.isna() & b.isna())
                if not same.all():
                    warnings.warn(
                        f"{stage} units: column {col!r} differs from the one of the "
                        f"{provenance[col]} stage in {int((~same).sum())} rows; the {provenance[col]} "
                        "column is kept",
                        DataQualityWarning, stacklevel=2,
                    )
                continue
            new_cols.append(col)
            provenance[col] = stage
        if new_cols:
            merged = merged.merge(tab[["unit_id", *new_cols]], on="unit_id", how="left", validate="1:1")
    out = gpd.GeoDataFrame(merged, geometry=units.geometry.to_numpy(), crs=units.crs)
    out = out.rename_geometry(geom) if geom != "geometry" else out
    out.index = units.index
    return out, provenance


def _find_column(frame: pd.DataFrame, names: Sequence[str], contains: str | None = None) -> str | None:
    for n in names:
        if n in frame.columns:
            return n
    if contains:
        geom = frame.geometry.name if isinstance(frame, gpd.GeoDataFrame) else None
        for c in frame.columns:
            if contains in c.lower() and c != geom:
                return c
    return None


def _kind(frame: gpd.GeoDataFrame) -> styles.SymbolKind:
    types = frame.geometry.geom_type.dropna().unique()
    return styles.symbol_kind(str(types[0]) if len(types) else "Polygon")


def lisa_column(frame: pd.DataFrame) -> str | None:
    """The LISA cluster column to map: ``lisa_change_pct_cluster`` or the first ``lisa_*_cluster``."""
    if "lisa_change_pct_cluster" in frame.columns:
        return "lisa_change_pct_cluster"
    found = [c for c in frame.columns if re.fullmatch(r"lisa_.+_cluster", c)]
    return found[0] if found else None


def band_column(frame: pd.DataFrame) -> str | None:
    """The distance band column (``band``, ``band_label``, ``distance_band`` or any ``*band*``)."""
    return _find_column(frame, ("band", "band_label", "distance_band", "band_km"), contains="band")


def rail_class_column(frame: pd.DataFrame) -> str | None:
    """The rail line class column (``class``, ``rail_class``, ``line_class``, ``type`` ...)."""
    return _find_column(
        frame, ("class", "rail_class", "line_class", "speed_class", "type", "category", "kind")
    )


def _underused_note(frame: pd.DataFrame) -> str:
    """Legend note of the underused classes (``"utilisation < 0.4"``) from the threshold column."""
    thr = pd.to_numeric(frame.get("underused_threshold", pd.Series(dtype=float)), errors="coerce").dropna()
    return f"utilisation < {thr.iloc[0]:g}" if len(thr) else ""


def _graduated(frame: gpd.GeoDataFrame, column: str, name: str, *, default: bool,
               outflow: bool = False) -> LayerStyle:
    kw: dict[str, Any] = {"unit": " %"}
    if outflow:  # positive ratio = net outflow: warm colours, like shrinking
        kw = {"below_colors": tuple(reversed(styles.GROW_COLORS)),
              "above_colors": tuple(reversed(styles.SHRINK_COLORS)), "decimals": 2}
    classes = styles.diverging_classes(frame[column], column=column, **kw)
    qml = styles.graduated_qml(classes, _kind(frame))
    return LayerStyle(name, qml, f"Graduated colours of {column}: {classes.method}", default)


def bivariate_columns(frame: pd.DataFrame) -> list[str]:
    """The bivariate LISA cluster columns (``bv_<x>_vs_<y>_cluster``) in column order."""
    return [c for c in frame.columns if re.fullmatch(r"bv_.+_vs_.+_cluster", c)]


def _ageing_styles(frame: gpd.GeoDataFrame, kind: styles.SymbolKind) -> list[LayerStyle]:
    """Alternative unit styles: 60+ shares, their change, EB change and bivariate LISA clusters."""
    out: list[LayerStyle] = []
    for col, name in (("share_60plus_2020", "Aged 60+ 2020 (%)"), ("share_60plus_2010", "Aged 60+ 2010 (%)")):
        if col in frame.columns and frame[col].notna().any():
            classes = styles.sequential_classes(frame[col], column=col, unit=" %")
            out.append(LayerStyle(name, styles.graduated_qml(classes, kind),
                                  f"Graduated colours of {col}: mapclassify {classes.method}"))
    col = "share_60plus_change_pts"
    if col in frame.columns and frame[col].notna().any():
        classes = styles.diverging_classes(frame[col], column=col, unit=" pts",
                                           below_colors=tuple(reversed(styles.GROW_COLORS)),
                                           above_colors=styles.AGEING_COLORS[1:])
        out.append(LayerStyle("Aged 60+ change (pts)", styles.graduated_qml(classes, kind),
                              f"Graduated colours of {col}: {classes.method}"))
    if "change_pct_eb" in frame.columns and frame["change_pct_eb"].notna().any():
        classes = styles.diverging_classes(frame["change_pct_eb"], column="change_pct_eb", decimals=2)
        out.append(LayerStyle("EB change (z)", styles.graduated_qml(classes, kind),
                              f"Graduated colours of change_pct_eb: {classes.method}"))
    for col in bivariate_columns(frame):
        x, y = re.fullmatch(r"bv_(.+)_vs_(.+)_cluster", col).groups()  # type: ignore[union-attr]
        out.append(LayerStyle(f"Bivariate LISA {y}", styles.categorized_qml(
            col, styles.lisa_categories(frame[col]), kind),
            f"Bivariate LISA clusters of {x} with the neighbours' {y} ({col})"))
    return out


def _styles_for(name: str, frame: gpd.GeoDataFrame) -> tuple[LayerStyle, ...]:
    kind = _kind(frame)
    out: list[LayerStyle] = []
    if not len(frame):
        pass
    elif (name in ("units", "prefectures") and "change_pct" in frame.columns
          and frame["change_pct"].notna().any()):
        out.append(_graduated(frame, "change_pct", "Population change 2010-2020 (%)", default=True))
        if "net_outflow_ratio" in frame.columns and frame["net_outflow_ratio"].notna().any():
            out.append(_graduated(frame, "net_outflow_ratio", "Net outflow ratio", default=False,
                                  outflow=True))
        lisa = lisa_column(frame)
        if lisa:
            out.append(LayerStyle("LISA clusters", styles.categorized_qml(
                lisa, styles.lisa_categories(frame[lisa]), kind), f"LISA clusters ({lisa})"))
        out.extend(_ageing_styles(frame, kind))
        band = band_column(frame)
        if band:
            out.append(LayerStyle("Distance bands", styles.categorized_qml(
                band, styles.band_categories(frame[band]), kind), f"Distance bands ({band})"))
    elif name == "lisa":
        col = lisa_column(frame)
        if col:
            out.append(LayerStyle("LISA clusters", styles.categorized_qml(
                col, styles.lisa_categories(frame[col]), kind), f"LISA clusters ({col})", True))
    elif name == "distance_rings":
        col = _find_column(frame, ("radius_km", "band", "band_label", "distance_band"))
        if col:
            out.append(LayerStyle("Distance rings", styles.categorized_qml(
                col, styles.band_categories(frame[col]), kind, width=0.5, fill=False),
                f"Distance rings by {col} (outlines, rings of several cores overlap)", True))
    elif name in ("rail_lines", "underused_lines") and "map_class" in frame.columns:
        cats = styles.rail_categories(frame["map_class"], underused_note=_underused_note(frame))
        counts = frame["map_class"].astype(str).value_counts()
        cats = [replace(c, label=f"{c.label}: {int(counts.get(str(c.value), 0))}") for c in cats]
        out.append(LayerStyle("Rail lines, underused dashed", styles.categorized_qml("map_class", cats, kind),
                              "Rail lines by class; underused lines dashed blue", True))
        col = rail_class_column(frame)
        if col:
            out.append(LayerStyle("Rail lines by class", styles.categorized_qml(
                col, styles.rail_categories(frame[col]), kind), f"Rail lines by class ({col})"))
    elif name == "rail_lines":
        col = rail_class_column(frame)
        if col:
            out.append(LayerStyle("Rail lines by class", styles.categorized_qml(
                col, styles.rail_categories(frame[col]), kind), f"Rail lines by class ({col})", True))
    elif name == "cores":
        out.append(LayerStyle("Cores", styles.single_qml(kind, "#000000", outline="#ffffff", size=3.2,
                                                          shape="star"), "Metropolitan cores", True))
    elif name == "rail_stations" and "high_speed" in frame.columns:
        cats = [styles.Category(True, styles.RAIL_COLORS["high_speed"], "High-speed station", 0.1),
                styles.Category(False, "#7f7f7f", "Other station", 0.1)]
        out.append(LayerStyle("Stations", styles.categorized_qml("high_speed", cats, kind, outline="#ffffff"),
                              "Rail stations, high-speed in magenta", True))
    elif name == "rail_stations":
        out.append(LayerStyle("Stations", styles.single_qml(kind, "#3f3f3f", outline="#ffffff", size=1.2,
                                                             width=0.1), "Rail stations", True))
    elif name == "corridors":
        out.append(LayerStyle("Corridors", styles.single_qml(kind, "#c51b7d", outline="#c51b7d", width=0.2,
                                                              alpha=0.25), "Rail corridor buffers", True))
    if not out:  # provinces, and any layer whose thematic column is absent: an outline
        width = 0.4 if name == "provinces" else 0.15
        qml = (styles.single_qml(kind, "#000000", outline="#404040", width=width, fill=False)
               if kind == "fill" else styles.single_qml(kind, "#404040", width=width))
        out.append(LayerStyle("Outline", qml, f"{name} outline", True))
    return tuple(out)


def assemble_layers(
    units: gpd.GeoDataFrame,
    *,
    unit_tables: Mapping[str, pd.DataFrame] | None = None,
    layers: Mapping[str, pd.DataFrame] | None = None,
    sources: Mapping[str, str] | None = None,
    descriptions: Mapping[str, str] | None = None,
) -> dict[str, ExportLayer]:
    """Build the layers of the export GeoPackage, with descriptions and QGIS styles.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Population ``units`` (EPSG:4326, ``unit_id`` unique).
    unit_tables : mapping of str to DataFrame, optional
        Stage name to its per-unit table (merged by :func:`merge_unit_columns`).
    layers : mapping of str to DataFrame, optional
        Further layers by export name (``prefectures``, ``provinces``,
        ``cores``, ``distance_rings``, ``rail_lines``, ``rail_stations``,
        ``corridors``) and attribute tables (``band_summary``,
        ``global_moran``, ``corridor_summary``). A ``lisa`` layer is derived
        from the merged units when they have ``lisa_*`` columns.
    sources : mapping of str to str, optional
        Layer name to the file it came from (recorded in the layer metadata).
    descriptions : mapping of str to str, optional
        Layer descriptions written by the source stages; they win over the
        built-in ones.

    Returns
    -------
    dict of str to ExportLayer
        In :data:`LAYER_ORDER`, then any other layer in the given order.

    Raises
    ------
    CRSError
        If a spatial layer is not in EPSG:4326 (the data contract).
    InputError
        If ``unit_id`` is missing or duplicated.
    """
    unit_tables = dict(unit_tables or {})
    extra = dict(layers or {})
    sources = dict(sources or {})
    own_descriptions = {k: v for k, v in (descriptions or {}).items() if v}
    check_frame(units, name="population units", geometry=True, crs="EPSG:4326",
                columns={"unit_id": "any"}).raise_if_any()
    crs_problems = Problems("export inputs")
    for lname, frame in extra.items():
        if isinstance(frame, gpd.GeoDataFrame) and (frame.crs is None or not frame.crs.equals("EPSG:4326")):
            found = frame.crs.to_string() if frame.crs is not None else "no CRS"
            crs_problems.add(f"layer {lname!r}: expected CRS EPSG:4326 (the data contract), found {found}; "
                             "reproject it with .to_crs('EPSG:4326') in the stage that wrote it",
                             kind=CRSError)
    crs_problems.raise_if_any()
    rule = _significance(extra.get("global_moran"))
    merged, provenance = merge_unit_columns(units, unit_tables)
    frames: dict[str, pd.DataFrame] = {"units": merged}
    lisa_cols = [c for c in merged.columns if c.startswith(("lisa_", "gi_"))]
    if lisa_cols:
        keep = [c for c in ("unit_id", "name", "province", "prefecture") if c in merged.columns]
        frames["lisa"] = merged[[*keep, *lisa_cols, merged.geometry.name]].copy()
    for lname, frame in extra.items():
        if lname in frames:
            raise InputError(f"layer {lname!r} given twice; expected one frame per export layer")
        frames[lname] = frame
    ordered = [n for n in LAYER_ORDER if n in frames] + [n for n in frames if n not in LAYER_ORDER]
    out: dict[str, ExportLayer] = {}
    for lname in ordered:
        frame = frames[lname]
        spatial = isinstance(frame, gpd.GeoDataFrame)
        layer_styles = _styles_for(lname, frame) if spatial else ()
        prov = provenance if lname in ("units", "lisa") else {}
        src = tuple(sorted({f"{s}.gpkg" for s in (set(prov.values()) if prov else ())})) or (
            (sources[lname],) if lname in sources else ())
        description = own_descriptions.get(lname) or LAYER_DESCRIPTIONS.get(
            lname, f"{lname} (from {', '.join(src) or 'the pipeline'})")
        fields = field_descriptions(list(frame.columns), prov)
        if rule and lname in ("units", "lisa", "global_moran"):
            if lname != "units":
                description = f"{description} Significance: {rule}."
            for col in fields:
                if re.fullmatch(r"(lisa|bv)_.+_cluster|gi_.+_class", col):
                    fields[col] = f"{fields[col]}; significant when {rule}"
        out[lname] = ExportLayer(
            name=lname, frame=frame, title=LAYER_TITLES.get(lname, lname),
            description=description,
            fields=fields, styles=layer_styles, sources=src,
            view_of="units" if lname == "lisa" else None,
        )
    return out


def add_level_layers(
    layers: Mapping[str, ExportLayer],
    level_layers: Mapping[str, ExportLayer],
    *,
    level: str,
) -> dict[str, ExportLayer]:
    """Add the layers of a further unit level to the export layers, named ``<level>_<name>``.

    Parameters
    ----------
    layers : mapping of str to ExportLayer
        The export layers of the base (county) level, from :func:`assemble_layers`.
    level_layers : mapping of str to ExportLayer
        :func:`assemble_layers` of the units of ``level`` (their ``units``,
        ``lisa`` and summary tables); spatial layers keep their styles (the
        ``units`` styles: change, net outflow, LISA, distance bands).
    level : str
        The level, e.g. ``"prefecture"``: ``units`` becomes ``prefecture_units``.

    Returns
    -------
    dict of str to ExportLayer
        ``layers`` followed by the renamed level layers. A base layer holding
        the same units without the indicators (``prefectures``) becomes a view
        of the level's units layer, so the geometry is stored once.

    Raises
    ------
    InputError
        If a renamed layer already exists in ``layers``.
    """
    out = dict(layers)
    units_name = level_layer("units", level)
    title = level_title(level)
    for name, layer in level_layers.items():
        new = level_layer(name, level)
        if new in out:
            raise InputError(f"layer {new!r} given twice; expected one frame per export layer")
        description = layer.description
        if name == "units":
            description = (f"Analysis units at the {level} level ({title}) with every indicator of the "
                           "pipeline at that level: population 2010/2020 and change, net outflow, distance "
                           "to metropolitan cores, spatial autocorrelation, rail access.")
        elif name in LAYER_DESCRIPTIONS and description == LAYER_DESCRIPTIONS[name]:
            description = f"{description} Level: {title}."
        out[new] = replace(
            layer, name=new, title=f"{LAYER_TITLES.get(name, name)}, {title}", description=description,
            view_of=level_layer(layer.view_of, level) if layer.view_of else None,
        )
    same = UNITS_LAYER[level]  # the plain layer of these units (population columns only), if exported
    if same in out and units_name in out and out[same].view_of is None:
        frame = out[same].frame
        cols = [c for c in frame.columns if c != getattr(frame, "_geometry_column_name", None)]
        if set(cols) <= set(out[units_name].frame.columns):
            out[same] = replace(out[same], view_of=units_name)
    return out


def _significance(global_moran: pd.DataFrame | None) -> str:
    """The local significance rule of the autocorrelation stage (its global_moran ``significance``)."""
    if global_moran is None or "significance" not in global_moran.columns:
        return ""
    rules = [str(r) for r in pd.unique(global_moran["significance"].dropna())]
    return "; ".join(rules)


# -- writing (the only I/O of this module) ------------------------------------------------
_LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS "layer_styles" (
  "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
  "f_table_catalog" TEXT(256), "f_table_schema" TEXT(256), "f_table_name" TEXT(256),
  "f_geometry_column" TEXT(256), "styleName" TEXT(30), "styleQML" TEXT, "styleSLD" TEXT,
  "useAsDefault" BOOLEAN, "description" TEXT, "owner" TEXT(30), "ui" TEXT(30),
  "update_time" DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""

_DATA_COLUMNS_DDL = """
CREATE TABLE IF NOT EXISTS gpkg_data_columns (
  table_name TEXT NOT NULL, column_name TEXT NOT NULL, name TEXT, title TEXT, description TEXT,
  mime_type TEXT, constraint_name TEXT,
  CONSTRAINT pk_gdc PRIMARY KEY (table_name, column_name),
  CONSTRAINT gdc_tn UNIQUE (table_name, name)
)"""

_CONSTRAINTS_DDL = """
CREATE TABLE IF NOT EXISTS gpkg_data_column_constraints (
  constraint_name TEXT NOT NULL, constraint_type TEXT NOT NULL, value TEXT, min NUMERIC,
  min_is_inclusive BOOLEAN, max NUMERIC, max_is_inclusive BOOLEAN, description TEXT,
  CONSTRAINT gdcc_ntv UNIQUE (constraint_name, constraint_type, value)
)"""

_EXTENSIONS_DDL = """
CREATE TABLE IF NOT EXISTS gpkg_extensions (
  table_name TEXT, column_name TEXT, extension_name TEXT NOT NULL, definition TEXT NOT NULL,
  scope TEXT NOT NULL, CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name)
)"""


def write_styled_gpkg(
    path: str | Path,
    layers: Mapping[str, ExportLayer],
    *,
    overwrite: bool = False,
    cache: bool = False,
) -> Path:
    """Write the export layers, their styles and descriptions into one GeoPackage, atomically.

    Layers are written with pyogrio into a temporary file (GeoPackage 1.2, with
    ``gpkg_contents.identifier``/``description`` and GDAL layer metadata in
    ``gpkg_metadata``); layers with ``view_of`` become SQL views registered as
    feature layers (GeoPackage allows views; GDAL and QGIS read them); then,
    with sqlite3 in the same temporary file, the
    styles go into the QGIS ``layer_styles`` table (registered in
    ``gpkg_contents`` as an attributes table, as QGIS does) and the field
    descriptions into ``gpkg_data_columns`` (GeoPackage schema extension);
    finally the file is moved into place.

    Parameters
    ----------
    path : path-like
        Destination ``.gpkg``.
    layers : mapping of str to ExportLayer
        From :func:`assemble_layers`.
    overwrite : bool, default False
        Replace an existing file.
    cache : bool, default False
        Keep the large spatial layers (not the views) in the process's frame cache
        as a read of the finished file returns them
        (:func:`geo_pipeline._io._write_through`), for later stages of the same run.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    dest = Path(path)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    with atomic_path(dest, overwrite=overwrite) as tmp:
        first = True
        for name, layer in layers.items():
            if layer.view_of is not None:
                continue
            opts: dict[str, Any] = {
                "layer": name, "driver": "GPKG", "append": not first,
                "layer_options": {"DESCRIPTION": layer.description, "IDENTIFIER": layer.title},
                "layer_metadata": {"SOURCE": ", ".join(layer.sources) or "geo_pipeline",
                                   "CREATED_BY": "geo_pipeline export"},
            }
            if first:  # 1.2: readable by the GDAL of QGIS LTRs; no dataset metadata, as GDAL then
                # writes a .aux.xml beside the file each time it is opened read-only
                opts["dataset_options"] = {"VERSION": "1.2"}
            if layer.spatial:
                pyogrio.write_dataframe(layer.frame, tmp, promote_to_multi=None, **opts)
            else:
                pyogrio.write_dataframe(pd.DataFrame(layer.frame), tmp, **opts)
            first = False
        con = sqlite3.connect(tmp)
        try:
            with con:
                _write_views(con, layers, now)
                _write_styles(con, layers, now)
                _write_field_descriptions(con, layers)
        finally:
            con.close()
        if cache:  # the file is final from here on
            _write_through(tmp, dest, {name: layer.frame for name, layer in layers.items()
                                       if layer.spatial and layer.view_of is None})
    n_styles = sum(len(layer.styles) for layer in layers.values())
    log.debug("wrote %s: %d layers, %d styles", dest, len(layers), n_styles)
    return dest


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _write_views(con: sqlite3.Connection, layers: Mapping[str, ExportLayer], now: str) -> None:
    for name, layer in layers.items():
        base = layer.view_of
        if base is None:
            continue
        if base not in layers or layers[base].view_of is not None:
            raise InputError(f"layer {name!r} is a view of {base!r}, which is not a written layer")
        geom = _geometry_column(con, base)
        fid = con.execute(
            "SELECT name FROM pragma_table_info(?) WHERE pk = 1", (base,)
        ).fetchone()[0]
        frame = layer.frame
        cols = [c for c in frame.columns if c != getattr(frame, "_geometry_column_name", None)]
        select = ", ".join(_quote(c) for c in [fid, geom, *cols])
        con.execute(f"CREATE VIEW {_quote(name)} AS SELECT {select} FROM {_quote(base)}")
        con.execute(
            "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
            "min_x, min_y, max_x, max_y, srs_id) SELECT ?, 'features', ?, ?, ?, min_x, min_y, max_x, max_y, "
            "srs_id FROM gpkg_contents WHERE table_name = ?",
            (name, layer.title, layer.description, now, base),
        )
        con.execute(
            "INSERT INTO gpkg_geometry_columns (table_name, column_name, geometry_type_name, srs_id, z, m) "
            "SELECT ?, column_name, geometry_type_name, srs_id, z, m FROM gpkg_geometry_columns "
            "WHERE table_name = ?",
            (name, base),
        )


def _geometry_column(con: sqlite3.Connection, table: str) -> str:
    row = con.execute(
        "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (table,)
    ).fetchone()
    return str(row[0]) if row else ""


def _write_styles(con: sqlite3.Connection, layers: Mapping[str, ExportLayer], now: str) -> None:
    rows = []
    for name, layer in layers.items():
        if not layer.styles:
            continue
        geom = _geometry_column(con, name)
        for st in layer.styles:
            rows.append(("", "", name, geom, st.name, st.qml, "", 1 if st.default else 0,
                         st.description, "geo_pipeline", None, now))
    if not rows:
        return
    con.execute(_LAYER_STYLES_DDL)
    con.executemany(
        'INSERT INTO "layer_styles" (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, '
        "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui, update_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    con.execute(
        "INSERT OR REPLACE INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
        "srs_id) VALUES ('layer_styles', 'attributes', 'layer_styles', 'QGIS layer styles (QML)', ?, 0)",
        (now,),
    )
    has_ogr = con.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
    ).fetchone()
    if has_ogr:
        con.execute("INSERT OR REPLACE INTO gpkg_ogr_contents (table_name, feature_count) VALUES (?, ?)",
                    ("layer_styles", len(rows)))


def _write_field_descriptions(con: sqlite3.Connection, layers: Mapping[str, ExportLayer]) -> None:
    rows = []
    for name, layer in layers.items():
        present = {r[1] for r in con.execute(f'PRAGMA table_info("{name}")')}
        for col, desc in layer.fields.items():
            if col in present:
                rows.append((name, col, col, desc.split(" = ")[0].split(" (")[0], desc))
    if not rows:
        return
    con.execute(_EXTENSIONS_DDL)
    con.execute(_DATA_COLUMNS_DDL)
    con.execute(_CONSTRAINTS_DDL)
    con.executemany(
        "INSERT OR REPLACE INTO gpkg_data_columns (table_name, column_name, name, title, description) "
        "VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    for table in ("gpkg_data_columns", "gpkg_data_column_constraints"):
        con.execute(
            "INSERT OR IGNORE INTO gpkg_extensions "
            "(table_name, column_name, extension_name, definition, scope) "
            "VALUES (?, NULL, 'gpkg_schema', 'http://www.geopackage.org/spec/#extension_schema', "
            "'read-write')",
            (table,),
        )
