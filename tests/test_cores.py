"""Tests of the core sets (geo_pipeline.cores) and the core-set sensitivity (distance)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from geo_pipeline import InputError
from geo_pipeline._io import read_layer, read_table
from geo_pipeline.cores import (
    census_core_prefectures,
    cores_from_census,
    metro_cores,
    prefecture_seats,
    subprovincial_cores,
)
from geo_pipeline.distance import (
    SENSITIVITY_COLUMNS,
    core_set_sensitivity,
    cores_from_frame,
    default_cores,
)

SUBPROVINCIAL = {"哈尔滨", "长春", "沈阳", "大连", "济南", "青岛", "南京", "杭州", "宁波", "厦门", "武汉",
                 "广州", "深圳", "成都", "西安"}


def test_named_sets_sizes_and_seats() -> None:
    sub = subprovincial_cores()
    assert len(sub) == 15 and set(sub["name"]) == SUBPROVINCIAL and (sub["set"] == "subprovincial").all()
    assert sub.crs.to_epsg() == 4326 and sub["adcode"].str.fullmatch(r"\d{4}00").all()
    metro = metro_cores()
    assert len(metro) == 22 and metro["metro_area"].nunique() == 18 and metro["name"].is_unique
    assert set(metro.loc[metro["metro_area"] == "长株潭都市圈", "name"]) == {"长沙", "株洲", "湘潭"}
    assert set(metro.loc[metro["metro_area"] == "厦漳泉都市圈", "name"]) == {"厦门", "漳州", "泉州"}
    assert len(default_cores("subprovincial")) == 15 and len(default_cores("metro")) == 22
    # the seats of the 31 default cores are those of the seats table (same source, same method)
    seats = prefecture_seats().set_index("name")
    for row in default_cores("all").itertuples():
        assert (seats.loc[row.name, "lon"], seats.loc[row.name, "lat"]) == (row.lon, row.lat), row.name
    assert len(seats) == 337 and seats["adcode"].is_unique
    # cores new to the named sets: 大连, 青岛, 宁波, 厦门, 深圳 are sub-provincial, not capitals
    assert SUBPROVINCIAL - set(default_cores("capitals")["name"]) == {"大连", "青岛", "宁波", "厦门", "深圳"}


def _units() -> pd.DataFrame:
    return pd.DataFrame({
        "unit_id": ["a1", "a2", "a3", "b1", "b2", "c1", "d1"],
        "prefecture_code": ["100100", "100100", "100100", "100200", "100200", "109001", "500000"],
        "prefecture": ["甲市", "甲市", "甲市", "乙市", "乙市", "丙市", "重庆市"],
        "unit_kind": ["district", "mixed", "county", "district", "city", "city", "district"],
        "pop_2020": [600, 900, 500, 700, 400, 5000, 800],
        "pop_2020_districts": [600, 300, 0, 700, 0, 0, 800],
    })


def test_census_core_prefectures_hand_computed() -> None:
    out = census_core_prefectures(_units(), min_pop=800)
    # 甲 600 + 300 = 900 (the mixed unit's district rows only), 乙 700 (< 800), 重庆 800; 丙 (109001)
    # is a county-level city directly under the province, not a prefecture
    assert out["prefecture_code"].tolist() == ["100100", "500000"]
    assert out["pop_2020_districts"].tolist() == [900, 800] and out["n_district_units"].tolist() == [2, 1]
    assert census_core_prefectures(_units(), min_pop=0)["prefecture_code"].tolist() == [
        "100100", "500000", "100200"]
    with pytest.raises(InputError, match=">= 0"):
        census_core_prefectures(_units(), min_pop=-1)
    with pytest.raises(InputError, match="missing column"):
        census_core_prefectures(_units().drop(columns=["pop_2020_districts"]), min_pop=1)
    with pytest.raises(InputError, match="no prefecture has urban districts"):
        cores_from_census(_units(), min_pop=10_000)
    with pytest.raises(InputError, match="no seat"):
        cores_from_census(_units(), min_pop=800)  # 100100 is not a real prefecture
    real = _units().assign(prefecture_code=["210200"] * 3 + ["210100"] * 2 + ["419001", "500000"])
    cores = cores_from_census(real, min_pop=800)
    assert cores["name"].tolist() == ["大连", "重庆"] and cores["set"].unique().tolist() == ["census>=800"]
    assert cores.crs.to_epsg() == 4326 and cores["pop_2020_districts"].tolist() == [900, 800]


def test_core_set_sensitivity_hand_computed() -> None:
    # units: squares near (100, 30) [0 km], (101, 30) [~96 km], (103, 30) [~289 km] from core A at (100, 30)
    units = gpd.GeoDataFrame(
        {"pop_2010": [100, 200, 300], "pop_2020": [110, 150, 240], "shrinking": [False, True, True]},
        geometry=[box(x - 0.01, 29.99, x + 0.01, 30.01) for x in (100.0, 101.0, 103.0)], crs="EPSG:4326",
    )
    a = cores_from_frame(pd.DataFrame({"name": ["A"], "lon": [100.0], "lat": [30.0]}))
    ab = cores_from_frame(pd.DataFrame({"name": ["A", "B"], "lon": [100.0, 103.0], "lat": [30.0, 30.0]}))
    out = core_set_sensitivity(units, {"a": a, "ab": ab}, threshold_km=150)
    assert list(out.columns) == SENSITIVITY_COLUMNS
    r = out.set_index("core_set")
    assert r.loc["a", "n_beyond"] == 1 and r.loc["a", "shrinking_share_beyond"] == 1.0
    assert r.loc["a", "pop_weighted_change_pct_beyond"] == pytest.approx(-20.0)
    assert r.loc["a", "shrinking_share_within"] == 0.5
    assert r.loc["a", "pop_weighted_change_pct_within"] == pytest.approx(100 * (260 - 300) / 300)
    assert r.loc["ab", "n_beyond"] == 0 and np.isnan(r.loc["ab", "shrinking_share_beyond"])
    assert r.loc["ab", "beyond_share"] == 0 and r.loc["ab", "n_cores"] == 2
    with pytest.raises(InputError, match="positive"):
        core_set_sensitivity(units, {"a": a}, threshold_km=0)
    with pytest.raises(InputError, match="no cores"):
        core_set_sensitivity(units, {"none": a.iloc[:0]})


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_seats_inside_their_prefectures_and_census_cores(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("population")
    prefectures = read_layer(processed / "boundaries.gpkg", "prefectures").set_index("adcode")
    seats = prefecture_seats()
    geoms = prefectures.loc[seats["adcode"]].geometry.to_numpy()
    inside = shapely.contains_xy(geoms, seats["lon"].to_numpy(), seats["lat"].to_numpy())
    assert inside.all(), seats.loc[~inside, "name"].tolist()
    for frame in (subprovincial_cores(), metro_cores()):
        g = prefectures.loc[frame["adcode"]].geometry.to_numpy()
        assert shapely.contains_xy(g, frame["lon"].to_numpy(), frame["lat"].to_numpy()).all()
    units = read_layer(processed / "population.gpkg", "units")
    # recomputed from the units: district units count whole, mixed units their district rows
    assert (units.loc[units["unit_kind"] == "district", "pop_2020_districts"]
            == units.loc[units["unit_kind"] == "district", "pop_2020"]).all()
    assert (units.loc[~units["unit_kind"].isin(["district", "mixed"]), "pop_2020_districts"] == 0).all()
    coded = units[units["prefecture_code"].str.endswith("00")]
    pref = coded.groupby("prefecture_code")["pop_2020_districts"].sum()
    for n, size in ((1_000_000, 174), (3_000_000, 47), (5_000_000, 28)):
        chosen = census_core_prefectures(units, min_pop=n)
        assert len(chosen) == size and set(chosen["prefecture_code"]) == set(pref.index[pref >= n])
    big = cores_from_census(units, min_pop=5_000_000)
    assert big["name"].tolist()[:6] == ["重庆", "上海", "北京", "广州", "深圳", "成都"]
    # 广州: all its units are districts (番禺区+南沙区 merged): the sum of their 2020 residents
    gz = units[units["prefecture_code"] == "440100"]
    assert big.set_index("name").loc["广州", "pop_2020_districts"] == gz["pop_2020"].sum() == 18676605
    g = prefectures.loc[big["adcode"]].geometry.to_numpy()
    assert shapely.contains_xy(g, big["lon"].to_numpy(), big["lat"].to_numpy()).all()


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_core_set_sensitivity_table(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("distance")
    sens = read_table(processed / "distance.gpkg", "core_set_sensitivity").set_index("core_set")
    csv = pd.read_csv(processed / "core_set_sensitivity.csv", encoding="utf-8-sig").set_index("core_set")
    assert sens.index.tolist() == ["all", "central", "capitals", "subprovincial", "metro", "census>=1000000",
                                   "census>=3000000", "census>=5000000"]
    assert csv.index.tolist() == sens.index.tolist()
    assert sens["n_cores"].tolist() == [31, 9, 31, 15, 22, 174, 47, 28]
    assert sens.loc["all", "used_in_run"] and sens["used_in_run"].sum() == 1
    # the run's own set agrees with the band summary's last band
    summary = read_table(processed / "distance.gpkg", "band_summary").set_index("band")
    last = summary.loc["150+ km"]
    assert sens.loc["all", "n_beyond"] == last["n_units"]
    assert sens.loc["all", "shrinking_share_beyond"] == pytest.approx(last["shrinking_share"])
    assert sens.loc["all", "pop_weighted_change_pct_beyond"] == pytest.approx(last["pop_weighted_change_pct"])
    assert (sens["n_units"] == summary.loc["all", "n_units"]).all()  # Sansha left out everywhere
    # more cores put fewer units beyond 150 km
    beyond = sens["n_beyond"]
    assert beyond["census>=1000000"] < beyond["all"] < beyond["central"]


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_export_carries_the_distance_summaries(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("export")
    for name in ("band_summary_by_region", "band_summary_by_kind", "core_set_sensitivity"):
        exported = read_table(processed / "shrinkage.gpkg", name)
        source = read_table(processed / "distance.gpkg", name)
        assert exported["n_units"].tolist() == source["n_units"].tolist(), name
    units = read_table(processed / "shrinkage.gpkg", "units")
    for col in ("region", "unit_kind", "comparable", "share_60plus_2020", "old_age_dependency_2020"):
        assert col in units.columns and units[col].notna().all(), col


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_cli_cores_from_census(run_stage: Callable[[str], Path], tmp_path: Path) -> None:
    import shutil

    from click.testing import CliRunner

    from geo_pipeline.cli import main

    processed = run_stage("population")
    work = tmp_path / "data_processed"
    work.mkdir()
    shutil.copy(processed / "population.gpkg", work / "population.gpkg")
    cfg = tmp_path / "geo_pipeline.toml"
    cfg.write_text(f'[paths]\ndata_processed = "{work.as_posix()}"\n[pipeline]\nlevels = ["county"]\n'
                   "[distance]\nsensitivity_census_min_pop = [2000000]\n", encoding="utf-8")
    res = CliRunner().invoke(main, ["-c", str(cfg), "-q", "distance", "--cores-from-census", "5000000"])
    assert res.exit_code == 0, res.output
    cores = read_layer(work / "distance.gpkg", "cores")
    units = read_layer(processed / "population.gpkg", "units")
    coded = units[units["prefecture_code"].str.endswith("00")]
    pref = coded.groupby("prefecture_code")["pop_2020_districts"].sum()
    assert set(cores["adcode"]) == set(pref.index[pref >= 5_000_000]) and len(cores) == 28
    dist_units = read_table(work / "distance.gpkg", "units")
    assert set(dist_units["nearest_core"]) <= set(cores["name"])
    sens = read_table(work / "distance.gpkg", "core_set_sensitivity").set_index("core_set")
    assert sens.index.tolist()[-2:] == ["census>=2000000", "census>=5000000"]
    assert sens.loc["census>=5000000", "used_in_run"] and sens["used_in_run"].sum() == 1
    bad = CliRunner().invoke(main, ["-c", str(cfg), "-q", "distance", "--cores-from-census", "99000000",
                                    "--overwrite"])
    assert bad.exit_code == 2 and "no prefecture has urban districts with at least 99,000,000" in bad.output
