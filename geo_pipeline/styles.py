"""Map classes, colours and QGIS layer styles (QML) shared by the export and the atlas.

The export stores these styles in the GeoPackage ``layer_styles`` table so that
QGIS opens each layer already styled; the atlas draws its maps with the same
classes and colours, so a map in QGIS and a page of the atlas read alike.

Colours follow ColorBrewer (RdBu for change: shrinking red, growing blue) and
the GeoDa convention for LISA clusters (High-High red, Low-Low blue,
Low-High light blue, High-Low pink, not significant grey).
"""

from __future__ import annotations

import math
import re
import sys
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "Classes",
    "Category",
    "diverging_classes",
    "sequential_classes",
    "AGEING_COLORS",
    "lisa_categories",
    "band_categories",
    "rail_categories",
    "graduated_qml",
    "categorized_qml",
    "single_qml",
    "symbol_kind",
    "LISA_COLORS",
    "LISA_LABELS",
    "SHRINK_COLORS",
    "GROW_COLORS",
    "RAIL_COLORS",
    "UNDERUSED_COLOR",
    "NO_DATA_COLOR",
]

SymbolKind = Literal["fill", "line", "marker"]

#: ColorBrewer RdBu, red half, most negative first (shrinking).
SHRINK_COLORS = ("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7")
#: ColorBrewer RdBu, blue half, smallest positive first (growing).
GROW_COLORS = ("#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061")
#: ColorBrewer YlOrBr, lightest first: shares of older residents.
AGEING_COLORS = ("#ffffd4", "#fed98e", "#fe9929", "#d95f0e", "#993404")
#: Fill of units without a value.
NO_DATA_COLOR = "#ffffff"

#: LISA cluster colours (GeoDa convention).
LISA_COLORS = {
    "HH": "#d7191c",
    "LL": "#2c7bb6",
    "LH": "#abd9e9",
    "HL": "#f4a6c8",
    "ns": "#d9d9d9",
    "nc": "#ffffff",
}
LISA_LABELS = {
    "HH": "High-High 高-高",
    "LL": "Low-Low 低-低",
    "LH": "Low-High 低-高",
    "HL": "High-Low 高-低",
    "ns": "Not significant 不显著",
    "nc": "Not comparable 不可比 (left out)",
}
# esda's Moran_Local.q codes: 1 HH, 2 LH, 3 LL, 4 HL; 0 is used for "not significant".
_LISA_CODES = {1: "HH", 2: "LH", 3: "LL", 4: "HL", 0: "ns"}
_LISA_ORDER = ("HH", "LL", "LH", "HL", "ns", "nc")

#: Rail line colours by class: high-speed, fast, conventional/other.
RAIL_COLORS = {"high_speed": "#c51b7d", "fast": "#f1a340", "conventional": "#636363"}
RAIL_LABELS = {"high_speed": "高速 High-speed", "fast": "快速 Fast", "conventional": "普速 Conventional"}
RAIL_WIDTHS = {"high_speed": 0.7, "fast": 0.45, "conventional": 0.3}
#: Underused lines (``map_class`` ending in ``"underused"``): dashed, in this colour, at their class width.
UNDERUSED_COLOR = "#2166ac"
UNDERUSED_LABEL = "未充分利用 underused"


# -- classes -----------------------------------------------------------------
@dataclass(frozen=True)
class Classes:
    """A classification of one numeric column into coloured classes.

    Class ``i`` holds values ``edges[i] < x <= edges[i + 1]`` (the first class
    also holds ``edges[0]``), the convention of :mod:`mapclassify` and of QGIS
    graduated renderers.

    Attributes
    ----------
    column : classified column.
    edges : class edges, ``len(colors) + 1`` increasing numbers (min ... max).
    colors : hex colour per class.
    labels : legend label per class.
    counts : number of values per class.
    method : how the breaks were found (for legends and metadata).
    """

    column: str
    edges: tuple[float, ...]
    colors: tuple[str, ...]
    labels: tuple[str, ...]
    counts: tuple[int, ...]
    method: str

    @property
    def k(self) -> int:
        """Number of classes."""
        return len(self.colors)

    def assign(self, values: Iterable[float]) -> np.ndarray:
        """Class index of each value (``-1`` for missing or out-of-range values)."""
        v = np.asarray(pd.to_numeric(pd.Series(list(values), dtype="float64"), errors="coerce"), dtype=float)
        out = np.full(v.shape, -1, dtype=int)
        if not self.k:
            return out
        edges = np.asarray(self.edges)
        idx = np.searchsorted(edges[1:], v, side="left")
        ok = np.isfinite(v) & (v >= edges[0]) & (v <= edges[-1])
        out[ok] = np.minimum(idx[ok], self.k - 1)
        return out


