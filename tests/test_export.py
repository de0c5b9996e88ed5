"""Tests of the export stage: merged units, QGIS styles, GeoPackage metadata, QGIS round trip."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
from _qgis import qgis_json
from click.testing import CliRunner
from shapely.geometry import LineString, Point, box

from geo_pipeline import (
    CRSError,
    DataQualityWarning,
    InputError,
    MissingInputError,
    OutputExistsError,
    styles,
)
from geo_pipeline._io import read_layer, read_table, write_gpkg
from geo_pipeline.cli import main
from geo_pipeline.export import assemble_layers, merge_unit_columns, write_styled_gpkg

ROOT = Path(__file__).resolve().parents[1]
QGIS_CHECK = ROOT / "tests" / "qgis_check.py"

# 4 x 3 grid of 0.5-degree squares around 110-112 E, 30-31.5 N; two provinces (columns 0-1 and 2-3).
CHANGE = [-30.0, -12.0, -4.0, 8.0, -22.0, -6.0, 0.5, 15.0, -1.5, 3.0, 25.0, 40.0]
LISA = ["LL", "LL", "ns", "ns", "LL", "ns", "ns", "HH", "ns", "LH", "HH", "HH"]
PREF_BANDS = ["0-50 km", "150+ km", "150+ km", "0-50 km", "150+ km", "150+ km"]
PREF_LISA = ["LL", "ns", "HH", "ns", "ns", "HH"]
BANDS = ["0-50 km", "0-50 km", "50-100 km", "50-100 km", "0-50 km", "50-100 km",
         "100-150 km", "100-150 km", "50-100 km", "100-150 km", "150+ km", "150+ km"]


def synthetic_units() -> gpd.GeoDataFrame:
    """Twelve units with the population stage's columns (EPSG:4326)."""
    rows, geoms = [], []
    for i in range(12):
        r, c = divmod(i, 4)
        prov = "430000" if c < 2 else "420000"
        pop_2010 = 100_000 + 10_000 * i
        pop_2020 = int(round(pop_2010 * (1 + CHANGE[i] / 100)))
        hukou = int(pop_2010 * (1.2 if CHANGE[i] < 0 else 0.9))
        rows.append({
            "unit_id": f"{prov[:2]}{i:04d}", "name": f"测试县{i}",
            "province": "湖南省" if c < 2 else "湖北省",
            "province_code": prov, "prefecture": f"市{r}", "prefecture_code": f"{prov[:2]}{r:02d}00",
            "level": "county", "n_members": 1, "pop_2010": pop_2010, "pop_2020": pop_2020,
            "change": pop_2020 - pop_2010, "change_pct": 100 * (pop_2020 - pop_2010) / pop_2010,
            "annual_rate": 100 * ((pop_2020 / pop_2010) ** 0.1 - 1), "shrinking": pop_2020 < pop_2010,
            "hukou_2010": hukou, "net_outflow_ratio": (hukou - pop_2010) / hukou,
            "net_outflow": hukou > pop_2010, "share_60plus_2020": 15.0 + i,
            "share_60plus_change_pts": 0.5 * i - 1.0, "comparable": i != 11,
        })
        geoms.append(box(110 + 0.5 * c, 30 + 0.5 * r, 110.5 + 0.5 * c, 30.5 + 0.5 * r))
    return gpd.GeoDataFrame(rows, geometry=geoms, crs="EPSG:4326")


SIGNIFICANCE = "p < 0.05 (pseudo p-value, 999 conditional permutations, no multiple-testing correction)"


