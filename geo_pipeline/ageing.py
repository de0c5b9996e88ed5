r"""Ageing indicators from the age bands of the census tables.

County units
------------
Both county tables give residents by sex in 5-year age bands, 0-4 ... 85+
(:data:`~geo_pipeline.census.AGE_BANDS`, both sexes summed by
:mod:`geo_pipeline.census`). Per census row :func:`age_groups` counts

``pop_15_64``
    residents aged 15-64 (bands 15-19 ... 60-64);
``pop_60plus``, ``pop_65plus``
    residents aged 60 and over, and 65 and over.

A unit's counts are the sums over its census rows (a merged unit sums the
bands of its members before dividing), and :func:`ageing_indicators` gives, for
each census year :math:`t` with resident population :math:`P_t`:

.. math::

    \text{share\_60plus}_t = 100\,\frac{P^{60+}_t}{P_t}, \quad
    \text{share\_65plus}_t = 100\,\frac{P^{65+}_t}{P_t}, \quad
    \text{old\_age\_dependency}_t = 100\,\frac{P^{65+}_t}{P^{15-64}_t}

(shares in percent of residents; the dependency ratio is persons aged 65+ per
100 aged 15-64), and ``share_60plus_change_pts`` / ``share_65plus_change_pts``
= 2020 share - 2010 share, in percentage points.

:func:`check_age_bands` requires that the bands of every populated row sum to
the row's total: in the 2010 table two unit rows did not (建昌县 +30,000 in
35-39, 石鼓区 -6 in 0-4); both are fixed in ``census_corrections.csv`` from
their prefecture and province rows, after which every row of both tables
adds up to the person.

Provinces
---------
:func:`province_ageing` recomputes the province shares from the units and sets
them next to the census province rows' own age bands (the check of the issue:
the units reproduce the census provincial figures to the person).

Prefectures
-----------
The prefecture table (census_city_2010-2020_v1.csv) gives percentages:
``age_0_14``, ``age_15_59``, ``age_60`` (60+) and ``age_65`` (65+), rounded to
0.1 or 0.01. :func:`prefecture_ageing` turns them into the same columns:
``share_60plus = age_60``, ``share_65plus = age_65`` and
``old_age_dependency = 100 age_65 / (100 - age_0_14 - age_65)``. Where the CSV
has no age figures for a year but the county table of that year has the
prefecture's row (通化市 2020), the shares are computed from that row's bands.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._validate import Problems
from .census import AGE_BANDS

__all__ = [
    "AGEING_COLUMNS",
    "AGE_GROUPS",
    "COUNT_COLUMNS",
    "PROVINCE_AGEING_COLUMNS",
    "age_groups",
    "ageing_indicators",
    "check_age_bands",
    "prefecture_ageing",
    "province_ageing",
    "unit_age_counts",
]

log = logging.getLogger(__name__)

YEARS = (2010, 2020)

#: Age groups counted per row: name -> bands summed.
AGE_GROUPS: dict[str, tuple[str, ...]] = {
    "pop_15_64": AGE_BANDS[3:13],
    "pop_60plus": AGE_BANDS[12:],
    "pop_65plus": AGE_BANDS[13:],
}

#: Count columns of the units (per year).
COUNT_COLUMNS = [f"{g}_{y}" for y in YEARS for g in AGE_GROUPS]

#: Ageing indicator columns (shared names, see COMMON column list).
AGEING_COLUMNS = [
    "share_60plus_2010", "share_60plus_2020", "share_65plus_2010", "share_65plus_2020",
    "share_60plus_change_pts", "share_65plus_change_pts", "old_age_dependency_2010",
    "old_age_dependency_2020",
]

#: Columns of :func:`province_ageing`.
PROVINCE_AGEING_COLUMNS = [
    "level", "code", "name", "region", "region_zh", "pop_2010", "pop_2020", *COUNT_COLUMNS,
    *AGEING_COLUMNS, *(f"census_{c}" for c in COUNT_COLUMNS),
    "census_share_60plus_2010", "census_share_60plus_2020", "difference_persons",
]

_BAND_CHECK_KINDS = ("unit", "nation", "province", "prefecture", "municipal_districts",
                     "municipal_counties", "province_direct")


def _has_bands(rows: pd.DataFrame) -> bool:
    return all(b in rows.columns for b in AGE_BANDS)


def age_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """Counts of the age groups of :data:`AGE_GROUPS` per census row (pure).

    Parameters
    ----------
    rows : pandas.DataFrame
        Census rows with the :data:`~geo_pipeline.census.AGE_BANDS` columns
        (as classified by :func:`~geo_pipeline.census.classify_county_rows`).
        Without them every count is missing.

    Returns
    -------
    pandas.DataFrame
        Columns ``pop_15_64``, ``pop_60plus``, ``pop_65plus`` (nullable
        integers), same index as ``rows``; missing for rows without
        population (and all rows when the bands are absent). A blank band of
        a populated row counts as 0: the yearbook leaves zeros blank in small
        units (西沙群岛, 冷湖行委), and :func:`check_age_bands` verifies that
        the bands of every populated row then sum exactly to its total.
    """
    out = pd.DataFrame(index=rows.index)
    populated = rows["pop"].notna().to_numpy() if "pop" in rows.columns else np.ones(len(rows), bool)
    for group, bands in AGE_GROUPS.items():
        if _has_bands(rows):
            # blank bands of a populated row are 0 (checked by check_age_bands against the total)
            values = rows[list(bands)].astype("Int64").fillna(0).sum(axis=1).astype("Int64")
            out[group] = values.mask(~populated).astype("Int64")
        else:
            out[group] = pd.array([pd.NA] * len(rows), dtype="Int64")
    return out


def check_age_bands(rows: pd.DataFrame, *, year: int, source: str | None = None) -> None:
    """Raise when the age bands of a populated row do not sum to its population.

    Parameters
    ----------
    rows : pandas.DataFrame
        Classified rows of one table (``kind``, ``pop``, ``excel_row``,
        ``name``, ``code`` and the age bands), after the corrections.
    year : {2010, 2020}
    source : str, optional
        Name of the table in messages.

    Raises
    ------
    InputError
        Listing every unit or aggregate row whose bands (blank = 0) sum to
        another figure than its total, with the difference.
    """
    p = Problems(source or f"{year} county table")
    if not _has_bands(rows):
        p.add(f"no age band columns {AGE_BANDS[0]} ... {AGE_BANDS[-1]}; expected the census county table "
              "with its 5-year age columns by sex")
        p.raise_if_any()
    checked = rows[rows["kind"].isin(_BAND_CHECK_KINDS) & rows["pop"].notna()]
    total = checked[list(AGE_BANDS)].astype("Int64").fillna(0).sum(axis=1).astype("int64")
    diff = total - checked["pop"].astype("int64")
    bad = checked.index[diff.ne(0).to_numpy()]
    for i in bad[:20]:
        p.add(f"Excel row {int(rows.at[i, 'excel_row'])} ({rows.at[i, 'name']}, {rows.at[i, 'code']}): "
              f"age bands sum to {int(total[i])}, population {int(rows.at[i, 'pop'])} "
              f"(difference {int(diff[i]):+d}); add a set_age row to census_corrections.csv")
    if len(bad) > 20:
        p.add(f"... and {len(bad) - 20} more rows")
    p.raise_if_any()


def ageing_indicators(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of ``frame`` with :data:`AGEING_COLUMNS` computed from its counts (pure).

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``pop_2010``, ``pop_2020`` and :data:`COUNT_COLUMNS`.

    Returns
    -------
    pandas.DataFrame
        ``frame`` with the eight ageing columns (float, NaN where a count is
        missing or a denominator is 0). See the module docstring for the
        formulas.
    """
    out = frame.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for y in YEARS:
            pop = pd.to_numeric(out[f"pop_{y}"]).astype("float64").to_numpy()
            work = pd.to_numeric(out[f"pop_15_64_{y}"]).astype("float64").to_numpy()
            for g in ("60plus", "65plus"):
                n = pd.to_numeric(out[f"pop_{g}_{y}"]).astype("float64").to_numpy()
                out[f"share_{g}_{y}"] = np.where(pop > 0, 100.0 * n / pop, np.nan)
            old = pd.to_numeric(out[f"pop_65plus_{y}"]).astype("float64").to_numpy()
            out[f"old_age_dependency_{y}"] = np.where(work > 0, 100.0 * old / work, np.nan)
    for g in ("60plus", "65plus"):
        out[f"share_{g}_change_pts"] = out[f"share_{g}_2020"] - out[f"share_{g}_2010"]
    return out