def _fmt(x: float, decimals: int) -> str:
    s = f"{x:.{decimals}f}"
    return "0" if float(s) == 0 else s


_MAPCLASSIFY_LOCK = threading.Lock()


def _mapclassify() -> ModuleType:
    """Import mapclassify without compiling its Fisher-Jenks kernel up front.

    mapclassify decorates ``_fisher_jenks_means`` with ``numba.njit("f8[:](f8[:], u2)")``:
    an explicit signature makes numba compile at import, 2.4-3.2 s of CPU in every process
    that imports it (measured here: 3.2 s of the export stage's 3.4 s when profiled), and such
    a compile cannot be cached on disk. The export uses quantile classes, which need no numba
    at all. While mapclassify is imported, ``numba.njit`` given a signature returns the lazy
    dispatcher ``numba.njit(func)`` instead: the same function, compiled on its first call
    (Fisher-Jenks classes only) from the argument types. Classes are identical
    (tests/test_styles_import.py compares with an eager import in a fresh process).
    """
    if "mapclassify" in sys.modules:
        return sys.modules["mapclassify"]
    with _MAPCLASSIFY_LOCK:
        if "mapclassify" in sys.modules:  # pragma: no cover - another thread won
            return sys.modules["mapclassify"]
        try:
            import numba
        except ImportError:  # mapclassify falls back to pure Python itself
            import mapclassify

            return mapclassify
        eager = numba.njit

        def lazy_njit(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], str | tuple | list) and not kwargs:
                return lambda func: eager(func)
            return eager(*args, **kwargs)

        numba.njit = lazy_njit
        try:
            import mapclassify
        finally:
            numba.njit = eager
        return mapclassify


def _side_bins(values: np.ndarray, k: int, method: str) -> list[float]:
    """Upper bounds of at most ``k`` classes of ``values`` (mapclassify)."""
    uniq = np.unique(values)
    kk = min(k, len(uniq))
    if kk <= 1:
        return [float(uniq.max())]
    with warnings.catch_warnings():  # ties: mapclassify merges classes itself and says so
        warnings.filterwarnings("ignore", message=".*[Nn]ot enough unique values.*")
        if method == "Quantiles":
            bins = _mapclassify().Quantiles(values, k=kk).bins
        else:
            bins = _mapclassify().FisherJenks(values, k=kk).bins
    return [float(b) for b in np.unique(bins)]


