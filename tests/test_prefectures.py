"""Tests of the prefecture level: city table joined to the boundary prefectures, totals, shrinking count."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from shapely.geometry import box

from geo_pipeline import prefectures as prefectures_module
from geo_pipeline._io import read_layer, read_table
from geo_pipeline.population import prefecture_indicators
from geo_pipeline.prefectures import (
    PUBLISHED_SHRINKING_CITIES,
    match_prefectures,
    prefecture_members,
    prefecture_totals,
    shrinking_comparison,
)

CITY = "census/census_city_2010-2020_v1.csv"


# -- synthetic ----------------------------------------------------------------------------------
# Province 11 (a municipality, city_code 110100, polygon 110000), province 12 with prefecture 120100,
# a new city 129001 inside 120100 without figures of its own (its county shares a county unit with
# one of 120100), an island city 129002 without a 2010 figure, and 810000 (Hong Kong) without polygon.
def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "city": ["京市", "甲市", "新市", "岛市", "港"],
        "city_code": ["110100", "120100", "129001", "129002", "810000"],
        "province": ["京", "乙省", "乙省", "乙省", "港"],
        "province_code": ["110000", "120000", "120000", "120000", "810000"],
        "popu_2010": pd.array([1000, 500, pd.NA, pd.NA, 70], dtype="Int64"),
        "popu_2020": pd.array([1100, 450, pd.NA, 9, 75], dtype="Int64"),
    })


def _polygons() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"adcode": ["110000", "120100", "129001", "129002", "710000"],
         "name": ["京市", "甲市", "新市", "岛市", "台"], "province": ["京", "乙省", "乙省", "乙省", "台"],
         "province_code": ["110000", "120000", "120000", "120000", "710000"],
         "in_census": [True, True, True, True, False]},
        geometry=[box(0, 0, 1, 1), box(1, 0, 3, 1), box(3, 0, 4, 1), box(6, 0, 6.2, 0.2), box(9, 9, 10, 10)],
        crs="EPSG:4326",
    )


def _county_units() -> tuple[pd.DataFrame, pd.DataFrame]:
    counties = pd.DataFrame({"adcode": ["110101", "120101", "120102", "129001", "129002"],
                             "prefecture_code": ["110000", "120100", "120100", "120100", "129002"]})
    counties.loc[3, "prefecture_code"] = "129001"
    units = pd.DataFrame({
        "unit_id": ["110101", "120101", "120102", "129002"],
        "members": ["110101", "120101", "120102;129001", "129002"],
        "prefecture": ["京市", "甲市", "甲市+新市", "岛市"],
        "prefecture_code": ["110000", "120100", "120100", "129002"],
        "province_code": ["110000", "120000", "120000", "120000"],
        "n_members": [1, 1, 2, 1], "pop_2010": [1000, 300, 200, 4], "pop_2020": [1100, 250, 200, 9],
        "hukou_2010": [900, 320, 260, 4], "shrinking": [False, True, False, False],
    })
    return units, counties


def test_match_accounts_for_every_row_and_polygon() -> None:
    units, counties = _county_units()
    m = match_prefectures(_table(), _polygons(), units, counties=counties)
    rows = m.rows.set_index("city_code")
    assert rows["status"].to_dict() == {"110100": "matched", "120100": "matched", "129001": "no_figures",
                                        "129002": "no_figures", "810000": "no_polygon"}
    assert rows.loc["110100", "unit_id"] == "110000"
    assert rows.loc["110100", "method"].startswith("municipality")
    assert "merged into the unit 120100" in rows.loc["129001", "reason"]
    assert "for 2010" in rows.loc["129002", "reason"] and "Hong Kong" in rows.loc["810000", "reason"]
    polys = m.polygons.set_index("adcode")
    assert polys["unit_id"].to_dict() == {"110000": "110000", "120100": "120100", "129001": "120100",
                                          "129002": None, "710000": None}
    assert polys.loc["129001", "method"] == "merged" and polys.loc["710000", "status"] == "no_census"
    assert "count 4 (2010) and 9 (2020) residents" in polys.loc["129002", "reason"]
    # the report: one row per table row and per polygon
    assert m.report.groupby("item").size().to_dict() == {"census_city": 5, "prefecture_polygon": 5}
    assert m.report["status"].notna().all() and m.report["reason"].notna().all()
    members = prefecture_members(m).set_index("unit_id")
    assert members.loc["120100", "members"] == "120100;129001"
    assert members.loc["120100", "join"] == "code+merged (129001)"


def test_no_merge_without_county_units() -> None:
    m = match_prefectures(_table(), _polygons())
    assert m.polygons.set_index("adcode").loc["129001", "status"] == "no_figures"


def test_prefecture_indicators_merged_unit_and_totals() -> None:
    units, counties = _county_units()
    pref, report = prefecture_indicators(_table(), _polygons(), units, counties=counties)
    p = pref.set_index("unit_id")
    assert list(p.index) == ["110000", "120100"]
    # the merged unit: the new city's polygon joins 甲市; its county units lie wholly inside
    assert p.loc["120100", "members"] == "120100;129001" and p.loc["120100", "n_members"] == 3
    assert p.loc["120100", "geometry"].area == pytest.approx(3.0)
    assert p.loc["120100", "pop_2010_units"] == 500 and p.loc["120100", "hukou_2010"] == 580
    assert p.loc["120100", "shrinking"] and p.loc["120100", "change_pct"] == pytest.approx(-10.0)
    totals = prefecture_totals(_table(), match_prefectures(_table(), _polygons(), units, counties=counties),
                               pref, units)
    nation = totals[totals["level"] == "nation"].set_index("year")
    # every figure of the table is in a unit or listed as left out, to the person
    assert (totals["difference"] == 0).all()
    assert nation.loc[2010, ["table_total", "units_total", "left_out"]].tolist() == [1570, 1500, 70]
    assert nation.loc[2020, ["table_total", "units_total", "left_out"]].tolist() == [1634, 1550, 84]
    assert nation.loc[2020, "left_out_rows"] == "岛市 9, 港 75"
    assert nation.loc[2010, "county_units_total"] == 1504 and nation.loc[2010, "difference_county"] == -4
    cmp = shrinking_comparison(pref, units)
    assert cmp["computed"].tolist() == [1, 1] and cmp["units"].tolist() == [2, 4]
    assert cmp["published"].iloc[0] == PUBLISHED_SHRINKING_CITIES



def _totals_by_filtering(monkeypatch: pytest.MonkeyPatch, *args: object) -> pd.DataFrame:
    """prefecture_totals through the per-province filters only (the path for non-integer columns)."""
    with monkeypatch.context() as m:
        m.setattr(prefectures_module, "_integer_sums", lambda *a, **k: None)
        return prefecture_totals(*args)  # type: ignore[arg-type]


def test_grouped_totals_equal_the_filtered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    units, counties = _county_units()
    pref, _ = prefecture_indicators(_table(), _polygons(), units, counties=counties)
    match = match_prefectures(_table(), _polygons(), units, counties=counties)
    units = units.astype({"pop_2010": "Int64"})
    units.loc[1, "pop_2010"] = pd.NA  # a missing county figure counts 0, as before
    units.loc[len(units)] = {**units.iloc[0].to_dict(), "province_code": "130000", "pop_2010": 7}  # no table
    for cu in (units, None):
        fast = prefecture_totals(_table(), match, pref, cu)
        pd.testing.assert_frame_equal(fast, _totals_by_filtering(monkeypatch, _table(), match, pref, cu))
    assert fast.set_index(["year", "code"]).loc[(2020, "120000"), "left_out_rows"] == "岛市 9"
    with_cu = prefecture_totals(_table(), match, pref, units).set_index(["year", "code"])
    assert with_cu.loc[(2010, "120000"), "county_units_total"] == 200 + 4
    # a county unit of a province without prefecture units counts for the nation only
    assert with_cu.loc[(2010, "000000"), "county_units_total"] == 1000 + 200 + 4 + 7
    assert "130000" not in with_cu.index.get_level_values("code")
    # float figures: the grouped path is not used (a float sum may depend on the order of its terms)
    floats = pref.astype({"pop_2010": "float64"})
    assert prefectures_module._integer_sums(
        pd.DataFrame({"popu_2010": [1], "pc": ["1"], "status": ["matched"]}),
        pd.DataFrame({"pop_2010": [1.5], "pc": ["1"]}), None, col="popu_2010", pop="pop_2010") is None
    pd.testing.assert_frame_equal(prefecture_totals(_table(), match, floats, units),
                                  _totals_by_filtering(monkeypatch, _table(), match, floats, units))


def test_prefecture_indicators_use_a_given_match(monkeypatch: pytest.MonkeyPatch) -> None:
    import geo_pipeline.population as population_module

    units, counties = _county_units()
    pref, report = prefecture_indicators(_table(), _polygons(), units, counties=counties)
    match = match_prefectures(_table(), _polygons(), units, counties=counties)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("matched again")

    monkeypatch.setattr(population_module, "match_prefectures", refuse)
    again, again_report = prefecture_indicators(_table(), _polygons(), units, counties=counties, match=match)
    pd.testing.assert_frame_equal(again, pref)
    pd.testing.assert_frame_equal(again_report, report)
    with pytest.raises(AssertionError, match="matched again"):
        prefecture_indicators(_table(), _polygons(), units, counties=counties)


def _members_by_groupby(match: prefectures_module.PrefectureMatch) -> pd.DataFrame:
    """prefecture_members as it was, with a sub-frame per unit (the reference of the one-pass version)."""
    poly = match.polygons[match.polygons["unit_id"].notna()]
    own = match.rows[match.rows["status"].eq("matched")].set_index("unit_id")["method"]
    out = []
    for uid, g in poly.groupby("unit_id", sort=True):
        members = sorted(g["adcode"])
        join = str(own.get(uid, ""))
        if (g["method"] == "merged").any():
            merged = ";".join(sorted(g.loc[g["method"].eq("merged"), "adcode"]))
            join = f"{join}+merged ({merged})"
        out.append({"unit_id": uid, "members": ";".join(members), "join": join, "n_polygons": len(members)})
    return pd.DataFrame.from_records(out, columns=["unit_id", "members", "join", "n_polygons"])


def test_members_equal_the_groupby_version() -> None:
    units, counties = _county_units()
    match = match_prefectures(_table(), _polygons(), units, counties=counties)
    pd.testing.assert_frame_equal(prefecture_members(match), _members_by_groupby(match))
    # units given in another order, two merged polygons (listed against their order), a polygon
    # without a method, and no own row for one unit
    polygons = pd.DataFrame({
        "adcode": ["3", "9", "2", "5", "1", "7"], "unit_id": ["b", "a", "b", None, "b", "c"],
        "method": ["merged", "code", "code", "code", "merged", None]})
    rows = pd.DataFrame({"unit_id": ["b", "a", "x"], "method": ["code", "municipality", "code"],
                         "status": ["matched", "matched", "no_figures"]})
    m = prefectures_module.PrefectureMatch(rows=rows, polygons=polygons, report=pd.DataFrame())
    got = prefecture_members(m)
    pd.testing.assert_frame_equal(got, _members_by_groupby(m))
    assert got["join"].tolist() == ["municipality", "code+merged (1;3)", ""]
    assert got["members"].tolist() == ["9", "1;2;3", "7"]

# -- real data ------------------------------------------------------------------------------------
def _recount(mirror: Path) -> pd.DataFrame:
    """The city table's rows that are prefecture units, recounted from the raw CSV with pandas only."""
    raw = pd.read_csv(mirror / CITY, dtype={"city_code": str})
    both = raw["popu_2010"].notna() & raw["popu_2020"].notna()
    return raw[both & ~raw["city_code"].isin(["810000", "820000"])]


