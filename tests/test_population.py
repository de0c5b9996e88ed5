"""Tests of the population stage: census rows, crosswalk, harmonised units, indicators, CLI.

Independent references: the published census province totals (Heilongjiang,
Jilin, Liaoning), the province rows of the census tables themselves (sums to
the person), administrative history (崇文 -> 东城, 三亚's 2014 districts,
Hangzhou's 2021 reorganisation) and a union-find written here for the unit
count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
from click.testing import CliRunner
from shapely.geometry import box

from geo_pipeline import DataQualityWarning, InputError, UnknownCodeError
from geo_pipeline._io import list_layers, read_layer, read_table
from geo_pipeline.census import (
    apply_corrections,
    check_totals,
    classify_county_rows,
    load_corrections,
    name_stem,
    normalise_name,
    read_city_table,
    read_county_table,
    standardise_county_table,
)
from geo_pipeline.cli import main
from geo_pipeline.crosswalk import (
    CROSSWALK_COLUMNS,
    check_crosswalk_table,
    harmonise,
    load_known_changes,
    match_census_rows,
)
from geo_pipeline.population import (
    UNIT_COLUMNS,
    add_indicators,
    build_population,
    prefecture_indicators,
    wkt_offset_km,
)

# --------------------------------------------------------------------------- synthetic helpers
COLS_2010 = ["地区", "区划代码", "合计", "户籍人口"]
COLS_2020 = ["区划代码", "省", "市", "区县", "人口数_合计"]


def _t2010(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLS_2010)


def _t2020(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLS_2020)


NAN = float("nan")

# Province 10 (甲省): prefecture 1001 with districts 100102, 100103, 100104 and
# county 100121; 2010 lists 100102 and 100103 (100103 merged into 100102
# later), 100104 (later split into 100104 and 100105) and 甲县 100121 (later
# the city 甲市 100181).
RAW_2010 = _t2010([
    ("甲省", 100000, 1000, 800),
    ("子市", 100100, 1000, 800),
    ("  一区", 100102, 300, 200),
    ("  二区", 100103, 100, 100),
    ("  三区", 100104, 400, 300),
    ("  甲乙县", 100121, 200, 200),
    (NAN, NAN, NAN, NAN),
    ("水印 www.example.org", NAN, NAN, NAN),
])
RAW_2020 = _t2020([
    ("NA", "全国", "全国", "全国", 1331),
    (100000, "甲省", "甲省", "甲省", 1331),
    (100100, "甲省", "子市", "子市", 1331),
    (100102, "甲省", "子市", "一区", 420),
    (100104, "甲省", "子市", "三区", 250),
    (100105, "甲省", "子市", "五区", 300),
    (100171, "甲省", "子市", "子市经济开发区", 111),
    (100181, "甲省", "子市", "甲乙市", 250),
])


def _rows(raw: pd.DataFrame, year: int) -> pd.DataFrame:
    return classify_county_rows(standardise_county_table(raw, year=year), year=year)


def _counties(crs: str = "EPSG:4326") -> gpd.GeoDataFrame:
    codes = ["100102", "100104", "100105", "100181"]
    names = ["一区", "三区", "五区", "甲乙市"]
    return gpd.GeoDataFrame(
        {
            "adcode": codes, "name": names, "province": "甲省", "province_code": "100000",
            "prefecture": "子市", "prefecture_code": "100100", "level": "county", "in_census": True,
        },
        geometry=[box(i, 0, i + 1, 1) for i in range(4)],
        crs=crs,
    )


def _table(rows: list[tuple[object, ...]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=CROSSWALK_COLUMNS)
    frame["year"] = frame["year"].astype("Int64")
    return frame


KNOWN = _table([
    (2010, "100103", "", "100102", "part", "二区 merged into 一区", "test"),
    (2010, "100104", "", "100105", "split", "三区 split: 五区 carved out", "test"),
    (2020, "100171", "", "100102", "zone", "zone lies in 一区", "test"),
])


# --------------------------------------------------------------------------- census rows
def test_names_and_stems() -> None:
    assert normalise_name("  九台巿 ") == "九台市"
    assert name_stem("宁河县") == name_stem("宁河区") == "宁河"
    assert name_stem("沙县区") == "沙县" and name_stem("沙县") == "沙县"  # stems keep two characters
    assert name_stem("库车市") == "库车"


def test_classify_2010_every_row_gets_a_kind() -> None:
    rows = _rows(RAW_2010, 2010)
    assert list(rows["kind"]) == ["province", "prefecture", "unit", "unit", "unit", "unit", "blank", "note"]
    assert list(rows["census_id"]) == [f"2010:{i}" for i in range(2, 10)]
    units = rows[rows["kind"].eq("unit")]
    assert units["prefecture_code"].unique().tolist() == ["100100"]
    assert units["province_code"].unique().tolist() == ["100000"]
    assert list(units["pop"]) == [300, 100, 400, 200]


def test_classify_2010_municipal_subtotals_and_district_leaf() -> None:
    raw = _t2010([
        ("北京市", 110000, 30, 30),
        ("市辖区", NAN, 20, 20),
        ("  东城区", 110101, 20, 20),
        ("县", NAN, 10, 10),
        ("  密云县", 110228, 10, 10),
        ("广东省", 440000, 50, 40),
        ("东莞市", 441900, 50, 40),
        ("  市辖区", NAN, 50, 40),  # a whole prefecture-level city without districts
    ])
    rows = _rows(raw, 2010)
    assert list(rows["kind"]) == ["province", "municipal_districts", "unit", "municipal_counties", "unit",
                                  "province", "prefecture", "unit"]
    leaf = rows.iloc[7]
    assert leaf["key"] == "441900" and leaf["code"] is None  # key = the prefecture's code
    assert list(rows["prefecture_code"].iloc[[2, 4]]) == ["110100", "110200"]  # derived subtotal codes
    tot = check_totals(rows)
    assert tot["diff_pop"].tolist() == [0, 0, 0, 0, 0] and tot["diff_hukou"].tolist() == [0, 0, 0, 0, 0]


def test_classify_2020_prefecture_without_units_is_a_unit() -> None:
    raw = _t2020([
        (440000, "广东省", "广东省", "广东省", 60),
        (441800, "广东省", "清远市", "清远市", 10),
        (441802, "广东省", "清远市", "清城区", 10),
        (441900, "广东省", "东莞市", "东莞市", 30),
        (442000, "广东省", "中山市", "中山市", 20),
    ])
    rows = _rows(raw, 2020)
    assert list(rows["kind"]) == ["province", "prefecture", "unit", "unit", "unit"]
    tot = check_totals(rows)
    # 清远's span stops at 东莞 (a unit with another prefecture code)
    assert tot.set_index("code")["units_pop"].to_dict() == {"440000": 60, "441800": 10}


def test_check_totals_reports_a_difference() -> None:
    raw = RAW_2010.copy()
    raw.loc[0, "合计"] = 1005  # province row 5 persons more than its units
    tot = check_totals(_rows(raw, 2010))
    prov = tot[tot["kind"].eq("province")].iloc[0]
    assert prov["units_pop"] == 1000 and prov["diff_pop"] == 5


def test_classify_2020_rows_and_zone_flag() -> None:
    rows = _rows(RAW_2020, 2020)
    assert list(rows["kind"]) == ["nation", "province", "prefecture", "unit", "unit", "unit", "unit", "unit"]
    assert rows.loc[rows["code"].eq("100171"), "zone"].item()
    assert not rows.loc[rows["code"].eq("100181"), "zone"].item()
    assert check_totals(rows)["diff_pop"].tolist() == [0, 0, 0]


def test_classify_empty_gives_empty_same_schema() -> None:
    rows = classify_county_rows(standardise_county_table(RAW_2010.iloc[:0], year=2010), year=2010)
    full = _rows(RAW_2010, 2010)
    assert rows.empty and list(rows.columns) == list(full.columns)


def test_corrections_swap_and_rename() -> None:
    corr = pd.DataFrame(
        [(2010, "100102", "一区", "swap_values", "100103", "test swap"),
         (2010, "100104", "三区", "rename", "叁区", "test rename")],
        columns=["year", "code", "name", "action", "value", "reason"],
    )
    table = standardise_county_table(RAW_2010, year=2010)
    fixed = apply_corrections(table, corr, year=2010)
    by_code = fixed.set_index("code")
    assert by_code.loc["100102", "pop"] == 100 and by_code.loc["100103", "pop"] == 300
    assert by_code.loc["100102", "hukou"] == 100 and by_code.loc["100103", "hukou"] == 200
    assert by_code.loc["100104", "label"] == "  叁区"
    assert table.set_index("code").loc["100102", "pop"] == 300  # input not mutated
    wrong = corr.assign(name=["别的区", "三区"])
    with pytest.raises(InputError, match="expected the row to be named '别的区'"):
        apply_corrections(table, wrong, year=2010)


def test_code_outside_its_province_warns_and_listing_wins() -> None:
    raw = RAW_2020.copy()
    raw.loc[6, "区划代码"] = 170971  # the 2020 table's misprint of 五台山 (140971), here in province 10
    with pytest.warns(DataQualityWarning, match="code 170971 lies outside the province 100000"):
        rows = _rows(raw, 2020)
    row = rows[rows["code"].eq("170971")].iloc[0]
    assert row["prefecture_code"] == "100100" and row["province_code"] == "100000"
    corr = pd.DataFrame([(2020, "170971", "子市经济开发区", "recode", "100171", "misprint")],
                        columns=["year", "code", "name", "action", "value", "reason"])
    fixed = classify_county_rows(apply_corrections(standardise_county_table(raw, year=2020), corr, year=2020),
                                 year=2020)
    assert "100171" in set(fixed["code"]) and fixed["note"].str.contains("code corrected").any()


# --------------------------------------------------------------------------- crosswalk
def _groups(rows: pd.DataFrame, counties: pd.DataFrame, known: pd.DataFrame | None) -> set[frozenset[str]]:
    links = match_census_rows(rows, counties, known_changes=known)
    m = harmonise(rows, counties, links)
    out = set()
    for _, g in m.groupby("component"):
        out.add(frozenset(g["node"]))
    return out


def test_crosswalk_rename_merge_split_exact_groups() -> None:
    rows = pd.concat([_rows(RAW_2010, 2010), _rows(RAW_2020, 2020)], ignore_index=True)
    groups = _groups(rows, _counties(), KNOWN)
    expected = {
        # merge: 一区 + 二区 (2010) -> 一区; the 2020 zone lies in it
        frozenset({"census:2010:4", "census:2010:5", "census:2020:5", "census:2020:8", "polygon:100102"}),
        # split: 三区 (2010) -> 三区 + 五区
        frozenset({"census:2010:6", "census:2020:6", "census:2020:7", "polygon:100104", "polygon:100105"}),
        # rename: 甲乙县 100121 (2010) ~ 甲乙市 100181 by name stem
        frozenset({"census:2010:7", "census:2020:9", "polygon:100181"}),
    }
    assert groups == expected


def test_crosswalk_methods() -> None:
    rows = pd.concat([_rows(RAW_2010, 2010), _rows(RAW_2020, 2020)], ignore_index=True)
    links = match_census_rows(rows, _counties(), known_changes=KNOWN)
    how = {(r.census_id, r.adcode): r.method for r in links.itertuples()}
    assert how[("2010:7", "100181")] == "stem"
    assert how[("2010:5", "100102")] == "table"
    assert how[("2010:6", "100104")] == "code" and how[("2010:6", "100105")] == "table"


def test_crosswalk_without_table_leaves_rows_unlinked() -> None:
    rows = pd.concat([_rows(RAW_2010, 2010), _rows(RAW_2020, 2020)], ignore_index=True)
    links = match_census_rows(rows, _counties(), known_changes=None)
    assert set(rows.loc[rows["kind"].eq("unit"), "census_id"]) - set(links["census_id"]) == {
        "2010:5", "2020:8",  # 二区 (abolished) and the zone: no code, no name match
    }


def test_name_match_skips_polygons_claimed_by_code() -> None:
    # 2010 has two 桥东区: one in 甲市 (abolished later), one in 乙市 (kept, code-matched);
    # the abolished one must not grab 乙市's polygon by name.
    raw = _t2010([
        ("甲省", 100000, 30, 30), ("甲市", 100100, 10, 10), ("  桥东区", 100103, 10, 10),
        ("乙市", 100200, 20, 20), ("  桥东区", 100202, 20, 20),
    ])
    rows = _rows(raw, 2010)
    counties = _counties().iloc[:1].assign(adcode="100202", name="桥东区", prefecture_code="100200")
    links = match_census_rows(rows, counties)
    assert links[["census_id", "adcode", "method"]].values.tolist() == [["2010:6", "100202", "code"]]


def test_unknown_code_in_crosswalk_table() -> None:
    rows = pd.concat([_rows(RAW_2010, 2010), _rows(RAW_2020, 2020)], ignore_index=True)
    bad = _table([
        (2010, "109999", "", "100102", "part", "no such census row", "test"),
        (2020, "100102", "", "999999", "same", "no such polygon", "test"),
    ])
    with pytest.raises(UnknownCodeError) as err:
        check_crosswalk_table(bad, rows, _counties())
    msg = str(err.value)
    assert "census_code 109999 is no unit row of the 2010 table" in msg
    assert "adcode 999999 is not a county polygon" in msg
    with pytest.raises(UnknownCodeError):
        match_census_rows(rows, _counties(), known_changes=bad)


def test_packaged_crosswalk_table_is_documented() -> None:
    table = load_known_changes()
    assert len(table) > 300
    assert table["reason"].str.len().min() > 5 and table["source"].str.len().min() > 3
    assert set(table["relation"]) <= {"same", "part", "split", "transfer", "zone", "no_census"}


# --------------------------------------------------------------------------- build_population (synthetic)
def test_build_population_synthetic_units_and_indicators() -> None:
    res = build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), _counties(), known_changes=KNOWN)
    u = res.units.set_index("unit_id")
    assert list(res.units.columns) == UNIT_COLUMNS
    assert sorted(u.index) == ["100102", "100104", "100181"]
    assert u.loc["100102", "pop_2010"] == 400 and u.loc["100102", "pop_2020"] == 531
    assert u.loc["100104", "n_members"] == 2 and u.loc["100104", "members"] == "100104;100105"
    assert u.loc["100104", "pop_2020"] == 550 and u.loc["100104", "hukou_2010"] == 300
    # 甲乙市: 200 -> 250 (+25 %), compound rate over ten years
    assert u.loc["100181", "change"] == 50
    assert u.loc["100181", "change_pct"] == pytest.approx(25.0)
    assert u.loc["100181", "annual_rate"] == pytest.approx(100 * (math.pow(1.25, 0.1) - 1))
    # 三区+五区: hukou 300, resident 400 -> net inflow
    assert u.loc["100104", "net_outflow_ratio"] == pytest.approx((300 - 400) / 300)
    assert not u.loc["100104", "net_outflow"] and not u.loc["100104", "shrinking"]
    assert res.units.geometry.geom_type.eq("MultiPolygon").all()
    assert u.loc["100104", "geometry"].area == pytest.approx(2.0)
    # totals
    tot = res.totals.set_index(["year", "level"])
    assert tot.loc[(2010, "province"), "difference"] == 0 and tot.loc[(2020, "nation"), "difference"] == 0
    # every census row and polygon is in the report
    rep = res.match_report
    assert (rep["item"] == "census_2010").sum() == len(RAW_2010)
    assert (rep["item"] == "census_2020").sum() == len(RAW_2020)
    assert (rep["item"] == "polygon").sum() == 4
    assert rep.loc[rep["census_id"].eq("2010:9"), "status"].item() == "note"


def test_build_population_unmatched_rows_are_an_error_by_default() -> None:
    with pytest.raises(UnknownCodeError, match="2 census unit row") as info:
        build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), _counties(), known_changes=None)
    msg = str(info.value)
    assert "2010 Excel row 5 code 100103 二区 (population 100)" in msg
    assert "2020 Excel row 8 code 100171 子市经济开发区 (population 111)" in msg
    assert 'unknown_codes = "warn"' in msg


def test_build_population_warns_about_unmatched_rows() -> None:
    with pytest.warns(DataQualityWarning) as record:
        res = build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), _counties(), known_changes=None,
                               unknown_codes="warn")
    messages = " ".join(str(w.message) for w in record)
    assert "2 census unit row(s) match no polygon" in messages
    assert "census rows of one year only (no figure, NA, for the other year): 100105" in messages
    # 五区 has no 2010 row: no 2010 figure, no change (never -100 %), not shrinking
    u = res.units.set_index("unit_id")
    assert u.loc["100105", "pop_2010"] is pd.NA and u.loc["100105", "pop_2020"] == 300
    assert u.loc["100105", "change"] is pd.NA and np.isnan(u.loc["100105", "change_pct"])
    assert not u.loc["100105", "shrinking"]
    rep = res.match_report
    assert set(rep.loc[rep["status"].eq("unmatched"), "census_id"]) == {"2010:5", "2020:8"}
    # the unmatched rows are not counted: the province totals differ by exactly their population
    tot = res.totals.set_index(["year", "level"])
    assert tot.loc[(2010, "province"), "difference"] == -100
    assert tot.loc[(2020, "nation"), "difference"] == -111


def test_build_population_rejects_wrong_crs_and_missing_column() -> None:
    with pytest.raises(InputError, match="expected CRS EPSG:4326"):
        build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), _counties("EPSG:3857"))
    with pytest.raises(InputError, match=r"missing column\(s\) \['prefecture_code'\]"):
        build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020),
                         _counties().drop(columns="prefecture_code"))


def test_build_population_empty_counties_gives_empty_units() -> None:
    with pytest.warns(DataQualityWarning, match="match no polygon"):
        res = build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), _counties().iloc[:0],
                               unknown_codes="warn")
    assert res.units.empty and list(res.units.columns) == UNIT_COLUMNS


def test_add_indicators_threshold_and_missing_hukou() -> None:
    frame = pd.DataFrame({"pop_2010": [100, 100, 0], "pop_2020": [99, 101, 5],
                          "hukou_2010": pd.array([120, pd.NA, 10], dtype="Int64")})
    out = add_indicators(frame, shrink_threshold_pct=-0.5)
    assert out["shrinking"].tolist() == [True, False, False]  # -1 % < -0.5 %; NaN is not shrinking
    assert np.isnan(out.loc[2, "change_pct"]) and np.isnan(out.loc[1, "net_outflow_ratio"])
    assert out.loc[0, "net_outflow_ratio"] == pytest.approx(20 / 120) and out.loc[0, "net_outflow"]
    assert "change" not in frame.columns  # input not mutated


# --------------------------------------------------------------------------- readers and bad files
def test_read_county_table_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "census_county_2010_v1.xlsx"
    RAW_2010.drop(columns="户籍人口").to_excel(path, index=False)
    with pytest.raises(InputError, match=r"missing column\(s\) \['户籍人口'\]"):
        read_county_table(path, year=2010)


def test_read_county_table_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "census_county_2020_v1.xlsx"
    path.write_bytes(b"PK\x03\x04 this is not a workbook" * 10)
    with pytest.raises(InputError, match="cannot read as an Excel workbook"):
        read_county_table(path, year=2020)


def test_read_county_table_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.xlsx"
    RAW_2020.to_excel(path, index=False, sheet_name="七普（年鉴）")
    table = read_county_table(path, year=2020)
    assert table["code"].tolist()[:2] == [None, "100000"]  # "NA" is a missing code
    assert table["pop"].tolist() == RAW_2020["人口数_合计"].tolist()


# --------------------------------------------------------------------------- CLI on synthetic files
def _write_inputs(folder: Path) -> Path:
    raw = folder / "data_raw" / "census"
    raw.mkdir(parents=True)
    RAW_2010.to_excel(raw / "census_county_2010_v1.xlsx", index=False)
    RAW_2020.to_excel(raw / "census_county_2020_v1.xlsx", index=False, sheet_name="七普（年鉴）")
    pd.DataFrame({
        "city": ["子市"], "city_code": [100100], "province": ["甲省"], "province_code": [100000],
        "popu_2010": [1000], "popu_2020": [1331], "coord": ["POLYGON((0 0,4 0,4 1,0 1,0 0))"],
    }).to_csv(raw / "census_city_2010-2020_v1.csv", index=False)
    processed = folder / "data_processed"
    processed.mkdir()
    pref = gpd.GeoDataFrame(
        {"adcode": ["100100"], "name": ["子市"], "province": ["甲省"], "province_code": ["100000"],
         "prefecture": ["子市"], "prefecture_code": ["100100"], "level": ["prefecture"], "in_census": [True]},
        geometry=[box(0, 0, 4, 1)], crs="EPSG:4326",
    )
    pyogrio.write_dataframe(_counties(), processed / "boundaries.gpkg", layer="counties",
                            promote_to_multi=True)
    pyogrio.write_dataframe(pref, processed / "boundaries.gpkg", layer="prefectures", append=True,
                            promote_to_multi=True)
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(folder / "data_raw").as_posix()}"\n'
        f'data_processed = "{processed.as_posix()}"\n'
        "[population]\npackaged_tables = false\n",
        encoding="utf-8",
    )
    return cfg


def test_cli_population_synthetic(tmp_path: Path) -> None:
    cfg = _write_inputs(tmp_path)
    xw = tmp_path / "extra.csv"
    KNOWN.to_csv(xw, index=False)
    runner = CliRunner()
    res = runner.invoke(main, ["-c", str(cfg), "-q", "population", "--crosswalk-file", str(xw)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "data_processed"
    assert set(list_layers(out / "population.gpkg")) == {
        "units", "prefectures", "match_report", "crosswalk", "province_totals", "province_ageing",
        "prefecture_totals", "shrinking_reference"}
    units = read_layer(out / "population.gpkg", "units")
    assert sorted(units["unit_id"]) == ["100102", "100104", "100181"]
    assert units.crs.to_epsg() == 4326
    report = pd.read_csv(out / "match_report.csv", encoding="utf-8-sig")
    assert len(report) == len(RAW_2010) + len(RAW_2020) + 4 + 1 + 1  # + prefecture CSV row and polygon
    pref = read_layer(out / "population.gpkg", "prefectures")
    assert pref["pop_2020"].tolist() == [1331] and pref["hukou_2010"].tolist() == [800]
    assert pref["n_members"].tolist() == [4] and pref["pop_2010_units"].tolist() == [1000]
    # no overwrite without --overwrite
    again = runner.invoke(main, ["-c", str(cfg), "-q", "population", "--crosswalk-file", str(xw)])
    assert again.exit_code == 4 and "--overwrite" in again.output


def test_cli_population_unknown_code_in_user_crosswalk(tmp_path: Path) -> None:
    cfg = _write_inputs(tmp_path)
    xw = tmp_path / "bad.csv"
    _table([(2010, "100199", "", "100102", "part", "typo", "user")]).to_csv(xw, index=False)
    res = CliRunner().invoke(main, ["-c", str(cfg), "population", "--crosswalk-file", str(xw)])
    assert res.exit_code == 2
    assert "census_code 100199 is no unit row of the 2010 table" in res.output
    assert not (tmp_path / "data_processed" / "population.gpkg").exists()


def test_cli_population_corrupt_and_missing_inputs(tmp_path: Path) -> None:
    cfg = _write_inputs(tmp_path)
    raw = tmp_path / "data_raw" / "census"
    (raw / "census_county_2010_v1.xlsx").write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["-c", str(cfg), "population"])
    assert res.exit_code == 2 and "cannot read as an Excel workbook" in res.output
    (raw / "census_county_2010_v1.xlsx").unlink()
    res = CliRunner().invoke(main, ["-c", str(cfg), "population"])
    assert res.exit_code == 3 and "run `geo-pipeline fetch` first" in res.output
    (tmp_path / "data_processed" / "boundaries.gpkg").unlink()
    RAW_2010.to_excel(raw / "census_county_2010_v1.xlsx", index=False)
    res = CliRunner().invoke(main, ["-c", str(cfg), "population"])
    assert res.exit_code == 3 and "run `geo-pipeline boundaries` first" in res.output


# --------------------------------------------------------------------------- real data
CENSUS = "census"
PUBLISHED = {  # 6th and 7th census communiqués, resident population by province
    "230000": (38313991, 31850088),  # Heilongjiang
    "220000": (27452815, 24073453),  # Jilin
    "210000": (43746323, 42591407),  # Liaoning
}


@pytest.fixture(scope="module")
def real_rows(mirror: Path) -> dict[int, pd.DataFrame]:
    corrections = load_corrections()
    out = {}
    for year in (2010, 2020):
        table = read_county_table(mirror / CENSUS / f"census_county_{year}_v1.xlsx", year=year)
        out[year] = classify_county_rows(apply_corrections(table, corrections, year=year), year=year)
    return out


@pytest.fixture(scope="module")
def real_result(real_rows: dict[int, pd.DataFrame]) -> object:
    from geo_pipeline.boundaries import build_boundaries, read_cnmaps

    layers = build_boundaries(read_cnmaps(), exclude_no_census=True)
    res = build_population(real_rows[2010], real_rows[2020], layers["counties"],
                           known_changes=load_known_changes())
    return res, layers


def test_real_every_row_classified_and_totals_add_up(real_rows: dict[int, pd.DataFrame]) -> None:
    r10, r20 = real_rows[2010], real_rows[2020]
    assert len(r10) == 3279 and len(r20) == 3358  # every sheet row is kept and classified
    k10, k20 = r10["kind"].value_counts(), r20["kind"].value_counts()
    assert k10["province"] == 31 and k20["province"] == 31 and k20["nation"] == 1 and "nation" not in k10
    # 2010: the four municipalities each have a 市辖区 and a 县 subtotal; 2020: only 重庆 keeps counties
    assert k10["municipal_districts"] == 4 and k10["municipal_counties"] == 4
    assert k20["municipal_districts"] == 4 and k20["municipal_counties"] == 1
    for rows in (r10, r20):
        tot = check_totals(rows)
        assert (tot["diff_pop"].fillna(0) == 0).all()  # every aggregate = its units, to the person
    assert int(r20.loc[r20["kind"].eq("nation"), "pop"].item()) == 1409778724
    for code, (p10, p20) in PUBLISHED.items():
        assert r10.loc[r10["code"].eq(code), "pop"].item() == p10
        assert r20.loc[r20["code"].eq(code), "pop"].item() == p20


def test_real_units_sum_to_census_totals(real_result: object) -> None:
    res, _ = real_result
    tot = res.totals
    assert (tot["difference"] == 0).all(), tot[tot["difference"] != 0]
    by_prov = res.units.groupby("province_code")[["pop_2010", "pop_2020"]].sum()
    for code, (p10, p20) in PUBLISHED.items():
        assert by_prov.loc[code, "pop_2010"] == p10 and by_prov.loc[code, "pop_2020"] == p20
    assert res.units["pop_2010"].sum() == 1332810869  # 31 provinces, no national row in 2010
    assert res.units["pop_2020"].sum() == 1409778724  # 全国 row of 2020


def test_real_match_report_accounts_for_every_row(real_result: object) -> None:
    res, layers = real_result
    rep = res.match_report
    assert (rep["item"] == "census_2010").sum() == 3279
    assert (rep["item"] == "census_2020").sum() == 3358
    assert (rep["item"] == "polygon").sum() == len(layers["counties"]) == 2848
    assert not rep["status"].isna().any() and "unmatched" not in set(rep["status"])
    census = rep[rep["item"] != "polygon"]
    assert census.groupby("status").size().sum() == 3279 + 3358
    matched = census[census["status"] == "matched"]
    assert matched["unit_id"].notna().all()
    assert (census["status"] == "matched").eq(census["kind"] == "unit").all()
    no_census = rep[rep["status"] == "no_census"]
    assert no_census["code"].tolist() == ["350527"]  # 金门县, administered from Taiwan


def _union_find_units(crosswalk: pd.DataFrame, adcodes: list[str]) -> dict[str, str]:
    parent = {a: a for a in adcodes}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    first: dict[str, str] = {}
    for cid, a in zip(crosswalk["census_id"], crosswalk["adcode"], strict=True):
        if cid in first:
            ra, rb = find(first[cid]), find(a)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        else:
            first[cid] = a
    return {a: find(a) for a in adcodes}


def test_real_unit_counts(real_result: object) -> None:
    res, layers = real_result
    units = res.units
    # 2848 polygons - 金门 (no census row) = 2847 polygons in units; 80 merged units hold 193 of
    # them, so 2847 - 193 + 80 = 2734 units. The merges come from the crosswalk table (abolished
    # districts, splits, development zones spanning districts, reorganised 伊春, 大兴安岭, ...).
    assert len(units) == 2734 and units["unit_id"].is_unique
    merged = units[units["n_members"] > 1]
    assert len(merged) == 80 and merged["n_members"].sum() == 193
    # independent union-find over the crosswalk links gives the same partition
    roots = _union_find_units(res.crosswalk, list(layers["counties"]["adcode"]))
    linked = set(res.crosswalk["adcode"])
    comps = {r for a, r in roots.items() if a in linked}
    assert len(comps) == 2734
    assert (units["rows_2010"] > 0).all() and (units["rows_2020"] > 0).all()
    assert units["hukou_2010"].notna().all()


def test_real_known_cases(real_result: object, real_rows: dict[int, pd.DataFrame]) -> None:
    res, _ = real_result
    u = res.units.set_index("unit_id")
    r10 = real_rows[2010].set_index("code")
    # 崇文区 merged into 东城区 in 2010: 东城 2010 = 东城 + 崇文 rows
    assert u.loc["110101", "pop_2010"] == r10.loc["110101", "pop"] + r10.loc["110103", "pop"] == 919253
    assert u.loc["110101", "n_members"] == 1
    # 三亚: one 2010 row (市辖区) for the four districts created in 2014
    sanya = u[u["members"].str.contains("460202")]
    assert sanya["members"].item() == "460202;460203;460204;460205"
    assert sanya["pop_2010"].item() == 685408
    # Hangzhou 2021: 江干 split between 上城 and the new 钱塘, which also took 萧山 towns -> one unit;
    # 下城 merged into 拱墅 (one polygon, two rows a year); 临平 carved out of 余杭 -> one unit
    assert u.loc["330102", "members"] == "330102;330109;330114"
    assert u.loc["330105", "n_members"] == 1 and u.loc["330105", "rows_2010"] == 2
    assert u.loc["330105", "rows_2020"] == 2
    assert u.loc["330110", "members"] == "330110;330113"
    # corrected 2010 figures: 香坊区 is the large Harbin district
    assert u.loc["230110", "pop_2010"] == 916408 and u.loc["230108", "pop_2010"] == 236848
    # Sansha: 444 people on 西沙 in 2010, 2333 on the islands in 2020
    assert u.loc["460301", "pop_2010"] == 444 and u.loc["460301", "pop_2020"] == 2333
    # all units lie in one province
    assert not u["province"].str.contains("+", regex=False).any()


def test_real_regions_kinds_and_comparable(real_result: object) -> None:
    res, layers = real_result
    u = res.units
    # the four NBS regions cover every unit
    assert u["region"].notna().all()
    assert u["region"].value_counts().to_dict() == {
        "West": 1069, "East": 727, "Central": 673, "Northeast": 265}
    assert u.groupby("region")["province_code"].nunique().to_dict() == {
        "East": 10, "Central": 6, "West": 12, "Northeast": 3}
    assert (u["region_zh"].map({"东部": "East", "中部": "Central", "西部": "West", "东北": "Northeast"})
            == u["region"]).all()
    assert u["unit_kind"].value_counts().to_dict() == {
        "county": 1388, "district": 887, "city": 382, "other": 54, "mixed": 23}
    by_id = u.set_index("unit_id")
    assert by_id.loc["130702", "unit_kind"] == "district"  # 桥东区+宣化区
    assert by_id.loc["130306", "unit_kind"] == "mixed"  # 抚宁区+昌黎县
    assert by_id.loc["441900", "unit_kind"] == "city"  # 东莞: a prefecture-level city without districts
    assert by_id.loc["429021", "unit_kind"] == "other"  # 神农架林区
    # single-polygon units: the kind follows the polygon's name suffix
    single = u[u["n_members"] == 1]
    assert (single.loc[single["name"].str.endswith("县"), "unit_kind"] == "county").all()
    assert (single.loc[single["name"].str.endswith("旗"), "unit_kind"] == "other").all()
    # Sansha is the only unit whose population is not comparable (2010 南沙/中沙 rows are empty)
    assert u.loc[~u["comparable"], "unit_id"].tolist() == ["460301"]
    # every 2010 correction is in the match report's method column
    rep = res.match_report
    corrected = rep[rep["method"].fillna("").str.contains("corrected:")].set_index("census_id")
    assert sorted(corrected["name"]) == sorted(["平房区", "香坊区", "伊宁市", "奎屯市", "丰南区", "丰润区",
                                               "五台山风景名胜区", "建昌县", "石鼓区"])
    assert set(corrected.loc[corrected["name"].isin(["平房区", "香坊区"]), "method"]) == {
        "code+corrected:swap_values"}


def _raw_band_sum(path: Path, label: str, lows: range, *, year: int) -> int:
    """Independent reference: sum the raw xlsx cells of the ages in ``lows`` on the row ``label``."""
    import re

    raw = pd.read_excel(path, engine="calamine")
    if year == 2010:
        pat = re.compile(r"^(\d+)(?:-\d+)?岁(?:及以上)?[（(][男女]")
        row = raw[raw["地区"].astype(str).str.strip() == label]
    else:
        pat = re.compile(r"^[男女]_(\d+)(?:到\d+)?岁")
        row = raw[raw["区县"].astype(str).str.strip().eq(label) | raw["省"].astype(str).str.strip().eq(label)
                  & raw["区划代码"].astype(str).str.endswith("0000")]
    cols = [c for c in raw.columns if (m := pat.match(str(c))) and int(m.group(1)) in lows]
    assert len(row) == 1 and len(cols) == 2 * len(range(lows.start, 86, 5)), (label, len(row), cols)
    return int(pd.to_numeric(row[cols].iloc[0]).fillna(0).sum())


def test_real_ageing_units_reproduce_the_census_provinces(
    real_result: object, real_rows: dict[int, pd.DataFrame], mirror: Path
) -> None:
    from geo_pipeline.ageing import AGEING_COLUMNS, check_age_bands, province_ageing

    res, _ = real_result
    u = res.units
    assert u[AGEING_COLUMNS].notna().all().all()  # every unit, both years
    for year in (2010, 2020):
        check_age_bands(real_rows[year], year=year)  # bands of every populated row = its total
    prov = province_ageing(real_rows[2010], real_rows[2020], u).set_index("code")
    assert len(prov) == 32 and (prov["difference_persons"] == 0).all()
    by_prov = u.groupby("province_code")[["pop_60plus_2020", "pop_2020"]].sum()
    path = mirror / CENSUS / "census_county_2020_v1.xlsx"
    for code, label, share in (("210000", "辽宁省", 25.72), ("220000", "吉林省", 23.06),
                               ("230000", "黑龙江省", 23.22)):
        # the census provincial figure: the province row's own bands in the raw sheet, to the person
        census_60 = _raw_band_sum(path, label, range(60, 86), year=2020)
        assert by_prov.loc[code, "pop_60plus_2020"] == census_60 == prov.loc[code, "census_pop_60plus_2020"]
        got = 100 * by_prov.loc[code, "pop_60plus_2020"] / by_prov.loc[code, "pop_2020"]
        assert prov.loc[code, "share_60plus_2020"] == pytest.approx(got)
        assert round(got, 2) == share  # the 7th census communiqué's provincial shares
    # the seed's claim, as numbers: Liaoning 25.72 %, Jilin 23.06 % aged 60+ in 2020
    assert prov.loc["210000", "share_60plus_2020"] > 23 and prov.loc["220000", "share_60plus_2020"] > 23
    assert prov.loc["000000", "share_60plus_2020"] == pytest.approx(18.727635, abs=1e-6)
    # 2010 Liaoning needs the 建昌县 correction (35-39岁 female misprinted +30,000)
    liaoning_2010 = _raw_band_sum(mirror / CENSUS / "census_county_2010_v1.xlsx", "辽宁省", range(60, 86),
                                  year=2010)
    assert prov.loc["210000", "pop_60plus_2010"] == liaoning_2010
    # a merged unit sums its members' bands before dividing: 三亚's four districts in 2020
    r20 = real_rows[2020]
    sanya = u[u["members"].str.contains("460202")].iloc[0]
    rows = r20[r20["kind"].eq("unit") & r20["code"].isin(["460202", "460203", "460204", "460205"])]
    old = rows[["age_65_69", "age_70_74", "age_75_79", "age_80_84", "age_85plus"]].astype("int64").sum().sum()
    work = rows[[f"age_{lo}_{lo + 4}" for lo in range(15, 65, 5)]].astype("int64").sum().sum()
    assert sanya["pop_65plus_2020"] == old and sanya["pop_2020"] == int(rows["pop"].sum())
    assert sanya["old_age_dependency_2020"] == pytest.approx(100 * old / work)
    assert sanya["share_65plus_change_pts"] == pytest.approx(
        sanya["share_65plus_2020"] - sanya["share_65plus_2010"])


def test_real_age_band_corrections_are_needed(mirror: Path) -> None:
    from geo_pipeline.ageing import check_age_bands

    corrections = load_corrections()
    plain = corrections[corrections["action"] != "set_age"]
    table = read_county_table(mirror / CENSUS / "census_county_2010_v1.xlsx", year=2010)
    rows = classify_county_rows(apply_corrections(table, plain, year=2010), year=2010)
    with pytest.raises(InputError) as err:
        check_age_bands(rows, year=2010)
    msg = str(err.value)
    assert "2 problems" in msg and "建昌县" in msg and "(difference +30000)" in msg
    assert "石鼓区" in msg and "(difference -6)" in msg


def test_real_prefecture_ageing_and_regions(
    real_result: object, real_rows: dict[int, pd.DataFrame], mirror: Path
) -> None:
    from geo_pipeline.ageing import AGEING_COLUMNS

    res, layers = real_result
    city = read_city_table(mirror / CENSUS / "census_city_2010-2020_v1.csv")
    pref, _ = prefecture_indicators(city, layers["prefectures"], res.units,
                                    county_rows=(real_rows[2010], real_rows[2020]))
    p = pref.set_index("unit_id")
    c = city.set_index("city_code")
    assert p["region"].notna().all() and p["comparable"].all()
    assert p["region"].value_counts().to_dict() == {"West": 131, "East": 102, "Central": 87, "Northeast": 36}
    # the CSV's percentages are the shares; dependency = 65+ / (100 - 0-14 - 65+)
    assert p.loc["210100", "share_60plus_2020"] == c.loc["210100", "age_60_2020"]
    a0, a65 = c.loc["210100", "age_0_14_2010"], c.loc["210100", "age_65_2010"]
    assert p.loc["210100", "old_age_dependency_2010"] == pytest.approx(100 * a65 / (100 - a0 - a65))
    # 通化市 has no 2020 ages in the CSV: its 2020 county-table prefecture row fills them
    assert np.isnan(c.loc["220500", "age_60_2020"])
    r20 = real_rows[2020]
    row = r20[r20["code"].eq("220500")].iloc[0]
    old = sum(int(row[f"age_{lo}_{lo + 4}"]) for lo in range(60, 85, 5)) + int(row["age_85plus"])
    assert p.loc["220500", "share_60plus_2020"] == pytest.approx(100 * old / int(row["pop"]))
    assert p[AGEING_COLUMNS].notna().all().all()


def test_real_prefectures(real_result: object, mirror: Path) -> None:
    res, layers = real_result
    city = read_city_table(mirror / CENSUS / "census_city_2010-2020_v1.csv")
    pref, report = prefecture_indicators(city, layers["prefectures"], res.units,
                                         counties=layers["counties"][["adcode", "prefecture_code"]])
    # 369 CSV rows: 三沙 and the ten XPCC cities have no figures, HK/Macau no boundary polygon here;
    # 367 polygons: six XPCC cities merged into their host prefectures, four and 三沙 without figures
    rows = report[report["item"] == "census_city"]
    polys = report[report["item"] == "prefecture_polygon"]
    assert len(rows) == 369 and (rows["status"] == "unmatched").sum() == 13 and len(pref) == 356
    assert len(polys) == 367 and (polys["status"] == "unmatched").sum() == 5
    assert (polys["method"] == "merged").sum() == 6
    assert set(rows.loc[rows["status"] == "matched", "unit_id"]) == set(pref["unit_id"])
    p = pref.set_index("unit_id")
    assert p.loc["500000", "pop_2020"] == 32054159 and p.loc["500000", "join"].startswith("municipality")
    assert p.loc["230100", "pop_2010"] == city.set_index("city_code").loc["230100", "popu_2010"]
    # hukou from the counties: Beijing's 2010 hukou row
    assert p.loc["110100", "hukou_2010"] == 12554049
    assert wkt_offset_km(city, layers["prefectures"]) < 0.3  # the CSV's WKT is WGS84, not GCJ-02


@pytest.mark.slow
def test_real_stage_via_cli(run_stage: Callable[[str], Path]) -> None:
    out = run_stage("population")
    gpkg = out / "population.gpkg"
    units = read_layer(gpkg, "units")
    assert len(units) == 2734 and units["unit_id"].is_unique and units.crs.to_epsg() == 4326
    totals = read_table(gpkg, "province_totals")
    assert (totals["difference"] == 0).all() and len(totals) == 64
    report = pd.read_csv(out / "match_report.csv", encoding="utf-8-sig", dtype={"code": str})
    # + Taiwan, Hong Kong and Macau: provinces without census, counties dropped by the boundaries stage
    assert len(report) == 3279 + 3358 + 2848 + 3 + 369 + 367
    assert report.groupby("item").size().to_dict() == {
        "census_2010": 3279, "census_2020": 3358, "polygon": 2848 + 3, "census_city": 369,
        "prefecture_polygon": 367}
    provs = report[(report["item"] == "polygon") & (report["kind"] == "province")]
    assert set(provs["code"]) == {"710000", "810000", "820000"}
    assert set(read_layer(gpkg, "prefectures")["level"]) == {"prefecture"}


def _same_items(got: list[object], want: list[object]) -> bool:
    """Element by element: the same type and value (NaN and NA where iteration gives them)."""
    return len(got) == len(want) and all(
        type(g) is type(w) and (g is w or g == w) for g, w in zip(got, want, strict=True))


@pytest.mark.parametrize("dtype", [
    pd.StringDtype("pyarrow", na_value=np.nan), pd.StringDtype("pyarrow"), pd.StringDtype("python"), object,
])
def test_iter_values_give_what_iteration_gives(dtype: object) -> None:
    from geo_pipeline.population import _collect, _iter_values

    s = pd.Series(["b", None, "a", "", "b", "城区", None], dtype=dtype)
    assert _same_items(list(_iter_values(s)), list(s))
    assert len(list(_iter_values(s.iloc[:0]))) == 0
    values = s.dropna()  # (``in`` on pd.NA raises, with the old loop too)
    keys = pd.Series(["u2", "u1", "u2", "u1", "u3"], dtype=dtype)
    got = _collect(keys, values)
    want: dict[object, list[object]] = {}
    for k, v in zip(keys, values, strict=True):  # the loop _collect replaced (iteration of the Series)
        if v not in want.setdefault(k, []):
            want[k].append(v)
    assert list(got) == list(want) and all(_same_items(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_real_iter_values_give_what_iteration_gives(run_stage: Callable[[str], Path]) -> None:
    from geo_pipeline.population import _iter_values

    out = run_stage("population")
    for path, layer in ((out / "boundaries.gpkg", "counties"), (out / "population.gpkg", "crosswalk"),
                        (out / "population.gpkg", "units")):
        frame = read_table(path, layer)
        strings = [c for c in frame.columns if isinstance(frame[c].dtype, pd.StringDtype)]
        assert strings, layer
        for c in strings:
            assert _same_items(list(_iter_values(frame[c])), list(frame[c])), (layer, c)


@pytest.mark.parametrize("dtype", [
    pd.StringDtype("pyarrow", na_value=np.nan), pd.StringDtype("pyarrow"), pd.StringDtype("python"), object,
])
def test_joined_per_unit_equals_the_groupby(dtype: object) -> None:
    from geo_pipeline.population import _join_unique, _joined_per_unit

    keys = pd.Series(["u2", "u1", "u2", "u2", "u1", "u3", "u4"], name="unit_id")
    values = pd.Series(["乙", "甲", None, "丙", "甲", None, "丁"], dtype=dtype, name="province")
    want = values.groupby(keys).agg(_join_unique)  # what _units did (sorted units)
    got = _joined_per_unit(keys, values, want.index)
    pd.testing.assert_series_equal(got, want, check_index_type=True)
    assert got.tolist() == ["甲", "乙+丙", "", "丁"] and got.dtype == want.dtype


def _counties_with_unit(counties: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """The counties in a unit, with its ``unit_id`` (from the units' ``members``), by adcode."""
    of = {a: u for u, m in zip(units["unit_id"], units["members"], strict=True) for a in m.split(";")}
    inside = counties.assign(unit_id=counties["adcode"].map(of)).dropna(subset=["unit_id"])
    return inside.sort_values("adcode")


@pytest.mark.slow
def test_real_joined_per_unit_equals_the_groupby(run_stage: Callable[[str], Path]) -> None:
    from geo_pipeline.population import _join_unique, _joined_per_unit

    out = run_stage("population")
    counties = read_table(out / "boundaries.gpkg", "counties")
    attrs = _counties_with_unit(counties, read_table(out / "population.gpkg", "units"))
    for c in ("province", "prefecture"):
        want = attrs.groupby("unit_id", sort=True)[c].agg(_join_unique)
        pd.testing.assert_series_equal(_joined_per_unit(attrs["unit_id"], attrs[c], want.index), want)
    assert (want.str.contains("+", regex=False)).sum() > 0  # units spanning prefectures are joined


def test_polygons_without_census_rows_are_named() -> None:
    extra = gpd.GeoDataFrame(
        {"adcode": ["100199", "100198"], "name": ["无人区", "外区"], "province": "甲省",
         "province_code": "100000", "prefecture": "子市", "prefecture_code": "100100", "level": "county",
         "in_census": [True, False]},
        geometry=[box(8, 0, 9, 1), box(9, 0, 10, 1)], crs="EPSG:4326")
    counties = pd.concat([_counties(), extra], ignore_index=True)
    assert isinstance(counties["adcode"].dtype, pd.StringDtype)  # the layer's dtype (Arrow strings)
    with pytest.warns(DataQualityWarning) as record:
        res = build_population(_rows(RAW_2010, 2010), _rows(RAW_2020, 2020), counties, unknown_codes="warn")
    lonely = [str(w.message) for w in record if "polygon(s) have no census row" in str(w.message)]
    # 外区 is outside the census (in_census False): not warned about
    assert lonely == ["1 polygon(s) have no census row and are not units: 100199 无人区"]
    assert "100199" not in set(res.units["unit_id"])


def _full_mask_hits(free: np.ndarray, c_name: np.ndarray, c_stem: np.ndarray, name: str,
                    stem: str) -> tuple[np.ndarray, np.ndarray]:
    """The masks over every polygon that match_census_rows computed before _name_hits."""
    return (np.flatnonzero(free & (c_name == name)),
            np.flatnonzero(free & ((c_stem == stem) | (c_name == stem) | (c_stem == name))))


def _check_name_hits(names: list[str], prefectures: list[str], queries: list[str], seed: int) -> int:
    from geo_pipeline.census import name_stem, normalise_name
    from geo_pipeline.crosswalk import _name_hits

    c_name = np.array([normalise_name(v) for v in names], dtype=object)
    c_stem = np.array([name_stem(v) for v in c_name], dtype=object)
    c_pref = np.array(prefectures, dtype=object)
    rng = np.random.default_rng(seed)
    found = 0
    for q, pref in zip(queries, rng.choice(c_pref, size=len(queries)), strict=True):
        for scope in (c_pref == pref, np.ones(len(c_name), dtype=bool)):
            free = scope & (rng.random(len(c_name)) < 0.9)
            got = _name_hits(np.flatnonzero(free), c_name, c_stem, q, name_stem(q))
            want = _full_mask_hits(free, c_name, c_stem, q, name_stem(q))
            assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want, strict=True)), q
            found += sum(len(w) for w in want)
    return found