def diverging_classes(
    values: pd.Series,
    *,
    column: str,
    centre: float = 0.0,
    k: int = 4,
    method: Literal["FisherJenks", "Quantiles"] = "Quantiles",
    below_colors: Sequence[str] = SHRINK_COLORS,
    above_colors: Sequence[str] = GROW_COLORS,
    decimals: int = 1,
    unit: str = "",
) -> Classes:
    """Diverging classes with a break at ``centre`` (mapclassify on each side).

    Values at or below ``centre`` and values above it are classified
    separately into at most ``k`` classes each with mapclassify (quantiles by
    default: each class of a side holds about as many units, which a few
    extreme values cannot distort; Fisher-Jenks natural breaks on request),
    so no class straddles the centre and the colours diverge there: by
    default shrinking red, growing blue.

    Parameters
    ----------
    values : pandas.Series
        Numeric values; missing values are ignored.
    column : str
        Name of the classified column (kept on the result).
    centre : float, default 0.0
        The break between the two colour ramps.
    k : int, default 4
        Maximum number of classes on each side (at most 5).
    method : {"Quantiles", "FisherJenks"}
        mapclassify scheme used on each side.
    below_colors, above_colors : sequence of str
        Colour ramps for values below and above the centre, ordered from the
        lowest value up; the classes take the colours nearest the centre.
    decimals : int, default 1
        Decimals in the labels.
    unit : str, optional
        Appended to each label (e.g. ``" %"``).

    Returns
    -------
    Classes
        With ``k`` empty (no classes) when there are no finite values.

    Notes
    -----
    The final class of the lower side ends exactly at ``centre``, so the
    edges are ``[min, b_1, ..., centre, c_1, ..., max]`` where ``b_i`` and
    ``c_i`` are the mapclassify upper bounds of each side; counts come from
    ``mapclassify.UserDefined`` with those bins.
    """
    if not 1 <= k <= 5:
        raise ValueError(f"k must be between 1 and 5, found {k}")
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Classes(column, (), (), (), (), method)
    below = v[v <= centre]
    above = v[v > centre]
    bins: list[float] = []
    colors: list[str] = []
    if below.size:
        b = _side_bins(below, k, method)
        b[-1] = centre
        bins += b
        colors += list(below_colors[len(below_colors) - len(b):])
    if above.size:
        a = _side_bins(above, k, method)
        bins += a
        colors += list(above_colors[: len(a)])
    lower = float(v.min())
    # a single value equal to the lowest edge would make an empty first class
    keep = [i for i, b in enumerate(bins) if b >= lower and (i == 0 or b > bins[i - 1])]
    bins = [bins[i] for i in keep]
    colors = [colors[i] for i in keep]
    edges = (lower, *bins)
    counts = np.bincount(_mapclassify().UserDefined(v, bins=bins).yb, minlength=len(bins))
    labels = tuple(
        f"{_fmt(hi, decimals)}{unit}" if lo == hi else f"{_fmt(lo, decimals)} to {_fmt(hi, decimals)}{unit}"
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    )
    return Classes(
        column, tuple(float(e) for e in edges), tuple(colors), labels,
        tuple(int(c) for c in counts[: len(bins)]), f"{method} on each side of {centre:g}",
    )


def sequential_classes(
    values: pd.Series,
    *,
    column: str,
    k: int = 5,
    colors: Sequence[str] = AGEING_COLORS,
    decimals: int = 1,
    unit: str = "",
) -> Classes:
    """Sequential quantile classes (mapclassify ``Quantiles``), lightest colour for the lowest values.

    Parameters
    ----------
    values : pandas.Series
        Numeric values; missing values are ignored.
    column : str
        Name of the classified column (kept on the result).
    k : int, default 5
        Number of classes (at most ``len(colors)``; fewer with ties).
    colors : sequence of str
        Colour ramp, lowest class first (default ColorBrewer YlOrBr).
    decimals : int, default 1
        Decimals in the labels.
    unit : str, optional
        Appended to each label.

    Returns
    -------
    Classes
        With ``k`` empty (no classes) when there are no finite values.
    """
    if not 1 <= k <= len(colors):
        raise ValueError(f"k must be between 1 and {len(colors)}, found {k}")
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Classes(column, (), (), (), (), "Quantiles")
    bins = _side_bins(v, k, "Quantiles")
    lower = float(v.min())
    bins = [b for i, b in enumerate(bins) if b >= lower and (i == 0 or b > bins[i - 1])]
    edges = (lower, *bins)
    counts = np.bincount(_mapclassify().UserDefined(v, bins=bins).yb, minlength=len(bins))
    ramp = list(colors)
    picks = [ramp[round(i * (len(ramp) - 1) / max(len(bins) - 1, 1))] for i in range(len(bins))]
    labels = tuple(
        f"{_fmt(hi, decimals)}{unit}" if lo == hi else f"{_fmt(lo, decimals)} to {_fmt(hi, decimals)}{unit}"
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    )
    return Classes(
        column, tuple(float(e) for e in edges), tuple(picks), labels,
        tuple(int(c) for c in counts[: len(bins)]), "Quantiles",
    )


# -- categories ----------------------------------------------------------------
@dataclass(frozen=True)
class Category:
    """One category of a categorized style: the stored value, its colour and legend label."""

    value: Any
    color: str
    label: str
    width: float | None = None
    dashed: bool = False