def write_stage_outputs(folder: Path, *, skip: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Write small synthetic outputs of every stage (data contract schema) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    units = synthetic_units()
    ids = units["unit_id"]
    out: dict[str, pd.DataFrame] = {"units": units}
    provinces = units.dissolve("province_code", as_index=False)[["province_code", "province", "geometry"]]
    provinces = provinces.rename(columns={"province": "name"}).assign(
        adcode=lambda d: d["province_code"], level="province", in_census=True)
    prefectures = units.dissolve("prefecture_code", as_index=False, aggfunc={
        "pop_2010": "sum", "pop_2020": "sum", "hukou_2010": "sum", "province": "first",
        "province_code": "first", "prefecture": "first"})
    prefectures["change_pct"] = 100 * (prefectures["pop_2020"] / prefectures["pop_2010"] - 1)
    prefectures["unit_id"] = prefectures["prefecture_code"]
    prefectures["name"] = prefectures["prefecture"]
    prefectures["shrinking"] = prefectures["change_pct"] < 0
    prefectures["net_outflow_ratio"] = 1 - prefectures["pop_2010"] / prefectures["hukou_2010"]
    prefectures["share_60plus_2020"] = 16.0 + np.arange(len(prefectures))
    prefectures["share_60plus_change_pts"] = 1.5 * np.arange(len(prefectures)) - 2.0
    pids = prefectures["unit_id"]
    files: dict[str, dict[str, pd.DataFrame]] = {
        "boundaries": {"provinces": provinces},
        "population": {"units": units, "prefectures": prefectures},
    }
    cores = gpd.GeoDataFrame({"core_id": ["c1"], "name": ["核心市"]}, geometry=[Point(110.25, 30.25)],
                             crs="EPSG:4326")
    rings = gpd.GeoDataFrame(
        {"core": ["核心市"] * 3, "radius_km": [50.0, 100.0, 150.0]},
        geometry=[Point(110.25, 30.25).buffer(r) for r in (0.45, 0.9, 1.35)], crs="EPSG:4326",
    )
    files["distance"] = {
        "units": gpd.GeoDataFrame({"unit_id": ids, "dist_core_km": np.arange(12) * 20.0, "band": BANDS},
                                  geometry=units.geometry, crs="EPSG:4326"),
        "cores": cores, "rings": rings,
        "band_summary": pd.DataFrame({"band": sorted(set(BANDS)), "n_units": [3, 3, 2, 4]}),
    }
    files["autocorrelation"] = {
        "units": gpd.GeoDataFrame({"unit_id": ids, "lisa_change_pct_cluster": LISA,
                                   "lisa_change_pct_p": np.linspace(0.001, 0.5, 12),
                                   "bv_change_pct_vs_share_60plus_2010_cluster": LISA[::-1]},
                                  geometry=units.geometry, crs="EPSG:4326"),
        "global_moran": pd.DataFrame({"variable": ["change_pct"], "I": [0.41], "p_sim": [0.002],
                                      "significance": [SIGNIFICANCE]}),
    }
    lines = gpd.GeoDataFrame(
        {"name": ["京广高铁", "焦柳线"], "class": ["高速", "普速"]},
        geometry=[LineString([(110.1, 30.0), (111.9, 31.4)]), LineString([(110.9, 30.0), (110.9, 31.5)])],
        crs="EPSG:4326",
    )
    files["infrastructure"] = {
        "units": pd.DataFrame({"unit_id": ids, "dist_hsr_km": np.arange(12) * 5.0,
                               "in_corridor": [True] * 6 + [False] * 6}),
        "rail_lines": lines,
        "rail_stations": gpd.GeoDataFrame({"name": ["甲站", "乙站", "丙站"], "trains_per_day": [120, 40, 8],
                                           "high_speed": [True, True, False]},
                                          geometry=[Point(110.2, 30.1), Point(111.0, 30.7),
                                                    Point(111.8, 31.3)],
                                          crs="EPSG:4326"),
        "corridors": gpd.GeoDataFrame({"name": ["京广高铁"]}, geometry=[lines.geometry.iloc[0].buffer(0.2)],
                                      crs="EPSG:4326"),
        "corridor_summary": pd.DataFrame({"in_corridor": [True, False], "change_pct": [3.1, -4.2]}),
    }
    # the prefecture level: its own stage files, named by level (distance_prefecture.gpkg ...)
    files["distance_prefecture"] = {
        "units": pd.DataFrame({"unit_id": pids, "band": PREF_BANDS}),
        "band_summary": pd.DataFrame({"band": ["0-50 km", "150+ km"], "n_units": [2, 4]}),
    }
    files["autocorrelation_prefecture"] = {
        "units": pd.DataFrame({"unit_id": pids, "lisa_change_pct_cluster": PREF_LISA,
                               "bv_change_pct_vs_share_60plus_2010_cluster": PREF_LISA[::-1]}),
        "global_moran": pd.DataFrame({"variable": ["change_pct"], "I": [0.2], "p_sim": [0.04]}),
    }
    files["infrastructure_prefecture"] = {
        "units": pd.DataFrame({"unit_id": pids, "in_corridor": [True, False] * 3}),
        "corridor_summary": pd.DataFrame({"in_corridor": [True, False], "change_pct": [1.0, -2.0]}),
    }
    for stage, layers in files.items():
        if stage.removesuffix("_prefecture") in skip:
            continue
        path = folder / f"{stage}.gpkg"
        for i, (name, frame) in enumerate(layers.items()):
            pyogrio.write_dataframe(frame, path, layer=name, driver="GPKG", append=i > 0)
            out[f"{stage}.{name}"] = frame
    return out


def write_config(folder: Path, extra: str = "") -> Path:
    """Config with every path inside ``folder``."""
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(folder / "data_raw").as_posix()}"\n'
        f'data_processed = "{(folder / "data_processed").as_posix()}"\n'
        f'maps = "{(folder / "maps").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


