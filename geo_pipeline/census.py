"""County census tables of 2010 and 2020: reading, row classification, totals.

The two county tables (leiii/census, from the census yearbooks) mix unit rows
with aggregate rows. :func:`classify_county_rows` gives every row one ``kind``
so that nothing is dropped silently:

``unit``
    A county-level unit (county, district, county-level city, banner, forest
    district, development zone, ...). Only these rows are counted.
``nation``
    The national total (2020: ``全国``, no code).
``province``
    A province total (code ``xx0000``).
``prefecture``
    A prefecture total (code ``xxxx00``) followed by its units. A ``xxxx00``
    row *not* followed by any unit row is a prefecture-level city without
    counties (东莞, 中山, 儋州, 嘉峪关 in 2020) and is a ``unit``.
``municipal_districts`` / ``municipal_counties``
    The ``市辖区`` / ``县`` subtotals of the four municipalities (2010: no
    code; 2020: ``xx0100`` / ``xx0200``).
``province_direct``
    The ``省直辖县级行政区划`` / ``自治区直辖县级行政区划`` subtotals.
``blank``
    An empty separator row (2010).
``note``
    A row with a label but neither code nor population (2010: a watermark
    line at the end of the sheet).

How the rows are recognised (both tables were inspected row by row):

* 2010 unit rows are the indented ones (label starting with spaces); this is
  the only way to tell the unit ``  市辖区`` (the whole of a prefecture-level
  city without districts in 2010: 东莞, 中山, 三亚, 嘉峪关) from the
  ``市辖区`` subtotal of a municipality.
* 2020 has no indentation: a row is an aggregate when its code ends in
  ``0000`` (province) or ``00`` (prefecture, 市辖区, 县) and units follow it,
  or when it is the national row or a 省直辖 subtotal; all other rows are units,
  including 150 development zones and management areas, 44 of which have no
  code (e.g. 山西转型综合改革示范区) and the 西沙/南沙/中沙 islands.

:func:`check_totals` then verifies that every aggregate equals the sum of the
unit rows it spans. In both tables every province row equals the sum of its
units to the person, and the 2020 national row (1,409,778,724) equals the sum
of the 31 provinces; the published national total 1,411,778,724 additionally
counts the 2,000,000 active military personnel, who are in no province or
county row. The 2010 table has no national row; its 31 provinces sum to
1,332,810,869 (the published 1,339,724,852 also counts military personnel
and persons whose usual residence could not be determined, in no row here).

Readers: :func:`read_county_table` (the two xlsx files) and
:func:`read_city_table` (the prefecture CSV) are the only functions here that
read files. The xlsx files are read with the ``calamine`` engine when
``python-calamine`` is installed (about 0.5 s per file instead of about 2 s
with openpyxl), and only the needed columns are kept.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._errors import DataQualityWarning, InputError, MissingInputError
from ._validate import Problems

__all__ = [
    "COUNTY_COLUMNS",
    "CITY_COLUMNS",
    "AGE_BANDS",
    "CITY_AGE_COLUMNS",
    "age_band_columns",
    "ROW_KINDS",
    "AGGREGATE_KINDS",
    "CENSUS_ROW_COLUMNS",
    "read_county_table",
    "read_city_table",
    "standardise_county_table",
    "classify_county_rows",
    "check_totals",
    "check_county_rows",
    "check_city_table",
    "load_corrections",
    "apply_corrections",
    "correction_action",
    "CORRECTION_COLUMNS",
    "normalise_name",
    "name_stem",
]

log = logging.getLogger(__name__)

Year = Literal[2010, 2020]

#: Source column names of the county tables: standard name -> column.
COUNTY_COLUMNS: dict[int, dict[str, str]] = {
    2010: {"label": "地区", "code": "区划代码", "pop": "合计", "hukou": "户籍人口"},
    2020: {"code": "区划代码", "province_label": "省", "prefecture_label": "市", "label": "区县",
           "pop": "人口数_合计"},
}

#: Columns of the prefecture table census_city_2010-2020_v1.csv that are used.
CITY_COLUMNS = ["city", "city_code", "province", "province_code", "popu_2010", "popu_2020", "coord"]

#: The 18 five-year age bands of the county tables, both sexes summed (2010 ``0岁`` and ``1-4岁``
#: make ``age_0_4``); ``age_85plus`` is 85 and older.
AGE_BANDS: tuple[str, ...] = (*(f"age_{lo}_{lo + 4}" for lo in range(0, 85, 5)), "age_85plus")

#: Age columns of the prefecture table: percent of residents aged 0-14, 15-59, 60+ and 65+.
CITY_AGE_COLUMNS = [f"age_{g}_{y}" for y in (2010, 2020) for g in ("0_14", "15_59", "60", "65")]

_AGE_HEADER = {
    # 2010: "0岁（男）", "1-4岁（女）", "45-49岁（女)" (sic), "85岁及以上（男）"
    2010: re.compile(r"^(?P<lo>\d+)(?:-(?P<hi>\d+))?岁(?P<open>及以上)?[（(](?P<sex>[男女])[）)]$"),
    # 2020: "男_0岁", "女_1到4岁", "男_85岁以上"
    2020: re.compile(r"^(?P<sex>[男女])_(?P<lo>\d+)(?:到(?P<hi>\d+))?岁(?P<open>以上)?$"),
}

#: Every kind a census row can be classified as.
ROW_KINDS = (
    "unit", "nation", "province", "prefecture", "municipal_districts", "municipal_counties",
    "province_direct", "blank", "note",
)
#: Kinds that are totals of unit rows.
AGGREGATE_KINDS = ("nation", "province", "prefecture", "municipal_districts", "municipal_counties",
                   "province_direct")

#: Columns of the frame returned by :func:`classify_county_rows`.
CENSUS_ROW_COLUMNS = [
    "census_id", "year", "excel_row", "label", "name", "code", "key", "kind", "zone",
    "province_code", "prefecture_code", "pop", "hukou", "note",
]

_LEVEL = {"nation": 0, "province": 1, "prefecture": 2, "municipal_districts": 2,
          "municipal_counties": 2, "province_direct": 2}
_NATION_NAMES = {"全国", "全国合计", "总计", "合计"}
_DIRECT_SUFFIX = "直辖县级行政区划"


# --------------------------------------------------------------------------- names
def normalise_name(name: Any) -> str:
    """Strip whitespace and unify variant characters (``巿`` U+5DFF -> ``市``).

    The 2010 table writes 九台巿, 从化巿 and 上虞巿 with the look-alike
    character U+5DFF.
    """
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return ""
    text = str(name).replace("\u5dff", "市").replace("\u3000", " ")
    return re.sub(r"\s+", "", text)


_SUFFIXES = ("自治县", "自治旗", "特区", "林区", "行委", "市", "县", "区", "旗")


def name_stem(name: str) -> str:
    """Name without its type suffix (市/县/区/旗/自治县/...), for rename matching.

    ``库车县`` and ``库车市`` share the stem ``库车``; ``沙县区`` has the stem
    ``沙县``. Stems shorter than two characters are not returned (the name is).
    """
    for suf in _SUFFIXES:
        if name.endswith(suf) and len(name) - len(suf) >= 2:
            return name[: -len(suf)]
    return name


# --------------------------------------------------------------------------- readers
def _read_excel(path: Path) -> dict[str, pd.DataFrame]:
    engine: str | None = None
    try:
        import python_calamine  # noqa: F401

        engine = "calamine"
    except ImportError:  # pragma: no cover - depends on the environment
        engine = "openpyxl"
    try:
        return pd.read_excel(path, sheet_name=None, engine=engine, header=0)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, TypeError) as exc:
        raise InputError(
            f"{path}: cannot read as an Excel workbook ({type(exc).__name__}: {exc}); "
            "expected the census county table (.xlsx); fetch it again"
        ) from exc
    except Exception as exc:  # calamine raises its own error classes for corrupt files
        if type(exc).__module__.startswith("python_calamine"):
            raise InputError(
                f"{path}: cannot read as an Excel workbook ({type(exc).__name__}: {exc}); "
                "expected the census county table (.xlsx); fetch it again"
            ) from exc
        raise


def read_county_table(path: str | os.PathLike[str], *, year: int) -> pd.DataFrame:
    """Read a census county table and return its needed columns, standardised.

    Parameters
    ----------
    path : path-like
        ``census_county_2010_v1.xlsx`` or ``census_county_2020_v1.xlsx``.
    year : {2010, 2020}
        Census year; selects the expected columns (:data:`COUNTY_COLUMNS`).

    Returns
    -------
    pandas.DataFrame
        See :func:`standardise_county_table`.

    Raises
    ------
    MissingInputError
        If the file does not exist.
    InputError
        If the file is not a readable workbook, or no sheet has every expected
        column (the message names the missing columns).
    """
    if year not in COUNTY_COLUMNS:
        raise InputError(f"census year must be one of {sorted(COUNTY_COLUMNS)}, found {year!r}")
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"{p} not found; run `geo-pipeline fetch` first")
    sheets = _read_excel(p)
    wanted = list(COUNTY_COLUMNS[year].values())
    best: tuple[str, list[str]] | None = None
    for sheet, frame in sheets.items():
        cols = [str(c) for c in frame.columns]
        missing = [c for c in wanted if c not in cols]
        if not missing:
            log.debug("%s: using sheet %r (%d rows)", p.name, sheet, len(frame))
            return standardise_county_table(frame, year=year, source=f"{p.name}[{sheet}]")
        if best is None or len(missing) < len(best[1]):
            best = (str(sheet), missing)
    sheet, missing = best if best is not None else ("", wanted)
    found = list(map(str, sheets[sheet].columns))[:12] if sheet in sheets else []
    raise InputError(
        f"{p}: missing column(s) {missing} for the {year} county table; expected {wanted}, "
        f"found {found}{' ...' if found else ''} in sheet {sheet!r}; use the leiii/census v1 file"
    )


def _parse_code(value: Any, *, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "NA", "NaN", "nan", "-"):
            return None
        try:
            number = float(text)
        except ValueError:
            raise InputError(f"{where}: code {value!r} is not a number; expected a 6-digit code") from None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{where}: code {value!r} is not a number; expected a 6-digit code") from None
        if np.isnan(number):
            return None
    if number != int(number) or not 100000 <= number <= 999999:
        raise InputError(f"{where}: code {value!r} is not a 6-digit administrative code")
    return f"{int(number):06d}"


def _numeric(series: pd.Series, *, name: str, source: str) -> pd.Series:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "fi":
        # already numbers (the reader's float64/int64 columns, e.g. every age band): replacing the
        # strings "NA", "" and "-" and ``pd.to_numeric`` give the same values and no cell can be
        # non-numeric, so both steps are skipped (the 76 band columns of both tables: 0.056 -> 0.023 s CPU)
        values = series
    else:
        values = pd.to_numeric(series.replace({"NA": np.nan, "": np.nan, "-": np.nan}), errors="coerce")
        bad = values.isna() & series.notna() & ~series.isin(["NA", "", "-"])
        if bad.any():
            rows = list(series.index[bad][:5] + 2)
            raise InputError(
                f"{source}: column {name!r} has {int(bad.sum())} non-numeric value(s) "
                f"(Excel rows {rows}); expected population counts"
            )
    present = values.dropna()
    if (present < 0).any() or (present % 1 != 0).any():
        raise InputError(f"{source}: column {name!r} must hold non-negative whole numbers")
    return values.round().astype("Int64")


def age_band_columns(columns: Any, *, year: int, source: str = "county table") -> dict[str, list[str]]:
    """Source columns of each age band (both sexes) of a county table.

    Parameters
    ----------
    columns : iterable of str
        Column names of the sheet.
    year : {2010, 2020}
    source : str
        Name used in messages.

    Returns
    -------
    dict
        :data:`AGE_BANDS` name -> its source columns (2 per band, 4 for 2010
        ``age_0_4``); empty when the table has no age columns at all.

    Raises
    ------
    InputError
        If the age columns of a sex do not cover 0-84 in consecutive
        intervals plus 85 and older, or an interval straddles two bands.

    Examples
    --------
    >>> age_band_columns(["男_0岁", "女_0岁", "合计"], year=2020)  # doctest: +SKIP
    """
    pattern = _AGE_HEADER.get(year)
    if pattern is None:
        raise InputError(f"census year must be one of {sorted(_AGE_HEADER)}, found {year!r}")
    intervals: dict[str, list[tuple[int, int, str]]] = {}
    for col in columns:
        m = pattern.match(str(col).strip())
        if m is None:
            continue
        lo = int(m["lo"])
        hi = 999 if m["open"] else int(m["hi"] or lo)
        intervals.setdefault(m["sex"], []).append((lo, hi, str(col)))
    if not intervals:
        return {}
    problems = []
    out: dict[str, list[str]] = {b: [] for b in AGE_BANDS}
    for sex in ("男", "女"):
        spans = sorted(intervals.get(sex, []))
        expect = 0
        for lo, hi, col in spans:
            if lo != expect:
                problems.append(f"{sex}: expected an age column starting at {expect}, found {col!r}")
                break
            start = lo - lo % 5
            in_one_band = hi != 999 and hi // 5 == lo // 5 and lo < 85
            band = "age_85plus" if hi == 999 and lo == 85 else (
                f"age_{start}_{start + 4}" if in_one_band else None)
            if band is None:
                problems.append(f"{sex}: age column {col!r} does not fit one of the 5-year bands {AGE_BANDS}")
                break
            out[band].append(col)
            expect = hi + 1
        else:
            if expect != 1000:
                problems.append(f"{sex}: age columns end at {expect - 1}; expected an 85+ column")
    if problems:
        raise InputError(
            f"{source}: the age columns do not make the 18 five-year bands 0-4 ... 85+ for both sexes: "
            + "; ".join(problems)
        )
    return out


def standardise_county_table(frame: pd.DataFrame, *, year: int, source: str = "county table") -> pd.DataFrame:
    """Rename a raw county table to standard columns (pure).

    Parameters
    ----------
    frame : pandas.DataFrame
        The sheet as read (header row = column names).
    year : {2010, 2020}
    source : str
        Name used in messages.

    Returns
    -------
    pandas.DataFrame
        Columns ``excel_row`` (1-based row number in the sheet, header = 1),
        ``label`` (name as written, indentation kept), ``code`` (6-digit
        string or None), ``province_label``, ``prefecture_label`` (2020 only,
        else None), ``pop`` and ``hukou`` (nullable integers; ``hukou`` is
        missing in 2020, whose table has no hukou total), and, when the sheet
        has age columns, the :data:`AGE_BANDS` (nullable integers, both sexes
        summed; see :func:`age_band_columns`).

    Raises
    ------
    InputError
        If an expected column is missing or a code or count is malformed.
    """
    cols = COUNTY_COLUMNS.get(year)
    if cols is None:
        raise InputError(f"census year must be one of {sorted(COUNTY_COLUMNS)}, found {year!r}")
    missing = [c for c in cols.values() if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing}; expected {list(cols.values())}, "
            f"found {list(map(str, frame.columns))[:12]}"
        )
    n = len(frame)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    out["excel_row"] = np.arange(2, n + 2, dtype="int64")
    labels = frame[cols["label"]].reset_index(drop=True)
    out["label"] = pd.Series([_opt_str(v) for v in labels], dtype=object)
    raw_codes = frame[cols["code"]].reset_index(drop=True)
    out["code"] = pd.Series(
        [_parse_code(v, where=f"{source} row {i + 2}") for i, v in enumerate(raw_codes)], dtype=object
    )
    for std in ("province_label", "prefecture_label"):
        if std in cols:
            out[std] = pd.Series([normalise_name(v) or None for v in frame[cols[std]]], dtype=object)
        else:
            out[std] = pd.Series([None] * n, dtype=object)
    out["pop"] = _numeric(frame[cols["pop"]].reset_index(drop=True), name=cols["pop"], source=source)
    if "hukou" in cols:
        out["hukou"] = _numeric(
            frame[cols["hukou"]].reset_index(drop=True), name=cols["hukou"], source=source
        )
    else:
        out["hukou"] = pd.array([pd.NA] * n, dtype="Int64")
    out["note"] = pd.Series([None] * n, dtype=object)
    _check_blank_counts(frame.reset_index(drop=True), out, cols=cols, source=source)
    for band, band_cols in age_band_columns(frame.columns, year=year, source=source).items():
        parts = [_numeric(frame[c].reset_index(drop=True), name=c, source=source) for c in band_cols]
        # a blank cell is no one (the yearbook leaves zeros blank in small units: 西沙群岛, 冷湖行委);
        # geo_pipeline.ageing.check_age_bands verifies that the bands then sum to the row's total
        out[band] = pd.concat(parts, axis=1).sum(axis=1, min_count=1).astype("Int64")
    return out


def _check_blank_counts(
    frame: pd.DataFrame, out: pd.DataFrame, *, cols: Mapping[str, str], source: str
) -> None:
    """Raise when a row has figures but a blank population (or 2010 hukou) cell.

    A row without any figure (2010: 南沙群岛, 中沙群岛的岛礁及其海域, uninhabited;
    separator and note rows) may leave the cells empty; a row with figures
    in other columns and an empty population cell is a damaged table: the
    missing count must never become 0.
    """
    skip = {cols[k] for k in ("label", "code", "province_label", "prefecture_label") if k in cols}
    others = [c for c in frame.columns if c not in skip and c not in (cols["pop"], cols.get("hukou"))]
    figures = frame[others].notna().any(axis=1).to_numpy() if others else np.zeros(len(frame), bool)
    problems = Problems(source)
    count_cols = [("pop", cols["pop"])] + ([("hukou", cols["hukou"])] if "hukou" in cols else [])
    for std, col in count_cols:
        other_counts = [out[s].notna().to_numpy() for s, _ in count_cols if s != std]
        has_data = figures.copy()
        for known in other_counts:
            has_data |= known
        blank = out[std].isna().to_numpy() & has_data
        for i in np.flatnonzero(blank)[:20]:
            label = normalise_name(out.at[i, "label"]) or "(no name)"
            code = out.at[i, "code"] or "no code"
            problems.add(
                f"Excel row {int(out.at[i, 'excel_row'])} ({label}, {code}): population cell {col!r} "
                "is blank "
                "while the row has other figures; fill in the count (a missing count is never taken as 0)"
            )
        if blank.sum() > 20:
            problems.add(f"... and {int(blank.sum()) - 20} more blank {col!r} cell(s)")
    problems.raise_if_any()


def check_county_rows(rows: pd.DataFrame, *, year: int, source: str | None = None) -> None:
    """Raise :class:`InputError` when a code appears on more than one row of a county table.

    A duplicated code would merge one county into another (both rows link to
    the polygon of that code). Codes are compared after the corrections.

    Parameters
    ----------
    rows : pandas.DataFrame
        :func:`classify_county_rows` output (or any frame with ``code``,
        ``excel_row`` and ``label``/``name``).
    year : {2010, 2020}
    source : str, optional
        Name of the table in messages (default ``"<year> county table"``).

    Raises
    ------
    InputError
        Listing every duplicated code with its Excel rows and names.
    """
    problems = Problems(source or f"{year} county table")
    coded = rows[rows["code"].notna()]
    dup = coded[coded["code"].duplicated(keep=False)]
    names = dup["name"] if "name" in dup.columns else dup["label"].map(normalise_name)
    for code, grp in dup.assign(_n=names).groupby("code", sort=True):
        where = ", ".join(
            f"Excel row {int(r)} ({n})" for r, n in zip(grp["excel_row"], grp["_n"], strict=True)
        )
        problems.add(f"code {code} appears on {len(grp)} rows: {where}; each county code must appear once")
    problems.raise_if_any()


#: Columns of a census corrections table.
CORRECTION_COLUMNS = ["year", "code", "name", "action", "value", "reason"]


def load_corrections() -> pd.DataFrame:
    """Load the packaged corrections of the county tables (``data/census_corrections.csv``).

    Each row fixes one documented error of a source table: ``swap_values``
    swaps the population and hukou figures of the row ``code`` with those of
    the row ``value`` (figures printed on the wrong row), ``rename`` replaces
    the row's name by ``value`` (names printed on the wrong row, codes and
    figures right), ``recode`` replaces a misprinted code by ``value``,
    ``set_age`` sets one age band (both sexes, :data:`AGE_BANDS`) to a
    corrected count given as ``value`` = ``age_<lo>_<hi>=<count>``. The
    ``name`` column is the name as printed, checked before anything is changed.
    """
    ref = resources.files("geo_pipeline").joinpath("data/census_corrections.csv")
    with resources.as_file(ref) as path:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [c for c in CORRECTION_COLUMNS if c not in frame.columns]
    if missing:  # pragma: no cover - packaged file
        raise InputError(f"census_corrections.csv: missing column(s) {missing}")
    frame["year"] = frame["year"].astype(int)
    return frame[CORRECTION_COLUMNS]


def apply_corrections(table: pd.DataFrame, corrections: pd.DataFrame, *, year: int) -> pd.DataFrame:
    """Return a copy of a standardised county table with the corrections of ``year`` applied (pure).

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`standardise_county_table` output.
    corrections : pandas.DataFrame
        :data:`CORRECTION_COLUMNS` (see :func:`load_corrections`).
    year : {2010, 2020}

    Returns
    -------
    pandas.DataFrame
        The corrected copy; ``note`` says what was changed on each row.

    Raises
    ------
    InputError
        If a correction names a code that is not in the table, or the row's
        printed name differs from the correction's ``name`` (another edition
        of the table: the correction would be wrong).
    """
    out = table.copy()
    out["note"] = out["note"].astype(object)
    todo = corrections[corrections["year"].astype(int).eq(year)]
    index = {c: i for i, c in zip(out.index, out["code"], strict=True) if c is not None}

    def locate(code: str, name: str | None) -> int:
        if code not in index:
            raise InputError(f"census correction {year} {code}: no row with this code in the {year} table")
        i = index[code]
        printed = normalise_name(out.at[i, "label"])
        if name is not None and printed != name:
            raise InputError(
                f"census correction {year} {code}: expected the row to be named {name!r}, found {printed!r}; "
                "the table is not the edition the correction was made for"
            )
        return i

    for c in todo.itertuples(index=False):
        i = locate(c.code, c.name)
        if c.action == "swap_values":
            j = locate(c.value, None)
            for col in ("pop", "hukou", *(b for b in AGE_BANDS if b in out.columns)):
                out.loc[i, col], out.loc[j, col] = out.at[j, col], out.at[i, col]
            msg = f"figures swapped with row {c.value} (census_corrections.csv): {c.reason}"
            out.at[i, "note"] = msg
            out.at[j, "note"] = msg
        elif c.action == "recode":
            if c.value in index:
                raise InputError(
                    f"census correction {year} {c.code}: code {c.value} is already used by a row"
                )
            out.at[i, "code"] = c.value
            out.at[i, "note"] = f"code corrected from {c.code} (census_corrections.csv): {c.reason}"
            index[c.value] = index.pop(c.code)
        elif c.action == "set_age":
            band, _, figure = str(c.value).partition("=")
            if band not in AGE_BANDS or band not in out.columns or not figure.strip().isdigit():
                raise InputError(
                    f"census correction {year} {c.code}: set_age expects 'age_<lo>_<hi>=<count>' with a band "
                    f"of {list(AGE_BANDS)} present in the table, found {c.value!r}"
                )
            before = out.at[i, band]
            out.at[i, band] = int(figure)
            out.at[i, "note"] = (
                f"age band {band} corrected from {before} to {int(figure)} "
                f"(census_corrections.csv): {c.reason}"
            )
        elif c.action == "rename":
            old = out.at[i, "label"]
            indent = old[: len(old) - len(old.lstrip())] if isinstance(old, str) else ""
            out.at[i, "label"] = indent + c.value
            out.at[i, "note"] = f"name corrected from {c.name} (census_corrections.csv): {c.reason}"
        else:
            raise InputError(f"census correction {year} {c.code}: unknown action {c.action!r}")
    return out


_CORRECTION_NOTES = (
    ("figures swapped with row ", "swap_values"),
    ("code corrected from ", "recode"),
    ("name corrected from ", "rename"),
    ("age band ", "set_age"),
)


def correction_action(note: Any) -> str | None:
    """The correction action recorded in a row's ``note`` by :func:`apply_corrections`, or None.

    Examples
    --------
    >>> correction_action("figures swapped with row 230110 (census_corrections.csv): ...")
    'swap_values'
    >>> correction_action(None) is None
    True
    """
    if not isinstance(note, str):
        return None
    for prefix, action in _CORRECTION_NOTES:
        if note.startswith(prefix):
            return action
    return None


def read_city_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the prefecture table ``census_city_2010-2020_v1.csv``.

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`CITY_COLUMNS`; ``city_code`` and
        ``province_code`` as 6-digit strings; and the age percentages
        :data:`CITY_AGE_COLUMNS` (float, NaN when blank or not in the file).

    Raises
    ------
    MissingInputError
        If the file does not exist.
    InputError
        If it cannot be parsed or a column is missing (named in the message).
    """
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"{p} not found; run `geo-pipeline fetch` first")
    try:
        frame = pd.read_csv(
            p, dtype={"city_code": str, "province_code": str, "popu_2010": str, "popu_2020": str},
            encoding="utf-8-sig", keep_default_na=False, na_values=[""],
        )
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{p}: cannot parse as CSV ({exc}); expected census_city_2010-2020_v1.csv") from exc
    missing = [c for c in CITY_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{p}: missing column(s) {missing}; expected {CITY_COLUMNS}, found {list(frame.columns)[:12]}"
        )
    return _with_city_ages(check_city_table(frame[CITY_COLUMNS], source=str(p)), frame, source=p.name)