def lisa_key(value: Any) -> str | None:
    """Normalise a LISA cluster value to ``"HH"``, ``"LL"``, ``"LH"``, ``"HL"``, ``"ns"`` or ``"nc"``.

    Accepts esda's ``q`` codes (1 HH, 2 LH, 3 LL, 4 HL, 0 not significant) and
    labels such as ``"HH"``, ``"High-High"``, ``"ns"`` or ``"not significant"``;
    ``"not comparable"`` (units left out of the statistics) gives ``"nc"``.
    Returns None for missing values.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, bool):
        return _LISA_CODES.get(int(value), "ns")
    s = re.sub(r"[^a-z]", "", str(value).lower())
    table = {"hh": "HH", "highhigh": "HH", "ll": "LL", "lowlow": "LL", "lh": "LH", "lowhigh": "LH",
             "hl": "HL", "highlow": "HL", "notcomparable": "nc", "nc": "nc"}
    return table.get(s, "ns")


def lisa_categories(values: Iterable[Any]) -> list[Category]:
    """Categories for the cluster values present, in the order HH, LL, LH, HL, not significant."""
    present: dict[str, list[Any]] = {}
    for v in pd.unique(pd.Series(list(values), dtype="object")):
        key = lisa_key(v)
        if key is not None:
            present.setdefault(key, []).append(v)
    out = []
    for key in _LISA_ORDER:
        for v in present.get(key, []):
            out.append(Category(_plain(v), LISA_COLORS[key], LISA_LABELS[key]))
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _sort_key(v: Any) -> tuple[float, str]:
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (float(v), "")
    m = re.search(r"-?\d+(\.\d+)?", str(v))
    # open-ended labels such as ">150 km" or "150+ km" sort after the closed band ending at 150
    bump = 0.5 if str(v).lstrip().startswith((">", "≥")) or "+" in str(v) else 0.0
    return (float(m.group()) + bump if m else math.inf, str(v))


def band_categories(values: Iterable[Any], *, palette: str = "YlGnBu") -> list[Category]:
    """Categories for distance bands, nearest band darkest.

    Bands are ordered by their number (numeric values, or the first number in
    labels such as ``"0-50 km"``); open-ended labels (``">150 km"``) come last.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    vals = [_plain(v) for v in pd.unique(pd.Series(list(values), dtype="object")) if not _is_missing(v)]
    vals.sort(key=_sort_key)
    cmap = colormaps[palette]
    n = len(vals)
    cols = [to_hex(cmap(0.85 - 0.7 * i / max(n - 1, 1))) for i in range(n)]
    return [
        Category(v, c, f"{v:g} km" if isinstance(v, (int, float)) else str(v))
        for v, c in zip(vals, cols, strict=True)
    ]


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def rail_class(value: Any) -> str:
    """Normalise a rail line class to ``"high_speed"``, ``"fast"`` or ``"conventional"``."""
    s = str(value).strip().lower()
    if "高速" in s or "high" in s or s in {"hsr", "g", "hs"}:
        return "high_speed"
    if "快速" in s or "fast" in s or "rapid" in s:
        return "fast"
    return "conventional"


def rail_categories(values: Iterable[Any], *, underused_note: str = "") -> list[Category]:
    """Categories for rail line classes: high-speed magenta and wide, fast orange, others grey.

    Values ending in ``"underused"`` (the ``map_class`` of
    :func:`geo_pipeline.underused.map_class`, e.g. ``"high-speed underused"``)
    get a dashed line in :data:`UNDERUSED_COLOR` at their class width, after
    their class; ``underused_note`` (e.g. ``"utilisation < 0.4"``) is added
    to their label.
    """
    order = {"high_speed": 0, "fast": 1, "conventional": 2}
    vals = [_plain(v) for v in pd.unique(pd.Series(list(values), dtype="object")) if not _is_missing(v)]

    def under(v: Any) -> bool:
        return str(v).strip().lower().endswith("underused")

    vals.sort(key=lambda v: (order[rail_class(v)], under(v), str(v)))
    out = []
    for v in vals:
        key = rail_class(v)
        known = RAIL_LABELS[key]
        if under(v):
            note = f" ({underused_note})" if underused_note else ""
            out.append(Category(v, UNDERUSED_COLOR, f"{known}, {UNDERUSED_LABEL}{note}", RAIL_WIDTHS[key],
                                dashed=True))
            continue
        label = known if str(v).lower().replace("_", "-") in known.lower() else f"{v} ({known})"
        out.append(Category(v, RAIL_COLORS[key], label, RAIL_WIDTHS[key]))
    return out


