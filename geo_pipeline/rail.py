"""Rail lines, stations and their utilisation, from any of the supported sources.

Pure functions (frames in, frames out, no file I/O) that turn the raw rail
inputs into the two standard layers of the ``infrastructure`` stage:

* **lines** (:data:`LINE_COLUMNS`): one row per named line with ``class``
  (``"high-speed"``, ``"fast"``, ``"conventional"``), design speed and opening
  year, from the approximate corridor file (:func:`lines_from_corridors`),
  OpenStreetMap ways read with :func:`osmnx.features_from_xml`
  (:func:`lines_from_osm`) or a user layer (:func:`lines_from_user`);
  attributes come from the line catalogue ``railways_lines.csv``
  (:func:`prepare_catalogue`, :func:`join_catalogue`).
* **stations** (:data:`STATION_COLUMNS`): points with a ``high_speed`` flag
  (:func:`stations_from_points`, :func:`key_stations`, :func:`flag_high_speed`).

:func:`line_utilisation` adds trains per day and a utilisation ratio with an
``underused`` flag. With only the derived station train counts there is no
design capacity: the ratio is then a documented *proxy* (see its Notes).

Names are matched after :func:`station_key` / :func:`line_key` normalisation
(Unicode NFKC, no blanks, no ``站``/``火车站`` suffix for stations, no
``铁路``/``线`` suffix for lines), so ``广州南站`` matches ``广州南`` and
``沪昆线`` matches ``沪昆铁路``.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import warnings
from collections.abc import Iterable
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ._errors import DataQualityWarning, InputError
from ._validate import Kind, check_frame

__all__ = [
    "CLASS_MAP",
    "HS_MIN_SPEED_KMH",
    "APPROXIMATE_NOTE",
    "LINE_COLUMNS",
    "STATION_COLUMNS",
    "station_key",
    "line_key",
    "prepare_catalogue",
    "join_catalogue",
    "lines_from_corridors",
    "lines_from_osm",
    "lines_from_user",
    "stations_from_points",
    "key_stations",
    "flag_high_speed",
    "line_utilisation",
]

log = logging.getLogger(__name__)

#: Catalogue line types (``线路类型``) to the English classes used in every layer.
CLASS_MAP: dict[str, str] = {"高速铁路": "high-speed", "快速铁路": "fast", "普速铁路": "conventional"}
CLASSES = ("high-speed", "fast", "conventional")

#: An OSM line with ``maxspeed`` at or above this (km/h) is high-speed.
HS_MIN_SPEED_KMH = 250.0
#: An OSM line with ``maxspeed`` at or above this (km/h) and no catalogue class is "fast".
FAST_MIN_SPEED_KMH = 160.0

#: Said on every layer built from the approximate corridor file.
APPROXIMATE_NOTE = (
    "APPROXIMATE: straight segments between key stations (railways_lines.csv joined to station "
    "points); positional errors up to tens of km. Use for corridor-scale analysis only."
)

#: Columns of a standard rail-lines layer (plus ``geometry``).
LINE_COLUMNS: dict[str, str] = {
    "line_id": "str",
    "name": "str",
    "class": "str",
    "design_speed_kmh": "float64",
    "open_year": "Int64",
    "open_date": "str",
    "key_stations": "str",
    "catalogue_line": "str",
    "catalogue_match": "str",
    "source": "str",
    "approximate": "bool",
    "note": "str",
}

#: Columns of a standard rail-stations layer (plus ``geometry``).
STATION_COLUMNS: dict[str, str] = {
    "station_id": "str",
    "name": "str",
    "kind": "str",
    "high_speed": "bool",
    "high_speed_basis": "str",
    "trains_per_day": "float64",
    "hsr_trains_per_day": "float64",
    "source": "str",
    "approximate": "bool",
}


# -- names ---------------------------------------------------------------------------------------


def _clean(value: Any) -> str:
    if not isinstance(value, str):
        return ""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", value))


def station_key(name: Any) -> str:
    """Normalised station name used to match tables (``"广州南站"`` -> ``"广州南"``).

    Parameters
    ----------
    name : str or any
        A station name; non-strings give ``""``.

    Returns
    -------
    str
        NFKC-normalised name without blanks and without a trailing ``站`` or
        ``火车站``.
    """
    return re.sub(r"(火车站|车站|站)$", "", _clean(name))


def line_key(name: Any) -> str:
    """Normalised line name used to match tables (``"沪昆铁路"`` and ``"沪昆线"`` -> ``"沪昆"``).

    Each ``-``-separated part loses a trailing ``铁路`` or ``线``; ``高速铁路`` and
    ``高速线`` become ``高铁``, ``客运专线`` becomes ``客专``.

    Parameters
    ----------
    name : str or any
        A line name; non-strings give ``""``.

    Returns
    -------
    str
    """
    s = _clean(name).replace("—", "-").replace("－", "-")
    s = s.replace("高速铁路", "高铁").replace("高速线", "高铁").replace("客运专线", "客专")
    parts = [re.sub(r"(铁路|线)$", "", p) for p in s.split("-")]
    return "-".join(parts)


def _year(value: Any) -> float:
    """First four-digit year of ``"2012.10.16"``-like text, or NaN."""
    if isinstance(value, (int, np.integer)):
        return float(value)
    if isinstance(value, float):
        return value if 1800 <= value < 2200 else np.nan
    m = re.match(r"\s*(\d{4})", str(value)) if isinstance(value, str) else None
    return float(m.group(1)) if m else np.nan


def _speed(value: Any) -> float:
    """Largest number in an OSM ``maxspeed`` tag (``"160"``, ``"80;120"``, ``"200 km/h"``)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return np.nan
    nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", value)]
    if not nums:
        return np.nan
    return max(nums) * (1.609344 if "mph" in value else 1.0)