#: Cell texts of the prefecture table that mean "no figure" (XPCC cities, 三沙 2010).
_CITY_MISSING = ("", "NA", "NaN", "nan", "-")


def check_city_table(frame: pd.DataFrame, *, source: str = "prefecture table") -> pd.DataFrame:
    """Validate and type the prefecture table (pure); every problem is listed in one error.

    Parameters
    ----------
    frame : pandas.DataFrame
        The columns of :data:`CITY_COLUMNS` as read (codes as text).
    source : str
        File name used in messages.

    Returns
    -------
    pandas.DataFrame
        A copy with ``city_code``/``province_code`` as 6-digit strings and
        ``popu_2010``/``popu_2020`` as nullable integers. An empty cell (or
        ``NA``) stays missing and is reported by the population stage as
        "population missing in the CSV"; it never becomes 0.

    Raises
    ------
    InputError
        A code that is not a 6-digit number, a duplicated ``city_code``, or a
        population that is not a number, negative or fractional (each with its
        CSV line, header = line 1).
    """
    problems = Problems(source)
    out = frame.copy().reset_index(drop=True)
    line = pd.Series(np.arange(2, len(out) + 2), index=out.index)
    for col in ("city_code", "province_code"):
        parsed = []
        for i, v in enumerate(out[col]):
            try:
                parsed.append(_parse_code(v, where=f"line {i + 2} column {col}"))
            except InputError as exc:
                problems.add(str(exc))
                parsed.append(None)
        out[col] = pd.Series(parsed, index=out.index, dtype=object)
    missing_code = out["city_code"].isna() & frame["city_code"].reset_index(drop=True).isna()
    for i in np.flatnonzero(missing_code.to_numpy())[:10]:
        problems.add(f"line {i + 2} ({out.at[i, 'city']}): city_code is empty")
    coded = out[out["city_code"].notna()]
    for code, grp in coded[coded["city_code"].duplicated(keep=False)].groupby("city_code", sort=True):
        where = ", ".join(f"line {int(line[i])} ({c})" for i, c in zip(grp.index, grp["city"], strict=True))
        problems.add(
            f"city_code {code} appears on {len(grp)} lines: {where}; each prefecture must appear once"
        )
    for col in ("popu_2010", "popu_2020"):
        raw = out[col]
        text = raw.astype(str).str.strip()
        blank = raw.isna() | text.isin(_CITY_MISSING)
        values = pd.to_numeric(raw.where(~blank), errors="coerce")
        bad = values.isna() & ~blank
        for i in np.flatnonzero(bad.to_numpy())[:10]:
            problems.add(f"line {i + 2} ({out.at[i, 'city']}): {col} = {raw.iloc[i]!r} is not a number")
        neg = values < 0
        for i in np.flatnonzero(neg.to_numpy())[:10]:
            problems.add(f"line {i + 2} ({out.at[i, 'city']}): {col} = {raw.iloc[i]!r} is negative")
        frac = values.notna() & (values % 1 != 0)
        for i in np.flatnonzero(frac.to_numpy())[:10]:
            problems.add(f"line {i + 2} ({out.at[i, 'city']}): {col} = {raw.iloc[i]!r} is not a whole number")
        out[col] = values.where(~(bad | neg | frac)).round().astype("Int64")
    problems.raise_if_any()
    return out


