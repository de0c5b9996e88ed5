"""Tests of the qgis_project stage: the plan (no QGIS needed) and the project in a real headless QGIS."""

from __future__ import annotations

import functools
import re
import shutil
import sqlite3
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
from _qgis import QGIS_PYTHON, qgis_json
from click.testing import CliRunner
from pypdf import PdfReader
from shapely.geometry import box
from test_export import write_stage_outputs

from geo_pipeline import InputError, OutputExistsError
from geo_pipeline._crs import CHINA_ALBERS
from geo_pipeline.atlas import packaged_font
from geo_pipeline.cli import main
from geo_pipeline.qgis_project import (
    LOCATOR_THEME,
    MAP_FRAME_MM,
    RAIL_THEME,
    LayerInfo,
    StyleInfo,
    layer_group,
    plan_project,
    read_layer_infos,
)

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "qgis_project_check.py"
#: The layouts' CJK font (pip-installed with geo_pipeline), made known to Qt for the PDF exports, as users
#: of the project need Noto Sans CJK SC installed (Debian fonts-noto-cjk).
FONT_ARGS = ["--font-file", packaged_font()[0]] if packaged_font() else []
UNIT_STYLES = ["Population change 2010-2020 (%)", "Net outflow ratio", "LISA clusters", "Distance bands"]
ITEMS = {"map": "QgsLayoutItemMap", "title": "QgsLayoutItemLabel", "subtitle": "QgsLayoutItemLabel",
         "legend": "QgsLayoutItemLegend", "scalebar": "QgsLayoutItemScaleBar",
         "north_arrow": "QgsLayoutItemPicture", "source": "QgsLayoutItemLabel",
         "page_number": "QgsLayoutItemLabel"}


def write_config(folder: Path, extra: str = "") -> Path:
    """Config with every path inside ``folder`` and the QGIS interpreter of the tests."""
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(folder / "data_raw").as_posix()}"\n'
        f'data_processed = "{(folder / "data_processed").as_posix()}"\n'
        f'maps = "{(folder / "maps").as_posix()}"\n'
        + (extra or f'[qgis_project]\npython = "{QGIS_PYTHON}"\n'),
        encoding="utf-8",
    )
    return cfg