@pytest.mark.slow
def test_real_prefecture_units_equal_the_table(run_stage: Callable[[str], Path], mirror: Path) -> None:
    out = run_stage("population")
    gpkg = out / "population.gpkg"
    pref = read_layer(gpkg, "prefectures")
    direct = _recount(mirror)
    assert len(pref) == len(direct) == 356 and pref["unit_id"].is_unique
    # totals equal the table to the person, both years
    assert int(pref["pop_2010"].sum()) == int(direct["popu_2010"].sum()) == 1328770402
    assert int(pref["pop_2020"].sum()) == int(direct["popu_2020"].sum()) == 1405845669
    totals = read_table(gpkg, "prefecture_totals")
    assert (totals["difference"] == 0).all() and len(totals) == 2 * (33 + 1)
    nation = totals[totals["level"] == "nation"].set_index("year")
    raw = pd.read_csv(mirror / CITY)
    assert int(nation.loc[2010, "table_total"]) == int(raw["popu_2010"].sum())
    assert int(nation.loc[2020, "table_total"]) == int(raw["popu_2020"].sum())
    # six XPCC cities merged into their hosts: their county units then add up to the table
    p = pref.set_index("unit_id")
    merged = p[p["members"].str.contains(";")]
    assert sorted(merged.index) == ["652700", "652800", "653200", "654000", "654200", "654300"]
    assert (merged["pop_2010"] == merged["pop_2010_units"]).all()
    assert (merged["pop_2020"] == merged["pop_2020_units"]).all()
    assert p.loc["500000", "pop_2020"] == 32054159  # 重庆 500100 -> the one polygon 500000
    # the report: every table row and every boundary prefecture, each once
    report = pd.read_csv(out / "match_report.csv", encoding="utf-8-sig", dtype={"code": str})
    rows = report[report["item"] == "census_city"]
    polys = report[report["item"] == "prefecture_polygon"]
    boundary = read_table(out / "boundaries.gpkg", "prefectures")
    assert sorted(rows["code"]) == sorted(raw["city_code"].astype(str).str.zfill(6)) and len(rows) == 369
    assert sorted(polys["code"]) == sorted(boundary["adcode"]) and len(polys) == 367
    assert rows["reason"].notna().all() and polys["reason"].notna().all()
    assert set(polys.loc[polys["status"] == "unmatched", "code"]) == {
        "460300", "659001", "659002", "659003", "659004"}


