"""Expressways overlaid on the units, from a user's line layer.

No open national road network is available to the pipeline: the OpenStreetMap
data at hand (``data_raw/osm``) cover only a small extract around Guixi, and
no open layer of China's expressways (or airports) with a licence and a pinned
source is fetched. A user who has one (e.g. an OSM ``highway=motorway``
export, or a licensed national layer) passes it as a GeoPackage
(``--expressways my.gpkg`` or ``[infrastructure] expressways``), and
:func:`expressway_overlay` measures it with the same machinery as the
high-speed rail corridors (:func:`geo_pipeline.infrastructure.unit_overlay`):

* ``expressway_km`` - geodesic distance from the unit's representative point
  to the nearest expressway, measured to the layer's vertices after densifying
  every line to at most ``vertex_spacing_km`` (so at most half that spacing,
  0.5 km by default, too long);
* ``expressway_crosses`` - an expressway intersects the unit;
* ``expressway_share`` - share of the unit's area within ``buffer_km`` of an
  expressway (equal-area projection);
* ``in_expressway_corridor`` - ``expressway_share >= min_share`` or crossed.
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from . import infrastructure as inf
from ._errors import CRSError
from ._validate import check_frame

__all__ = ["EXPRESSWAY_COLUMNS", "prepare_expressways", "expressway_overlay", "expressway_summary"]

log = logging.getLogger(__name__)

#: Columns of :func:`expressway_overlay` (plus ``geometry``).
EXPRESSWAY_COLUMNS: dict[str, str] = {
    "unit_id": "str",
    "expressway_km": "float64",
    "expressway_crosses": "bool",
    "expressway_share": "float64",
    "in_expressway_corridor": "bool",
}

_RENAME = {
    "hsr_station_km": "expressway_km",
    "hsr_crosses": "expressway_crosses",
    "corridor_share": "expressway_share",
    "in_corridor": "in_expressway_corridor",
}


def prepare_expressways(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Check and standardise a user's expressway layer.

    Parameters
    ----------
    frame : geopandas.GeoDataFrame
        (Multi)LineString features in EPSG:4326; ``name`` and ``open_year``
        are kept when present.

    Returns
    -------
    geopandas.GeoDataFrame
        ``road_id``, ``name``, ``open_year`` (Int64) and the geometry.

    Raises
    ------
    InputError
        No rows, wrong or missing geometry.
    CRSError
        A CRS other than EPSG:4326 (reproject it first; GCJ-02 data must be
        converted to WGS84 before).
    """
    p = check_frame(
        frame, name="expressways layer", geometry=True, geom_types=("LineString", "MultiLineString")
    )
    if frame.empty:
        p.add("no features; expected at least one expressway line")
    p.raise_if_any()
    if frame.crs is None or not pyproj.CRS.from_user_input(frame.crs).equals("EPSG:4326"):
        raise CRSError(
            f"expressways layer: expected CRS EPSG:4326 (WGS84 lon/lat), found "
            f"{frame.crs.to_string() if frame.crs is not None else 'no CRS'}; reproject it (GCJ-02/Amap data "
            "must be converted to WGS84 first)"
        )
    n = len(frame)
    out = gpd.GeoDataFrame(
        {
            "road_id": frame["road_id"].astype(str).to_numpy() if "road_id" in frame.columns
            else [f"road:{i}" for i in range(n)],
            "name": frame["name"].fillna("").astype(str).to_numpy() if "name" in frame.columns else "",
            "open_year": pd.to_numeric(frame["open_year"], errors="coerce").astype("Int64").to_numpy()
            if "open_year" in frame.columns else pd.array([pd.NA] * n, dtype="Int64"),
        },
        geometry=frame.geometry.to_numpy(),
        crs=frame.crs,
    )
    return out


def expressway_overlay(
    units: gpd.GeoDataFrame,
    expressways: gpd.GeoDataFrame,
    *,
    buffer_km: float = 10.0,
    min_share: float = 0.5,
    vertex_spacing_km: float = 1.0,
) -> gpd.GeoDataFrame:
    """Expressway measures of every unit (module notes).

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with ``unit_id`` and polygon geometry, EPSG:4326 (any level).
    expressways : geopandas.GeoDataFrame
        Output of :func:`prepare_expressways`.
    buffer_km : float, default 10
        Half-width of an expressway corridor.
    min_share : float, default 0.5
        Share of a unit's area in corridors for ``in_expressway_corridor``.
    vertex_spacing_km : float, default 1
        Densification step of the lines for ``expressway_km``.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`EXPRESSWAY_COLUMNS` and the units' geometry.

    Raises
    ------
    CRSError
        Units and expressways in different CRS.
    InputError
        Missing columns, bad geometry or options.
    """
    lines = gpd.GeoDataFrame(  # the rail overlay buffers and crosses "high-speed" lines: every road is one
        {"line_id": expressways["road_id"].astype(str).to_numpy(), "name": expressways["name"].to_numpy(),
         "class": "high-speed", "open_year": expressways["open_year"].astype("Int64").to_numpy()},
        geometry=expressways.geometry.to_numpy(), crs=expressways.crs,
    )
    step = vertex_spacing_km / 111.0  # degrees of latitude; longitude steps are shorter, never longer
    dense = shapely.segmentize(lines.geometry.to_numpy(), step)
    xy = shapely.get_coordinates(dense)
    vertices = gpd.GeoDataFrame({"name": lines["name"].repeat(
        shapely.get_num_coordinates(dense)).to_numpy(), "high_speed": True},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=lines.crs)
    overlay = inf.unit_overlay(units, lines, vertices, buffer_km=buffer_km, min_share=min_share)
    out = overlay.rename(columns=_RENAME)[[*EXPRESSWAY_COLUMNS, overlay.geometry.name]]
    log.info("expressways: %d of %d units in %g km corridors; median distance %.1f km", int(
        out["in_expressway_corridor"].sum()), len(out), buffer_km,
        float(np.nanmedian(out["expressway_km"])) if len(out) else float("nan"))
    return out


def expressway_summary(units: pd.DataFrame, overlay: pd.DataFrame) -> pd.DataFrame:
    """Shrinkage inside vs outside expressway corridors.

    The same table as :func:`geo_pipeline.infrastructure.corridor_summary`.

    Returns
    -------
    pandas.DataFrame
        The ``corridor`` and ``all`` rows of the corridor summary, with
        ``mean_hsr_station_km`` renamed ``mean_expressway_km``.
    """
    back = pd.DataFrame(overlay).rename(columns={v: k for k, v in _RENAME.items()}).assign(hsr_period="none")
    out = inf.corridor_summary(units, back)
    out = out.loc[out["grouping"].isin(["corridor", "all"])].reset_index(drop=True)
    return out.rename(columns={"mean_hsr_station_km": "mean_expressway_km"})
