"""Population stage: harmonised county units, census change 2010 -> 2020, net outflow.

The stage joins the 2010 and 2020 county census tables to today's county
polygons (:mod:`geo_pipeline.crosswalk`), merges polygons and census rows that
cannot be matched one to one into one analysis unit, and computes per unit:

``pop_2010``, ``pop_2020``
    Resident (常住) population at the censuses of 1 Nov 2010 and 1 Nov 2020,
    the sum of the unit's census rows.
``change``, ``change_pct``
    ``pop_2020 - pop_2010`` and ``100 * change / pop_2010``.
``annual_rate``
    Compound annual growth in % per year over the ten years between the two
    census dates: ``100 * ((pop_2020 / pop_2010) ** (1 / 10) - 1)``.
``shrinking``
    ``change_pct < shrink_threshold_pct`` (default 0: any loss).
``hukou_2010``, ``net_outflow_ratio``, ``net_outflow``
    Registered (户籍) population in 2010 and
    ``(hukou_2010 - pop_2010) / hukou_2010``: the share of the registered
    population living elsewhere, net of registered-elsewhere residents; a
    positive ratio (``net_outflow``) means more people left than arrived.
    **2010 only**: the 2020 county table has no hukou total, so net outflow
    cannot be computed for 2020.
``region``, ``region_zh``, ``unit_kind``
    The NBS economic region of the unit's province (East/Central/West/
    Northeast; None outside the 31 mainland provinces) and the administrative
    kind of its polygons (district, city,
    county, other, or mixed for a merged unit of several kinds); see
    :mod:`geo_pipeline.regions`.
``share_60plus_2010`` ... ``old_age_dependency_2020``
    Ageing from the 5-year age bands of the county tables: shares aged 60+
    and 65+ (percent of residents), their change in points, and the old-age
    dependency ratio (65+ per 100 aged 15-64), with the counts
    ``pop_15_64_<year>``, ``pop_60plus_<year>``, ``pop_65plus_<year>``; a
    merged unit sums its members' bands first (:mod:`geo_pipeline.ageing`).
``pop_2020_districts``
    2020 residents of the unit's urban districts (市辖区): all of
    ``pop_2020`` for a ``district`` unit, the district census rows of a
    ``mixed`` unit (development zones left out), 0 otherwise; summed per
    prefecture for the census-derived cores (:mod:`geo_pipeline.cores`).
``comparable``
    False when the unit's population is not comparable between the censuses.
    Rule: a unit is not comparable when one of its census unit rows has no
    population figure (the territory was listed but not enumerated in that
    census) or when it has rows of one census year only. On the real tables
    exactly one unit is not comparable: 三沙 (西沙区+南沙区), whose 2010 rows
    南沙群岛 and 中沙群岛的岛礁及其海域 are empty, so that its 2010 figure (444,
    西沙群岛 only) is not the territory of its 2020 figure (2,333; +425 %).
    Later stages leave such units out of weights and statistics.

Every census row and every polygon is accounted for in the match report
(:func:`match_report`); the sums of the units equal the province rows of both
census tables to the person (:func:`province_totals`).

A second layer gives the same indicators for prefectures from
``census_city_2010-2020_v1.csv`` (:func:`prefecture_indicators`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ._errors import DataQualityWarning, InputError, UnknownCodeError
from ._validate import Kind, check_frame
from .ageing import AGEING_COLUMNS, COUNT_COLUMNS, ageing_indicators, prefecture_ageing, unit_age_counts
from .census import AGGREGATE_KINDS, CENSUS_ROW_COLUMNS, CITY_AGE_COLUMNS, check_totals, correction_action
from .crosswalk import harmonise, match_census_rows
from .prefectures import (
    PrefectureMatch,
    county_unit_prefectures,
    match_prefectures,
    prefecture_members,
    union_geometry,
)
from .regions import county_kind, region_of, unit_kind

__all__ = [
    "UNIT_COLUMNS",
    "PREFECTURE_COLUMNS",
    "REPORT_COLUMNS",
    "CROSSWALK_OUTPUT_COLUMNS",
    "TOTALS_COLUMNS",
    "PopulationResult",
    "add_indicators",
    "build_population",
    "match_report",
    "province_totals",
    "prefecture_indicators",
    "no_census_report",
    "wkt_offset_km",
]

log = logging.getLogger(__name__)

#: Indicator columns shared by the units and prefectures layers.
INDICATOR_COLUMNS = [
    "pop_2010", "pop_2020", "change", "change_pct", "annual_rate", "shrinking",
    "hukou_2010", "net_outflow_ratio", "net_outflow",
]

#: Columns of the ``units`` layer (data contract) plus provenance columns.
UNIT_COLUMNS = [
    "unit_id", "name", "province", "province_code", "prefecture", "prefecture_code", "level",
    "n_members", *INDICATOR_COLUMNS, "region", "region_zh", "unit_kind", "comparable",
    *AGEING_COLUMNS, *COUNT_COLUMNS, "pop_2020_districts", "members", "rows_2010", "rows_2020", "method",
    "geometry",
]

#: Columns of the ``prefectures`` layer.
PREFECTURE_COLUMNS = [
    "unit_id", "name", "province", "province_code", "prefecture", "prefecture_code", "level",
    "n_members", *INDICATOR_COLUMNS, "city_code", "join", "members", "pop_2010_units", "pop_2020_units",
    "region", "region_zh", "comparable", *AGEING_COLUMNS, "geometry",
]

#: Columns of the ``match_report`` table.
REPORT_COLUMNS = [
    "item", "census_id", "year", "excel_row", "code", "name", "kind", "pop", "status", "method",
    "unit_id", "adcodes", "reason",
]

#: Columns of the ``crosswalk`` table.
CROSSWALK_OUTPUT_COLUMNS = [
    "census_id", "year", "census_code", "census_name", "adcode", "polygon_name", "unit_id", "method",
    "relation", "detail", "source",
]

#: Columns of the ``province_totals`` table.
TOTALS_COLUMNS = ["year", "level", "code", "name", "census_total", "units_total", "difference", "note"]

_COUNTY_COLUMNS: dict[str, Kind] = {
    "adcode": "string", "name": "string", "province": "string", "province_code": "string",
    "prefecture": "string", "prefecture_code": "string",
}
_METHOD_ORDER = ("code", "prefecture", "name", "stem", "table")


@dataclass(frozen=True)
class PopulationResult:
    """Outputs of :func:`build_population`.

    Attributes
    ----------
    units : geopandas.GeoDataFrame
        Harmonised analysis units (:data:`UNIT_COLUMNS`).
    crosswalk : pandas.DataFrame
        One row per census-row-to-polygon link (:data:`CROSSWALK_OUTPUT_COLUMNS`).
    match_report : pandas.DataFrame
        One row per census row (both years, every kind) and per polygon
        (:data:`REPORT_COLUMNS`).
    totals : pandas.DataFrame
        Census national/province totals against the sums of the units
        (:data:`TOTALS_COLUMNS`).
    """

    units: gpd.GeoDataFrame
    crosswalk: pd.DataFrame
    match_report: pd.DataFrame
    totals: pd.DataFrame


# --------------------------------------------------------------------------- indicators
def add_indicators(frame: pd.DataFrame, *, shrink_threshold_pct: float = 0.0) -> pd.DataFrame:
    r"""Return a copy of ``frame`` with the change and net-outflow indicators.

    Parameters
    ----------
    frame : pandas.DataFrame
        Needs ``pop_2010`` and ``pop_2020``; ``hukou_2010`` is optional.
    shrink_threshold_pct : float, default 0.0
        A unit is ``shrinking`` when ``change_pct`` is below this.

    Returns
    -------
    pandas.DataFrame
        ``frame`` with ``change``, ``change_pct``, ``annual_rate``,
        ``shrinking``, ``net_outflow_ratio`` and ``net_outflow`` (re)computed.

    Notes
    -----
    With :math:`P_0` = ``pop_2010``, :math:`P_1` = ``pop_2020`` and
    :math:`H_0` = ``hukou_2010``:

    .. math::

        \text{change} = P_1 - P_0, \quad
        \text{change\_pct} = 100\,\frac{P_1 - P_0}{P_0}, \quad
        \text{annual\_rate} = 100\left[\left(\frac{P_1}{P_0}\right)^{1/10} - 1\right]

    .. math::

        \text{net\_outflow\_ratio} = \frac{H_0 - P_0}{H_0}

    The census dates are exactly ten years apart (1 Nov 2010, 1 Nov 2020).
    Rates are undefined (NaN) when :math:`P_0 = 0`; the ratio is NaN when
    :math:`H_0` is missing or 0. ``shrinking`` and ``net_outflow`` are False
    where their value is NaN.
    """
    out = frame.copy()
    p0 = pd.to_numeric(out["pop_2010"]).astype("float64")
    p1 = pd.to_numeric(out["pop_2020"]).astype("float64")
    valid = p0 > 0
    out["change"] = (out["pop_2020"].astype("Int64") - out["pop_2010"].astype("Int64")).astype("Int64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["change_pct"] = np.where(valid, 100.0 * (p1 - p0) / p0, np.nan)
        out["annual_rate"] = np.where(valid, 100.0 * ((p1 / p0) ** 0.1 - 1.0), np.nan)
    out["shrinking"] = (out["change_pct"] < shrink_threshold_pct).fillna(False).astype(bool)
    if "hukou_2010" in out.columns:
        h0 = pd.to_numeric(out["hukou_2010"]).astype("float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            out["net_outflow_ratio"] = np.where(h0 > 0, (h0 - p0) / h0, np.nan)
    else:
        out["hukou_2010"] = pd.array([pd.NA] * len(out), dtype="Int64")
        out["net_outflow_ratio"] = np.nan
    out["net_outflow"] = (out["net_outflow_ratio"] > 0).fillna(False).astype(bool)
    return out


# --------------------------------------------------------------------------- main
def _check_inputs(rows_2010: pd.DataFrame, rows_2020: pd.DataFrame, counties: pd.DataFrame) -> None:
    for frame, name in ((rows_2010, "2010 census rows"), (rows_2020, "2020 census rows")):
        check_frame(frame, name=name, columns=CENSUS_ROW_COLUMNS).raise_if_any()
        years = set(frame["year"].unique())
        want = int(name[:4])
        if years - {want}:
            raise InputError(f"{name}: expected year {want} only, found {sorted(years)}")
    check_frame(
        counties, name="counties layer", columns=_COUNTY_COLUMNS, geometry=True, crs="EPSG:4326",
        unique=("adcode",), not_null=("adcode", "province_code"),
    ).raise_if_any()


def build_population(
    rows_2010: pd.DataFrame,
    rows_2020: pd.DataFrame,
    counties: gpd.GeoDataFrame,
    *,
    known_changes: pd.DataFrame | None = None,
    shrink_threshold_pct: float = 0.0,
    unknown_codes: str = "error",
) -> PopulationResult:
    """Harmonise the two county censuses onto today's county polygons (pure).

    Parameters
    ----------
    rows_2010, rows_2020 : pandas.DataFrame
        Classified rows of each census (:func:`~geo_pipeline.census.classify_county_rows`).
    counties : geopandas.GeoDataFrame
        County polygons in EPSG:4326 with ``adcode``, ``name``, ``province``,
        ``province_code``, ``prefecture``, ``prefecture_code`` (the
        ``counties`` layer of boundaries.gpkg); ``in_census`` is used if present.
    known_changes : pandas.DataFrame, optional
        Crosswalk table (:func:`~geo_pipeline.crosswalk.load_known_changes`,
        optionally with user rows appended). None: automatic matching only.
    shrink_threshold_pct : float, default 0.0
        Threshold for ``shrinking`` (see :func:`add_indicators`).
    unknown_codes : {"error", "warn"}, default "error"
        What to do with census unit rows whose code and name match no polygon
        (and no crosswalk row): raise :class:`UnknownCodeError` listing them,
        or leave them out with a warning listing them. A unit left without any
        row of one year then has no figure (NA) for that year, never 0.

    Returns
    -------
    PopulationResult
        Units, crosswalk, match report and totals.

    Raises
    ------
    InputError
        If a column is missing or the counties layer is not valid EPSG:4326
        polygons with unique adcodes.
    UnknownCodeError
        If the crosswalk table names a code that exists in neither the census
        nor the counties, or (``unknown_codes="error"``) a census unit row
        matches no polygon.

    Warns
    -----
    DataQualityWarning
        For census unit rows no polygon was found for, polygons without any
        census row (other than documented ``no_census`` ones and those with
        ``in_census = False``), units with rows of one census year only, units
        spanning several provinces, and aggregate rows whose units do not sum
        to them.

    Notes
    -----
    ``unit_id`` is the smallest adcode among the unit's polygons; ``members``
    lists all of them (``;``-separated) and ``n_members`` counts them. The
    geometry of a merged unit is the union of its polygons.

    Examples
    --------
    >>> result = build_population(rows_2010, rows_2020, counties)  # doctest: +SKIP
    >>> result.units[["unit_id", "pop_2010", "pop_2020", "change_pct"]].head()  # doctest: +SKIP
    """
    if unknown_codes not in ("error", "warn"):
        raise InputError(f'unknown_codes must be "error" or "warn", found {unknown_codes!r}')
    _check_inputs(rows_2010, rows_2020, counties)
    rows = pd.concat([rows_2010, rows_2020], ignore_index=True)
    counties = counties.reset_index(drop=True)
    links = match_census_rows(rows, counties, known_changes=known_changes)
    membership = harmonise(rows, counties, links)
    no_census = _no_census_reasons(counties, known_changes)
    _warn_problems(rows, counties, links, membership, no_census, unknown_codes=unknown_codes)
    units = _units(rows, counties, links, membership, shrink_threshold_pct=shrink_threshold_pct)
    crosswalk = _crosswalk_output(rows, counties, links, membership)
    report = match_report(rows, counties, links, membership, no_census=no_census)
    totals = province_totals(rows_2010, rows_2020, units)
    return PopulationResult(units=units, crosswalk=crosswalk, match_report=report, totals=totals)


def _no_census_reasons(counties: pd.DataFrame, known_changes: pd.DataFrame | None) -> dict[str, str]:
    reasons: dict[str, str] = {}
    if "in_census" in counties.columns:
        for a in counties.loc[~counties["in_census"].astype(bool), "adcode"]:
            reasons[str(a)] = "not covered by the mainland census (Taiwan, Hong Kong, Macau)"
    if known_changes is not None and len(known_changes):
        nc = known_changes[known_changes["relation"].eq("no_census")]
        reasons.update(dict(zip(nc["adcode"], nc["reason"], strict=True)))
    return reasons


def _warn_problems(
    rows: pd.DataFrame, counties: pd.DataFrame, links: pd.DataFrame, membership: pd.DataFrame,
    no_census: dict[str, str], *, unknown_codes: str = "error",
) -> None:
    units = rows[rows["kind"].eq("unit")]
    unlinked = units[~units["census_id"].isin(links["census_id"])]
    if len(unlinked):
        shown = "; ".join(
            f"{r.year} Excel row {r.excel_row} code {r.code or '(none)'} {r.name} (population "
            f"{'missing' if r.pop is pd.NA else int(r.pop)})"
            for r in unlinked.head(20).itertuples()
        ) + (" ..." if len(unlinked) > 20 else "")
        what = (
            f"{len(unlinked)} census unit row(s) match no polygon by code, name or the crosswalk table "
            f"(population {int(unlinked['pop'].fillna(0).sum())}): {shown}"
        )
        if unknown_codes == "error":
            raise UnknownCodeError(
                f"{what}. Fix the code or name in the census table, add the rows to a crosswalk_file, or set "
                '[population] unknown_codes = "warn" to leave them out (their units then have no figure '
                "for that year)"
            )
        warnings.warn(
            f"{what}; left out of the units ([population] unknown_codes = \"warn\"): a unit left without a "
            "row of one census year gets no figure for that year (NA), not 0",
            DataQualityWarning, stacklevel=3,
        )
    # object keys: pandas' isin on an Arrow string column makes a pyarrow scalar of every value looked
    # for (6,000 links: 0.022 s CPU); object isin hashes them (0.001 s), with the same membership
    linked = counties["adcode"].astype(object).isin(links["adcode"].astype(object))
    lonely = counties[~linked & ~counties["adcode"].isin(list(no_census))]
    if len(lonely):
        shown = ", ".join(f"{a} {n}" for a, n in zip(lonely["adcode"][:10], lonely["name"][:10], strict=True))
        warnings.warn(
            f"{len(lonely)} polygon(s) have no census row and are not units: {shown}",
            DataQualityWarning, stacklevel=3,
        )
    census = membership[membership["kind"].eq("census") & membership["unit_id"].notna()]
    years = census.groupby("unit_id")["year"].nunique()
    one_year = years[years < 2]
    if len(one_year):
        warnings.warn(
            f"{len(one_year)} unit(s) have census rows of one year only (no figure, NA, for the other year): "
            f"{', '.join(map(str, one_year.index[:10]))}; a boundary change is missing from the crosswalk",
            DataQualityWarning, stacklevel=3,
        )
    for year in (2010, 2020):
        tot = check_totals(rows[rows["year"].eq(year)])
        bad = tot[tot["diff_pop"].fillna(0).ne(0)]
        if len(bad):
            warnings.warn(
                f"{year}: {len(bad)} aggregate row(s) differ from the sum of their unit rows, e.g. "
                f"{bad.iloc[0]['name']} {bad.iloc[0]['pop']} vs {bad.iloc[0]['units_pop']}",
                DataQualityWarning, stacklevel=3,
            )


def _iter_values(values: Sequence[object] | pd.Series) -> Sequence[object] | pd.Series:
    """The values iterating ``values`` gives, converted in one call for Arrow-backed strings.

    Why: iterating a pandas ``str`` column (pyarrow storage) converts one Arrow scalar per element
    (``as_py``); :func:`_collect` over the counties and links columns spent 0.10 s CPU of the
    population stage that way. ``to_pylist`` converts the same values in bulk (None where pandas
    yields the dtype's ``na_value``). Other inputs are returned as they are.
    """
    if (isinstance(values, pd.Series) and isinstance(values.dtype, pd.StringDtype)
            and values.dtype.storage == "pyarrow"):
        na = values.dtype.na_value
        return [na if v is None else v for v in values.array.__arrow_array__().to_pylist()]
    return values


def _collect(
    keys: Sequence[object] | pd.Series, values: Sequence[object] | pd.Series
) -> dict[object, list[object]]:
    """Values grouped by key in first-seen order, without duplicates (plain Python: fast for small groups)."""
    out: dict[object, list[object]] = {}
    for k, v in zip(_iter_values(keys), _iter_values(values), strict=True):
        bucket = out.setdefault(k, [])
        if v not in bucket:
            bucket.append(v)
    return out


def _methods_text(methods: list[object]) -> str:
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return "+".join(sorted(map(str, methods), key=lambda m: rank.get(m, 99)))


def _join_unique(values: pd.Series) -> str:
    seen: list[str] = []
    for v in values:
        if isinstance(v, str) and v not in seen:
            seen.append(v)
    return "+".join(seen)


def _joined_per_unit(keys: pd.Series, values: pd.Series, order: pd.Index) -> pd.Series:
    """``values.groupby(keys).agg(_join_unique)`` in ``order``, from one pass over the values.

    Why: the groupby calls :func:`_join_unique` once per unit (2,734 Series): 0.024 s CPU per
    column; one pass over the values takes 0.003 s. The result has the dtype the groupby gives (a
    string dtype cast back, else inferred from the joined strings).
    """
    seen: dict[object, list[str]] = {}
    for k, v in zip(_iter_values(keys), _iter_values(values), strict=True):
        bucket = seen.setdefault(k, [])
        if isinstance(v, str) and v not in bucket:  # as _join_unique: strings only, first seen
            bucket.append(v)
    joined = ["+".join(seen.get(u, [])) for u in order]
    dtype = values.dtype if isinstance(values.dtype, pd.StringDtype) else None  # None: inferred, as there
    return pd.Series(joined, index=order, dtype=dtype, name=values.name)


def _units(
    rows: pd.DataFrame,
    counties: gpd.GeoDataFrame,
    links: pd.DataFrame,
    membership: pd.DataFrame,
    *,
    shrink_threshold_pct: float,
) -> gpd.GeoDataFrame:
    poly = membership[membership["kind"].eq("polygon")][["adcode", "unit_id"]]
    is_row = membership["kind"].eq("census") & membership["unit_id"].notna()
    census = membership.loc[is_row, ["census_id", "unit_id"]]
    with_rows = set(census["unit_id"])
    poly = poly[poly["unit_id"].isin(with_rows)]
    if poly.empty:
        return _empty_units(counties.crs)
    attrs = counties.drop(columns="geometry").merge(poly, on="adcode").sort_values("adcode")
    groups = attrs.groupby("unit_id", sort=True)
    first = groups.first()
    out = pd.DataFrame(index=first.index)
    out.index.name = "unit_id"
    names = _collect(attrs["unit_id"], attrs["name"])
    out["name"] = ["+".join(map(str, names[u])) for u in out.index]
    out["province"] = _joined_per_unit(attrs["unit_id"], attrs["province"], out.index)
    out["province_code"] = first["province_code"]
    out["prefecture"] = _joined_per_unit(attrs["unit_id"], attrs["prefecture"], out.index)
    out["prefecture_code"] = first["prefecture_code"]
    out["level"] = "county"
    out["n_members"] = groups.size().astype("int64")
    multi_prov = groups["province_code"].nunique()
    if (multi_prov > 1).any():
        warnings.warn(
            f"{int((multi_prov > 1).sum())} unit(s) span several provinces: "
            f"{', '.join(multi_prov.index[multi_prov > 1][:10])}",
            DataQualityWarning, stacklevel=3,
        )
    cr = rows.merge(census, on="census_id")
    for year in (2010, 2020):
        sub = cr[cr["year"].eq(year)]
        g = sub.groupby("unit_id")
        pop = g["pop"].sum(min_count=0).reindex(out.index)
        # a unit without any row of this year has no figure: NA, never 0 (it would read -100 %)
        out[f"pop_{year}"] = pop.astype("int64") if pop.notna().all() else pop.astype("Int64")
        out[f"rows_{year}"] = g.size().reindex(out.index).fillna(0).astype("int64")
    sub = cr[cr["year"].eq(2010)]
    # hukou is missing for a unit if a populated 2010 row lacks it
    hk_missing = (sub["hukou"].isna() & sub["pop"].notna()).groupby(sub["unit_id"]).any()
    hukou = sub.groupby("unit_id")["hukou"].sum(min_count=1).reindex(out.index)
    hukou = hukou.astype("Int64").mask(hk_missing.reindex(out.index).fillna(True).astype(bool))
    out["hukou_2010"] = hukou.astype("Int64")
    members = _collect(attrs["unit_id"], attrs["adcode"])
    out["members"] = [";".join(map(str, members[u])) for u in out.index]
    lk = links.merge(census, on="census_id")
    unit_methods = _collect(lk["unit_id"], lk["method"])
    out["method"] = [_methods_text(unit_methods.get(u, [])) or None for u in out.index]
    out = add_indicators(out, shrink_threshold_pct=shrink_threshold_pct)
    out = ageing_indicators(pd.concat([out, unit_age_counts(rows, census, out.index)], axis=1))
    # provinces outside the 31 of regions.csv (synthetic data) get no region
    regions = region_of(out["province_code"], source="counties layer", strict=False)
    out["region"] = regions["region"].to_numpy()
    out["region_zh"] = regions["region_zh"].to_numpy()
    kinds = _collect(attrs["unit_id"], [county_kind(n) for n in _iter_values(attrs["name"])])
    out["unit_kind"] = [unit_kind(map(str, kinds[u])) for u in out.index]
    # 2020 residents of the unit's urban districts (census-derived cores, geo_pipeline.cores)
    r20 = cr[cr["year"].eq(2020)]
    district_row = np.array([county_kind(n) == "district" for n in r20["name"]], dtype=bool)
    district_row &= ~r20["zone"].to_numpy(dtype=bool)
    part = r20["pop"].where(district_row).groupby(r20["unit_id"]).sum(min_count=0).reindex(out.index)
    whole = out["pop_2020"].astype("Int64")
    out["pop_2020_districts"] = pd.array(
        np.where(out["unit_kind"].eq("district"), whole.fillna(0),
                 np.where(out["unit_kind"].eq("mixed"), part.fillna(0), 0)), dtype="Int64")
    out["pop_2020_districts"] = out["pop_2020_districts"].mask(whole.isna() & out["unit_kind"].eq("district"))
    # comparable: every census row of the unit has a population figure, in both years
    empty = cr.loc[cr["pop"].isna(), "unit_id"]
    out["comparable"] = ~out.index.isin(empty) & out["rows_2010"].gt(0) & out["rows_2020"].gt(0)
    out = out.reset_index()
    geoms = _unit_geometries(counties, attrs[["adcode", "unit_id"]], out["unit_id"])
    gdf = gpd.GeoDataFrame(out, geometry=geoms, crs=counties.crs)
    return gdf[UNIT_COLUMNS]


def _unit_geometries(counties: gpd.GeoDataFrame, assign: pd.DataFrame, order: pd.Series) -> np.ndarray:
    geom_by_code = dict(zip(_iter_values(counties["adcode"]), counties.geometry.values, strict=True))
    # each unit's adcodes in row order, as ``assign.groupby("unit_id")["adcode"].agg(list)`` gave them;
    # one pass instead of the groupby and a Series lookup per unit (0.03 -> 0.003 s CPU)
    members: dict[object, list[object]] = {}
    for uid, code in zip(_iter_values(assign["unit_id"]), _iter_values(assign["adcode"]), strict=True):
        members.setdefault(uid, []).append(code)
    out = []
    for uid in order:
        codes = members[uid]
        if len(codes) == 1:
            g = geom_by_code[codes[0]]
        else:
            g = shapely.union_all([geom_by_code[c] for c in codes])
        out.append(_as_multipolygon(g))
    return np.asarray(out, dtype=object)


def _as_multipolygon(geom: shapely.Geometry) -> shapely.Geometry:
    if geom.geom_type == "MultiPolygon":
        return geom
    if geom.geom_type == "Polygon":
        return shapely.MultiPolygon([geom])
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    polys = [p for g in parts for p in shapely.get_parts(g)]
    return shapely.MultiPolygon(polys)


def _empty_units(crs: object) -> gpd.GeoDataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in UNIT_COLUMNS if c != "geometry"})
    for c in ("n_members", "pop_2010", "pop_2020", "rows_2010", "rows_2020"):
        frame[c] = frame[c].astype("int64")
    for c in ("change", "hukou_2010"):
        frame[c] = frame[c].astype("Int64")
    for c in ("change_pct", "annual_rate", "net_outflow_ratio", *AGEING_COLUMNS):
        frame[c] = frame[c].astype("float64")
    for c in (*COUNT_COLUMNS, "pop_2020_districts"):
        frame[c] = frame[c].astype("Int64")
    for c in ("shrinking", "net_outflow", "comparable"):
        frame[c] = frame[c].astype(bool)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs=crs), crs=crs)[UNIT_COLUMNS]


def _crosswalk_output(
    rows: pd.DataFrame, counties: pd.DataFrame, links: pd.DataFrame, membership: pd.DataFrame
) -> pd.DataFrame:
    poly_unit = membership[membership["kind"].eq("polygon")].set_index("adcode")["unit_id"]
    out = links.merge(rows[["census_id", "code", "name"]], on="census_id", how="left")
    out = out.rename(columns={"code": "census_code", "name": "census_name"})
    out["polygon_name"] = out["adcode"].map(dict(zip(counties["adcode"], counties["name"], strict=True)))
    out["unit_id"] = out["adcode"].map(poly_unit)
    return out[CROSSWALK_OUTPUT_COLUMNS].sort_values(["year", "census_id", "adcode"]).reset_index(drop=True)


_AGG_REASONS = {
    "nation": "national total (sum of the province rows)",
    "province": "province total",
    "prefecture": "prefecture total",
    "municipal_districts": "市辖区 subtotal of a municipality",
    "municipal_counties": "县 subtotal of a municipality",
    "province_direct": "省直辖县级行政区划 subtotal",
}


def match_report(
    rows: pd.DataFrame,
    counties: pd.DataFrame,
    links: pd.DataFrame,
    membership: pd.DataFrame,
    *,
    no_census: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Account for every census row and every polygon (pure).

    Parameters
    ----------
    rows : pandas.DataFrame
        Classified census rows of both years (every kind).
    counties : pandas.DataFrame
        County polygons (``adcode``, ``name``).
    links, membership : pandas.DataFrame
        From :func:`~geo_pipeline.crosswalk.match_census_rows` and
        :func:`~geo_pipeline.crosswalk.harmonise`.
    no_census : dict, optional
        adcode -> reason for polygons without census rows.

    Returns
    -------
    pandas.DataFrame
        :data:`REPORT_COLUMNS`; ``item`` is ``census_2010``, ``census_2020`` or
        ``polygon``. ``status``: ``matched`` (census unit row or polygon in a
        unit), ``aggregate`` (total row, not counted; ``kind`` says which),
        ``blank``, ``note``, ``unmatched`` (unit row without polygon) or
        ``no_census`` (polygon without census row). ``reason`` explains
        aggregates, table links and unmatched items. ``method`` of a census
        row corrected by ``census_corrections.csv`` ends in
        ``+corrected:<action>`` (``swap_values``: 2010 平房区/香坊区 and
        伊宁市/奎屯市; ``rename``: 2010 丰南区/丰润区; ``recode``: 2020
        五台山风景名胜区), and its ``reason`` quotes the correction.
    """
    no_census = no_census or {}
    node_unit = membership.set_index("node")["unit_id"].to_dict()
    unit_has_rows = set(membership.loc[membership["kind"].eq("census"), "unit_id"].dropna())
    row_methods = _collect(links["census_id"], links["method"])
    row_adcodes = _collect(links["census_id"], links["adcode"])
    row_details = _collect(links["census_id"], links["detail"])
    tab = links[links["method"].eq("table")]
    table_reason = _collect(tab["census_id"], tab["detail"])
    records = []
    # only the columns read below: iterating the 18 age-band columns (Int64) too cost 0.03 s CPU
    used = ["census_id", "year", "excel_row", "code", "name", "kind", "pop", "note"]
    for r in rows[used].itertuples(index=False):
        rec = {
            "item": f"census_{r.year}", "census_id": r.census_id, "year": r.year, "excel_row": r.excel_row,
            "code": r.code, "name": r.name, "kind": r.kind, "pop": r.pop,
            "status": None, "method": None, "unit_id": None, "adcodes": None, "reason": None,
        }
        if r.kind == "unit":
            if r.census_id in row_methods:
                rec["status"] = "matched"
                rec["method"] = _methods_text(row_methods[r.census_id])
                action = correction_action(r.note)
                if action is not None:  # e.g. 2010 平房区/香坊区 figures printed on each other's row
                    rec["method"] = f"{rec['method']}+corrected:{action}"
                rec["unit_id"] = node_unit.get(f"census:{r.census_id}")
                rec["adcodes"] = ";".join(sorted(map(str, row_adcodes[r.census_id])))
                rec["reason"] = " | ".join(map(str, table_reason.get(r.census_id, row_details[r.census_id])))
            else:
                rec["status"] = "unmatched"
                rec["reason"] = "no polygon matched by code, name or the crosswalk table"
            if r.note:
                rec["reason"] = f"{rec['reason']}; {r.note}"
        elif r.kind in AGGREGATE_KINDS:
            rec["status"] = "aggregate"
            rec["reason"] = _AGG_REASONS[r.kind] + " (not counted; units are)"
        elif r.kind == "blank":
            rec["status"] = "blank"
            rec["reason"] = "empty separator row"
        else:
            rec["status"] = "note"
            rec["reason"] = "text without code or population (not data)"
        records.append(rec)
    poly_methods = _collect(links["adcode"], links["method"])
    poly_rows = _collect(links["adcode"], links["census_id"])
    for a, n in zip(_iter_values(counties["adcode"]), _iter_values(counties["name"]), strict=True):
        uid = node_unit.get(f"polygon:{a}")
        rec = {
            "item": "polygon", "census_id": None, "year": None, "excel_row": None, "code": a, "name": n,
            "kind": "polygon", "pop": None, "status": None, "method": None, "unit_id": None, "adcodes": a,
            "reason": None,
        }
        if uid in unit_has_rows:
            rec["status"] = "matched"
            rec["unit_id"] = uid
            rec["method"] = _methods_text(poly_methods.get(a, [])) or None
            rec["reason"] = f"census rows {';'.join(map(str, poly_rows.get(a, [])))}"
        else:
            rec["status"] = "no_census"
            rec["reason"] = no_census.get(a, "no census row matched this polygon")
        records.append(rec)
    out = pd.DataFrame.from_records(records, columns=REPORT_COLUMNS)
    out["year"] = out["year"].astype("Int64")
    out["excel_row"] = out["excel_row"].astype("Int64")
    out["pop"] = out["pop"].astype("Int64")
    for c in REPORT_COLUMNS:
        if c not in ("year", "excel_row", "pop"):
            out[c] = out[c].astype(object)
    return out


def no_census_report(provinces: pd.DataFrame, counties: pd.DataFrame) -> pd.DataFrame:
    """Report rows for provinces the census does not cover and whose counties are not in ``counties``.

    With ``[boundaries] exclude_no_census = true`` the boundaries stage drops
    the Taiwan, Hong Kong and Macau counties; they stay (flagged
    ``in_census = False``) in the provinces layer. This lists them in the
    match report so that no boundary unit goes unmentioned.

    Parameters
    ----------
    provinces : pandas.DataFrame
        Provinces layer attributes (``adcode``, ``name``, ``in_census``).
    counties : pandas.DataFrame
        The counties used (``province_code``).

    Returns
    -------
    pandas.DataFrame
        :data:`REPORT_COLUMNS`, ``item`` ``polygon``, ``kind`` ``province``,
        ``status`` ``no_census``.
    """
    if "in_census" not in provinces.columns:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in REPORT_COLUMNS})
    present = set(counties["province_code"])
    out = provinces[~provinces["in_census"].astype(bool) & ~provinces["adcode"].isin(present)]
    report = pd.DataFrame({
        "item": "polygon", "census_id": None, "year": pd.array([pd.NA] * len(out), dtype="Int64"),
        "excel_row": pd.array([pd.NA] * len(out), dtype="Int64"),
        "code": out["adcode"].to_numpy(dtype=object), "name": out["name"].to_numpy(dtype=object),
        "kind": "province", "pop": pd.array([pd.NA] * len(out), dtype="Int64"), "status": "no_census",
        "method": None, "unit_id": None, "adcodes": out["adcode"].to_numpy(dtype=object),
        "reason": "not covered by the mainland census; its counties are not in the counties layer "
                  "([boundaries] exclude_no_census)",
    })[REPORT_COLUMNS]
    return report.astype({c: object for c in REPORT_COLUMNS if c not in ("year", "excel_row", "pop")})