# -- QML -----------------------------------------------------------------------
def symbol_kind(geom_type: str) -> SymbolKind:
    """QGIS symbol type for a geometry type name (``"MultiPolygon"`` -> ``"fill"``)."""
    g = geom_type.lower()
    if "polygon" in g:
        return "fill"
    if "line" in g:
        return "line"
    if "point" in g:
        return "marker"
    raise ValueError(f"no QGIS symbol for geometry type {geom_type!r}")


def _rgba(color: str, alpha: float = 1.0) -> str:
    from matplotlib.colors import to_rgba

    r, g, b, a = to_rgba(color, alpha)
    return f"{round(r * 255)},{round(g * 255)},{round(b * 255)},{round(a * 255)}"


def _symbol_layer(kind: SymbolKind, color: str, *, width: float | None, outline: str | None,
                  fill: bool, size: float, shape: str, dashed: bool = False) -> tuple[str, dict[str, str]]:
    if kind == "fill":
        props = {
            "color": _rgba(color), "style": "solid" if fill else "no",
            "outline_color": _rgba(outline or "#232323"),
            "outline_style": "solid" if outline != "none" else "no",
            "outline_width": f"{0.1 if width is None else width:g}", "outline_width_unit": "MM",
            "joinstyle": "bevel", "offset": "0,0", "offset_unit": "MM",
        }
        return "SimpleFill", props
    if kind == "line":
        props = {
            "line_color": _rgba(color), "line_style": "dash" if dashed else "solid",
            "line_width": f"{0.4 if width is None else width:g}", "line_width_unit": "MM",
            "capstyle": "flat" if dashed else "round", "joinstyle": "round",
            "offset": "0", "offset_unit": "MM",
            "use_custom_dash": "1" if dashed else "0", "customdash": "2.5;1.5" if dashed else "5;2",
            "customdash_unit": "MM",
        }
        return "SimpleLine", props
    props = {
        "color": _rgba(color), "name": shape, "size": f"{size:g}", "size_unit": "MM",
        "outline_color": _rgba(outline or "#232323"), "outline_style": "solid",
        "outline_width": f"{0.2 if width is None else width:g}", "outline_width_unit": "MM",
        "angle": "0", "offset": "0,0", "offset_unit": "MM", "scale_method": "diameter",
        "horizontal_anchor_point": "1", "vertical_anchor_point": "1", "joinstyle": "bevel",
    }
    return "SimpleMarker", props


def _empty_ddp(parent: ET.Element) -> None:
    ddp = ET.SubElement(parent, "data_defined_properties")
    opt = ET.SubElement(ddp, "Option", type="Map")
    ET.SubElement(opt, "Option", name="name", type="QString", value="")
    ET.SubElement(opt, "Option", name="properties")
    ET.SubElement(opt, "Option", name="type", type="QString", value="collection")


def _symbol(
    parent: ET.Element, tag: str, name: str, kind: SymbolKind, color: str, *,
    alpha: float = 1.0, width: float | None = None, outline: str | None = None,
    fill: bool = True, size: float = 2.0, shape: str = "circle", dashed: bool = False,
) -> ET.Element:
    sym = ET.SubElement(parent, tag, name=name, type=kind, alpha=f"{alpha:g}",
                        clip_to_extent="1", force_rhr="0")
    _empty_ddp(sym)
    cls, props = _symbol_layer(kind, color, width=width, outline=outline, fill=fill, size=size, shape=shape,
                               dashed=dashed)
    layer = ET.SubElement(sym, "layer", attrib={"class": cls, "enabled": "1", "locked": "0", "pass": "0"})
    opt = ET.SubElement(layer, "Option", type="Map")
    for k, v in sorted(props.items()):
        ET.SubElement(opt, "Option", name=k, type="QString", value=v)
    for k, v in sorted(props.items()):  # the pre-3.18 form, still read by QGIS LTRs
        ET.SubElement(layer, "prop", k=k, v=v)
    _empty_ddp(layer)
    return sym


def _document(renderer: ET.Element, *, opacity: float = 1.0, aliases: Mapping[str, str] | None = None) -> str:
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology|Fields")
    root.append(renderer)
    if aliases:
        al = ET.SubElement(root, "aliases")
        for field_name, alias in aliases.items():
            ET.SubElement(al, "alias", field=field_name, name=alias)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = f"{opacity:g}"
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def _renderer(kind: str, **attrib: str) -> ET.Element:
    return ET.Element("renderer-v2", attrib={
        "type": kind, "symbollevels": "0", "forceraster": "0", "enableorderby": "0", **attrib,
    })