def test_name_hits_equal_the_full_masks() -> None:
    # 新城区市 (stem 新城区) is found for 新城区 (stem 新城) only by its stem equal to the name
    names = ["库车县", "库车市", "沙县区", "沙县", "城区", "城区", "东区", "甲乙市", "乙", "新城区市"]
    prefs = ["1", "1", "2", "2", "1", "2", "3", "3", "3", "3"]
    assert _check_name_hits(names, prefs, [*names, "库车", "西区", "新城区", ""], seed=1) > 0
    from geo_pipeline.crosswalk import _name_hits

    arr = np.array(names, dtype=object)
    empty = _name_hits(np.array([], dtype=np.intp), arr, arr, "城区", "城")
    assert [len(h) for h in empty] == [0, 0]


@pytest.mark.slow
def test_real_name_hits_equal_the_full_masks(run_stage: Callable[[str], Path]) -> None:
    out = run_stage("population")
    counties = read_table(out / "boundaries.gpkg", "counties")
    report = read_table(out / "population.gpkg", "match_report")
    queries = report.loc[report["item"].str.startswith("census") & report["kind"].eq("unit"), "name"]
    queries = [str(q) for q in queries.dropna().unique()[::7]]  # every 7th census name (both years)
    assert len(queries) > 400
    hits = _check_name_hits(counties["name"].tolist(), counties["prefecture_code"].tolist(), queries, seed=2)
    assert hits > 400


