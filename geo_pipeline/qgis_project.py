"""QGIS project stage: ``maps/shrinkage.qgz``, a QGIS project that opens ready to work.

:func:`plan_project` decides everything from the layers the export GeoPackage
holds at run time (so layers added by later versions of the pipeline get in
automatically): the layer groups and drawing order, each layer's named styles
(from the GeoPackage's ``layer_styles``), one map theme per thematic style,
one national print layout per theme (with a South China Sea inset) and a
print layout driven by the QGIS Atlas over the provinces, with the map
extents in the China Albers equal-area CRS of :mod:`geo_pipeline._crs`. The
plan is plain JSON; :func:`build_project` hands it to the PyQGIS script
:mod:`geo_pipeline._qgis_build`, run by the system Python that has Debian's
``python3-qgis`` (the pipeline's virtual environment does not have QGIS).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sqlite3
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import shapely

from ._crs import CHINA_ALBERS, WGS84
from ._errors import GeoPipelineError, InputError

__all__ = [
    "QGIS_PYTHON",
    "StyleInfo",
    "LayerInfo",
    "QgisUnavailable",
    "qgis_problem",
    "read_layer_infos",
    "layer_group",
    "plan_project",
    "build_project",
    "GROUPS",
    "PAGE_MM",
]

log = logging.getLogger(__name__)

#: The Python that has Debian's python3-qgis (QGIS is not installable into the venv).
QGIS_PYTHON = "/usr/bin/python3"
#: The PyQGIS script run by that Python.
BUILD_SCRIPT = Path(__file__).with_name("_qgis_build.py")
#: Landscape page sizes in millimetres.
PAGE_MM = {"A4": (297.0, 210.0), "A3": (420.0, 297.0)}
#: The main map frame on an A4 page (x, y, width, height, mm), scaled for A3 by the script.
MAP_FRAME_MM = (10.0, 28.0, 200.0, 165.0)
#: The South China Sea inset of the national layouts (x, y, width, height, mm on A4): lower right of the map.
SCS_BOX_MM = (176.0, 149.0, 34.0, 44.0)
#: Layers south of this latitude (the South China Sea islands) go to the inset of national maps,
#: as in the PDF atlas.
MAINLAND_MIN_LAT = 17.5
#: The South China Sea inset (lon/lat box), as in the PDF atlas.
SCS_LONLAT = (106.5, 3.0, 123.5, 24.5)

#: Layer groups, top of the layer tree (drawn last) first, with the layer names they take.
#: Attribute tables go to "Tables"; a spatial layer matching no pattern goes to "Population".
GROUPS: tuple[tuple[str, str], ...] = (
    ("Distance", r"core|ring|distance"),
    ("Rail", r"rail|station|corridor|hsr|underused|(^|_)lines?(_|$)"),
    ("Boundaries", r"province|boundar|outline"),
    ("Clusters", r"lisa|cluster|hotspot|getis|(^|_)gi(_|$)"),
    ("Ageing", r"ageing|aging|elder|dependency|bivariate|60plus|65plus|(^|_)age(_|$)"),
    ("Population", r""),
)
_TABLES = "Tables"
#: Layers drawn in this order inside a group (then any other, by name).
_ORDER = ("cores", "distance_rings", "rail_stations", "rail_lines", "corridors", "provinces", "lisa",
          "units", "prefectures")
#: The layers of the Distance and Rail groups shown by the themes that show the group.
_THEME_LAYERS = ("cores", "distance_rings", "rail_lines", "corridors")
#: Keywords of a theme name -> groups whose layers the theme also shows.
_THEME_EXTRAS = ((r"distance|band", "Distance"), (r"rail|corridor", "Rail"))
#: Theme keywords -> the atlas THEMES key whose Chinese and English titles the national layout uses.
_THEME_KEYS = ((r"population change|change_pct", "population_change"), (r"outflow", "net_outflow"),
               (r"distance|band", "distance_bands"), (r"lisa|cluster", "lisa_clusters"),
               (r"rail|corridor", "rail_corridors"))
RAIL_THEME = "Rail corridors"
#: The map theme of the atlas's locator map (a theme rather than a fixed layer set, which QGIS would
#: save with absolute paths).
LOCATOR_THEME = "Locator (provinces)"
_GEOMETRY_RANK = {"point": 0, "line": 1, "polygon": 2}


class QgisUnavailable(GeoPipelineError):
    """The system Python cannot import QGIS (Debian's python3-qgis is not installed)."""


@dataclass(frozen=True)
class StyleInfo:
    """One QGIS style of a layer (a row of the GeoPackage's ``layer_styles``)."""

    name: str
    qml: str
    default: bool = False

    def _renderer_attrib(self, key: str) -> str:
        try:
            body = self.qml.split("\n", 1)[1] if self.qml.startswith("<!DOCTYPE") else self.qml
            node = ET.fromstring(body).find("renderer-v2")
        except (ET.ParseError, IndexError):
            return ""
        return "" if node is None else str(node.get(key, ""))

    @property
    def renderer(self) -> str:
        """Renderer type of the QML (``graduatedSymbol``, ``categorizedSymbol``, ``singleSymbol``...)."""
        return self._renderer_attrib("type")

    @property
    def attribute(self) -> str:
        """The field the renderer classifies (``""`` for a single symbol)."""
        return self._renderer_attrib("attr")


@dataclass(frozen=True)
class LayerInfo:
    """A table of the GeoPackage: name, title, geometry type (empty for attribute tables), styles.

    ``key`` tells apart two project layers of one table (``units`` and ``units_ageing``); it
    defaults to the table name.
    """

    name: str
    title: str = ""
    geometry_type: str = ""
    description: str = ""
    styles: tuple[StyleInfo, ...] = ()
    key: str = ""

    @property
    def id(self) -> str:
        """The layer's key in the project (``key``, else the table name)."""
        return self.key or self.name

    @property
    def spatial(self) -> bool:
        """True for layers with geometry."""
        return bool(self.geometry_type)

    @property
    def kind(self) -> str:
        """``"point"``, ``"line"`` or ``"polygon"`` (``""`` for attribute tables)."""
        g = self.geometry_type.lower()
        for kind in ("point", "line", "polygon"):
            if kind in g:
                return kind
        return ""

    @property
    def default_style(self) -> StyleInfo | None:
        """The style QGIS loads by default (``useAsDefault``), else the first one."""
        return next((s for s in self.styles if s.default), self.styles[0] if self.styles else None)


def read_layer_infos(path: str | os.PathLike[str]) -> list[LayerInfo]:
    """The tables of a GeoPackage with their titles, geometry types and QGIS styles.

    Parameters
    ----------
    path : path-like
        A GeoPackage (``shrinkage.gpkg``).

    Returns
    -------
    list of LayerInfo
        In ``gpkg_contents`` order; the ``layer_styles`` table itself is left out.

    Raises
    ------
    InputError
        If the file is not a GeoPackage (no ``gpkg_contents`` table).
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        with sqlite3.connect(uri, uri=True) as con:
            contents = con.execute(
                "SELECT c.table_name, c.identifier, c.description, g.geometry_type_name "
                "FROM gpkg_contents c LEFT JOIN gpkg_geometry_columns g ON g.table_name = c.table_name "
                "ORDER BY c.rowid"
            ).fetchall()
            has_styles = con.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'layer_styles'"
            ).fetchone()[0]
            rows = con.execute(
                "SELECT f_table_name, styleName, styleQML, useAsDefault FROM layer_styles ORDER BY id"
            ).fetchall() if has_styles else []
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{path}: not a readable GeoPackage ({exc}); run `geo-pipeline export`") from exc
    styles: dict[str, list[StyleInfo]] = {}
    for table, name, qml, default in rows:
        styles.setdefault(table, []).append(StyleInfo(str(name), str(qml), bool(default)))
    return [
        LayerInfo(str(name), str(title or name), str(geom or ""), str(desc or ""),
                  tuple(styles.get(name, ())))
        for name, title, desc, geom in contents if name != "layer_styles"
    ]


def layer_group(layer: LayerInfo) -> str:
    """The layer-tree group of a layer, from its name (see :data:`GROUPS`)."""
    if not layer.spatial:
        return _TABLES
    for group, pattern in GROUPS:
        if re.search(pattern, layer.name.lower()):
            return group
    return GROUPS[-1][0]  # pragma: no cover - the last pattern matches everything


def _order_key(layer: LayerInfo) -> tuple[int, int, str]:
    known = _ORDER.index(layer.name) if layer.name in _ORDER else len(_ORDER)
    return (_GEOMETRY_RANK.get(layer.kind, 3), known, layer.id)


def _ageing_layer(units: LayerInfo) -> LayerInfo | None:
    """The units again, with only their ageing styles (60+/65+ shares, dependency, bivariate), or None."""
    pattern = re.compile(GROUPS[[g for g, _ in GROUPS].index("Ageing")][1] + r"|^bv_")
    found = [s for s in units.styles if pattern.search(s.attribute.lower())]
    if not found:
        return None
    styles = tuple(replace(s, default=i == 0) for i, s in enumerate(found))
    return replace(units, key=f"{units.name}_ageing", title=f"{units.title}: ageing", styles=styles)


def _fit(bounds: Sequence[float], aspect: float, margin: float) -> list[float]:
    """``bounds`` grown by ``margin`` (share of its size) and widened to ``aspect`` (width / height)."""
    x0, y0, x1, y1 = (float(b) for b in bounds)
    w, h = max(x1 - x0, 1.0) * (1 + 2 * margin), max(y1 - y0, 1.0) * (1 + 2 * margin)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _extents(provinces: gpd.GeoDataFrame, *, code_field: str, margin: float) -> dict[str, Any]:
    """National mainland extent, South China Sea inset and per-province overrides, in Albers metres."""
    aspect = MAP_FRAME_MM[2] / MAP_FRAME_MM[3]
    wgs = provinces.to_crs(WGS84)
    parts = wgs.geometry.explode(index_parts=False)
    lat = shapely.get_y(shapely.centroid(parts.to_numpy()))
    north = np.asarray(lat) >= MAINLAND_MIN_LAT
    projected = gpd.GeoSeries(parts.to_numpy(), crs=WGS84).to_crs(CHINA_ALBERS).to_numpy()
    codes = wgs[code_field].astype(str).reindex(parts.index).to_numpy()
    keep = north if north.any() else np.ones(len(parts), bool)
    x0, y0, x1, y1 = shapely.total_bounds(projected[keep])
    out: dict[str, Any] = {"scs": None, "provinces": {}}
    if (~north).any():
        to_albers = pyproj.Transformer.from_crs(WGS84, CHINA_ALBERS, always_xy=True)
        lon0, lat0, lon1, lat1 = SCS_LONLAT
        xs, ys = to_albers.transform([lon0, lon1, lon0, lon1], [lat0, lat0, lat1, lat1])
        out["scs"] = [min(xs), min(ys), max(xs), max(ys)]
        # lower the national extent where needed so the inset (lower right) sits below Taiwan, as the
        # PDF atlas does
        _, y_taiwan = to_albers.transform(121.0, 21.0)
        need = SCS_BOX_MM[3] / MAP_FRAME_MM[3] + 0.02
        y0 = min(y0, (y_taiwan - need * y1) / (1 - need))
    out["national"] = _fit((x0, y0, x1, y1), aspect, 0.02)
    out["south_mask_mm"] = _south_mask(out["national"]) if out["scs"] else None
    for code in sorted(set(codes[~north])):
        mine = codes == code
        if (mine & north).any():  # a province with parts on both sides: its page shows the main parts
            out["provinces"][code] = _fit(shapely.total_bounds(projected[mine & north]), aspect, margin)
    return out


def _south_mask(extent: Sequence[float]) -> list[list[float]] | None:
    """Polygon (mm on the A4 page) covering the national map south of :data:`MAINLAND_MIN_LAT`.

    The national layouts draw it in white above the main map, so the South China Sea islands are shown
    in the inset only, as in the PDF atlas.
    """
    to_albers = pyproj.Transformer.from_crs(WGS84, CHINA_ALBERS, always_xy=True)
    lon = np.linspace(60.0, 150.0, 91)
    lat = np.full_like(lon, MAINLAND_MIN_LAT)
    xs, ys = to_albers.transform(np.r_[lon, 150.0, 60.0], np.r_[lat, -30.0, -30.0])
    south = shapely.Polygon(np.c_[xs, ys])
    ex0, ey0, ex1, ey1 = extent
    mx, my, mw, mh = MAP_FRAME_MM
    pad = 0.4 * (ex1 - ex0) / mw  # keep the map frame line visible
    area = shapely.intersection(south, shapely.box(ex0 + pad, ey0 + pad, ex1 - pad, ey1 - pad))
    if area.is_empty or area.geom_type != "Polygon":
        return None
    px, py = np.asarray(area.exterior.coords).T
    return [[float(mx + (x - ex0) / (ex1 - ex0) * mw), float(my + (ey1 - y) / (ey1 - ey0) * mh)]
            for x, y in zip(px, py, strict=True)]


def _theme_key(name: str) -> str | None:
    for pattern, key in _THEME_KEYS:
        if re.search(pattern, name.lower()):
            return key
    return None


def plan_project(
    layers: Sequence[LayerInfo],
    *,
    gpkg: str | os.PathLike[str],
    output: str | os.PathLike[str],
    provinces: gpd.GeoDataFrame | None = None,
    province_codes: Collection[str] | None = None,
    paper: str = "A4",
    titles: Mapping[str, tuple[str, str]] | None = None,
    source_text: str = "",
    font: str = "Noto Sans CJK SC",
    font_file: str = "",
    atlas_margin: float = 0.06,
) -> dict[str, Any]:
    """Plan the QGIS project: groups, styles, map themes, national and atlas layouts.

    Parameters
    ----------
    layers : sequence of LayerInfo
        The tables of the GeoPackage (:func:`read_layer_infos`); must include
        a spatial ``units`` layer.
    gpkg : path-like
        The GeoPackage the project's layers read (saved relative to ``output``).
    output : path-like
        Where the script writes the project (``.qgz``).
    provinces : geopandas.GeoDataFrame, optional
        The ``provinces`` layer, for the extents (national, South China Sea
        inset, provinces with distant islands); without it the atlas layout is
        left out and the extents come from ``units`` (pass it as ``provinces``
        then).
    province_codes : collection of str, optional
        Codes of the provinces that get an atlas page (those with units); all
        provinces when None.
    paper : {"A4", "A3"}
        Landscape page size of every layout.
    titles : mapping, optional
        Atlas theme key to (Chinese, English) titles (:data:`geo_pipeline.atlas.THEMES`).
    source_text : str
        Data sources printed on every page.
    font : str
        Font family of the layout text (a CJK font for the Chinese names).
    font_file : str
        A font file with ``font`` that QGIS registers while building (e.g. the
        pip-installed Noto Sans CJK), so the layouts find it without system fonts.
    atlas_margin : float
        Margin around each province on its atlas page, as a share of its extent.

    Returns
    -------
    dict
        The JSON-able plan read by :mod:`geo_pipeline._qgis_build`.

    Raises
    ------
    InputError
        If there is no spatial ``units`` layer, or ``paper`` is unknown.
    """
    if paper not in PAGE_MM:
        raise InputError(f"paper: expected one of {list(PAGE_MM)}, found {paper!r}")
    by_name = {layer.id: layer for layer in layers}
    if "units" not in by_name or not by_name["units"].spatial:
        raise InputError(f"{gpkg}: no spatial layer 'units' (found {sorted(by_name)}); "
                         "run `geo-pipeline export`")
    titles = dict(titles or {})
    units = by_name["units"]
    group_of = {layer.id: layer_group(layer) for layer in layers}
    ageing = _ageing_layer(units)
    if ageing is not None:  # the ageing styles of the units, as a layer of the Ageing group
        layers = [*layers, ageing]
        by_name[ageing.id] = ageing
        group_of[ageing.id] = "Ageing"
    ageing_styles = {s.name for s in ageing.styles} if ageing else set()
    boundaries = [n for n, g in group_of.items() if g == "Boundaries" and by_name[n].kind == "polygon"]
    outline = ["provinces"] if "provinces" in by_name else boundaries[:1]

    def default_name(layer: LayerInfo) -> str:
        style = layer.default_style
        return style.name if style else ""

    # -- map themes: each units style, the default style of other choropleth layers, rail -------
    themes: list[dict[str, Any]] = []

    def extras(group: str) -> list[str]:
        """The group's layers a theme shows.

        The main ones when present (rail_lines already draws the underused lines; stations would
        cover the map), else all but the stations and the layers of the prefecture level.
        """
        members = [n for n, g in group_of.items() if g == group and by_name[n].spatial]
        main = [n for n in members if n in _THEME_LAYERS]
        return main or [n for n in members if n != "rail_stations" and not n.startswith("prefecture_")]

    def add_theme(name: str, layer: LayerInfo, style: str) -> None:
        shown = {layer.id: style}
        for pattern, group in _THEME_EXTRAS:
            if re.search(pattern, name.lower()):
                shown.update({n: default_name(by_name[n]) for n in extras(group)})
        shown.update({n: default_name(by_name[n]) for n in outline})
        legend = [n for n in shown if n not in outline] + outline
        themes.append({"name": name, "layers": shown, "legend": legend})

    for style in units.styles or (StyleInfo("Default", ""),):
        if style.name not in ageing_styles:
            add_theme(style.name, units, style.name)
    for style in ageing.styles if ageing else ():
        add_theme(style.name, ageing, style.name)
    for layer in layers:
        style = layer.default_style
        if (layer.name != "units" and layer.kind == "polygon" and style is not None
                and group_of[layer.id] in ("Population", "Ageing")
                and style.renderer in ("graduatedSymbol", "categorizedSymbol")):
            add_theme(f"{layer.title}: {style.name}", layer, style.name)
    rail = [n for n, g in group_of.items() if g == "Rail" and by_name[n].spatial]
    if rail:
        base = units.default_style
        add_theme(RAIL_THEME, units, base.name if base else "")
    default_theme = themes[0]

    # -- groups -------------------------------------------------------------------------------
    groups = []
    for group in [g for g, _ in GROUPS] + [_TABLES]:
        members = sorted((layer for layer in layers if group_of[layer.id] == group), key=_order_key)
        if not members:
            continue
        groups.append({
            "name": group, "expanded": group != _TABLES,
            "layers": [{
                "name": layer.name, "key": layer.id, "title": layer.title, "description": layer.description,
                "visible": layer.id in default_theme["layers"],
                "styles": [{"name": s.name, "qml": s.qml, "default": s.default} for s in layer.styles],
            } for layer in members],
        })

    # -- extents and layouts --------------------------------------------------------------------
    frame = provinces
    columns = frame.columns if frame is not None else ()
    code_field = next((c for c in ("province_code", "adcode") if c in columns), None)
    if frame is None or code_field is None:
        raise InputError("plan_project: provinces (or units) with a province_code column are needed for the "
                         "map extents")
    extents = _extents(frame, code_field=code_field, margin=atlas_margin)
    width, height = PAGE_MM[paper]

    def theme_titles(name: str) -> tuple[str, str]:
        key = _theme_key(name)
        if key and key in titles and (name in {s.name for s in units.styles} - ageing_styles
                                      or name == RAIL_THEME):
            return titles[key]
        return name, ""

    layouts: list[dict[str, Any]] = []
    if "provinces" in by_name and provinces is not None:
        zh, en = titles.get("population_change", ("", default_theme["name"]))
        wanted = province_codes if province_codes is not None else frame[code_field]
        codes = sorted({str(c) for c in wanted})
        field = "province_code" if "province_code" in provinces.columns else code_field
        layouts.append({
            "kind": "atlas", "name": "Atlas – provinces", "coverage": "provinces", "name_field": "name",
            "sort_field": field, "filter": f'"{field}" IN ({", ".join(repr(c) for c in codes)})',
            "theme": default_theme["name"], "legend_layers": default_theme["legend"],
            "title": '[% "name" %]', "subtitle": f"{zh} {en}".strip(), "margin": atlas_margin,
            "page_number": "页 Page [% @atlas_featurenumber %] / [% @atlas_totalfeatures %]",
            "extent_overrides": {c: b for c, b in extents["provinces"].items() if c in codes},
            "locator": True, "clip_layers": [k for k in ("units",) if k in by_name],
            "pages": len(codes),
        })
    for i, theme in enumerate(themes, 1):
        zh, en = theme_titles(theme["name"])
        layouts.append({
            "kind": "national", "name": f"National – {theme['name']}", "theme": theme["name"],
            "legend_layers": theme["legend"], "title": f"{zh} 全国 China" if en else zh, "subtitle": en,
            "page_number": f"页 Page {i} / {len(themes)}",
        })

    out = Path(output)
    return {
        "gpkg": str(Path(gpkg).resolve()),
        "output": str(out.resolve()),
        "inner_name": out.stem.lstrip(".").split(".")[0] or "shrinkage",
        "title": "Shrinking cities in China, 2010–2020",
        "crs_wkt": CHINA_ALBERS.to_wkt(),
        "page": {"paper": paper, "width_mm": width, "height_mm": height},
        "font": font,
        "font_file": font_file,
        "groups": groups,
        "themes": [{"name": t["name"], "layers": t["layers"]} for t in themes]
        + [{"name": LOCATOR_THEME, "layers": {n: default_name(by_name[n]) for n in (outline or ["units"])}}],
        "layouts": layouts,
        "extents": {"national": extents["national"], "scs": extents["scs"]},
        "south_mask_mm": extents["south_mask_mm"],
        "bookmarks": {"China (mainland)": extents["national"],
                      **({"South China Sea islands": extents["scs"]} if extents["scs"] else {})},
        "locator_theme": LOCATOR_THEME,
        "scs_box_mm": list(SCS_BOX_MM),
        "north_arrow_svg": "arrows/NorthArrow_02.svg",
        "text": {"legend": "图例 Legend", "locator": "位置 Location",
                 "scs": "南海诸岛 South China Sea islands", "source": source_text},
    }


@functools.lru_cache(maxsize=4)
def qgis_problem(python: str = QGIS_PYTHON) -> str:
    """Why ``python`` cannot run PyQGIS, or ``""`` when it can (checked once per process)."""
    try:
        probe = subprocess.run([python, "-c", "import qgis.core"], capture_output=True, text=True,
                               timeout=120, env=_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} cannot be run ({exc})"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{python} cannot import qgis.core ({last})"
    return ""


def _env(home: str | None = None) -> dict[str, str]:
    env = {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env["HOME"] = home or tempfile.gettempdir()
    return env


def build_project(
    plan: Mapping[str, Any], *, python: str = QGIS_PYTHON, timeout: float = 600.0
) -> dict[str, Any]:
    """Run the PyQGIS script on ``plan``; return its report of the written project.

    Raises
    ------
    QgisUnavailable
        If ``python`` cannot import QGIS.
    GeoPipelineError
        If the script fails (its message is included).
    """
    problem = qgis_problem(python)
    if problem:
        raise QgisUnavailable(problem)
    with tempfile.TemporaryDirectory(prefix="geo_pipeline-qgis-") as folder:
        plan_file = Path(folder) / "plan.json"
        plan_file.write_text(json.dumps(plan, ensure_ascii=False), encoding="utf-8")
        try:
            proc = subprocess.run([python, str(BUILD_SCRIPT), str(plan_file)], capture_output=True, text=True,
                                  timeout=timeout, env=_env(folder))
        except subprocess.TimeoutExpired as exc:
            raise GeoPipelineError(f"QGIS did not finish building the project in {timeout:g} s") from exc
    if proc.returncode != 0:
        raise GeoPipelineError(f"QGIS could not build the project: {proc.stderr.strip()[-1500:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