def graduated_qml(
    classes: Classes,
    kind: SymbolKind,
    *,
    outline: str = "#6e6e6e",
    width: float | None = 0.05,
    aliases: Mapping[str, str] | None = None,
) -> str:
    """QML of a graduated-colour renderer for ``classes`` (QGIS ``graduatedSymbol``).

    Parameters
    ----------
    classes : Classes
        From :func:`diverging_classes`; one QGIS range per class.
    kind : {"fill", "line", "marker"}
        Symbol type of the layer's geometry.
    outline, width : optional
        Outline colour and width (mm) of fills.
    aliases : mapping, optional
        Field name to display name, stored as QGIS field aliases.

    Returns
    -------
    str
        A QML document QGIS loads with ``loadNamedStyle``/``layer_styles``.
    """
    r = _renderer("graduatedSymbol", attr=classes.column, graduatedMethod="GraduatedColor")
    ranges = ET.SubElement(r, "ranges")
    symbols = ET.SubElement(r, "symbols")
    for i, (lo, hi, color, label) in enumerate(
        zip(classes.edges[:-1], classes.edges[1:], classes.colors, classes.labels, strict=False)
    ):
        ET.SubElement(ranges, "range", symbol=str(i), lower=repr(float(lo)), upper=repr(float(hi)),
                      label=label, render="true")
        _symbol(symbols, "symbol", str(i), kind, color, outline=outline, width=width)
    src = ET.SubElement(r, "source-symbol")
    _symbol(src, "symbol", "0", kind, NO_DATA_COLOR, outline=outline, width=width)
    ET.SubElement(r, "classificationMethod", id="Custom")
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    return _document(r, aliases=aliases)


def categorized_qml(
    column: str,
    categories: Sequence[Category],
    kind: SymbolKind,
    *,
    outline: str = "#6e6e6e",
    width: float | None = 0.05,
    alpha: float = 1.0,
    fill: bool = True,
    aliases: Mapping[str, str] | None = None,
) -> str:
    """QML of a categorized renderer on ``column`` (QGIS ``categorizedSymbol``).

    Parameters
    ----------
    column : str
        Field holding the categories.
    categories : sequence of Category
        Value, colour and label of each category (a category's own ``width``
        wins over ``width``).
    kind : {"fill", "line", "marker"}
        Symbol type of the layer's geometry.
    outline, width, alpha : optional
        Outline colour and width (mm, line width for lines), symbol opacity.
    fill : bool, default True
        False draws polygons as outlines in the category colour (for
        overlapping rings).
    aliases : mapping, optional
        Field aliases.

    Returns
    -------
    str
        The QML document.
    """
    r = _renderer("categorizedSymbol", attr=column)
    cats = ET.SubElement(r, "categories")
    symbols = ET.SubElement(r, "symbols")
    for i, cat in enumerate(categories):
        ET.SubElement(cats, "category", symbol=str(i), value=str(cat.value), label=cat.label, render="true")
        w = cat.width if cat.width is not None else width
        edge = (outline if fill else cat.color) if kind != "line" else None
        _symbol(symbols, "symbol", str(i), kind, cat.color, alpha=alpha, width=w, outline=edge, fill=fill,
                dashed=cat.dashed)
    src = ET.SubElement(r, "source-symbol")
    _symbol(src, "symbol", "0", kind, NO_DATA_COLOR, alpha=alpha, width=width)
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    return _document(r, aliases=aliases)


def single_qml(
    kind: SymbolKind,
    color: str,
    *,
    outline: str | None = None,
    width: float | None = None,
    fill: bool = True,
    alpha: float = 1.0,
    size: float = 2.0,
    shape: str = "circle",
    aliases: Mapping[str, str] | None = None,
) -> str:
    """QML of a single-symbol renderer (QGIS ``singleSymbol``).

    ``fill=False`` draws polygons as outlines only (``color`` is then unused
    and ``outline`` is the line colour).
    """
    r = _renderer("singleSymbol")
    symbols = ET.SubElement(r, "symbols")
    _symbol(symbols, "symbol", "0", kind, color, alpha=alpha, width=width, outline=outline,
            fill=fill, size=size, shape=shape)
    ET.SubElement(r, "rotation")
    ET.SubElement(r, "sizescale")
    return _document(r, aliases=aliases)