def _unit_geometries_by_groupby(
    counties: gpd.GeoDataFrame, assign: pd.DataFrame, order: pd.Series
) -> list[bytes]:
    """WKB of the unit geometries as _unit_geometries made them with a groupby (before 0.03 s were saved)."""
    import shapely

    from geo_pipeline.population import _as_multipolygon

    geom_by_code = dict(zip(counties["adcode"], counties.geometry.values, strict=True))
    members = assign.groupby("unit_id")["adcode"].agg(list)
    out = []
    for uid in order:
        codes = members[uid]
        g = geom_by_code[codes[0]] if len(codes) == 1 else shapely.union_all([geom_by_code[c] for c in codes])
        out.append(shapely.to_wkb(_as_multipolygon(g)))
    return out


def test_unit_geometries_equal_the_groupby_version() -> None:
    import shapely

    from geo_pipeline.population import _unit_geometries

    boxes = [box(0, 0, 1, 1), box(1, 0, 2, 1), box(0.5, 0.5, 3, 3), box(5, 5, 6, 6)]
    counties = gpd.GeoDataFrame({"adcode": ["3", "1", "2", "4"]}, geometry=boxes, crs="EPSG:4326")
    # a unit of three overlapping polygons, listed in another order than the layer, and a single one
    assign = pd.DataFrame({"adcode": ["2", "3", "1", "4"], "unit_id": ["u1", "u1", "u1", "u2"]})
    order = pd.Series(["u2", "u1"])
    got = _unit_geometries(counties, assign, order)
    assert [shapely.to_wkb(g) for g in got] == _unit_geometries_by_groupby(counties, assign, order)
    assert [g.geom_type for g in got] == ["MultiPolygon", "MultiPolygon"]