def unit_age_counts(rows: pd.DataFrame, membership: pd.DataFrame, index: pd.Index) -> pd.DataFrame:
    """Sum the age groups of each unit's census rows (pure).

    Parameters
    ----------
    rows : pandas.DataFrame
        Classified census rows of both years (``census_id``, ``year`` and the
        age bands).
    membership : pandas.DataFrame
        ``census_id`` -> ``unit_id`` of the unit rows.
    index : pandas.Index
        The unit ids, in output order.

    Returns
    -------
    pandas.DataFrame
        :data:`COUNT_COLUMNS` (nullable integers) indexed by ``index``; a
        count is missing when a populated row of the unit lacks its bands.
    """
    groups = pd.concat([rows[["census_id", "year", "pop"]], age_groups(rows)], axis=1)
    cr = groups.merge(membership[["census_id", "unit_id"]], on="census_id")
    out = pd.DataFrame(index=index)
    for y in YEARS:
        sub = cr[cr["year"].eq(y)]
        populated = sub[sub["pop"].notna()]
        for g in AGE_GROUPS:
            s = populated.groupby("unit_id")[g].sum(min_count=1)
            lacking = populated[g].isna().groupby(populated["unit_id"]).any()
            col = s.reindex(index).astype("Int64")
            out[f"{g}_{y}"] = col.mask(lacking.reindex(index).fillna(False).astype(bool)).astype("Int64")
    return out[COUNT_COLUMNS]