def run_cli(cfg: Path, *args: str) -> object:
    """Invoke ``geo-pipeline -c cfg args`` and return the click result."""
    return CliRunner().invoke(main, ["-c", str(cfg), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, pd.DataFrame]]:
    """Synthetic stage outputs exported once through the CLI; returns (gpkg path, inputs)."""
    folder = tmp_path_factory.mktemp("export")
    frames = write_stage_outputs(folder / "data_processed")
    cfg = write_config(folder)
    result = run_cli(cfg, "export")
    assert result.exit_code == 0, result.output
    return folder / "data_processed" / "shrinkage.gpkg", frames


def _styles(path: Path) -> pd.DataFrame:
    with sqlite3.connect(path) as con:
        return pd.read_sql("SELECT * FROM layer_styles", con)


EXPECTED_LAYERS = [
    "units", "prefectures", "provinces", "lisa", "distance_rings", "cores", "rail_lines",
    "rail_stations", "corridors", "band_summary", "global_moran", "corridor_summary",
    "prefecture_units", "prefecture_lisa", "prefecture_band_summary", "prefecture_global_moran",
    "prefecture_corridor_summary",
]
SPATIAL = EXPECTED_LAYERS[:9] + EXPECTED_LAYERS[12:14]


# -- pure functions ---------------------------------------------------------------------
def test_diverging_classes_break_at_zero_and_count_every_value() -> None:
    values = pd.Series(CHANGE + [np.nan])
    cl = styles.diverging_classes(values, column="change_pct", k=2)
    # 0 is an edge, the extremes are the data's min and max, and every finite value is counted once
    assert 0.0 in cl.edges and cl.edges[0] == -30.0 and cl.edges[-1] == 40.0
    assert sum(cl.counts) == 12
    below = sum(c for c, hi in zip(cl.counts, cl.edges[1:], strict=False) if hi <= 0)
    assert below == sum(v <= 0 for v in CHANGE) == 6
    # shrinking classes are red, growing ones blue
    assert all(c in styles.SHRINK_COLORS for c, hi in zip(cl.colors, cl.edges[1:], strict=False) if hi <= 0)
    assert all(c in styles.GROW_COLORS for c, hi in zip(cl.colors, cl.edges[1:], strict=False) if hi > 0)
    # assign agrees with mapclassify's "x <= upper bound" rule
    idx = cl.assign([-30.0, 0.0, 0.5, 40.0, np.nan])
    assert idx[0] == 0 and cl.edges[idx[1] + 1] == 0.0 and cl.edges[idx[2]] == 0.0
    assert idx[3] == cl.k - 1 and idx[4] == -1


