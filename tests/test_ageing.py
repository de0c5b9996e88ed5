"""Tests of the age bands (census.py) and the ageing indicators (geo_pipeline.ageing), synthetic data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geo_pipeline import InputError
from geo_pipeline.ageing import (
    AGEING_COLUMNS,
    COUNT_COLUMNS,
    age_groups,
    ageing_indicators,
    check_age_bands,
    prefecture_ageing,
    province_ageing,
    unit_age_counts,
)
from geo_pipeline.census import (
    AGE_BANDS,
    CORRECTION_COLUMNS,
    age_band_columns,
    apply_corrections,
    classify_county_rows,
    correction_action,
    read_city_table,
    standardise_county_table,
)

LOWS_2020 = [(0, None), (1, 4), *((lo, lo + 4) for lo in range(5, 85, 5))]


def _headers_2020() -> list[str]:
    out = []
    for lo, hi in LOWS_2020:
        for sex in ("男", "女"):
            out.append(f"{sex}_{lo}岁" if hi is None else f"{sex}_{lo}到{hi}岁")
    return [*out, "男_85岁以上", "女_85岁以上"]


def _headers_2010() -> list[str]:
    out = []
    for lo, hi in LOWS_2020:
        for sex in ("男", "女"):
            out.append(f"{lo}岁（{sex}）" if hi is None else f"{lo}-{hi}岁（{sex}）")
    out[out.index("45-49岁（女）")] = "45-49岁（女)"  # the 2010 sheet's own typo
    return [*out, "85岁及以上（男）", "85岁及以上（女）"]


def _ages(**bands: tuple[int, int]) -> list[float]:
    """38 age cells (male, female per column) from {band: (male, female)}; 0-4 goes to the 1-4 column."""
    cells: list[float] = []
    for lo, hi in [*LOWS_2020, (85, None)]:
        key = "age_85plus" if lo == 85 else (f"age_{lo}_{hi}" if lo >= 5 else "age_0_4")
        m, f = bands.get(key, (0, 0)) if (lo, hi) != (0, None) else (0, 0)
        cells += [m, f]
    return [float("nan") if c == 0 else float(c) for c in cells]  # blank cells, as in the yearbook


def _raw_2020() -> pd.DataFrame:
    a = _ages(age_0_4=(10, 10), age_30_34=(25, 25), age_60_64=(10, 10), age_70_74=(5, 5))  # 100
    b = _ages(age_20_24=(20, 20), age_65_69=(5, 5), age_85plus=(0, 10))  # 60
    prov = [x + y if x == x or y == y else float("nan") for x, y in
            zip(np.nan_to_num(a), np.nan_to_num(b), strict=True)]
    head = ["区划代码", "省", "市", "区县", "人口数_合计", *_headers_2020()]
    return pd.DataFrame([
        [100000, "甲省", "甲省", "甲省", 160, *prov],
        [100102, "甲省", "子市", "一区", 100, *a],
        [100181, "甲省", "子市", "甲乙市", 60, *b],
    ], columns=head)


def test_age_band_columns_both_years() -> None:
    b20 = age_band_columns(_headers_2020(), year=2020)
    assert list(b20) == list(AGE_BANDS) and len(AGE_BANDS) == 18
    assert b20["age_0_4"] == ["男_0岁", "男_1到4岁", "女_0岁", "女_1到4岁"]
    assert b20["age_85plus"] == ["男_85岁以上", "女_85岁以上"]
    b10 = age_band_columns(_headers_2010(), year=2010)
    assert b10["age_45_49"] == ["45-49岁（男）", "45-49岁（女)"]
    assert b10["age_85plus"] == ["85岁及以上（男）", "85岁及以上（女）"]
    assert age_band_columns(["合计", "户籍人口"], year=2010) == {}  # no age columns at all


@pytest.mark.parametrize(
    ("drop", "message"),
    [("男_85岁以上", "end at 84"), ("女_40到44岁", "starting at 40"), ("男_0岁", "starting at 0")],
)
def test_age_band_columns_incomplete(drop: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        age_band_columns([h for h in _headers_2020() if h != drop], year=2020)


def test_age_band_straddling_two_bands_is_an_error() -> None:
    heads = [h for h in _headers_2020() if "5到9" not in h and "10到14" not in h]
    heads += ["男_5到14岁", "女_5到14岁"]
    with pytest.raises(InputError, match="does not fit"):
        age_band_columns(heads, year=2020)


def test_standardise_sums_sexes_and_blank_cells_count_as_zero() -> None:
    table = standardise_county_table(_raw_2020(), year=2020)
    assert table.loc[1, "age_0_4"] == 20 and table.loc[1, "age_60_64"] == 20
    assert table.loc[2, "age_85plus"] == 10  # male blank, female 10
    assert pd.isna(table.loc[1, "age_85plus"])  # both blank: no figure (0 for a populated row later)
    rows = classify_county_rows(table, year=2020)
    assert all(b in rows.columns for b in AGE_BANDS)
    groups = age_groups(rows)
    assert groups["pop_60plus"].tolist() == [50, 30, 20]
    assert groups["pop_65plus"].tolist() == [30, 10, 20]
    assert groups["pop_15_64"].tolist() == [110, 70, 40]
    check_age_bands(rows, year=2020)  # every row adds up


def test_check_age_bands_lists_rows_that_do_not_add_up() -> None:
    raw = _raw_2020()
    raw.loc[2, "男_20到24岁"] = 23.0  # +3
    rows = classify_county_rows(standardise_county_table(raw, year=2020), year=2020)
    with pytest.raises(InputError) as err:
        check_age_bands(rows, year=2020)
    msg = str(err.value)
    assert "1 problem found" in msg
    assert "Excel row 4 (甲乙市, 100181): age bands sum to 63, population 60" in msg
    with pytest.raises(InputError, match="no age band columns"):
        check_age_bands(rows.drop(columns=["age_0_4"]), year=2020)


def test_set_age_and_swap_corrections_move_the_bands() -> None:
    raw = _raw_2020()
    raw.loc[2, "男_20到24岁"] = 23.0
    table = standardise_county_table(raw, year=2020)
    fix = pd.DataFrame([
        (2020, "100181", "甲乙市", "set_age", "age_20_24=40", "misprint"),
        (2020, "100102", "一区", "swap_values", "100181", "rows swapped"),
    ], columns=CORRECTION_COLUMNS)
    out = apply_corrections(table, fix, year=2020)
    # set_age first (甲乙市's 20-24 = 40), then the whole rows' figures and bands are swapped
    assert out.loc[1, "pop"] == 60 and out.loc[1, "age_20_24"] == 40 and out.loc[1, "age_85plus"] == 10
    assert out.loc[2, "pop"] == 100 and out.loc[2, "age_60_64"] == 20
    assert correction_action(out.loc[2, "note"]) == "swap_values"
    only_set = apply_corrections(table, fix.iloc[:1], year=2020)
    assert correction_action(only_set.loc[2, "note"]) == "set_age"
    assert "from 43 to 40" in only_set.loc[2, "note"]
    check_age_bands(classify_county_rows(out, year=2020), year=2020)
    for bad in ("age_20_25=40", "age_20_24=x", "pop=4"):
        with pytest.raises(InputError, match="set_age expects"):
            apply_corrections(table, fix.iloc[:1].assign(value=bad), year=2020)


def test_ageing_indicators_hand_computed() -> None:
    frame = pd.DataFrame({
        "pop_2010": [100, 50, 0], "pop_2020": [100, 40, 10],
        "pop_15_64_2010": [80, 30, 0], "pop_60plus_2010": [15, 10, 0], "pop_65plus_2010": [10, 5, 0],
        "pop_15_64_2020": [70, 20, 0], "pop_60plus_2020": [30, 16, 5], "pop_65plus_2020": [10, 12, 5],
    })
    out = ageing_indicators(frame)
    assert out["share_60plus_2010"].tolist()[:2] == [15.0, 20.0] and np.isnan(out.loc[2, "share_60plus_2010"])
    assert out["share_65plus_2020"].tolist() == [10.0, 30.0, 50.0]
    assert out["share_60plus_change_pts"].tolist()[:2] == [15.0, 20.0]
    assert out["share_65plus_change_pts"].tolist()[:2] == [0.0, 20.0]
    assert out.loc[0, "old_age_dependency_2020"] == pytest.approx(100 * 10 / 70)
    assert out.loc[1, "old_age_dependency_2010"] == pytest.approx(100 * 5 / 30)
    assert np.isnan(out.loc[2, "old_age_dependency_2020"])  # no one aged 15-64
    assert set(AGEING_COLUMNS) <= set(out.columns) and "pop_2010" in out.columns


def test_unit_counts_sum_the_members_before_dividing_and_provinces_reproduce_the_census() -> None:
    rows20 = classify_county_rows(standardise_county_table(_raw_2020(), year=2020), year=2020)
    rows10 = rows20.assign(year=2010, census_id=rows20["census_id"].str.replace("2020:", "2010:"))
    units = pd.Index(["u1"], name="unit_id")
    membership = pd.DataFrame({"census_id": ["2010:3", "2010:4", "2020:3", "2020:4"], "unit_id": "u1"})
    counts = unit_age_counts(pd.concat([rows10, rows20], ignore_index=True), membership, units)
    assert list(counts.columns) == COUNT_COLUMNS
    assert counts.loc["u1", "pop_60plus_2020"] == 50 and counts.loc["u1", "pop_15_64_2010"] == 110
    merged = ageing_indicators(counts.assign(pop_2010=160, pop_2020=160))
    # (30 + 20) / (100 + 60), not the mean of the members' shares (30 % and 33.3 %)
    assert merged.loc["u1", "share_60plus_2020"] == pytest.approx(31.25)
    unit_frame = merged.reset_index().assign(province_code="100000")
    prov = province_ageing(rows10, rows20, unit_frame).set_index("code")
    assert prov.loc["100000", "difference_persons"] == 0
    assert prov.loc["100000", "census_pop_65plus_2020"] == 30
    assert prov.loc["100000", "census_share_60plus_2020"] == pytest.approx(31.25)
    assert prov.loc["000000", "level"] == "nation" and prov.loc["000000", "pop_60plus_2020"] == 50
    short = unit_frame.assign(pop_60plus_2020=49)  # one person missing from the units
    assert province_ageing(rows10, rows20, short).set_index("code").loc["100000", "difference_persons"] == 1


def test_prefecture_ageing_from_percentages_and_fallback_rows() -> None:
    city = pd.DataFrame({
        "city_code": ["100100", "200100"],
        "age_0_14_2010": [20.0, 15.0], "age_15_59_2010": [65.0, 70.0], "age_60_2010": [15.0, 15.0],
        "age_65_2010": [10.0, 9.0],
        "age_0_14_2020": [18.0, np.nan], "age_15_59_2020": [60.0, np.nan], "age_60_2020": [22.0, np.nan],
        "age_65_2020": [14.0, np.nan],
    })
    out = prefecture_ageing(city)
    assert out.loc["100100", "share_60plus_2020"] == 22.0 and out.loc["100100", "share_65plus_2010"] == 10.0
    assert out.loc["100100", "old_age_dependency_2010"] == pytest.approx(100 * 10 / 70)
    assert out.loc["100100", "share_60plus_change_pts"] == pytest.approx(7.0)
    assert np.isnan(out.loc["200100", "share_60plus_2020"])
    # 200100 has a prefecture row in the 2020 county table: it fills the gap
    raw = _raw_2020()
    raw.loc[0, "区划代码"] = 200100
    rows = classify_county_rows(standardise_county_table(raw, year=2020), year=2020)
    rows = rows.assign(kind=["prefecture", "unit", "unit"])
    filled = prefecture_ageing(city, [rows])
    assert filled.loc["200100", "share_60plus_2020"] == pytest.approx(100 * 50 / 160)
    assert filled.loc["200100", "old_age_dependency_2020"] == pytest.approx(100 * 30 / 110)
    assert filled.loc["200100", "ageing_source"].endswith("2020 from the 2020 county table's prefecture row")
    assert filled.loc["100100", "ageing_source"] == "city table"


def test_read_city_table_age_percentages(tmp_path: Path) -> None:
    base = {"city": ["子市"], "city_code": [100100], "province": ["甲省"], "province_code": [100000],
            "popu_2010": [1000], "popu_2020": [1331], "coord": ["POLYGON((0 0,1 0,1 1,0 0))"]}
    ages = {"age_0_14_2010": [20.0], "age_15_59_2010": [65.0], "age_60_2010": [15.0], "age_65_2010": [10.0],
            "age_0_14_2020": [""], "age_15_59_2020": [""], "age_60_2020": [""], "age_65_2020": [""]}
    path = tmp_path / "city.csv"
    pd.DataFrame({**base, **ages}).to_csv(path, index=False)
    city = read_city_table(path)
    assert city.loc[0, "age_60_2010"] == 15.0 and np.isnan(city.loc[0, "age_60_2020"])
    pd.DataFrame(base).to_csv(path, index=False)  # no age columns: NaN
    assert read_city_table(path)["age_65_2010"].isna().all()
    pd.DataFrame({**base, **ages, "age_60_2010": [150.0]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="not percentages"):
        read_city_table(path)