def province_ageing(
    rows_2010: pd.DataFrame, rows_2020: pd.DataFrame, units: pd.DataFrame
) -> pd.DataFrame:
    """Ageing per province recomputed from the units, next to the census province rows (pure).

    Parameters
    ----------
    rows_2010, rows_2020 : pandas.DataFrame
        Classified census rows with their age bands.
    units : pandas.DataFrame
        Units with ``province_code``, ``pop_2010``, ``pop_2020``,
        :data:`COUNT_COLUMNS`; ``region``/``region_zh`` if present.

    Returns
    -------
    pandas.DataFrame
        :data:`PROVINCE_AGEING_COLUMNS`: one row per province (``level``
        ``"province"``, ordered by code) and a ``"nation"`` row. The counts and
        :data:`AGEING_COLUMNS` are sums over the units; the ``census_*``
        columns are the province rows' own bands (the nation: the sum of the
        province rows); ``difference_persons`` is the sum of the absolute
        differences of the six counts (0 when the units reproduce the census).
    """
    counts = ["pop_2010", "pop_2020", *COUNT_COLUMNS]
    u = units.copy()
    by_prov = u.groupby("province_code")[counts].sum(min_count=1)
    census = {}
    names: dict[str, str] = {}
    for y, rows in ((2010, rows_2010), (2020, rows_2020)):
        prov = rows[rows["kind"].eq("province")]
        g = age_groups(prov)
        g.index = prov["code"].to_numpy()
        for c in AGE_GROUPS:
            census[f"census_{c}_{y}"] = g[c]
        names.update(dict(zip(prov["code"], prov["name"], strict=True)))
    cen = pd.DataFrame(census)
    codes = sorted(set(by_prov.index) | set(cen.index))
    out = by_prov.reindex(codes)
    out = pd.concat([out, cen.reindex(codes)], axis=1)
    nation = out.sum(axis=0, min_count=1).to_frame().T
    nation.index = ["000000"]
    out = pd.concat([out, nation])
    out = ageing_indicators(out)
    for y in YEARS:
        p = pd.to_numeric(out[f"pop_{y}"]).astype("float64")
        out[f"census_share_60plus_{y}"] = 100.0 * pd.to_numeric(out[f"census_pop_60plus_{y}"]).astype(
            "float64") / p.where(p > 0)
    diffs = [
        (pd.to_numeric(out[c]).astype("float64") - pd.to_numeric(out[f"census_{c}"]).astype("float64")).abs()
        for c in COUNT_COLUMNS
    ]
    out["difference_persons"] = pd.concat(diffs, axis=1).sum(axis=1, min_count=1).round().astype("Int64")
    out["level"] = ["province"] * len(codes) + ["nation"]
    out["code"] = out.index
    out["name"] = [names.get(c, "") for c in codes] + ["全国"]
    if "region" in u.columns:
        reg = u.groupby("province_code")[["region", "region_zh"]].first()
        out["region"] = [reg["region"].get(c) for c in codes] + [None]
        out["region_zh"] = [reg["region_zh"].get(c) for c in codes] + [None]
    else:
        out["region"] = None
        out["region_zh"] = None
    for c in ("pop_2010", "pop_2020", *COUNT_COLUMNS, *(f"census_{c}" for c in COUNT_COLUMNS)):
        out[c] = pd.to_numeric(out[c]).round().astype("Int64")
    for c in ("level", "code", "name", "region", "region_zh"):
        out[c] = out[c].astype(object)
    return out[PROVINCE_AGEING_COLUMNS].reset_index(drop=True)