@pytest.mark.slow
def test_real_shrinking_prefectures_recounted(run_stage: Callable[[str], Path], mirror: Path) -> None:
    out = run_stage("population")
    direct = _recount(mirror)
    n = int((direct["popu_2020"] < direct["popu_2010"]).sum())
    pref = read_layer(out / "population.gpkg", "prefectures")
    ref = read_table(out / "population.gpkg", "shrinking_reference").set_index("measure")
    row = ref.iloc[0]
    assert int(pref["shrinking"].sum()) == n == int(row["computed"]) == 156
    assert int(row["units"]) == 356 and int(row["published"]) == PUBLISHED_SHRINKING_CITIES
    assert "10.1177/0308518X221076499" in row["source"]


@pytest.mark.slow
def test_real_prefecture_level_through_the_stages(run_stage: Callable[[str], Path]) -> None:
    out = run_stage("export")
    pref = read_layer(out / "population.gpkg", "prefectures")
    ids = set(pref["unit_id"])
    for stage in ("distance", "autocorrelation", "infrastructure"):
        name = f"{stage}_prefecture.gpkg"
        units = read_table(out / name, "units")
        assert len(units) == 356 and set(units["unit_id"]) == ids, name
    banded = read_table(out / "distance_prefecture.gpkg", "units")
    assert banded["band"].notna().all()
    summary = pd.read_csv(out / "band_summary_prefecture.csv", encoding="utf-8-sig")
    assert int(summary.loc[summary["band_index"] >= 0, "n_units"].sum()) == 356
    moran = read_table(out / "autocorrelation_prefecture.gpkg", "global_moran").set_index("variable")
    assert 0 < moran.loc["change_pct", "I"] < 1 and int(moran.loc["change_pct", "n"]) == 356
    export = read_layer(out / "shrinkage.gpkg", "prefecture_units")
    assert len(export) == 356 and int(export["pop_2020"].sum()) == int(pref["pop_2020"].sum())
    assert {"band", "lisa_change_pct_cluster", "hsr_station_km"} <= set(export.columns)
    county = read_layer(out / "shrinkage.gpkg", "units")
    assert len(county) == 2734  # the county outputs keep their names


@pytest.mark.slow
def test_real_grouped_totals_equal_the_filtered_ones(
    run_stage: Callable[[str], Path], mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geo_pipeline.census import read_city_table

    out = run_stage("population")
    city = read_city_table(mirror / CITY)
    units = read_layer(out / "population.gpkg", "units")
    pref = read_layer(out / "population.gpkg", "prefectures")
    counties = read_table(out / "boundaries.gpkg", "counties")[["adcode", "prefecture_code"]]
    boundary = read_layer(out / "boundaries.gpkg", "prefectures")
    match = match_prefectures(city, boundary, units, counties=counties)
    pd.testing.assert_frame_equal(prefecture_members(match), _members_by_groupby(match))
    fast = prefecture_totals(city, match, pref, units)
    pd.testing.assert_frame_equal(fast, _totals_by_filtering(monkeypatch, city, match, pref, units))
    pd.testing.assert_frame_equal(fast, read_table(out / "population.gpkg", "prefecture_totals"),
                                  check_dtype=False)
    assert fast["left_out_rows"].str.len().gt(0).sum() == 2 * 3 + 1  # 三沙, 香港, 澳门 and the 2010 rows