def _with_city_ages(out: pd.DataFrame, frame: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Add the :data:`CITY_AGE_COLUMNS` (percent, float; NaN when blank or absent from the file)."""
    for col in CITY_AGE_COLUMNS:
        if col not in frame.columns:
            out[col] = np.nan
            continue
        raw = frame[col]
        values = pd.to_numeric(raw.replace({"NA": np.nan, "": np.nan, "-": np.nan}), errors="coerce")
        unparsed = values.isna() & raw.notna() & ~raw.isin(["NA", "", "-"])
        bad = unparsed | (~values.between(0, 100) & values.notna())
        if bad.any():
            raise InputError(
                f"{source}: column {col!r} has {int(bad.sum())} value(s) that are not percentages "
                "in [0, 100] "
                f"(rows {list(frame.index[bad][:5] + 2)}); expected the share of residents in the age group"
            )
        out[col] = values.astype("float64").to_numpy()
    return out


# --------------------------------------------------------------------------- classification
def _opt_str(value: Any) -> str | None:
    """``value`` as a string, or None when missing (NaN, None, pandas NA)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _initial_kind(label: str | None, name: str, code: str | None, pop: Any) -> str:
    indented = label is not None and label[:1].isspace()
    pop_missing = pop is pd.NA or pop is None
    if not name and code is None and pop_missing:
        return "blank"
    if code is not None and code.endswith("0000"):
        return "province"
    if code is None and name in _NATION_NAMES and not indented:
        return "nation"
    if indented:
        return "unit"
    if code is None and pop_missing:
        return "note"
    if name.endswith(_DIRECT_SUFFIX):
        return "province_direct"
    if name == "市辖区" and (code is None or code.endswith("00")):
        return "municipal_districts"
    if name == "县" and (code is None or code.endswith("00")):
        return "municipal_counties"
    if code is not None and code.endswith("00"):
        return "prefecture"
    return "unit"


def classify_county_rows(table: pd.DataFrame, *, year: int, source: str | None = None) -> pd.DataFrame:
    """Classify every row of a standardised county table (pure).

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`standardise_county_table` (rows in sheet order).
    year : {2010, 2020}
    source : str, optional
        Name of the table in messages (default ``"<year> county table"``).

    Returns
    -------
    pandas.DataFrame
        One row per input row (none dropped), columns :data:`CENSUS_ROW_COLUMNS`:
        ``census_id`` (``"<year>:<excel_row>"``), ``name`` (normalised label),
        ``code`` (as given), ``key`` (code used for matching: the code, or for a
        2010 ``市辖区`` unit row the code of its prefecture row, else None),
        ``kind`` (see the module docstring), ``zone`` (development zone or
        management area: code ``xxxx7x`` or no code), ``province_code``
        and ``prefecture_code`` of the enclosing aggregates (derived
        ``xx0100``/``xx0200``/``xx9000`` for uncoded municipal and 省直辖
        subtotals), ``pop``, ``hukou`` and ``note`` (anomalies found, else None).

    Raises
    ------
    InputError
        If a code appears on more than one row (:func:`check_county_rows`).

    Warns
    -----
    DataQualityWarning
        For a unit whose code lies outside the province it is listed under
        (2020: 五台山风景名胜区 170971 under 忻州市 140900); the listing wins.

    Notes
    -----
    A prefecture-level row (code ``xxxx00``) with no unit row before the next
    aggregate row of its level or above is itself a unit (a prefecture-level
    city without counties).
    """
    n = len(table)
    if n == 0:
        return _empty_rows()
    labels = [_opt_str(v) for v in table["label"]]
    names = [normalise_name(v) for v in labels]
    codes = [_opt_str(v) for v in table["code"]]
    pops = list(table["pop"])
    kinds = [_initial_kind(lab, nm, c, p) for lab, nm, c, p in zip(labels, names, codes, pops, strict=True)]

    # demote level-2 headers without units below them
    for i, kind in enumerate(kinds):
        if kind != "prefecture":
            continue
        j = i + 1
        has_unit = False
        while j < n and kinds[j] not in _LEVEL:
            if kinds[j] == "unit":
                has_unit = True
                break
            j += 1
        if not has_unit:
            kinds[i] = "unit"

    province_code: list[str | None] = [None] * n
    prefecture_code: list[str | None] = [None] * n
    keys: list[str | None] = [None] * n
    notes: list[str | None] = (
        [_opt_str(v) for v in table["note"]] if "note" in table.columns else [None] * n
    )
    cur_prov: str | None = None
    cur_pref: str | None = None
    for i, kind in enumerate(kinds):
        code = codes[i]
        if kind == "province":
            cur_prov, cur_pref = code, None
        elif kind == "nation":
            cur_prov, cur_pref = None, None
        elif kind in _LEVEL:  # level-2 header
            if code is not None:
                cur_pref = code
            elif cur_prov is not None:
                suffix = {"municipal_districts": "0100", "municipal_counties": "0200"}.get(kind, "9000")
                cur_pref = cur_prov[:2] + suffix
            else:
                cur_pref = None
        province_code[i] = cur_prov if kind not in ("nation", "blank", "note") else None
        if kind == "unit":
            if code is not None:
                keys[i] = code
                prefecture_code[i] = code if code.endswith("00") else code[:4] + "00"
                if cur_prov is not None and code[:2] != cur_prov[:2]:
                    # 2020 row 340: 五台山风景名胜区 170971 listed under 忻州市 140900
                    prefecture_code[i] = cur_pref
                    notes[i] = (
                        f"code {code} lies outside the province {cur_prov} the row is listed under "
                        f"(prefecture {cur_pref}); the listing is used"
                    )
                    warnings.warn(
                        f"{year} county table Excel row {int(table['excel_row'].iloc[i])} "
                        f"({names[i]}): {notes[i]}",
                        DataQualityWarning,
                        stacklevel=2,
                    )
            else:
                prefecture_code[i] = cur_pref
                if names[i] == "市辖区" and cur_pref is not None:
                    keys[i] = cur_pref
        elif kind in _LEVEL and kind != "province" and kind != "nation":
            prefecture_code[i] = cur_pref
    zone = [
        kind == "unit" and (code is None and names[i] != "市辖区" or (code is not None and code[4] == "7"))
        for i, (kind, code) in enumerate(zip(kinds, codes, strict=True))
    ]
    def obj(values: list[Any]) -> pd.Series:
        return pd.Series(values, dtype=object)

    out = pd.DataFrame(
        {
            "census_id": obj([f"{year}:{r}" for r in table["excel_row"]]),
            "year": np.full(n, year, dtype="int64"),
            "excel_row": table["excel_row"].to_numpy(dtype="int64"),
            "label": obj(labels),
            "name": obj(names),
            "code": obj(codes),
            "key": obj(keys),
            "kind": obj(kinds),
            "zone": np.asarray(zone, dtype=bool),
            "province_code": obj(province_code),
            "prefecture_code": obj(prefecture_code),
            "pop": table["pop"].astype("Int64").to_numpy(),
            "hukou": table["hukou"].astype("Int64").to_numpy(),
            "note": obj(notes),
        }
    )
    out["pop"] = out["pop"].astype("Int64")
    out["hukou"] = out["hukou"].astype("Int64")
    for band in AGE_BANDS:  # age bands travel with their row when the table has them
        if band in table.columns:
            out[band] = table[band].astype("Int64").to_numpy()
            out[band] = out[band].astype("Int64")
    check_county_rows(out, year=year, source=source)
    return out


def _empty_rows() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in CENSUS_ROW_COLUMNS})
    frame["year"] = frame["year"].astype("int64")
    frame["excel_row"] = frame["excel_row"].astype("int64")
    frame["zone"] = frame["zone"].astype(bool)
    frame["pop"] = frame["pop"].astype("Int64")
    frame["hukou"] = frame["hukou"].astype("Int64")
    return frame


