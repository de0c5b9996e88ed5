"""Underused rail lines: map class, table of crossed units, QGIS style and atlas legend."""

from __future__ import annotations

import re

import geopandas as gpd
import pandas as pd
import pytest
from matplotlib.lines import Line2D
from shapely.geometry import LineString
from test_export import synthetic_units

from geo_pipeline import CRSError, DataQualityWarning, InputError, atlas, styles
from geo_pipeline import underused as und
from geo_pipeline.export import assemble_layers


def _lines() -> gpd.GeoDataFrame:
    """Three lines over the 4 x 3 synthetic units (x 110-112, y 30-31.5, 0.5 degree squares).

    H (high-speed, utilisation 0.2, underused) runs along y = 30.25 through the first row of units;
    F (fast, 0.9) along y = 30.75; C (conventional, unknown utilisation) along x = 110.25.
    """
    return gpd.GeoDataFrame(
        {
            "line_id": ["H", "F", "C"],
            "name": ["京沪高铁", "快线", "普线"],
            "class": ["high-speed", "fast", "conventional"],
            "open_year": pd.array([2011, 2015, 1990], dtype="Int64"),
            "utilisation": [0.2, 0.9, float("nan")],
            "utilisation_basis": ["proxy", "proxy", ""],
            "trains_per_day": [40.0, 180.0, float("nan")],
            "underused": pd.array([True, False, pd.NA], dtype="boolean"),
            "underused_threshold": 0.4,
        },
        geometry=[LineString([(109.9, 30.25), (112.1, 30.25)]), LineString([(109.9, 30.75), (112.1, 30.75)]),
                  LineString([(110.25, 29.9), (110.25, 31.6)])],
        crs="EPSG:4326",
    )


def test_map_class() -> None:
    got = und.map_class(_lines())
    assert list(got) == ["high-speed underused", "fast", "conventional"]  # unknown utilisation: not underused
    assert list(und.map_class(_lines().drop(columns="underused"))) == ["high-speed", "fast", "conventional"]
    with pytest.raises(InputError, match="class"):
        und.map_class(pd.DataFrame({"x": [1]}))


def test_underused_table_units_and_shrinking_share() -> None:
    units = synthetic_units()
    out = und.underused_lines(_lines(), units)
    assert list(out["line_id"]) == ["H"] and list(out.columns[:-1]) == list(und.UNDERUSED_COLUMNS)
    row = out.iloc[0]
    first_row = units.iloc[:4]  # the line y = 30.25 crosses the four units of the first row
    assert row["unit_ids"].split(";") == list(first_row["unit_id"])  # in the order of the units
    assert row["n_units"] == 4 and row["n_shrinking"] == int(first_row["shrinking"].sum())
    assert row["shrinking_share"] == pytest.approx(first_row["shrinking"].mean())
    p10, p20 = first_row["pop_2010"].sum(), first_row["pop_2020"].sum()
    assert row["pop_change_pct"] == pytest.approx(100 * (p20 - p10) / p10)
    assert row["map_class"] == "high-speed underused" and row["underused_threshold"] == 0.4
    assert out.crs.equals("EPSG:4326")
    none = und.underused_lines(_lines().assign(underused=False), units)
    assert none.empty and list(none.columns[:-1]) == list(und.UNDERUSED_COLUMNS)
    with pytest.raises(CRSError):
        und.underused_lines(_lines().to_crs("EPSG:32649"), units)


def test_rail_categories_and_qml_dash_underused() -> None:
    cats = styles.rail_categories(["conventional", "high-speed underused", "high-speed", "fast underused"],
                                  underused_note="utilisation < 0.4")
    assert [c.value for c in cats] == ["high-speed", "high-speed underused", "fast underused", "conventional"]
    under = [c for c in cats if c.dashed]
    assert {c.color for c in under} == {styles.UNDERUSED_COLOR}
    assert all("underused" in c.label and "utilisation < 0.4" in c.label for c in under)
    qml = styles.categorized_qml("map_class", cats, "line")
    dashes = re.findall(r'<Option name="use_custom_dash" type="QString" value="(\d)" />', qml)
    assert dashes == ["0", "1", "1", "0", "0"]  # the four categories, then the source symbol


def test_export_style_of_rail_lines_has_the_underused_class() -> None:
    lines = _lines().assign(map_class=lambda d: und.map_class(d))
    layers = assemble_layers(synthetic_units(), layers={
        "rail_lines": lines, "underused_lines": und.underused_lines(lines, synthetic_units())})
    default = next(s for s in layers["rail_lines"].styles if s.default)
    assert default.name == "Rail lines, underused dashed"
    assert 'value="high-speed underused"' in default.qml
    assert "未充分利用 underused (utilisation &lt; 0.4): 1" in default.qml
    assert next(s for s in layers["underused_lines"].styles if s.default).qml.count('value="1"') >= 1


def test_atlas_rail_page_legend_has_an_underused_class() -> None:
    lines = _lines().assign(map_class=lambda d: und.map_class(d), geometry_source="threaded")
    data = atlas.prepare_atlas(synthetic_units(), rail_lines=lines)
    family = atlas.cjk_font(atlas.atlas_text(data))
    assert family
    with pytest.warns(DataQualityWarning, match="no data"):  # the synthetic units have no bands nor LISA
        specs = atlas.plan_pages(data, per_province=True)
    spec = next(s for s in specs if s.key == "rail_corridors")
    province = next(s for s in specs if not s.national)
    pages = {p.key: p for p in atlas.atlas_pages(data, specs=[spec, province])}
    for key, want_label in (("rail_corridors", "0.20"), (province.key, "京沪高铁 0.20")):
        fig = pages[key].figure
        legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
        texts = [t.get_text() for t in legend.get_texts()]
        under = [t for t in texts if "underused" in t]
        assert under == ["高速 High-speed, 未充分利用 underused (1)"], texts
        handle = legend.legend_handles[texts.index(under[0])]
        assert isinstance(handle, Line2D) and handle.get_linestyle() == "--"
        assert handle.get_color() == styles.UNDERUSED_COLOR
        labels = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert want_label in labels
    note = " ".join(t.get_text() for t in pages["rail_corridors"].figure.texts)
    assert "utilisation < 0.4" in note.replace("\n", " ")