def prefecture_ageing(
    city_table: pd.DataFrame, fallback_rows: Sequence[pd.DataFrame] = ()
) -> pd.DataFrame:
    """:data:`AGEING_COLUMNS` per prefecture from the prefecture table's age percentages (pure).

    Parameters
    ----------
    city_table : pandas.DataFrame
        :func:`~geo_pipeline.census.read_city_table` output with ``city_code``
        and :data:`~geo_pipeline.census.CITY_AGE_COLUMNS` (percent).
    fallback_rows : sequence of pandas.DataFrame, optional
        Classified county-table rows (with age bands) of 2010 and/or 2020.
        Where the CSV has no age figures for a year, the prefecture row of
        that year's county table with the same code, if any, gives them.

    Returns
    -------
    pandas.DataFrame
        Index ``city_code``; :data:`AGEING_COLUMNS` and ``ageing_source``
        (``"city table"``, or which county-table year filled a gap).
    """
    ct = city_table.drop_duplicates("city_code").set_index("city_code")
    out = pd.DataFrame(index=ct.index)
    source = pd.Series("city table", index=ct.index, dtype=object)
    for y in YEARS:
        a0 = pd.to_numeric(ct[f"age_0_14_{y}"]).astype("float64")
        a60 = pd.to_numeric(ct[f"age_60_{y}"]).astype("float64")
        a65 = pd.to_numeric(ct[f"age_65_{y}"]).astype("float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            dep = 100.0 * a65 / (100.0 - a0 - a65)
        out[f"share_60plus_{y}"], out[f"share_65plus_{y}"], out[f"old_age_dependency_{y}"] = a60, a65, dep
        for rows in fallback_rows:
            if not len(rows) or int(rows["year"].iloc[0]) != y or not _has_bands(rows):
                continue
            gap = out.index[out[f"share_60plus_{y}"].isna()]
            pref = rows[rows["kind"].isin(["prefecture", "unit"]) & rows["code"].isin(gap)
                        & rows["code"].str.endswith("00", na=False) & rows["pop"].notna()]
            if pref.empty:
                continue
            g = age_groups(pref).astype("float64")
            pop = pref["pop"].astype("float64")
            cols = (pref["code"], pop, g["pop_15_64"], g["pop_60plus"], g["pop_65plus"])
            for code, p, w, s60, s65 in zip(*cols, strict=True):
                out.loc[code, f"share_60plus_{y}"] = 100.0 * s60 / p
                out.loc[code, f"share_65plus_{y}"] = 100.0 * s65 / p
                out.loc[code, f"old_age_dependency_{y}"] = 100.0 * s65 / w
                source[code] = f"city table; {y} from the {y} county table's prefecture row"
    for g in ("60plus", "65plus"):
        out[f"share_{g}_change_pts"] = out[f"share_{g}_2020"] - out[f"share_{g}_2010"]
    out["ageing_source"] = source
    return out[[*AGEING_COLUMNS, "ageing_source"]]