def province_totals(rows_2010: pd.DataFrame, rows_2020: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """Census national and province totals against the sums of the units (pure).

    The census totals are the province rows of each table; the national
    total is the ``全国`` row (2020) or the sum of the province rows (2010,
    which has no national row; ``note`` says so).

    Returns
    -------
    pandas.DataFrame
        :data:`TOTALS_COLUMNS`; ``difference = units_total - census_total``.
    """
    records = []
    for year, rows in ((2010, rows_2010), (2020, rows_2020)):
        col = f"pop_{year}"
        by_prov = units.groupby("province_code")[col].sum() if len(units) else pd.Series(dtype="int64")
        prov = rows[rows["kind"].eq("province")]
        for r in prov.itertuples(index=False):
            got = int(by_prov.get(r.code, 0))
            given = int(r.pop) if r.pop is not pd.NA else None
            records.append({
                "year": year, "level": "province", "code": r.code, "name": r.name, "census_total": given,
                "units_total": got, "difference": None if given is None else got - given, "note": "",
            })
        nation = rows[rows["kind"].eq("nation")]
        if len(nation):
            given = int(nation["pop"].iloc[0])
            note = "全国 row of the table"
        else:
            given = int(prov["pop"].fillna(0).sum())
            note = "no national row in the table: sum of its province rows"
        got = int(units[col].sum()) if len(units) else 0
        records.append({
            "year": year, "level": "nation", "code": "000000", "name": "全国", "census_total": given,
            "units_total": got, "difference": got - given, "note": note,
        })
    out = pd.DataFrame.from_records(records, columns=TOTALS_COLUMNS)
    for c in ("census_total", "units_total", "difference"):
        out[c] = out[c].astype("Int64")
    return out


# --------------------------------------------------------------------------- prefectures
def prefecture_indicators(
    city_table: pd.DataFrame,
    prefectures: gpd.GeoDataFrame,
    units: pd.DataFrame,
    *,
    shrink_threshold_pct: float = 0.0,
    county_rows: Sequence[pd.DataFrame] = (),
    counties: pd.DataFrame | None = None,
    match: PrefectureMatch | None = None,
) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
    """Prefecture indicators from ``census_city_2010-2020_v1.csv`` on boundary polygons (pure).

    Parameters
    ----------
    city_table : pandas.DataFrame
        :func:`~geo_pipeline.census.read_city_table` output (``city_code``,
        ``popu_2010``, ``popu_2020``, ...).
    prefectures : geopandas.GeoDataFrame
        The ``prefectures`` layer of boundaries.gpkg (``adcode``, ``name``,
        ``province``, ``province_code``, geometry in EPSG:4326).
    units : pandas.DataFrame
        Harmonised county units (``prefecture_code``, ``members``,
        ``pop_2010``, ``pop_2020``, ``hukou_2010``), used for ``hukou_2010``
        and the ``pop_*_units`` cross-checks.
    shrink_threshold_pct : float, default 0.0
    county_rows : sequence of pandas.DataFrame, optional
        Classified county-table rows with age bands; they fill the ageing
        columns where the CSV has no age figures (通化市 2020), see
        :func:`~geo_pipeline.ageing.prefecture_ageing`.
    counties : pandas.DataFrame, optional
        County polygons (``adcode``, ``prefecture_code``): which prefectures
        each county unit spans, for merging polygons without figures into
        their host prefecture and for the county cross-checks (without it,
        the units' ``prefecture_code`` is used).
    match : PrefectureMatch, optional
        :func:`~geo_pipeline.prefectures.match_prefectures` of these same
        ``city_table``, ``prefectures``, ``units`` and ``counties``, when the
        caller needs it too (the CLI: prefecture totals); None: matched here.

    Returns
    -------
    prefectures : geopandas.GeoDataFrame
        :data:`PREFECTURE_COLUMNS`; ``unit_id`` is the adcode of the
        prefecture polygon of the table row, ``members`` the adcodes of its
        polygons (more than one where a polygon without figures was merged
        in, see :func:`~geo_pipeline.prefectures.match_prefectures`).
        ``region``/``region_zh`` by province, ``comparable`` True (CSV rows
        without both populations are not prefecture units), and the ageing
        columns from the CSV's age percentages.
    report : pandas.DataFrame
        One row per CSV row (``item`` ``census_city``, ``pop`` =
        ``popu_2020``) and per boundary prefecture polygon (``item``
        ``prefecture_polygon``) in the format of :data:`REPORT_COLUMNS`:
        ``matched`` with the join used, or why not.

    Notes
    -----
    Codes are matched exactly (``city_code`` = prefecture ``adcode``); the
    municipalities' ``xx0100`` codes fall back to the only prefecture polygon
    of their province (Chongqing ``500100`` -> ``500000`` in cnmaps), recorded
    in ``join``. The geometry is the boundary polygon, not the CSV's WKT
    (which is in WGS84 and simplified).

    ``n_members`` counts the county polygons of the county units lying
    entirely in the prefecture unit. Prefectures with ``in_census = False`` (Hong Kong, Macau
    when kept by the boundaries stage) are left out: the CSV's figures for
    them are not census counts.

    ``pop_2010``/``pop_2020`` are the CSV figures (harmonised by its authors
    to 2020 prefecture boundaries; they can differ from the sums of the county
    units, e.g. 保定 without 雄安 and 定州). ``hukou_2010`` is the sum over the
    county units lying entirely in the prefecture (missing if a unit straddles
    prefectures), and ``net_outflow_ratio`` compares it with the same units'
    resident population ``pop_2010_units`` (same territory, same source):
    :math:`(H_0 - P_0^{units}) / H_0`.
    """
    check_frame(
        prefectures, name="prefectures layer", columns=["adcode", "name", "province", "province_code"],
        geometry=True, crs="EPSG:4326", unique=("adcode",),
    ).raise_if_any()
    if match is None:
        match = match_prefectures(city_table, prefectures, units, counties=counties)
    pref = prefectures.reset_index(drop=True)
    members = prefecture_members(match)
    ct = city_table.assign(unit_id=match.rows["unit_id"].to_numpy())
    ok = ct[ct["unit_id"].notna()].drop(columns=["province", "province_code"], errors="ignore")
    attrs = pd.DataFrame(pref[["adcode", "name", "province", "province_code"]]).rename(
        columns={"adcode": "unit_id"})
    merged = members.merge(attrs, on="unit_id").merge(ok, on="unit_id", how="inner")
    out = pd.DataFrame({
        "unit_id": merged["unit_id"], "name": merged["name"], "province": merged["province"],
        "province_code": merged["province_code"], "prefecture": merged["name"],
        "prefecture_code": merged["unit_id"], "level": "prefecture",
    })
    # county units lying entirely in one prefecture unit (all their polygons' prefectures among its members)
    unit_of = {a: uid for uid, m in zip(members["unit_id"], members["members"], strict=True)
               for a in m.split(";")}
    u = units[["n_members", "pop_2010", "pop_2020", "hukou_2010"]].copy()
    within: list[str | None] = []
    touched: set[str] = set()
    for ps in county_unit_prefectures(units, counties):
        owners = {unit_of.get(p) for p in ps}
        within.append(next(iter(owners)) if len(owners) == 1 else None)
        if len(owners) > 1:
            touched.update(o for o in owners if o is not None)
    u["within"] = within
    g = u[u["within"].notna()].groupby("within")
    out["n_members"] = merged["unit_id"].map(g["n_members"].sum()).fillna(0).astype("int64").to_numpy()
    out["pop_2010"] = merged["popu_2010"].astype("Int64").to_numpy()
    out["pop_2020"] = merged["popu_2020"].astype("Int64").to_numpy()
    hk = g["hukou_2010"].sum(min_count=1)
    hk_na = g["hukou_2010"].agg(lambda v: bool(v.isna().any()))
    hukou = merged["unit_id"].map(hk).astype("Int64")
    bad = merged["unit_id"].isin(touched) | merged["unit_id"].map(hk_na).fillna(True).astype(bool)
    out["hukou_2010"] = hukou.mask(bad.to_numpy()).astype("Int64").to_numpy()
    out["pop_2010_units"] = merged["unit_id"].map(g["pop_2010"].sum()).astype("Int64").to_numpy()
    out["pop_2020_units"] = merged["unit_id"].map(g["pop_2020"].sum()).astype("Int64").to_numpy()
    out = add_indicators(out, shrink_threshold_pct=shrink_threshold_pct)
    p0u = out["pop_2010_units"].astype("float64")
    h0 = out["hukou_2010"].astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        out["net_outflow_ratio"] = np.where(h0 > 0, (h0 - p0u) / h0, np.nan)
    out["net_outflow"] = (out["net_outflow_ratio"] > 0).fillna(False).astype(bool)
    out["city_code"] = merged["city_code"].to_numpy()
    out["join"] = merged["join"].to_numpy()
    out["members"] = merged["members"].to_numpy()
    regions = region_of(out["province_code"], source="prefectures layer", strict=False)
    out["region"] = regions["region"].to_numpy()
    out["region_zh"] = regions["region_zh"].to_numpy()
    out["comparable"] = True
    if all(c in city_table.columns for c in CITY_AGE_COLUMNS):
        ages = prefecture_ageing(city_table, county_rows).reindex(merged["city_code"])
        for c in AGEING_COLUMNS:
            out[c] = ages[c].to_numpy(dtype="float64")
    else:
        for c in AGEING_COLUMNS:
            out[c] = np.nan
    gdf = gpd.GeoDataFrame(out, geometry=union_geometry(pref, merged), crs=prefectures.crs)
    return gdf[PREFECTURE_COLUMNS], match.report


def wkt_offset_km(city_table: pd.DataFrame, prefectures: gpd.GeoDataFrame) -> float:
    """Median distance (km) between the CSV's WKT polygons and the boundary prefectures.

    A check of the CRS of ``coord`` in census_city_2010-2020_v1.csv: its
    polygons are matched by code to the boundary prefectures (WGS84) and the
    geodesic distance between centroids is taken. WGS84 polygons give a
    median of about 0.1 km (simplified outlines); GCJ-02 coordinates would
    sit about 0.5 km off consistently.

    Returns
    -------
    float
        Median centroid distance in km (NaN when nothing matches).
    """
    import pyproj

    if "coord" not in city_table.columns or len(city_table) == 0:
        return float("nan")
    pref = prefectures.set_index("adcode")
    ct = city_table[city_table["city_code"].isin(pref.index) & city_table["coord"].notna()]
    if ct.empty:
        return float("nan")
    wkt = shapely.from_wkt(ct["coord"].to_numpy(), on_invalid="ignore")
    ok = ~shapely.is_missing(wkt) & ~shapely.is_empty(wkt)
    if not ok.any():
        return float("nan")
    a = shapely.centroid(wkt[ok])
    b = shapely.centroid(pref.loc[ct["city_code"].to_numpy()[ok]].geometry.to_numpy())
    geod = pyproj.Geod(ellps="WGS84")
    _, _, dist = geod.inv(shapely.get_x(a), shapely.get_y(a), shapely.get_x(b), shapely.get_y(b))
    return float(np.median(dist) / 1000.0)