@pytest.mark.slow
def test_real_unit_geometries_equal_the_groupby_version(run_stage: Callable[[str], Path]) -> None:
    import shapely

    from geo_pipeline.population import _unit_geometries

    out = run_stage("population")
    counties = read_layer(out / "boundaries.gpkg", "counties")
    units = read_table(out / "population.gpkg", "units")
    assign = _counties_with_unit(counties, units)[["adcode", "unit_id"]]
    got = [shapely.to_wkb(g) for g in _unit_geometries(counties, assign, units["unit_id"])]
    assert got == _unit_geometries_by_groupby(counties, assign, units["unit_id"])
    assert (units["n_members"] > 1).sum() == 80


def _numeric_both_paths(series: pd.Series) -> tuple[object, object]:
    """_numeric of a numeric column (fast path) and of the same cells as objects (general path)."""
    from geo_pipeline.census import _numeric

    out = []
    for s in (series, series.astype(object)):
        try:
            out.append(_numeric(s, name="c", source="t"))
        except InputError as exc:
            out.append(str(exc))
    return out[0], out[1]


@pytest.mark.parametrize("values", [
    [1.0, np.nan, 3.0, 0.0], [5, 0, 7], [np.nan, np.nan], [], [2.5, 1.0], [-1.0, 3.0], [1e15, 2.0],
])
def test_numeric_columns_skip_the_string_steps_with_the_same_result(values: list[float]) -> None:
    dtype = "int64" if values and all(isinstance(v, int) for v in values) else "float64"
    fast, general = _numeric_both_paths(pd.Series(values, dtype=dtype, index=range(3, 3 + len(values))))
    if isinstance(general, str):
        assert fast == general and "non-negative whole numbers" in general
    else:
        assert isinstance(fast, pd.Series)
        pd.testing.assert_series_equal(fast, general, check_exact=True)
        assert fast.dtype == "Int64"


@pytest.mark.slow
def test_real_numeric_columns_skip_the_string_steps_with_the_same_result(mirror: Path) -> None:
    from geo_pipeline.census import _read_excel, age_band_columns

    checked = 0
    for year in (2010, 2020):
        frame = next(iter(_read_excel(mirror / f"census/census_county_{year}_v1.xlsx").values()))
        for c in [c for cols in age_band_columns(frame.columns, year=year).values() for c in cols]:
            fast, general = _numeric_both_paths(frame[c].reset_index(drop=True))
            assert isinstance(fast, pd.Series) and isinstance(general, pd.Series), c
            pd.testing.assert_series_equal(fast, general, check_exact=True)
            checked += 1
    assert checked == 76