def check_totals(rows: pd.DataFrame) -> pd.DataFrame:
    """Compare every aggregate row with the sum of the unit rows it spans (pure).

    The span of an aggregate row is every following row up to the next
    aggregate of the same or a higher level (nation 0, province 1, prefecture
    and subtotals 2); the span of a level-2 row also ends at the first unit of
    another prefecture (2020 lists 济源 419001 right after 驻马店's counties
    without a subtotal row, and 东莞/中山/儋州/嘉峪关 are units with a
    prefecture code). Unit rows without population count as 0.

    Parameters
    ----------
    rows : pandas.DataFrame
        Output of :func:`classify_county_rows` for one year.

    Returns
    -------
    pandas.DataFrame
        One row per aggregate row: ``census_id``, ``year``, ``kind``, ``code``,
        ``name``, ``province_code``, ``pop`` (as given), ``hukou`` (as given),
        ``units`` (number of unit rows), ``units_pop``, ``units_hukou``,
        ``diff_pop`` (= ``pop - units_pop``), ``diff_hukou``.
    """
    cols = ["census_id", "year", "kind", "code", "name", "province_code", "pop", "hukou", "units",
            "units_pop", "units_hukou", "diff_pop", "diff_hukou"]
    kinds = list(rows["kind"])
    prefs = list(rows["prefecture_code"])
    pop_known = rows["pop"].notna().to_numpy()
    pop = rows["pop"].fillna(0).to_numpy(dtype="int64")
    hukou_known = rows["hukou"].notna().to_numpy()
    hukou = rows["hukou"].fillna(0).to_numpy(dtype="int64")
    ids, codes, names, provs = (list(rows[c]) for c in ("census_id", "code", "name", "province_code"))
    years = rows["year"].to_numpy()
    records = []
    n = len(rows)
    for i, kind in enumerate(kinds):
        if kind not in _LEVEL:
            continue
        level = _LEVEL[kind]
        own_pref = prefs[i]
        j = i + 1
        count, s_pop, s_hukou, hukou_ok = 0, 0, 0, True
        while j < n and not (kinds[j] in _LEVEL and _LEVEL[kinds[j]] <= level):
            if kinds[j] == "unit" and level == 2 and prefs[j] != own_pref:
                break  # e.g. 济源 419001 right after 驻马店's counties, no subtotal row
            if kinds[j] == "unit":
                count += 1
                s_pop += int(pop[j])
                s_hukou += int(hukou[j])
                # a unit without population (uninhabited islands) has no hukou either
                hukou_ok &= bool(hukou_known[j]) or not bool(pop_known[j])
            j += 1
        given = int(pop[i]) if pop_known[i] else pd.NA
        given_h = int(hukou[i]) if hukou_known[i] else pd.NA
        records.append({
            "census_id": ids[i], "year": int(years[i]), "kind": kind, "code": codes[i],
            "name": names[i], "province_code": provs[i], "pop": given, "hukou": given_h,
            "units": count, "units_pop": s_pop, "units_hukou": s_hukou if hukou_ok else pd.NA,
            "diff_pop": (given - s_pop) if given is not pd.NA else pd.NA,
            "diff_hukou": (given_h - s_hukou) if (given_h is not pd.NA and hukou_ok) else pd.NA,
        })
    out = pd.DataFrame.from_records(records, columns=cols)
    for col in ("pop", "hukou", "units_pop", "units_hukou", "diff_pop", "diff_hukou"):
        out[col] = out[col].astype("Int64")
    out["units"] = out["units"].astype("int64")
    out["year"] = out["year"].astype("int64")
    return out


def kinds_summary(rows: pd.DataFrame) -> Mapping[str, int]:
    """Count the rows of each kind (every kind listed, zeros included)."""
    counts = rows["kind"].value_counts()
    return {k: int(counts.get(k, 0)) for k in ROW_KINDS}