def _empty_lines(crs: Any) -> gpd.GeoDataFrame:
    data = {c: pd.Series(dtype=t) for c, t in LINE_COLUMNS.items()}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def _finish_lines(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    out = frame.copy()
    for col, dtype in LINE_COLUMNS.items():
        if col not in out.columns:
            out[col] = pd.Series(pd.NA if dtype != "bool" else False, index=out.index)
        if dtype == "str":
            out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
        else:
            out[col] = out[col].astype(dtype)
    out["line_id"] = _unique_ids(out["line_id"])
    extra = [c for c in out.columns if c not in LINE_COLUMNS and c != out.geometry.name]
    return out[[*LINE_COLUMNS, *extra, out.geometry.name]]


def _unique_ids(ids: pd.Series) -> pd.Series:
    seen: dict[str, int] = {}
    out = []
    for value in ids.astype(str):
        n = seen.get(value, 0)
        seen[value] = n + 1
        out.append(value if n == 0 else f"{value}#{n + 1}")
    return pd.Series(out, index=ids.index, dtype=str)


# -- catalogue -----------------------------------------------------------------------------------

_CATALOGUE_COLUMNS: dict[str, Kind] = {
    "线路": "string",
    "线路类型": "string",
    "现设计时速": "any",
    "建成年份": "any",
}


def prepare_catalogue(table: pd.DataFrame) -> pd.DataFrame:
    """Standardise the line catalogue ``railways_lines.csv``.

    Parameters
    ----------
    table : pandas.DataFrame
        Columns ``线路`` (name), ``线路类型`` (``高速铁路``/``快速铁路``/``普速铁路``),
        ``现设计时速`` (km/h), ``建成年份`` (``"1962.12"``, ``"2012.10.16"``) and,
        optionally, ``起点``, ``终点``, ``途径站点`` (key stations joined by ``-``).

    Returns
    -------
    pandas.DataFrame
        One row per line: ``line``, ``line_key``, ``class``, ``design_speed_kmh``,
        ``open_year`` (Int64), ``open_date``, ``key_stations``.

    Raises
    ------
    InputError
        If a required column is missing or a line type is not one of the three.

    Notes
    -----
    ``open_year`` is the year of ``建成年份`` as published. For a few lines
    that date is the start of construction rather than the opening (e.g.
    ``沪昆高铁-长昆段`` 2010.3.26, opened 2016; ``沪昆高铁-杭长段`` 2010.6.18,
    opened 2014), so "first high-speed service" years derived from it can be
    too early; a user line layer with its own ``open_year`` avoids this.
    """
    p = check_frame(
        table, name="rail line catalogue", columns=_CATALOGUE_COLUMNS, not_null=["线路", "线路类型"]
    )
    if "线路类型" in table.columns:
        bad = sorted(set(table["线路类型"].dropna()) - set(CLASS_MAP))
        if bad:
            p.add(f"column '线路类型' has unknown line type(s) {bad}; expected one of {list(CLASS_MAP)}")
    p.raise_if_any()
    stations = table.get("途径站点", pd.Series(np.nan, index=table.index)).astype(object)
    ends = (
        table.get("起点", pd.Series("", index=table.index)).fillna("").astype(str)
        + "-"
        + table.get("终点", pd.Series("", index=table.index)).fillna("").astype(str)
    )
    stations = stations.where(stations.notna() & (stations.astype(str) != ""), ends)
    out = pd.DataFrame(
        {
            "line": table["线路"].astype(str).str.strip(),
            "class": table["线路类型"].map(CLASS_MAP),
            "design_speed_kmh": pd.to_numeric(table["现设计时速"], errors="coerce").astype("float64"),
            "open_year": table["建成年份"].map(_year).astype("Int64"),
            "open_date": table["建成年份"].astype(object).where(table["建成年份"].notna(), "").astype(str),
            "key_stations": stations.astype(str).str.strip("-"),
        }
    )
    out.insert(1, "line_key", out["line"].map(line_key))
    return out.reset_index(drop=True)


def join_catalogue(
    lines: gpd.GeoDataFrame,
    catalogue: pd.DataFrame,
    *,
    reference: gpd.GeoDataFrame | None = None,
    overwrite: bool = False,
) -> gpd.GeoDataFrame:
    """Join catalogue attributes to lines by normalised name.

    A line matches the catalogue line with the same :func:`line_key`
    (``catalogue_match = "exact"``). Otherwise it matches the catalogue lines
    whose first ``-`` part is its key (``沪昆线`` -> ``沪昆线-浙赣段``, ...); when
    several do, the one whose ``reference`` geometry (e.g. the approximate
    corridors) is nearest is taken (``"prefix-nearest"``), or, without
    reference geometry, the match is left empty (``"ambiguous"``).

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Standard lines (:data:`LINE_COLUMNS`).
    catalogue : pandas.DataFrame
        Output of :func:`prepare_catalogue`.
    reference : geopandas.GeoDataFrame, optional
        Geometry of catalogue lines with a ``line`` column, in the CRS of ``lines``.
    overwrite : bool, default False
        Replace attributes already present on ``lines``; by default only
        missing values are filled (class ``high-speed`` is always kept).

    Returns
    -------
    geopandas.GeoDataFrame
        A new frame with ``catalogue_line``, ``catalogue_match``, ``class``,
        ``design_speed_kmh``, ``open_year``, ``open_date``, ``key_stations`` filled.
    """
    out = lines.copy()
    if out.empty or catalogue.empty:
        return out
    by_key = {k: i for i, k in enumerate(catalogue["line_key"])}
    first_part = catalogue["line_key"].str.split("-").str[0]
    ref_geom: dict[str, Any] = {}
    if reference is not None and not reference.empty:
        ref_geom = {
            str(n): g for n, g in zip(reference["line"], reference.geometry, strict=True) if g is not None
        }
    for idx, name, geom in zip(out.index, out["name"], out.geometry, strict=True):
        key = line_key(name)
        if not key:
            continue
        match, how = None, ""
        if key in by_key:
            match, how = by_key[key], "exact"
        else:
            cands = [int(c) for c in np.flatnonzero((first_part == key).to_numpy())]
            if len(cands) == 1:
                match, how = cands[0], "prefix"
            elif len(cands) > 1:
                with_geom = [c for c in cands if catalogue["line"].iloc[c] in ref_geom]
                if with_geom and geom is not None and not shapely.is_empty(geom):
                    dist = [shapely.distance(geom, ref_geom[catalogue["line"].iloc[c]]) for c in with_geom]
                    match, how = with_geom[int(np.argmin(dist))], "prefix-nearest"
                else:
                    how = "ambiguous"
        out.loc[idx, "catalogue_match"] = how
        if match is None:
            continue
        row = catalogue.iloc[match]
        out.loc[idx, "catalogue_line"] = row["line"]
        for col in ("design_speed_kmh", "open_year", "open_date", "key_stations"):
            cur = out.loc[idx, col]
            empty = pd.isna(cur) or cur == ""
            if (overwrite or empty) and not pd.isna(row[col]):
                out.loc[idx, col] = row[col]
        if out.loc[idx, "class"] != "high-speed" and (overwrite or not out.loc[idx, "class"]):
            out.loc[idx, "class"] = row["class"]
        elif row["class"] == "high-speed":
            out.loc[idx, "class"] = "high-speed"
    return out


# -- line sources --------------------------------------------------------------------------------


def _force_epsg4326(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """OGC:CRS84 (GeoJSON's lon/lat) is EPSG:4326 with x = lon, as GeoPandas already uses."""
    if frame.crs is not None and frame.crs.equals("OGC:CRS84"):
        return frame.set_crs("EPSG:4326", allow_override=True)
    return frame


def lines_from_corridors(corridors: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Build standard lines from the approximate corridor file.

    Parameters
    ----------
    corridors : geopandas.GeoDataFrame
        ``approx_corridors_keystations.geojson``: properties ``line``, ``type``
        (catalogue line type), ``speed_kmh``, ``opened``, ``open_year``,
        ``stations`` (key stations joined by ``-``), ``start``, ``end``; straight
        LineStrings between matched key stations.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`LINE_COLUMNS` with ``source = "corridors"``, ``approximate = True``
        and the accuracy warning in ``note``. Rows without geometry (key
        stations not located) are dropped with a :class:`DataQualityWarning`.

    Raises
    ------
    InputError
        If a required column is missing or a line type is unknown.
    """
    p = check_frame(
        corridors,
        name="rail corridors",
        columns={"line": "string", "type": "string", "open_year": "any"},
    )
    if "type" in corridors.columns:
        bad = sorted(set(corridors["type"].dropna()) - set(CLASS_MAP))
        if bad:
            p.add(f"column 'type' has unknown line type(s) {bad}; expected one of {list(CLASS_MAP)}")
    p.raise_if_any()
    frame = _force_epsg4326(corridors)
    missing = shapely.is_missing(frame.geometry.values) | shapely.is_empty(frame.geometry.values)
    if missing.any():
        names = list(frame.loc[missing, "line"].astype(str))
        warnings.warn(
            f"rail corridors: {int(missing.sum())} line(s) have no geometry (key stations not located) "
            f"and are left out: {names}",
            DataQualityWarning,
            stacklevel=2,
        )
        frame = frame.loc[~missing]
    if frame.empty:
        return _empty_lines(frame.crs)
    stations = frame.get("stations", pd.Series(np.nan, index=frame.index)).astype(object)
    ends = (
        frame.get("start", pd.Series("", index=frame.index)).fillna("").astype(str)
        + "-"
        + frame.get("end", pd.Series("", index=frame.index)).fillna("").astype(str)
    )
    out = gpd.GeoDataFrame(
        {
            "line_id": frame["line"].astype(str).to_numpy(),
            "name": frame["line"].astype(str).to_numpy(),
            "class": frame["type"].map(CLASS_MAP).to_numpy(),
            "design_speed_kmh": pd.to_numeric(frame.get("speed_kmh"), errors="coerce").to_numpy(),
            "open_year": frame["open_year"].map(_year).to_numpy(),
            "open_date": frame.get("opened", frame["open_year"]).to_numpy(),
            "key_stations": stations.where(stations.notna(), ends).astype(str).str.strip("-").to_numpy(),
            "catalogue_line": frame["line"].astype(str).to_numpy(),
            "catalogue_match": "exact",
            "source": "corridors",
            "approximate": True,
            "note": APPROXIMATE_NOTE,
        },
        geometry=frame.geometry.to_numpy(),
        crs=frame.crs,
    )
    return _finish_lines(out)


def _osm_first(frame: pd.DataFrame, cols: Iterable[str]) -> pd.Series:
    out = pd.Series(np.nan, index=frame.index, dtype=object)
    for col in cols:
        if col in frame.columns:
            out = out.where(out.notna() & (out.astype(str) != ""), frame[col])
    return out


def _class_from_speed(speed: float, highspeed: bool) -> str:
    if highspeed or (not np.isnan(speed) and speed >= HS_MIN_SPEED_KMH):
        return "high-speed"
    if not np.isnan(speed) and speed >= FAST_MIN_SPEED_KMH:
        return "fast"
    return "conventional"


def lines_from_osm(
    features: gpd.GeoDataFrame,
    *,
    catalogue: pd.DataFrame | None = None,
    reference: gpd.GeoDataFrame | None = None,
) -> gpd.GeoDataFrame:
    """Merge OpenStreetMap ``railway=rail`` ways into named lines.

    Parameters
    ----------
    features : geopandas.GeoDataFrame
        Output of ``osmnx.features_from_xml(path, tags={"railway": "rail"})``
        (index ``(element, id)``; tags as columns: ``railway``, ``name``,
        ``highspeed``, ``usage``, ``maxspeed``, ...).
    catalogue : pandas.DataFrame, optional
        Output of :func:`prepare_catalogue`, joined by name (:func:`join_catalogue`).
    reference : geopandas.GeoDataFrame, optional
        Catalogue line geometry to pick among several name matches.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`LINE_COLUMNS` plus ``usage``, ``maxspeed_kmh``, ``highspeed_tag``,
        ``n_ways``, ``osm_ids``; one row per name (``name``, else ``name:zh``),
        geometry the merged ways (LineString or MultiLineString).

    Notes
    -----
    Only LineString ways tagged ``railway=rail`` are used; ways without a name
    (sidings, spurs, yards) are left out and counted in the log. ``class`` is
    ``"high-speed"`` when any way has ``highspeed=yes`` or ``maxspeed`` >= 250
    km/h, or the catalogue says so; else the catalogue class; else ``"fast"``
    for ``maxspeed`` >= 160 km/h and ``"conventional"`` otherwise.
    """
    crs = features.crs if features.crs is not None else "EPSG:4326"
    if features.empty:
        return _empty_lines(crs)
    frame = _force_epsg4326(features)
    geom_type = frame.geometry.geom_type
    railway = frame["railway"] if "railway" in frame.columns else pd.Series("rail", index=frame.index)
    keep = geom_type.isin(["LineString", "MultiLineString"]) & (railway == "rail")
    ways = frame.loc[keep].copy()
    ways["_name"] = _osm_first(ways, ["name", "name:zh", "name:zh-Hans"]).fillna("").astype(str).str.strip()
    unnamed = int((ways["_name"] == "").sum())
    ways = ways.loc[ways["_name"] != ""]
    log.info(
        "OSM rail: %d named ways into lines, %d unnamed ways (sidings, spurs) left out", len(ways), unnamed
    )
    if ways.empty:
        return _empty_lines(frame.crs)
    ways["_speed"] = ways["maxspeed"].map(_speed) if "maxspeed" in ways.columns else np.nan
    ways["_hs"] = ways["highspeed"].eq("yes") if "highspeed" in ways.columns else False
    ways["_usage"] = ways["usage"] if "usage" in ways.columns else np.nan
    ids = [str(i[-1]) if isinstance(i, tuple) else str(i) for i in ways.index]
    ways["_id"] = ids
    rows = []
    for name, grp in ways.groupby("_name", sort=True):
        merged = shapely.line_merge(shapely.union_all(grp.geometry.to_numpy()))
        speed = (
            float(np.nanmax(grp["_speed"].to_numpy(dtype=float))) if grp["_speed"].notna().any() else np.nan
        )
        hs = bool(grp["_hs"].any())
        usage = ";".join(sorted({str(u) for u in grp["_usage"].dropna()}))
        start = grp["start_date"].dropna().astype(str).min() if "start_date" in grp.columns else np.nan
        rows.append(
            {
                "line_id": f"osm:{name}",
                "name": name,
                "class": "high-speed" if hs or (not np.isnan(speed) and speed >= HS_MIN_SPEED_KMH) else "",
                "design_speed_kmh": speed,
                "open_year": _year(start) if isinstance(start, str) else np.nan,
                "open_date": start if isinstance(start, str) else "",
                "source": "osm",
                "approximate": False,
                "usage": usage,
                "maxspeed_kmh": speed,
                "highspeed_tag": hs,
                "n_ways": len(grp),
                "osm_ids": ";".join(grp["_id"]),
                "geometry": merged,
            }
        )
    out = gpd.GeoDataFrame(rows, geometry="geometry", crs=frame.crs)
    out = _finish_lines(out)
    if catalogue is not None:
        out = join_catalogue(out, catalogue, reference=reference)
    fill = out["class"] == ""
    out.loc[fill, "class"] = [
        _class_from_speed(s, h)
        for s, h in zip(
            out.loc[fill, "maxspeed_kmh"].astype(float), out.loc[fill, "highspeed_tag"], strict=True
        )
    ]
    return out


def lines_from_user(
    frame: gpd.GeoDataFrame,
    *,
    catalogue: pd.DataFrame | None = None,
    reference: gpd.GeoDataFrame | None = None,
) -> gpd.GeoDataFrame:
    """Build standard lines from a user layer (GeoPackage / GeoJSON).

    Parameters
    ----------
    frame : geopandas.GeoDataFrame
        Must have ``name`` and (Multi)LineString geometry. Optional: ``class``
        (``high-speed``/``fast``/``conventional`` or the catalogue's Chinese
        types), ``design_speed_kmh``, ``open_year``.
    catalogue, reference : optional
        As for :func:`lines_from_osm`: fill missing attributes by name.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`LINE_COLUMNS` with ``source = "user"``; lines without a class
        after the catalogue join are ``"conventional"``.

    Raises
    ------
    InputError
        Missing ``name`` column, bad geometry or an unknown class.
    """
    p = check_frame(
        frame,
        name="rail lines layer",
        columns={"name": "string"},
        geometry=True,
        geom_types=("LineString", "MultiLineString"),
    )
    if "class" in frame.columns:
        bad = sorted(set(frame["class"].dropna()) - set(CLASSES) - set(CLASS_MAP))
        if bad:
            p.add(f"column 'class' has unknown value(s) {bad}; expected {list(CLASSES)}")
    p.raise_if_any()
    if frame.empty:
        return _empty_lines(frame.crs)
    src = _force_epsg4326(frame)
    out = gpd.GeoDataFrame(
        {
            "line_id": src["line_id"].astype(str) if "line_id" in src.columns else src["name"].astype(str),
            "name": src["name"].astype(str),
            "class": src["class"].map(lambda c: CLASS_MAP.get(c, c)) if "class" in src.columns else "",
            "design_speed_kmh": pd.to_numeric(src.get("design_speed_kmh"), errors="coerce")
            if "design_speed_kmh" in src.columns
            else np.nan,
            "open_year": src["open_year"].map(_year) if "open_year" in src.columns else np.nan,
            "source": "user",
            "approximate": False,
        },
        geometry=src.geometry.to_numpy(),
        crs=src.crs,
        index=src.index,
    ).reset_index(drop=True)
    out = _finish_lines(out)
    if catalogue is not None:
        out = join_catalogue(out, catalogue, reference=reference)
    out.loc[out["class"] == "", "class"] = "conventional"
    return out


# -- stations ------------------------------------------------------------------------------------


def _empty_stations(crs: Any) -> gpd.GeoDataFrame:
    data = {c: pd.Series(dtype=t) for c, t in STATION_COLUMNS.items()}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def stations_from_points(
    points: gpd.GeoDataFrame,
    *,
    kinds: Iterable[str] | None = ("train",),
    kind_column: str = "station",
    source: str = "osm",
) -> gpd.GeoDataFrame:
    """Build standard stations from a point layer (the OSM station shapefile or osmnx output).

    Parameters
    ----------
    points : geopandas.GeoDataFrame
        Points (polygons are reduced to representative points) with a ``name``
        column. The OSM station shapefile has ``station`` in ``train``,
        ``subway``, ``tram_stop``, ``tram``, ``monorail``.
    kinds : iterable of str or None, default ``("train",)``
        Values of ``kind_column`` to keep; None keeps all rows.
    kind_column : str, default ``"station"``
        Column with the station kind; when absent every row is kept with kind
        ``"train"``.
    source : str, default ``"osm"``
        Written to the ``source`` column.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`STATION_COLUMNS`, ``high_speed`` all false until
        :func:`flag_high_speed`.

    Raises
    ------
    InputError
        If there is no ``name`` column or geometries are missing.
    """
    check_frame(points, name="rail stations layer", columns=["name"], geometry=True).raise_if_any()
    frame = _force_epsg4326(points)
    if kind_column in frame.columns and kinds is not None:
        frame = frame.loc[frame[kind_column].isin(list(kinds))]
    if frame.empty:
        return _empty_stations(frame.crs)
    geom = frame.geometry.to_numpy()
    not_point = shapely.get_type_id(geom) != 0
    geom = np.where(not_point, shapely.point_on_surface(geom), geom)
    kind = frame[kind_column].astype(str) if kind_column in frame.columns else "train"
    out = gpd.GeoDataFrame(
        {
            "station_id": [f"{source}:{i}" for i in range(len(frame))],
            "name": frame["name"].astype(object).where(frame["name"].notna(), "").astype(str).to_numpy(),
            "kind": np.asarray(kind if isinstance(kind, str) else kind.to_numpy(), dtype=object)
            if not isinstance(kind, str)
            else kind,
            "high_speed": False,
            "high_speed_basis": "",
            "trains_per_day": np.nan,
            "hsr_trains_per_day": np.nan,
            "source": source,
            "approximate": False,
        },
        geometry=geom,
        crs=frame.crs,
    )
    return out


def key_stations(lines: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Key stations located at the vertices of the approximate corridor lines.

    In ``approx_corridors_keystations.geojson`` vertex *i* of a line is its
    *i*-th key station (``stations`` without those listed in ``unmatched``).

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        The raw corridor layer (``line``, ``type``, ``stations``, ``unmatched``,
        ``start``, ``end``) with LineString geometry.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`STATION_COLUMNS`, one row per station name (the mean position when
        lines disagree), ``source = "corridor_key_station"``,
        ``approximate = True``; ``high_speed`` is true for key stations of a
        ``高速铁路`` line (``high_speed_basis = "hsr_line_key_station"``).
    """
    frame = _force_epsg4326(lines)
    rows = []
    for _, r in frame.iterrows():
        geom = r.geometry
        if geom is None or shapely.is_empty(geom):
            continue
        unmatched = {s for s in str(r.get("unmatched") or "").split("|") if s and s != "nan"}
        text = r.get("stations")
        if not isinstance(text, str) or not text:
            text = f"{r.get('start', '')}-{r.get('end', '')}"
        names = [s for s in text.split("-") if s and s not in unmatched]
        coords = shapely.get_coordinates(geom)
        if len(names) != len(coords):
            log.debug(
                "corridor %s: %d names for %d vertices; skipped", r.get("line"), len(names), len(coords)
            )
            continue
        for n, (x, y) in zip(names, coords, strict=True):
            rows.append((n, x, y, r.get("type") == "高速铁路"))
    if not rows:
        return _empty_stations(frame.crs)
    k = pd.DataFrame(rows, columns=["name", "x", "y", "hs"])
    g = k.groupby("name", sort=True).agg(x=("x", "mean"), y=("y", "mean"), hs=("hs", "any")).reset_index()
    return gpd.GeoDataFrame(
        {
            "station_id": [f"key:{n}" for n in g["name"]],
            "name": g["name"].astype(str),
            "kind": "train",
            "high_speed": g["hs"].astype(bool),
            "high_speed_basis": np.where(g["hs"], "hsr_line_key_station", ""),
            "trains_per_day": np.nan,
            "hsr_trains_per_day": np.nan,
            "source": "corridor_key_station",
            "approximate": True,
        },
        geometry=gpd.points_from_xy(g["x"], g["y"]),
        crs=frame.crs,
    )


def _station_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per normalised station name: ``trains_per_day`` and ``hsr_trains_per_day``."""
    p = check_frame(table, name="station train counts", columns=["station"])
    total_col = (
        "total"
        if "total" in table.columns
        else "trains_per_day"
        if "trains_per_day" in table.columns
        else None
    )
    if total_col is None:
        p.add(f"expected a 'total' or 'trains_per_day' column, found {list(map(str, table.columns))}")
    p.raise_if_any()
    hs_col = "hsr_GDC" if "hsr_GDC" in table.columns else "hsr_trains_per_day"
    counts = pd.DataFrame(
        {
            "key": table["station"].map(station_key),
            "trains_per_day": pd.to_numeric(table[total_col], errors="coerce"),
            "hsr_trains_per_day": pd.to_numeric(table[hs_col], errors="coerce")
            if hs_col in table.columns
            else np.nan,
        }
    )
    counts = counts.loc[counts["key"] != ""]
    return counts.groupby("key").max()


def flag_high_speed(
    stations: gpd.GeoDataFrame,
    *,
    train_counts: pd.DataFrame | None = None,
    key: gpd.GeoDataFrame | None = None,
    min_hsr_trains: int = 1,
    add_missing_key_stations: bool = True,
) -> gpd.GeoDataFrame:
    """Set the ``high_speed`` flag of stations and attach trains per day.

    Parameters
    ----------
    stations : geopandas.GeoDataFrame
        Standard stations (:func:`stations_from_points`).
    train_counts : pandas.DataFrame, optional
        ``derived_station_train_counts.csv``: ``station``, ``total`` and
        ``hsr_GDC`` (G/D/C trains per day), or a user table with ``station``,
        ``trains_per_day`` and optionally ``hsr_trains_per_day``.
    key : geopandas.GeoDataFrame, optional
        Output of :func:`key_stations`.
    min_hsr_trains : int, default 1
        A station with at least this many G/D/C trains a day is high-speed.
    add_missing_key_stations : bool, default True
        Append key stations of high-speed lines whose name is not among
        ``stations`` (the OSM station file lacks e.g. 重庆西, 厦门北).

    Returns
    -------
    geopandas.GeoDataFrame
        A new frame: ``high_speed`` true when the normalised name has at least
        ``min_hsr_trains`` G/D/C trains a day in ``train_counts``
        (basis ``"train_counts"``) or is a key station of a high-speed line
        (``"hsr_line_key_station"``), or both; user ``high_speed`` values
        already true are kept.

    Notes
    -----
    Matching is by normalised name only (:func:`station_key`); two stations of
    the same name in different places both get the flag. The counts cover 321
    hub stations (timetables of about January 2021), so small high-speed
    stations without a count and not a key station stay unflagged.
    """
    out = stations.copy()
    keys = out["name"].map(station_key)
    basis = [set(filter(None, str(b).split("+"))) for b in out["high_speed_basis"]]
    if train_counts is not None and not train_counts.empty:
        counts = _station_counts(train_counts)
        joined = counts.reindex(keys.to_numpy())
        out["trains_per_day"] = joined["trains_per_day"].to_numpy(dtype=float)
        out["hsr_trains_per_day"] = joined["hsr_trains_per_day"].to_numpy(dtype=float)
        hs = (joined["hsr_trains_per_day"].fillna(0) >= min_hsr_trains).to_numpy()
        for b, flag in zip(basis, hs, strict=True):
            if flag:
                b.add("train_counts")
    if key is not None and not key.empty:
        hs_keys = set(key.loc[key["high_speed"], "name"].map(station_key))
        for b, k in zip(basis, keys, strict=True):
            if k in hs_keys:
                b.add("hsr_line_key_station")
        if add_missing_key_stations:
            present = set(keys)
            extra = key.loc[key["high_speed"] & ~key["name"].map(station_key).isin(present)].copy()
            if not extra.empty:
                extra = extra.to_crs(out.crs) if out.crs is not None and extra.crs != out.crs else extra
                if train_counts is not None and not train_counts.empty:
                    counts = _station_counts(train_counts)
                    j = counts.reindex(extra["name"].map(station_key).to_numpy())
                    extra["trains_per_day"] = j["trains_per_day"].to_numpy(dtype=float)
                    extra["hsr_trains_per_day"] = j["hsr_trains_per_day"].to_numpy(dtype=float)
                log.info("stations: %d high-speed key stations added from the corridor file", len(extra))
                out = pd.concat([out, extra[out.columns]], ignore_index=True)
                basis += [{"hsr_line_key_station"} for _ in range(len(extra))]
    out["high_speed_basis"] = ["+".join(sorted(b)) for b in basis]
    out["high_speed"] = out["high_speed"].astype(bool).to_numpy() | np.array(
        [bool(b) for b in basis], dtype=bool
    )
    return gpd.GeoDataFrame(out, geometry=out.geometry.name, crs=stations.crs)


# -- utilisation ---------------------------------------------------------------------------------


def line_utilisation(
    lines: gpd.GeoDataFrame,
    *,
    train_counts: pd.DataFrame | None = None,
    line_table: pd.DataFrame | None = None,
    threshold: float = 0.4,
    reference_quantile: float = 0.9,
) -> gpd.GeoDataFrame:
    r"""Trains per day, utilisation and the ``underused`` flag of each line.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Standard lines with ``key_stations`` (names joined by ``-``).
    train_counts : pandas.DataFrame, optional
        Station counts as for :func:`flag_high_speed`.
    line_table : pandas.DataFrame, optional
        User table with ``line``, ``design_capacity`` and ``ridership`` or
        ``trains_per_day`` (same unit as the capacity); matched by
        :func:`line_key`. Where it matches, it gives the real ratio.
    threshold : float, default 0.4
        A line is ``underused`` when ``utilisation < threshold``.
    reference_quantile : float, default 0.9
        Quantile of the same class used as the proxy's reference.

    Returns
    -------
    geopandas.GeoDataFrame
        A new frame with ``trains_per_day``, ``n_count_stations``,
        ``utilisation``, ``utilisation_basis`` (``"user table"``,
        ``"proxy: key-station trains vs class p90"`` or ``""``) and ``underused``
        (nullable boolean: missing when utilisation is unknown).

    Raises
    ------
    InputError
        If ``line_table`` lacks ``line`` or ``design_capacity`` or both usage columns.

    Notes
    -----
    The proxy, used without a user table: for line *l* with key stations
    *S_l* found in the counts,

    .. math:: t_l = \frac{1}{|S_l|} \sum_{s \in S_l} n_s, \qquad
              u_l = t_l / Q_{q}(\{t_m : \operatorname{class}(m) = \operatorname{class}(l)\})

    with *n_s* the G/D/C trains per day at station *s* for high-speed lines
    and all trains for other classes, and *Q_q* the ``reference_quantile``
    over lines of the same class. It measures how busy a line's key stations
    are relative to the busiest lines of its class, not the share of design
    capacity used: hub stations count trains of every line through them, so
    lines ending in big hubs look busy. Treat ``underused`` from the proxy as
    "among the least served lines of its class".
    """
    if not 0 < threshold <= 1 or not 0 < reference_quantile <= 1:
        raise InputError(
            f"threshold and reference_quantile must be in (0, 1]; found {threshold}, {reference_quantile}"
        )
    out = lines.copy()
    out["trains_per_day"] = np.nan
    out["n_count_stations"] = 0
    out["utilisation"] = np.nan
    out["utilisation_basis"] = ""
    if out.empty:
        out["underused"] = pd.Series(dtype="boolean")
        return out
    if train_counts is not None and not train_counts.empty:
        counts = _station_counts(train_counts)
        tpd, nst = [], []
        for text, cls in zip(out["key_stations"], out["class"], strict=True):
            names = [station_key(s) for s in str(text).split("-") if s]
            col = "hsr_trains_per_day" if cls == "high-speed" else "trains_per_day"
            vals = counts.reindex(names)[col].dropna()
            tpd.append(float(vals.mean()) if len(vals) else np.nan)
            nst.append(len(vals))
        out["trains_per_day"] = tpd
        out["n_count_stations"] = nst
        ref = out.groupby("class")["trains_per_day"].transform(lambda s: s.quantile(reference_quantile))
        ok = out["trains_per_day"].notna() & (ref > 0)
        out.loc[ok, "utilisation"] = out.loc[ok, "trains_per_day"] / ref[ok]
        out.loc[ok, "utilisation_basis"] = (
            f"proxy: key-station trains vs class p{round(reference_quantile * 100)}"
        )
    if line_table is not None:
        p = check_frame(
            line_table, name="utilisation table", columns={"line": "string", "design_capacity": "numeric"}
        )
        use = "ridership" if "ridership" in line_table.columns else "trains_per_day"
        if use not in line_table.columns:
            p.add("expected a 'ridership' or 'trains_per_day' column; add one (same unit as design_capacity)")
        p.raise_if_any()
        table = (
            line_table.assign(_key=line_table["line"].map(line_key)).drop_duplicates("_key").set_index("_key")
        )
        keys = out["name"].map(line_key)
        matched = keys.isin(table.index) & (keys != "")
        alt = out["catalogue_line"].map(line_key) if "catalogue_line" in out.columns else keys
        matched_alt = ~matched & alt.isin(table.index) & (alt != "")
        k = keys.where(matched, alt)
        sel = matched | matched_alt
        t = table.reindex(k[sel].to_numpy())
        cap = pd.to_numeric(t["design_capacity"], errors="coerce").to_numpy(dtype=float)
        val = pd.to_numeric(t[use], errors="coerce").to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cap > 0, val / cap, np.nan)
        out.loc[sel, "utilisation"] = ratio
        out.loc[sel, "utilisation_basis"] = "user table"
        if use == "trains_per_day":
            out.loc[sel, "trains_per_day"] = val
        log.info("utilisation table: %d of %d lines matched", int(sel.sum()), len(out))
    under = pd.array(out["utilisation"] < threshold, dtype="boolean")
    under[out["utilisation"].isna().to_numpy()] = pd.NA
    out["underused"] = under
    return out