def run_cli(cfg: Path, *args: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(main, ["-c", str(cfg), *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with the synthetic stage outputs exported to shrinkage.gpkg."""
    folder = tmp_path_factory.mktemp("qgis_project")
    write_stage_outputs(folder / "data_processed")
    cfg = write_config(folder)
    result = run_cli(cfg, "export")
    assert result.exit_code == 0, result.output
    return folder


# -- the plan (pure) ------------------------------------------------------------------------
def _info(name: str, geom: str = "MULTIPOLYGON", styles: tuple[str, ...] = ("Outline",)) -> LayerInfo:
    qml = "<!DOCTYPE qgis>\n<qgis><renderer-v2 type='graduatedSymbol'/></qgis>"
    infos = tuple(StyleInfo(s, qml, i == 0) for i, s in enumerate(styles))
    return LayerInfo(name, name.title(), geom, "", infos)


@pytest.mark.parametrize(("name", "geom", "group"), [
    ("units", "MULTIPOLYGON", "Population"),
    ("prefectures", "MULTIPOLYGON", "Population"),
    ("prefecture_units", "MULTIPOLYGON", "Population"),
    ("provinces", "MULTIPOLYGON", "Boundaries"),
    ("lisa", "MULTIPOLYGON", "Clusters"),
    ("lisa_prefecture", "MULTIPOLYGON", "Clusters"),
    ("gi_change_pct", "MULTIPOLYGON", "Clusters"),
    ("cores", "POINT", "Distance"),
    ("distance_rings", "POLYGON", "Distance"),
    ("rail_lines", "LINESTRING", "Rail"),
    ("rail_stations", "POINT", "Rail"),
    ("underused_lines", "LINESTRING", "Rail"),
    ("prefecture_underused_lines", "LINESTRING", "Rail"),
    ("corridors", "MULTIPOLYGON", "Rail"),
    ("ageing", "MULTIPOLYGON", "Ageing"),
    ("share_65plus_bivariate", "MULTIPOLYGON", "Ageing"),
    ("band_summary", "", "Tables"),
    ("corridor_summary", "", "Tables"),
])
def test_layer_group(name: str, geom: str, group: str) -> None:
    assert layer_group(LayerInfo(name, geometry_type=geom)) == group


def gpkg_styles(gpkg: Path) -> dict[str, list[str]]:
    """Table name -> its style names in ``layer_styles``, default first."""
    with sqlite3.connect(gpkg) as con:
        rows = con.execute("SELECT f_table_name, styleName FROM layer_styles ORDER BY useAsDefault DESC, id")
        out: dict[str, list[str]] = {}
        for table, name in rows:
            out.setdefault(table, []).append(name)
    return out


def ageing_styles(gpkg: Path) -> list[str]:
    """The units' ageing styles, as the export names them (60+ shares and bivariate LISA with them)."""
    return [n for n in gpkg_styles(gpkg)["units"] if re.match(r"Aged 60\+|Bivariate LISA share_60plus", n)]


def test_plan_of_synthetic_export(exported: Path) -> None:
    gpkg = exported / "data_processed" / "shrinkage.gpkg"
    layers = read_layer_infos(gpkg)
    tables = [str(n) for n, g in pyogrio.list_layers(gpkg) if not g and n != "layer_styles"]
    assert sorted(layer.name for layer in layers if not layer.spatial) == sorted(tables)
    assert {"band_summary", "global_moran", "corridor_summary"} <= set(tables)
    unit_styles = gpkg_styles(gpkg)["units"]
    ageing = ageing_styles(gpkg)
    assert set(UNIT_STYLES) <= set(unit_styles) and ageing  # the export has ageing styles (h12c)
    units = next(layer for layer in layers if layer.name == "units")
    assert [s.name for s in units.styles] == unit_styles and units.default_style.name == UNIT_STYLES[0]
    assert units.default_style.renderer == "graduatedSymbol" and units.default_style.attribute == "change_pct"
    provinces = gpd.read_file(gpkg, layer="provinces")
    plan = plan_project(layers, gpkg=gpkg, output=exported / "maps" / "shrinkage.qgz", provinces=provinces,
                        province_codes=["430000", "420000"],
                        titles={"net_outflow": ("人口净流出", "Net outflow")})
    # groups top to bottom; inside a group points over lines over polygons, known layers first
    groups = {g["name"]: [x["key"] for x in g["layers"]] for g in plan["groups"]}
    assert list(groups) == ["Distance", "Rail", "Boundaries", "Clusters", "Ageing", "Population", "Tables"]
    assert groups["Distance"] == ["cores", "distance_rings"]
    assert groups["Rail"] == ["rail_stations", "rail_lines", "corridors"]
    assert groups["Boundaries"] == ["provinces"]
    assert groups["Clusters"][0] == "lisa" and groups["Ageing"] == ["units_ageing"]
    assert groups["Population"][:2] == ["units", "prefectures"]
    assert groups["Tables"] == sorted(tables)
    assert sorted(k for g in groups.values() for k in g) == sorted([*(layer.name for layer in layers),
                                                                    "units_ageing"])
    visible = {x["key"] for g in plan["groups"] for x in g["layers"] if x["visible"]}
    assert visible == {"units", "provinces"}
    # every style of the GeoPackage goes to the project, with its QML; the ageing ones also on their layer
    styles = {x["key"]: x["styles"] for g in plan["groups"] for x in g["layers"]}
    assert [s["name"] for s in styles["units"]] == unit_styles
    assert [s["name"] for s in styles["units_ageing"]] == ageing
    assert [s["default"] for s in styles["units_ageing"]] == [True] + [False] * (len(ageing) - 1)
    with sqlite3.connect(gpkg) as con:
        qml = con.execute("SELECT styleQML FROM layer_styles WHERE f_table_name = 'units' AND "
                          "styleName = 'Net outflow ratio'").fetchone()[0]
    assert styles["units"][unit_styles.index("Net outflow ratio")]["qml"] == qml
    # a map theme per units style (ageing ones on the ageing layer), other choropleths' default, rail
    themes = {t["name"]: t["layers"] for t in plan["themes"]}
    others = [f"{layer.title}: {layer.default_style.name}" for layer in layers
              if layer.name in ("prefectures", "prefecture_units")]
    assert list(themes) == [*(n for n in unit_styles if n not in ageing), *ageing,
                            *sorted(others, key=list(themes).index), RAIL_THEME, LOCATOR_THEME]
    assert len(others) == sum(layer.name in ("prefectures", "prefecture_units") for layer in layers)
    assert themes[LOCATOR_THEME] == {"provinces": "Outline"}
    assert themes["Net outflow ratio"] == {"units": "Net outflow ratio", "provinces": "Outline"}
    assert themes[ageing[0]] == {"units_ageing": ageing[0], "provinces": "Outline"}
    assert themes["Distance bands"] == {"units": "Distance bands", "distance_rings": "Distance rings",
                                        "cores": "Cores", "provinces": "Outline"}
    assert themes[RAIL_THEME] == {"units": UNIT_STYLES[0], "rail_lines": "Rail lines by class",
                                  "corridors": "Corridors", "provinces": "Outline"}
    # one atlas over the provinces with units, then one national layout per theme
    atlas, *national = plan["layouts"]
    assert atlas["kind"] == "atlas" and atlas["pages"] == 2 and atlas["locator"]
    assert atlas["clip_layers"] == ["units"]
    assert atlas["filter"] == "\"province_code\" IN ('420000', '430000')"
    assert atlas["title"] == '[% "name" %]' and atlas["sort_field"] == "province_code"
    assert [n["theme"] for n in national] == list(themes)[:-1]
    outflow = next(n for n in national if n["theme"] == "Net outflow ratio")
    assert outflow["title"] == "人口净流出 全国 China" and outflow["subtitle"] == "Net outflow"
    assert national[0]["title"] == UNIT_STYLES[0]  # no titles given for it: the theme name
    assert [n["page_number"] for n in national][-1] == f"页 Page {len(national)} / {len(national)}"
    # extents in the Albers CRS; no South China Sea here
    x0, y0, x1, y1 = plan["extents"]["national"]
    px0, py0, px1, py1 = provinces.to_crs(CHINA_ALBERS).total_bounds
    assert x0 < px0 < px1 < x1 and y0 < py0 < py1 < y1
    assert (x1 - x0) / (y1 - y0) == pytest.approx(MAP_FRAME_MM[2] / MAP_FRAME_MM[3])
    assert plan["extents"]["scs"] is None and plan["south_mask_mm"] is None
    assert atlas["extent_overrides"] == {}
    assert plan["crs_wkt"] == CHINA_ALBERS.to_wkt()
    assert plan["gpkg"] == str(gpkg.resolve())


def test_plan_extents_with_south_china_sea_islands() -> None:
    # a province with its main part north of 17.5 N and islands south of it (like Hainan)
    frame = gpd.GeoDataFrame(
        {"province_code": ["440000", "460000", "460000"], "name": ["广东省", "海南省", "海南省"]},
        geometry=[box(110, 21, 116, 25), box(108.6, 18.2, 111, 20.1), box(111.5, 16.0, 112.5, 17.0)],
        crs="EPSG:4326",
    ).dissolve("province_code", as_index=False)
    layers = [_info("units", styles=("Population change",)), _info("provinces")]
    plan = plan_project(layers, gpkg="x.gpkg", output="maps/x.qgz", provinces=frame)
    albers = frame.to_crs(CHINA_ALBERS)
    def albers_bounds(geom: object) -> list[float]:
        return list(gpd.GeoSeries([geom], crs="EPSG:4326").to_crs(CHINA_ALBERS).total_bounds)

    hainan_main = albers_bounds(box(108.6, 18.2, 111, 20.1))
    islands = albers_bounds(box(111.5, 16.0, 112.5, 17.0))
    # Hainan's page shows its main island, not the islands 200 km south
    x0, y0, x1, y1 = plan["layouts"][0]["extent_overrides"]["460000"]
    assert x0 < hainan_main[0] and hainan_main[2] < x1 and y0 < hainan_main[1] and hainan_main[3] < y1
    assert y0 > islands[3]
    assert list(plan["layouts"][0]["extent_overrides"]) == ["460000"]
    # the national map shows the mainland; the inset holds the islands; the mask hides them on the map
    sx0, sy0, sx1, sy1 = plan["extents"]["scs"]
    assert sx0 < islands[0] and islands[2] < sx1 and sy0 < islands[1] and islands[3] < sy1
    nx0, ny0, nx1, ny1 = plan["extents"]["national"]
    assert ny0 < hainan_main[1] and ny1 > albers.total_bounds[3] and nx1 > albers.total_bounds[2]
    mask = plan["south_mask_mm"]
    mx, my, mw, mh = MAP_FRAME_MM
    assert all(mx < x < mx + mw and my < y < my + mh for x, y in mask)
    assert max(y for _, y in mask) > my + mh - 1  # down to the bottom of the map
    assert plan["bookmarks"]["South China Sea islands"] == plan["extents"]["scs"]


def test_plan_rail_theme_shows_each_line_once() -> None:
    frame = gpd.GeoDataFrame({"province_code": ["1"], "name": ["甲"]}, geometry=[box(110, 30, 111, 31)],
                             crs="EPSG:4326")
    lines = ("rail_lines", "underused_lines", "prefecture_underused_lines", "rail_stations")
    layers = [_info("units"), _info("provinces"), *(_info(n, "LINESTRING", ("Lines",)) for n in lines)]
    themes = {t["name"]: t["layers"] for t in plan_project(layers, gpkg="x.gpkg", output="x.qgz",
                                                            provinces=frame)["themes"]}
    assert themes[RAIL_THEME] == {"units": "Outline", "rail_lines": "Lines", "provinces": "Outline"}
    # without rail_lines, the county level's underused lines stand in
    layers = [layer for layer in layers if layer.name != "rail_lines"]
    themes = {t["name"]: t["layers"] for t in plan_project(layers, gpkg="x.gpkg", output="x.qgz",
                                                            provinces=frame)["themes"]}
    assert themes[RAIL_THEME] == {"units": "Outline", "underused_lines": "Lines", "provinces": "Outline"}


def test_plan_without_provinces_has_no_atlas() -> None:
    # an export without the boundaries stage's provinces: extents from the units, national layouts only
    units = gpd.GeoDataFrame({"province_code": ["1", "2"]},
                             geometry=[box(110, 30, 111, 31), box(111, 30, 112, 31)], crs="EPSG:4326")
    plan = plan_project([_info("units", styles=("Change", "Outflow"))], gpkg="x.gpkg", output="x.qgz",
                        provinces=units)
    assert [(lay["kind"], lay["theme"]) for lay in plan["layouts"]] == [("national", "Change"),
                                                                       ("national", "Outflow")]
    assert plan["themes"][-1] == {"name": LOCATOR_THEME, "layers": {"units": "Change"}}
    x0, y0, x1, y1 = plan["extents"]["national"]
    ux0, uy0, ux1, uy1 = units.to_crs(CHINA_ALBERS).total_bounds
    assert x0 < ux0 and ux1 < x1 and y0 < uy0 and uy1 < y1


def test_plan_paper_sizes() -> None:
    frame = gpd.GeoDataFrame({"province_code": ["1"], "name": ["甲"]}, geometry=[box(110, 30, 111, 31)],
                             crs="EPSG:4326")
    layers = [_info("units"), _info("provinces")]
    a4 = plan_project(layers, gpkg="x.gpkg", output="x.qgz", provinces=frame)
    a3 = plan_project(layers, gpkg="x.gpkg", output="x.qgz", provinces=frame, paper="A3")
    assert a4["page"] == {"paper": "A4", "width_mm": 297.0, "height_mm": 210.0}
    assert a3["page"] == {"paper": "A3", "width_mm": 420.0, "height_mm": 297.0}
    assert a3["extents"] == a4["extents"]  # same map, scaled with the page


def test_plan_needs_units_and_a_known_paper() -> None:
    frame = gpd.GeoDataFrame({"province_code": ["1"]}, geometry=[box(110, 30, 111, 31)], crs="EPSG:4326")
    with pytest.raises(InputError, match="no spatial layer 'units'"):
        plan_project([_info("provinces")], gpkg="x.gpkg", output="x.qgz", provinces=frame)
    with pytest.raises(InputError, match="paper"):
        plan_project([_info("units")], gpkg="x.gpkg", output="x.qgz", provinces=frame, paper="A5")


def test_read_layer_infos_rejects_a_non_geopackage(tmp_path: Path) -> None:
    bad = tmp_path / "x.gpkg"
    bad.write_text("not sqlite", encoding="utf-8")
    with pytest.raises(InputError, match="not a readable GeoPackage"):
        read_layer_infos(bad)


# -- the stage without QGIS -------------------------------------------------------------------
def test_stage_is_skipped_without_qgis_and_run_goes_on(exported: Path, tmp_path: Path) -> None:
    shutil.copytree(exported / "data_processed", tmp_path / "data_processed")
    extra = '[qgis_project]\npython = "/nonexistent/python3"\n[atlas]\nper_province = false\n'
    cfg = write_config(tmp_path, extra)
    result = run_cli(cfg, "run", "--from", "atlas")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "WARNING" in line and "qgis_project" in line]
    assert len(warnings) == 1, result.output
    assert "python3-qgis" in warnings[0] and "apt-get install python3-qgis" in warnings[0]
    assert "/nonexistent/python3" in warnings[0]
    assert (tmp_path / "maps" / "atlas.pdf").is_file()  # the stage before it ran
    assert "pipeline finished" in result.output.splitlines()[-1]
    assert not (tmp_path / "maps" / "shrinkage.qgz").exists()


def pdf_text(page: object) -> str:
    """Text of a PDF page, NFKC-normalised, each run of white space as one space.

    Qt maps some CJK glyphs to compatibility characters, puts tabs between words, and the line breaks vary.
    """
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", page.extract_text())).strip()


@functools.cache
def _cmap() -> dict[int, str]:
    from fontTools.ttLib import TTFont

    path, index = packaged_font() or pytest.fail("the noto-cjk-sans-otc package is not installed")
    with TTFont(path, fontNumber=index, lazy=True) as font:  # closed: an open file is a ResourceWarning
        return dict(font.getBestCmap())


def same_glyphs(found: list[str], expected: list[str]) -> bool:
    """Texts equal glyph by glyph in the layouts' font.

    Qt's PDF maps a glyph back to one of the characters that share it (e.g. 黑⻰江省 for 黑龙江省: the
    radical U+2EF0 and 龙 are one glyph of Noto Sans CJK SC), so texts are compared as glyphs.
    """
    cmap = _cmap()
    return [[cmap.get(ord(c), c) for c in t] for t in found] == [[cmap.get(ord(c), c) for c in t]
                                                                 for t in expected]


# -- the project in a real headless QGIS ------------------------------------------------------------
@pytest.fixture(scope="module")
def project(exported: Path) -> Path:
    """Run the stage on the synthetic export (needs QGIS)."""
    from _qgis import require_qgis

    require_qgis()
    result = run_cli(exported / "geo_pipeline.toml", "qgis_project")
    assert result.exit_code == 0, result.output
    path = exported / "maps" / "shrinkage.qgz"
    assert path.is_file()
    return path


def check_report(report: dict, gpkg: Path) -> None:
    """Every layer of ``gpkg`` is in the project, valid, with its default style and all its styles."""
    names = [str(n) for n in pyogrio.list_layers(gpkg)[:, 0] if n != "layer_styles"]
    ageing = ageing_styles(gpkg)
    assert sorted(report["layers"]) == sorted([*names, *(["units_ageing"] if ageing else [])])
    styles = gpkg_styles(gpkg)
    for name, info in report["layers"].items():
        assert info["valid"], name
        assert info["features"] == pyogrio.read_info(gpkg, layer=info["table"])["features"], name
        if name == "units_ageing":  # the units again, with their ageing styles
            assert info["table"] == "units" and info["styles"] == sorted(ageing), info["styles"]
            assert info["current_style"] == ageing[0] and "60plus" in info["attribute"]
        elif info["spatial"]:
            assert info["table"] == name
            assert info["renderer"] == info["default_renderer_in_gpkg"] is not None, name
            assert sorted(info["styles"]) == sorted(styles[name]), name
            assert info["current_style"] == styles[name][0], name
        if info["spatial"]:
            assert info["crs"] == "EPSG:4326"
    assert report["crs_valid"] and "+proj=aea" in report["crs_proj"] and "+lat_1=25" in report["crs_proj"]


@pytest.mark.qgis
def test_project_opens_with_every_layer_styled(project: Path) -> None:
    gpkg = project.parents[1] / "data_processed" / "shrinkage.gpkg"
    report = qgis_json(CHECK, project, home=project.parent)
    check_report(report, gpkg)
    units = report["layers"]["units"]
    assert units["current_style"] == UNIT_STYLES[0] and units["attribute"] == "change_pct"
    groups = ["Distance", "Rail", "Boundaries", "Clusters", "Ageing", "Population", "Tables"]
    assert [g["group"] for g in report["tree"]] == groups
    assert {n for n, info in report["layers"].items() if info["visible"]} == {"units", "provinces"}
    assert report["themes"]["Net outflow ratio"] == {"units": "Net outflow ratio", "provinces": "Outline"}
    assert report["themes"]["LISA clusters"]["units"] == "LISA clusters"
    # layouts: the atlas over the 2 provinces and a national layout per theme, with their furniture
    layouts = report["layouts"]
    assert sorted(layouts) == sorted(["Atlas – provinces", *(f"National – {t}" for t in report["themes"]
                                                             if t != LOCATOR_THEME)])
    for name, info in layouts.items():
        assert ITEMS.items() <= info["items"].items(), name
        assert info["page_mm"] == [297.0, 210.0]
        assert info["linked"] == {"north_arrow": True, "legend": True, "scalebar": True}
        assert info["theme"] in report["themes"] or info["theme"] is None
    atlas = layouts["Atlas – provinces"]
    assert atlas["atlas_features"] == 2 and atlas["atlas_driven"] and "locator" in atlas["items"]
    assert atlas["atlas_clip_layers"] == ["units"]  # the page's province only; the rest as context
    assert layouts["National – Net outflow ratio"]["theme"] == "Net outflow ratio"
    assert layouts["National – Distance bands"]["legend_layers"] == ["units", "distance_rings", "cores",
                                                                      "provinces"]
    # paths relative to the project file, inside the archive named after it
    with zipfile.ZipFile(project) as zf:
        assert zf.namelist() == ["shrinkage.qgs"]
        qgs = zf.read("shrinkage.qgs").decode("utf-8")
    assert "<datasource>../data_processed/shrinkage.gpkg|layername=units</datasource>" in qgs
    assert str(project.parents[1]) not in qgs


@pytest.mark.qgis
def test_atlas_exports_one_page_per_province(project: Path, tmp_path: Path) -> None:
    pdf = tmp_path / "atlas.pdf"
    report = qgis_json(CHECK, project, "--atlas-pdf", pdf, "--national-pdf", tmp_path / "national.pdf",
                       *FONT_ARGS, home=tmp_path)
    assert report["export"]["atlas"]["result"] == 0
    assert report["export"]["atlas"]["pages"] == ["province_420000|湖北省", "province_430000|湖南省"]
    pages = PdfReader(pdf).pages
    assert len(pages) == 2
    first, second = (pdf_text(page) for page in pages)
    assert first.startswith("湖北省 人口变化 2010") and "Page" in first and "Location" in first
    assert second.startswith("湖南省 ")
    assert "Data: " in first and "Albers equal-area" in first  # the source text
    # the national layouts export too, each with its theme's title and legend
    national = report["export"]["national"]
    assert len(national) == len(report["themes"]) - 1  # all but the locator's
    assert all(info["result"] == 0 for info in national.values())
    texts = {name: pdf_text(PdfReader(info["path"]).pages[0]) for name, info in national.items()}
    assert texts["National – Net outflow ratio"].startswith("人口净流出 全国 China")
    assert "South China Sea" not in texts["National – Net outflow ratio"]  # no islands, no inset
    lisa = texts["National – LISA clusters"]
    assert all(label in lisa for label in ("High-High", "Low-Low", "Not significant")), lisa


@pytest.mark.qgis
def test_project_folder_can_be_moved(project: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (moved / "maps").mkdir(parents=True)
    (moved / "data_processed").mkdir()
    shutil.copy2(project, moved / "maps" / project.name)
    shutil.copy2(project.parents[1] / "data_processed" / "shrinkage.gpkg", moved / "data_processed")
    report = qgis_json(CHECK, moved / "maps" / project.name, home=tmp_path)
    check_report(report, moved / "data_processed" / "shrinkage.gpkg")
    assert all(info["source"].startswith(str(moved)) for info in report["layers"].values())


@pytest.mark.qgis
def test_stage_refuses_to_overwrite(project: Path) -> None:
    before = project.stat().st_mtime_ns
    result = run_cli(project.parents[1] / "geo_pipeline.toml", "qgis_project")
    assert result.exit_code == OutputExistsError.exit_code and "--overwrite" in result.output
    assert project.stat().st_mtime_ns == before
    assert [p.name for p in project.parent.iterdir() if p.suffix == ".qgz"] == ["shrinkage.qgz"]


# -- real data ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.qgis
def test_qgis_project_real_data(run_stage: Callable[[str], Path], tmp_path: Path) -> None:
    processed = run_stage("qgis_project")
    project = processed.parent / "maps" / "shrinkage.qgz"
    gpkg = processed / "shrinkage.gpkg"
    pdf = tmp_path / "atlas.pdf"
    report = qgis_json(CHECK, project, "--atlas-pdf", pdf, *FONT_ARGS, home=tmp_path)
    check_report(report, gpkg)
    units = pyogrio.read_dataframe(gpkg, layer="units", read_geometry=False)
    provinces = pyogrio.read_dataframe(gpkg, layer="provinces", read_geometry=False)
    codes = sorted(units["province_code"].dropna().astype(str).unique())
    atlas = report["layouts"]["Atlas – provinces"]
    assert atlas["atlas_features"] == len(codes) == 31
    names = dict(zip(provinces["province_code"].astype(str), provinces["name"], strict=True))
    expected = [f"province_{c}|{names[c]}" for c in codes]
    assert report["export"]["atlas"]["pages"] == expected
    reader = PdfReader(pdf)
    assert len(reader.pages) == 31  # the full export: about 26 s here
    titles = [pdf_text(page).split(" ", 1)[0] for page in reader.pages]
    assert same_glyphs(titles, [names[c] for c in codes]) and titles[0] == "北京市"
    for name, info in report["layouts"].items():
        if name.startswith("National"):
            assert "scs_inset" in info["items"], name  # the South China Sea inset
    assert "South China Sea islands" in report["bookmarks"]