def test_diverging_classes_empty_and_one_sided() -> None:
    assert styles.diverging_classes(pd.Series([], dtype=float), column="x").k == 0
    cl = styles.diverging_classes(pd.Series([1.0, 2.0, 3.0, 10.0]), column="x", k=2)
    assert cl.colors == styles.GROW_COLORS[:2] and sum(cl.counts) == 4


def test_lisa_categories_accept_codes_and_labels() -> None:
    cats = styles.lisa_categories(["ns", "HH", "LL", "LH", "HL"])
    assert [c.value for c in cats] == ["HH", "LL", "LH", "HL", "ns"]
    assert {c.value: c.color for c in cats}["HH"] == "#d7191c"
    left_out = styles.lisa_categories(["not comparable", "not significant", "HH"])
    assert [(c.value, c.color) for c in left_out] == [
        ("HH", "#d7191c"), ("not significant", "#d9d9d9"), ("not comparable", styles.LISA_COLORS["nc"])]
    assert left_out[-1].label.startswith("Not comparable")
    coded = styles.lisa_categories([0, 1, 2, 3, 4])
    assert {c.value: c.color for c in coded} == {
        1: "#d7191c", 3: "#2c7bb6", 2: "#abd9e9", 4: "#f4a6c8", 0: "#d9d9d9"}


def test_sequential_classes_quantiles_light_to_dark() -> None:
    values = pd.Series([10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0, 28.0, np.nan])
    cl = styles.sequential_classes(values, column="share_60plus_2020", unit=" %")
    assert cl.k == 5 and cl.colors == styles.AGEING_COLORS and sum(cl.counts) == 10
    assert cl.edges[0] == 10.0 and cl.edges[-1] == 28.0 and list(cl.counts) == [2, 2, 2, 2, 2]
    assert cl.labels[0] == "10.0 to 13.6 %" and (cl.assign([10.0, 28.0, np.nan]) == [0, 4, -1]).all()
    two = styles.sequential_classes(pd.Series([1.0, 1.0, 2.0]), column="x")
    assert two.k == 2 and two.colors == (styles.AGEING_COLORS[0], styles.AGEING_COLORS[-1])


def test_band_categories_are_ordered_by_distance() -> None:
    cats = styles.band_categories(["150+ km", "50-100 km", "0-50 km", "100-150 km"])
    assert [c.value for c in cats] == ["0-50 km", "50-100 km", "100-150 km", "150+ km"]
    assert [c.value for c in styles.band_categories([">150 km", "100-150 km"])] == ["100-150 km", ">150 km"]
    assert [c.label for c in styles.band_categories([100.0, 50.0])] == ["50 km", "100 km"]


