"""Underused rail lines: their map class and the units they cross.

Pure functions on the standard rail lines after
:func:`geo_pipeline.rail.line_utilisation` (``utilisation``, ``underused``):

* :func:`map_class` - the class a map draws a line with: its ``class``, with
  ``" underused"`` appended for underused lines (drawn dashed in a distinct
  colour by :func:`geo_pipeline.styles.rail_categories` and the atlas);
* :func:`underused_lines` - one row per underused line with the analysis units
  it crosses and those units' shrinking share (level-agnostic: any units frame).
"""

from __future__ import annotations

import logging

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ._groups import figure_columns, group_figures
from ._validate import check_frame, check_same_crs

__all__ = ["UNDERUSED_SUFFIX", "UNDERUSED_COLUMNS", "map_class", "underused_lines"]

log = logging.getLogger(__name__)

#: Appended to the class of an underused line in ``map_class``.
UNDERUSED_SUFFIX = " underused"

#: Columns of :func:`underused_lines` (plus ``geometry``).
UNDERUSED_COLUMNS: dict[str, str] = {
    "line_id": "str",
    "name": "str",
    "class": "str",
    "open_year": "Int64",
    "utilisation": "float64",
    "utilisation_basis": "str",
    "trains_per_day": "float64",
    **figure_columns(change_column="pop_change_pct", median=False),
    "unit_ids": "str",
    "unit_names": "str",
    "map_class": "str",
    "underused_threshold": "float64",
}


def map_class(lines: pd.DataFrame) -> pd.Series:
    """The class a map draws each line with.

    Parameters
    ----------
    lines : pandas.DataFrame
        ``class`` and, optionally, ``underused`` (nullable boolean).

    Returns
    -------
    pandas.Series
        ``class`` (``"high-speed"``, ``"fast"``, ``"conventional"``), with
        ``" underused"`` appended where ``underused`` is true; missing
        ``underused`` counts as not underused.
    """
    check_frame(lines, name="rail lines", columns={"class": "any"}).raise_if_any()
    cls = lines["class"].astype(str)
    if "underused" not in lines.columns:
        return cls.rename("map_class")
    under = lines["underused"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return cls.where(~under, cls + UNDERUSED_SUFFIX).rename("map_class")


def underused_lines(lines: gpd.GeoDataFrame, units: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """Underused lines with the units they cross and those units' shrinkage.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Standard lines with ``line_id``, ``name``, ``class``, ``open_year``,
        ``utilisation``, ``utilisation_basis``, ``trains_per_day`` and
        ``underused``.
    units : geopandas.GeoDataFrame
        Analysis units with ``unit_id``, ``pop_2010``, ``pop_2020``,
        ``shrinking`` and polygon geometry in the CRS of ``lines``; ``name``
        is used when present.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`UNDERUSED_COLUMNS`, one row per underused line (lowest
        utilisation first), with the line geometry. ``unit_ids`` and
        ``unit_names`` list the crossed units (``;``-joined); ``map_class``
        is :func:`map_class` and ``underused_threshold`` is copied from the
        lines when they have it;
        ``shrinking_share`` is the share of them that shrank and
        ``pop_change_pct`` their pooled change
        ``100 (sum P2020 - sum P2010) / sum P2010``.

    Raises
    ------
    InputError
        Missing columns; CRSError when the CRS differ.
    """
    p = check_frame(
        lines, name="rail lines",
        columns={"line_id": "any", "name": "any", "class": "any", "utilisation": "any", "underused": "any"},
        geometry=True,
    )
    check_frame(units, name="units",
                columns={"unit_id": "any", "pop_2010": "numeric", "pop_2020": "numeric", "shrinking": "any"},
                geometry=True, problems=p)
    p.raise_if_any()
    check_same_crs(("rail lines", lines), ("units", units))
    under = lines.loc[lines["underused"].astype("boolean").fillna(False).to_numpy(dtype=bool)]
    under = under.sort_values(["utilisation", "line_id"], kind="stable")
    tree = shapely.STRtree(units.geometry.values)
    li, ui = tree.query(under.geometry.values, predicate="intersects") if len(under) else ([], [])
    li, ui = np.asarray(li, dtype=np.int64), np.asarray(ui, dtype=np.int64)
    ids = units["unit_id"].astype(str).to_numpy()
    names = units["name"].astype(str).to_numpy() if "name" in units.columns else ids
    crossed_units = [np.sort(ui[li == k]) for k in range(len(under))]
    # underused_lines' rules: missing shrinking counts as not shrinking, a missing
    # population of a crossed unit propagates (and fails the integer sum), no median.
    figures = group_figures(
        units, crossed_units, missing_population="propagate", median=None, change_column="pop_change_pct"
    )
    rows = []
    for (_, line), sel, fig in zip(under.iterrows(), crossed_units, figures, strict=True):
        rows.append({
            "line_id": str(line["line_id"]),
            "name": str(line["name"]),
            "class": str(line["class"]),
            "open_year": line.get("open_year", pd.NA),
            "utilisation": float(line["utilisation"]),
            "utilisation_basis": str(line.get("utilisation_basis", "")),
            "trains_per_day": float(line.get("trains_per_day", np.nan)),
            **fig,
            "unit_ids": ";".join(ids[sel]),
            "unit_names": ";".join(names[sel]),
            "map_class": f"{line['class']}{UNDERUSED_SUFFIX}",
            "underused_threshold": float(line.get("underused_threshold", np.nan)),
        })
    frame = pd.DataFrame(rows, columns=list(UNDERUSED_COLUMNS)).astype(UNDERUSED_COLUMNS)
    out = gpd.GeoDataFrame(frame, geometry=list(under.geometry.values) if len(under) else
                           gpd.GeoSeries([], crs=lines.crs), crs=lines.crs)
    if len(out):
        crossed = out["n_units"].sum()
        log.info(
            "underused lines: %d, crossing %d unit(s) in all; %.0f %% of the crossings are shrinking units",
            len(out), int(crossed), 100.0 * out["n_shrinking"].sum() / crossed if crossed else float("nan"),
        )
    return out
