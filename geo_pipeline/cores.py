"""Sets of metropolitan cores: prefecture seats, sub-provincial cities, metropolitan areas, census-derived.

Seats
-----
``geo_pipeline/data/prefecture_seats.csv`` gives the government seat of each of
the 337 census prefectures of the boundaries (prefecture adcodes ``xxxx00``
and 重庆 ``500000``), from the same source and by the same method as the 31
default cores of ``cores.csv`` (see :mod:`geo_pipeline.distance`): the Amap
district ``center`` (the seat of the city government) of the MIT-licensed
``cpca`` 0.5.5 package, converted from GCJ-02 to WGS84 with
``prcoords.gcj_wgs_bored`` and rounded to 1e-4 degree; 那曲市 (540600, created
2018) has the seat of its predecessor 那曲地区 (542400). Every seat lies inside
its prefecture polygon (tested). ``tools/make_prefecture_seats.py`` rebuilds
the file and checks that it reproduces the 31 seats of ``cores.csv`` exactly.
Columns: ``adcode``, ``name`` (short: ``大连``), ``name_full`` (``大连市``),
``province_code``, ``lon``, ``lat``, ``source``.

Named sets
----------
``subprovincial``
    The 15 sub-provincial cities (副省级城市): 哈尔滨, 长春, 沈阳, 大连, 济南,
    青岛, 南京, 杭州, 宁波, 厦门, 武汉, 广州, 深圳, 成都, 西安
    (``data/subprovincial_cities.csv``).
``metro``
    The centre cities of the 18 metropolitan areas (都市圈) whose plans were
    approved nationally, as listed in press reports, 2025
    (``data/metro_areas.csv``; replace the file, or use ``--cores-file``, to
    use another list). Three areas have several centres (长株潭: 长沙, 株洲,
    湘潭; 厦漳泉: 厦门, 漳州, 泉州), so the set has 22 cores.

Census-derived cores
--------------------
:func:`cores_from_census` takes the prefectures whose urban districts (市辖区)
had at least ``min_pop`` residents in 2020, computed from the county units:
the sum over a prefecture's units of ``pop_2020_districts``, the 2020
residents of the unit's urban-district census rows (all of ``pop_2020`` for a
``district`` unit; for a ``mixed`` unit the 2020 rows whose name is a
district's, development zones left out; 0 otherwise). Each selected
prefecture is represented by its seat.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from importlib import resources

import geopandas as gpd
import numpy as np
import pandas as pd

from ._errors import InputError
from ._validate import check_frame

__all__ = [
    "CENSUS_CORE_COLUMNS",
    "census_core_prefectures",
    "cores_from_census",
    "metro_cores",
    "prefecture_seats",
    "subprovincial_cores",
]

log = logging.getLogger(__name__)

#: Columns of :func:`census_core_prefectures`.
CENSUS_CORE_COLUMNS = ["prefecture_code", "prefecture", "pop_2020_districts", "n_district_units"]


@lru_cache(maxsize=4)
def _read(name: str) -> pd.DataFrame:
    ref = resources.files("geo_pipeline").joinpath(f"data/{name}")
    with ref.open("r", encoding="utf-8") as fh:
        return pd.read_csv(fh, dtype={"adcode": str, "province_code": str})


def prefecture_seats() -> pd.DataFrame:
    """The packaged seat of every census prefecture (see the module docstring).

    Returns
    -------
    pandas.DataFrame
        Columns ``adcode``, ``name``, ``name_full``, ``province_code``,
        ``lon``, ``lat``, ``source``; 337 rows.
    """
    return _read("prefecture_seats.csv").copy()


def _seats_by_name(names: list[str], provinces: list[str] | None, *, source: str) -> pd.DataFrame:
    seats = prefecture_seats()
    by_name = seats.set_index("name")
    missing = [n for n in names if n not in by_name.index]
    if missing:
        raise InputError(f"{source}: no prefecture seat named {missing} in prefecture_seats.csv")
    out = by_name.loc[names].reset_index()
    if provinces is not None:
        from .regions import load_regions

        prov_code = dict(zip(load_regions()["province"], load_regions()["province_code"], strict=True))
        want = [prov_code.get(p) for p in provinces]
        wrong = [n for n, w, got in zip(names, want, out["province_code"], strict=True) if w != got]
        if wrong:
            raise InputError(f"{source}: {wrong} are not in the province the list gives")
    return out


def subprovincial_cores() -> gpd.GeoDataFrame:
    """The 15 sub-provincial cities at their government seats.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``name``, ``adcode``, ``province_code``, ``set``
        (``"subprovincial"``), ``lon``, ``lat``, Point geometry (EPSG:4326).
    """
    from .distance import cores_from_frame

    table = _read("subprovincial_cities.csv")
    seats = _seats_by_name(list(table["name"]), list(table["province"]), source="subprovincial_cities.csv")
    frame = seats[["name", "adcode", "province_code", "lon", "lat"]].assign(set="subprovincial")
    return cores_from_frame(frame, source="subprovincial cores")


def metro_cores() -> gpd.GeoDataFrame:
    """The centre cities of the nationally approved metropolitan areas, at their seats.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``name``, ``metro_area``, ``adcode``, ``province_code``,
        ``set`` (``"metro"``), ``lon``, ``lat``, Point geometry (EPSG:4326);
        one row per centre city (22 for the 18 areas of the packaged list).
    """
    from .distance import cores_from_frame

    table = _read("metro_areas.csv")
    areas = zip(table["metro_area"], table["centre_cities"], strict=True)
    pairs = [(c.strip(), area) for area, cities in areas for c in str(cities).split(";") if c.strip()]
    names = [c for c, _ in pairs]
    seats = _seats_by_name(names, None, source="metro_areas.csv")
    frame = seats[["name", "adcode", "province_code", "lon", "lat"]].assign(
        metro_area=[a for _, a in pairs], set="metro")
    return cores_from_frame(frame[["name", "metro_area", "adcode", "province_code", "set", "lon", "lat"]],
                            source="metro cores")


def census_core_prefectures(units: pd.DataFrame, *, min_pop: int) -> pd.DataFrame:
    """Prefectures whose urban districts had at least ``min_pop`` residents in 2020 (pure).

    Parameters
    ----------
    units : pandas.DataFrame
        County units with ``prefecture_code``, ``prefecture``, ``unit_kind``
        and ``pop_2020_districts`` (population stage).
    min_pop : int
        Threshold on the 2020 residents of the prefecture's urban districts.

    Returns
    -------
    pandas.DataFrame
        :data:`CENSUS_CORE_COLUMNS`, one row per selected prefecture, largest
        first. Only prefecture codes (``xxxx00``; 重庆 ``500000``) count:
        county-level cities directly under a province (济源, 仙桃, ...) are no
        prefecture seats.

    Raises
    ------
    InputError
        Missing columns or a negative threshold.
    """
    check_frame(units, name="units",
                columns={"prefecture_code": "string", "pop_2020_districts": "numeric"},
                not_null=["prefecture_code"]).raise_if_any()
    if min_pop < 0:
        raise InputError(f"cores_from_census: expected a population threshold >= 0, found {min_pop}")
    code = units["prefecture_code"].astype(str)
    pref = units[code.str.endswith("00")]
    names = pref["prefecture"] if "prefecture" in pref.columns else pref["prefecture_code"]
    kinds = pref["unit_kind"] if "unit_kind" in pref.columns else pd.Series("", index=pref.index)
    frame = pd.DataFrame({
        "prefecture_code": pref["prefecture_code"].astype(str),
        "prefecture": names.astype(str).str.split("+").str[0],
        "pop_2020_districts": pd.to_numeric(pref["pop_2020_districts"]).fillna(0).astype("int64"),
        "district": kinds.isin(["district", "mixed"]).to_numpy() & (pd.to_numeric(
            pref["pop_2020_districts"]).fillna(0) > 0).to_numpy(),
    })
    g = frame.groupby("prefecture_code", sort=True)
    out = pd.DataFrame({
        "prefecture": g["prefecture"].first(),
        "pop_2020_districts": g["pop_2020_districts"].sum(),
        "n_district_units": g["district"].sum().astype("int64"),
    }).reset_index()
    out = out[out["pop_2020_districts"] >= min_pop]
    out = out.sort_values(["pop_2020_districts", "prefecture_code"], ascending=[False, True])
    return out[CENSUS_CORE_COLUMNS].reset_index(drop=True)


def cores_from_census(units: pd.DataFrame, *, min_pop: int) -> gpd.GeoDataFrame:
    """Cores at the seats of the prefectures of :func:`census_core_prefectures` (pure).

    Parameters
    ----------
    units : pandas.DataFrame
        County units (see :func:`census_core_prefectures`).
    min_pop : int
        Threshold on the 2020 residents of a prefecture's urban districts.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``name``, ``adcode``, ``province_code``, ``set``
        (``"census>=<min_pop>"``), ``pop_2020_districts``, ``lon``, ``lat``,
        Point geometry (EPSG:4326), largest first.

    Raises
    ------
    InputError
        If no prefecture reaches ``min_pop``, or a selected prefecture has no
        packaged seat.
    """
    from .distance import cores_from_frame

    chosen = census_core_prefectures(units, min_pop=min_pop)
    if chosen.empty:
        raise InputError(
            f"cores_from_census: no prefecture has urban districts with at least {min_pop:,} residents "
            "in 2020; lower the threshold"
        )
    seats = prefecture_seats().set_index("adcode")
    missing = sorted(set(chosen["prefecture_code"]) - set(seats.index))
    if missing:
        raise InputError(f"cores_from_census: no seat in prefecture_seats.csv for prefecture(s) {missing}")
    s = seats.loc[chosen["prefecture_code"]]
    frame = pd.DataFrame({
        "name": s["name"].to_numpy(), "adcode": chosen["prefecture_code"].to_numpy(),
        "province_code": s["province_code"].to_numpy(), "set": f"census>={min_pop}",
        "pop_2020_districts": chosen["pop_2020_districts"].to_numpy(dtype=np.int64),
        "lon": s["lon"].to_numpy(), "lat": s["lat"].to_numpy(),
    })
    return cores_from_frame(frame, source="census-derived cores")