def test_graduated_qml_ranges_match_classes() -> None:
    cl = styles.diverging_classes(pd.Series(CHANGE), column="change_pct", k=3)
    root = ET.fromstring(styles.graduated_qml(cl, "fill").split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "graduatedSymbol"
    assert renderer.get("attr") == "change_pct"
    ranges = renderer.findall("ranges/range")
    assert [float(r.get("lower")) for r in ranges] == list(cl.edges[:-1])
    assert [float(r.get("upper")) for r in ranges] == list(cl.edges[1:])
    colors = [s.find("layer/Option/Option[@name='color']").get("value")
              for s in renderer.findall("symbols/symbol")]
    assert colors[0] == "178,24,43,255" or colors[0].startswith(("103,0,31", "214,96,77"))


def test_merge_unit_columns_joins_on_unit_id_in_any_order() -> None:
    units = synthetic_units()
    table = pd.DataFrame({"unit_id": units["unit_id"][::-1].to_numpy(), "score": np.arange(12.0)[::-1]})
    merged, prov = merge_unit_columns(units, {"distance": table})
    assert list(merged["unit_id"]) == list(units["unit_id"])
    assert list(merged["score"]) == list(np.arange(12.0))
    assert prov["score"] == "distance" and prov["change_pct"] == "population"
    assert merged.geometry.equals(units.geometry)
    assert "score" not in units.columns  # input not mutated


def test_merge_of_attribute_only_stage_tables_equals_full_layers(tmp_path: Path) -> None:
    # The CLI reads the stages' units layers without geometry (faster); the merge must not change.
    units = synthetic_units()
    stage = gpd.GeoDataFrame({"unit_id": units["unit_id"], "score": np.arange(12.0),
                              "band": [f"b{i % 3}" for i in range(12)]},
                             geometry=units.geometry, crs=units.crs)
    path = write_gpkg(tmp_path / "distance.gpkg", {"units": stage})
    with_geometry, _ = merge_unit_columns(units, {"distance": read_layer(path, "units")})
    attributes, _ = merge_unit_columns(units, {"distance": read_table(path, "units")})
    assert "geometry" not in read_table(path, "units").columns
    pd.testing.assert_frame_equal(attributes, with_geometry)


def test_merge_unit_columns_warns_on_unknown_and_duplicate_ids() -> None:
    units = synthetic_units()
    table = pd.DataFrame({"unit_id": ["zz"] + list(units["unit_id"][:5]), "x": range(6)})
    with pytest.warns(DataQualityWarning) as rec:
        merged, _ = merge_unit_columns(units, {"raster": table})
    messages = sorted(str(w.message) for w in rec)
    assert len(messages) == 2
    assert "1 unit_id value(s) not in the population units (e.g. ['zz'])" in messages[0]
    assert "7 of 12 units have no row" in messages[1]
    assert merged["x"].isna().sum() == 7
    dup = pd.DataFrame({"unit_id": ["a", "a"], "x": [1, 2]})
    with pytest.raises(InputError, match="unique"):
        merge_unit_columns(units, {"raster": dup})
    with pytest.raises(InputError, match="missing column"):
        merge_unit_columns(units, {"raster": pd.DataFrame({"id": ["a"]})})


def test_merge_unit_columns_compares_repeated_columns() -> None:
    """Columns a stage repeats are compared row by row (unit_id join, NaN equal NaN); the first kept."""
    units = synthetic_units()
    units.loc[3, "net_outflow_ratio"] = np.nan
    table = pd.DataFrame({"unit_id": units["unit_id"][::-1].to_numpy(), "score": np.arange(12.0)})
    table["name"] = units["name"][::-1].to_numpy()  # same values, other order: no warning
    table["net_outflow_ratio"] = units["net_outflow_ratio"][::-1].to_numpy()  # with the NaN
    table["pop_2010"] = units["pop_2010"][::-1].to_numpy()
    table.loc[0, "pop_2010"] += 1  # the last unit differs
    table.loc[1, "name"] = "别的"  # and the 11th
    table = table.iloc[:-1]  # the first unit has no row: 11 compared rows
    with pytest.warns(DataQualityWarning) as rec:
        merged, prov = merge_unit_columns(units, {"raster": table})
    assert [str(w.message) for w in rec] == [
        "raster units: 1 of 12 units have no row; their raster columns are empty in the export",
        "raster units: column 'name' differs from the one of the population stage in 1 rows; "
        "the population column is kept",
        "raster units: column 'pop_2010' differs from the one of the population stage in 1 rows; "
        "the population column is kept",
    ]
    assert merged["name"].tolist() == units["name"].tolist()
    assert merged["pop_2010"].tolist() == units["pop_2010"].tolist()
    assert prov["name"] == prov["pop_2010"] == "population" and prov["score"] == "raster"
    assert np.isnan(merged["score"].iloc[0]) and merged["score"].tolist()[1:] == list(np.arange(10.0, -1, -1))


def test_assemble_rejects_wrong_crs() -> None:
    units = synthetic_units()
    provinces = units.to_crs("EPSG:3857")
    with pytest.raises(CRSError, match="provinces.*EPSG:4326"):
        assemble_layers(units, layers={"provinces": provinces})
    with pytest.raises(CRSError):
        assemble_layers(units.to_crs("EPSG:3857"))


def test_write_styled_gpkg_refuses_overwrite(tmp_path: Path) -> None:
    layers = assemble_layers(synthetic_units())
    path = write_styled_gpkg(tmp_path / "x.gpkg", layers)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_styled_gpkg(path, layers)
    assert [p.name for p in tmp_path.iterdir()] == ["x.gpkg"]  # no temporary file left


# -- the CLI on synthetic stage outputs --------------------------------------------------
def test_export_layers_and_values(exported: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    path, frames = exported
    names = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    assert sorted(names) == sorted([*EXPECTED_LAYERS, "layer_styles"])
    units = pyogrio.read_dataframe(path, layer="units")
    assert len(units) == 12 and units.crs.to_epsg() == 4326
    src = frames["units"].set_index("unit_id")
    got = units.set_index("unit_id").loc[src.index]
    # every stage's columns are there, joined on unit_id
    np.testing.assert_allclose(got["change_pct"], src["change_pct"])
    assert list(got["lisa_change_pct_cluster"]) == LISA
    assert list(got["band"]) == BANDS
    np.testing.assert_allclose(got["dist_hsr_km"], np.arange(12) * 5.0)
    assert int(got["pop_2020"].sum()) == int(src["pop_2020"].sum())
    lisa = pyogrio.read_dataframe(path, layer="lisa")
    assert set(lisa.columns) >= {"unit_id", "lisa_change_pct_cluster", "geometry"}
    assert "pop_2020" not in lisa.columns
    assert lisa.geometry.geom_equals(units.geometry).all()
    with sqlite3.connect(path) as con:  # a view of units: the geometry is stored once
        kind = con.execute("SELECT type FROM sqlite_master WHERE name = 'lisa'").fetchone()
    assert kind == ("view",)
    # no .aux.xml appears beside the file when GDAL opens it read-only
    assert not list(path.parent.glob("*.aux.xml"))
    # prefecture level: its units with the columns of its own stage files, joined on unit_id
    pref = pyogrio.read_dataframe(path, layer="prefecture_units").set_index("unit_id")
    src_pref = frames["population.prefectures"].set_index("unit_id").loc[pref.index]
    assert len(pref) == 6 and list(pref["band"]) == PREF_BANDS
    assert list(pref["lisa_change_pct_cluster"]) == PREF_LISA and "dist_hsr_km" not in pref.columns
    np.testing.assert_allclose(pref["change_pct"], src_pref["change_pct"])
    assert pyogrio.read_dataframe(path, layer="prefecture_band_summary")["n_units"].tolist() == [2, 4]
    with sqlite3.connect(path) as con:  # prefectures and prefecture_lisa: views of prefecture_units
        kinds = dict(con.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                 "('prefectures', 'prefecture_lisa', 'prefecture_units')"))
    assert kinds == {"prefectures": "view", "prefecture_lisa": "view", "prefecture_units": "table"}
    plain = pyogrio.read_dataframe(path, layer="prefectures")
    assert len(plain) == 6 and "band" not in plain.columns


def test_export_styles_one_default_per_spatial_layer(exported: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    path, _ = exported
    st = _styles(path)
    defaults = st[st["useAsDefault"] == 1]
    assert sorted(defaults["f_table_name"]) == sorted(SPATIAL)
    assert (st["f_geometry_column"] == "geom").all() and (st["f_table_schema"] == "").all()
    renderer = {
        row.f_table_name: ET.fromstring(row.styleQML.split("\n", 1)[1]).find("renderer-v2").get("type")
        for row in defaults.itertuples()
    }
    assert renderer == {
        "units": "graduatedSymbol", "prefectures": "graduatedSymbol", "provinces": "singleSymbol",
        "lisa": "categorizedSymbol", "distance_rings": "categorizedSymbol", "cores": "singleSymbol",
        "rail_lines": "categorizedSymbol", "rail_stations": "categorizedSymbol", "corridors": "singleSymbol",
        "prefecture_units": "graduatedSymbol", "prefecture_lisa": "categorizedSymbol",
    }
    # units also carry the alternative styles a user can switch to in QGIS
    ageing_styles = {"Aged 60+ 2020 (%)", "Aged 60+ change (pts)", "Bivariate LISA share_60plus_2010"}
    assert set(st.loc[st["f_table_name"] == "units", "styleName"]) == {
        "Population change 2010-2020 (%)", "Net outflow ratio", "LISA clusters", "Distance bands",
        *ageing_styles}
    bv = st[(st["f_table_name"] == "units") & (st["styleName"] == "Bivariate LISA share_60plus_2010")].iloc[0]
    assert 'attr="bv_change_pct_vs_share_60plus_2010_cluster"' in bv["styleQML"]
    ageing = st[(st["f_table_name"] == "units") & (st["styleName"] == "Aged 60+ 2020 (%)")].iloc[0]
    assert all(c.lstrip("#") for c in styles.AGEING_COLORS)
    assert 'attr="share_60plus_2020"' in ageing["styleQML"]
    # prefecture units are styled like units
    assert set(st.loc[st["f_table_name"] == "prefecture_units", "styleName"]) == {
        "Population change 2010-2020 (%)", "Net outflow ratio", "LISA clusters", "Distance bands",
        *ageing_styles}
    with sqlite3.connect(path) as con:
        kind = con.execute("SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'").fetchone()
    assert kind == ("attributes",)


def test_export_descriptions(exported: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    path, _ = exported
    with sqlite3.connect(path) as con:
        desc = dict(con.execute("SELECT table_name, description FROM gpkg_contents"))
        cols = {(t, c): d for t, c, d in con.execute(
            "SELECT table_name, column_name, description FROM gpkg_data_columns")}
        ext = {r[0] for r in con.execute(
            "SELECT table_name FROM gpkg_extensions WHERE extension_name = 'gpkg_schema'")}
        n_md = con.execute(
            "SELECT count(*) FROM gpkg_metadata_reference WHERE table_name = 'units'").fetchone()[0]
    assert "every indicator" in desc["units"] and "LISA" in desc["lisa"]
    assert cols[("units", "change_pct")].startswith("Population change 2010-2020 in %")
    assert "LISA cluster of change_pct" in cols[("lisa", "lisa_change_pct_cluster")]
    # the significance rule of the autocorrelation stage is in the layer and field metadata
    assert desc["lisa"].endswith(f"Significance: {SIGNIFICANCE}.") and SIGNIFICANCE in desc["global_moran"]
    for table in ("units", "lisa"):
        assert cols[(table, "lisa_change_pct_cluster")].endswith(f"; significant when {SIGNIFICANCE}")
    bv = cols[("units", "bv_change_pct_vs_share_60plus_2010_cluster")]
    assert bv.startswith("Bivariate LISA cluster of change_pct with the neighbours' share_60plus_2010")
    assert bv.endswith(f"; significant when {SIGNIFICANCE}")
    assert SIGNIFICANCE not in cols[("units", "lisa_change_pct_p")]
    assert cols[("units", "dist_hsr_km")] == "dist_hsr_km (from the infrastructure stage)"
    assert ext == {"gpkg_data_columns", "gpkg_data_column_constraints"}
    assert n_md >= 1
    info = pyogrio.read_info(path, layer="units")
    assert "distance.gpkg" in info["layer_metadata"]["SOURCE"]


def test_export_missing_optional_stage_warns(tmp_path: Path) -> None:
    write_stage_outputs(tmp_path / "data_processed", skip=("infrastructure",))
    cfg = write_config(tmp_path)
    with pytest.warns(DataQualityWarning, match=r"infrastructure(_prefecture)?\.gpkg") as rec:
        result = run_cli(cfg, "export")
    assert result.exit_code == 0, result.output
    assert any("geo-pipeline infrastructure" in str(w.message) for w in rec)
    assert any("infrastructure_prefecture.gpkg (layer units) not found" in str(w.message) for w in rec)
    names = [str(n) for n in pyogrio.list_layers(tmp_path / "data_processed" / "shrinkage.gpkg")[:, 0]]
    assert "rail_lines" not in names and "units" in names and "lisa" in names


def test_export_missing_population_is_an_error(tmp_path: Path) -> None:
    write_stage_outputs(tmp_path / "data_processed", skip=("population",))
    cfg = write_config(tmp_path)
    result = run_cli(cfg, "export")
    assert result.exit_code == MissingInputError.exit_code
    assert "population.gpkg not found" in result.output and "geo-pipeline population" in result.output


def test_export_refuses_to_overwrite(exported: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    path, _ = exported
    cfg = path.parents[1] / "geo_pipeline.toml"
    before = path.stat().st_mtime_ns
    result = run_cli(cfg, "export")
    assert result.exit_code == OutputExistsError.exit_code and "--overwrite" in result.output
    assert path.stat().st_mtime_ns == before


# -- real QGIS ----------------------------------------------------------------------------
def qgis_report(path: Path) -> dict:
    """Run tests/qgis_check.py in headless QGIS (skipped without python3-qgis, see tests/_qgis.py)."""
    return qgis_json(QGIS_CHECK, path, home=path.parent)


def check_qgis_report(report: dict, path: Path) -> None:
    """Assert every layer of ``path`` is valid in QGIS, in EPSG:4326, with its default style and rows."""
    names = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    assert set(report["layers"]) == set(names)
    st = _styles(path)
    for name in names:
        info = report["layers"][name]
        assert info["valid"], name
        assert info["feature_count"] == pyogrio.read_info(path, layer=name)["features"], name
        if info["data_type"] != "features":
            continue
        assert info["crs_valid"] and info["authid"] == "EPSG:4326", name
        assert info["default_style_loaded"], (name, info.get("style_message"))
        qml = st.loc[(st["f_table_name"] == name) & (st["useAsDefault"] == 1), "styleQML"].iloc[0]
        want = ET.fromstring(qml.split("\n", 1)[1]).find("renderer-v2").get("type")
        assert info["renderer"] == want, name
        assert info["styles_in_db"] == int((st["f_table_name"] == name).sum()), name


@pytest.mark.qgis
def test_qgis_round_trip(exported: tuple[Path, dict[str, pd.DataFrame]]) -> None:
    path, frames = exported
    report = qgis_report(path)
    check_qgis_report(report, path)
    units = report["layers"]["units"]
    # values survive: QGIS sums equal the written data
    assert units["sums"]["pop_2020"] == pytest.approx(float(frames["units"]["pop_2020"].sum()))
    assert units["renderer_without_default"] == "singleSymbol"  # so the graduated style came from the file
    # QGIS parsed our classes and colours
    cl = styles.diverging_classes(frames["units"]["change_pct"], column="change_pct", unit=" %")
    assert [r[2] for r in units["detail"]] == list(cl.colors)
    assert [r[0] for r in units["detail"]] == pytest.approx(list(cl.edges[:-1]))
    lisa = {v: c for v, c, _ in report["layers"]["lisa"]["detail"]}
    assert lisa == {k: styles.LISA_COLORS[k] for k in ("HH", "LL", "LH", "ns")}
    rail = {v: c for v, c, _ in report["layers"]["rail_lines"]["detail"]}
    assert rail == {"高速": styles.RAIL_COLORS["high_speed"], "普速": styles.RAIL_COLORS["conventional"]}


# -- real data ------------------------------------------------------------------------------
@pytest.mark.slow
def test_export_real_data(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("export")
    path = processed / "shrinkage.gpkg"
    names = [str(n) for n in pyogrio.list_layers(path)[:, 0]]
    assert {"units", "prefectures", "provinces", "lisa", "distance_rings", "cores", "rail_lines",
            "layer_styles"} <= set(names)
    units = pyogrio.read_dataframe(path, layer="units", read_geometry=False)
    population = pyogrio.read_dataframe(processed / "population.gpkg", layer="units", read_geometry=False)
    assert len(units) == len(population) and units["unit_id"].is_unique
    assert int(units["pop_2020"].sum()) == int(population["pop_2020"].sum())
    assert any(c.startswith("lisa_") for c in units.columns)
    check_qgis_report(qgis_report(path), path)  # last: skipped here without python3-qgis (tests/_qgis.py)
