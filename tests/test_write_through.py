"""Write-through of written GeoPackage layers into the frame cache of geo_pipeline._io.

A layer served from the cache after :func:`geo_pipeline._io.write_gpkg` must be
exactly what a read of the file gives (attributes, dtypes, index, CRS, attrs and
geometry WKB), or not be cached at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from conftest import write_config
from test_outputs import _same_frame

import geo_pipeline._io as io_mod
import geo_pipeline.cli._export as cli_export
from geo_pipeline import DataQualityWarning, StaleInputError
from geo_pipeline._io import TRUSTED_ATTR, check_provenance, read_layer, write_gpkg, write_manifest
from geo_pipeline.cli import StageContext, main
from geo_pipeline.config import load_settings

SQUARE = shapely.box(0, 0, 1, 1)
#: pyogrio's own read, kept before tests count the reads of geo_pipeline._io
_READ = pyogrio.read_dataframe
ALBERS = "+proj=aea +lat_1=25 +lat_2=47 +lat_0=0 +lon_0=105 +x_0=0 +y_0=0 +ellps=krass +units=m +no_defs"


def _attrs(n: int) -> dict[str, Any]:
    """Attribute columns with missing values in int, str, float and bool columns."""
    return {
        "unit_id": pd.array(["a", None, "c"][:n], dtype="string"),
        "name": ["x", None, "z"][:n],
        "count": pd.array([1, None, 3][:n], dtype="Int64"),
        "plain_int": np.arange(n, dtype="int32"),
        "share": [0.5, float("nan"), -0.0][:n],
        "flag": pd.array([True, None, False][:n], dtype="boolean"),
    }


def _layers() -> dict[str, gpd.GeoDataFrame]:
    parts = [shapely.box(2, 2, 3, 3), shapely.box(4, 4, 5, 5)]
    multi = shapely.MultiPolygon([SQUARE, *parts])
    collection = shapely.GeometryCollection([SQUARE, shapely.Point(5, 5)])
    frames = {
        # expected in the cache: one geometry type, finite 2-D coordinates
        "plain": gpd.GeoDataFrame(_attrs(3), geometry=[SQUARE, multi.geoms[1], SQUARE], crs="EPSG:4326",
                                  index=[10, 12, 11]),
        "multi": gpd.GeoDataFrame(_attrs(2), geometry=[multi, shapely.MultiPolygon([SQUARE])],
                                  crs="EPSG:4326"),
        "lines": gpd.GeoDataFrame(_attrs(3), geometry=shapely.linestrings([[0, 0], [1, 1.0000000000000002]],
                                                                          indices=[0, 0]).tolist() * 3,
                                  crs="EPSG:4326"),
        "projected": gpd.GeoDataFrame(_attrs(2), geometry=[shapely.box(-1e6, 3e6, -9.9e5, 3.1e6), SQUARE],
                                      crs=ALBERS),
        # a read would differ (or might): not cached
        "mixed": gpd.GeoDataFrame(_attrs(2), geometry=[SQUARE, multi], crs="EPSG:4326"),  # promoted to multi
        "empty": gpd.GeoDataFrame(_attrs(2), geometry=[SQUARE, shapely.Polygon()], crs="EPSG:4326"),
        "missing": gpd.GeoDataFrame(_attrs(2), geometry=[SQUARE, None], crs="EPSG:4326"),
        "z": gpd.GeoDataFrame(_attrs(2), geometry=[shapely.Point(1, 2, 3), shapely.Point(1, 2, 4)],
                              crs="EPSG:4326"),
        # (a LinearRing layer, also excluded, makes pyogrio 0.13 / GDAL crash while writing)
        "collection": gpd.GeoDataFrame(_attrs(2), crs="EPSG:4326",
                                       geometry=[collection, collection]),
        "nan_point": gpd.GeoDataFrame(_attrs(2), crs="EPSG:4326",
                                      geometry=[shapely.Point(1, 2), shapely.Point(math.nan, math.nan)]),
        "no_attributes": gpd.GeoDataFrame(geometry=[SQUARE, SQUARE], crs="EPSG:4326"),
    }
    # the geometry column elsewhere than last and under another name
    frames["renamed"] = frames["plain"].rename_geometry("shape")[["shape", "unit_id", "count"]]
    return frames


CACHED = {"plain", "multi", "lines", "projected", "renamed"}


def _count_geometry_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    real_read = io_mod.pyogrio.read_dataframe

    def counting(p: Any, **k: Any) -> Any:
        if k.get("read_geometry", True):
            reads.append(f"{Path(p).name}:{k['layer']}")
        return real_read(p, **k)

    monkeypatch.setattr(io_mod.pyogrio, "read_dataframe", counting)
    return reads


def _fresh(path: Path, layer: str) -> gpd.GeoDataFrame:
    """A read of the file as read_layer makes it, without any cache."""
    frame = _READ(path, layer=layer, use_arrow=True)
    trusted = check_provenance(path)
    if trusted:
        frame.attrs[TRUSTED_ATTR] = trusted
    return frame


def test_written_layers_are_served_as_a_read_gives_them_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
    monkeypatch.setattr(io_mod, "_WRITE_THROUGH_MIN_COORDS", 0)  # small layers too
    out = tmp_path / "x.gpkg"
    layers = _layers()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # geopandas: "GeoSeries.notna" on the missing geometry
        write_gpkg(out, layers, cache=True)
    reads = _count_geometry_reads(monkeypatch)
    # not in a manifest: not trusted, so never served from the cache
    read_layer(out, "plain")
    assert reads == ["x.gpkg:plain"]
    reads.clear()
    write_manifest(tmp_path / "manifest.json", stage="s", inputs={}, outputs={"x": out}, parameters={})
    served = {}
    for name in layers:
        before = len(reads)
        served[name] = read_layer(out, name)
        if len(reads) == before:
            _same_frame(served[name], _fresh(out, name), name)
    cached = {name for name in layers if f"x.gpkg:{name}" not in reads}
    assert cached == CACHED
    # what the written frames became in the file: the cache gives the same
    assert list(served["plain"].index) == [0, 1, 2] and served["plain"].attrs == {TRUSTED_ATTR: "s"}
    assert list(served["renamed"].columns) == ["unit_id", "count", "geometry"]
    assert served["plain"]["count"].isna().tolist() == [False, True, False]
    assert set(served["mixed"].geom_type) == {"MultiPolygon"}
    # the caller's frame is its own
    served["plain"].loc[0, "share"] = 99.0
    assert read_layer(out, "plain")["share"].tolist()[0] == 0.5


def test_cached_written_layer_is_checked_against_the_manifest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
    monkeypatch.setattr(io_mod, "_WRITE_THROUGH_MIN_COORDS", 0)
    out = tmp_path / "x.gpkg"
    write_gpkg(out, {"plain": _layers()["plain"], "small": _layers()["multi"]}, cache=True)
    assert [k[1] for k in io_mod._FRAMES] == ["plain", "small"]
    monkeypatch.setattr(io_mod, "_WRITE_THROUGH_MIN_COORDS", 13)  # "plain" has 15 coordinates, "small" 20
    io_mod._FRAMES.clear()
    write_gpkg(out, {"plain": _layers()["plain"], "small": _layers()["lines"]}, overwrite=True, cache=True)
    manifest = tmp_path / "manifest.json"
    write_manifest(manifest, stage="s", inputs={}, outputs={"x": out}, parameters={})
    assert [k[1] for k in io_mod._FRAMES] == ["plain"]
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["stages"]["s"]["output_sha256"]["x"] = "0" * 64  # the file no longer matches its record
    manifest.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(StaleInputError, match="is not the file the s stage wrote"):
        read_layer(out, "plain")


def test_finite_coordinates_finds_any_nan_or_infinity() -> None:
    line = shapely.linestrings(np.arange(200.0).reshape(100, 2))
    geoms = np.array([line] * 150, dtype=object)
    assert io_mod._finite_coordinates(geoms)
    for bad in (math.nan, math.inf, -math.inf):
        for at in (0, 63, 64, 149):  # first and last of a chunk of 64, the last geometry
            broken = geoms.copy()
            with np.errstate(invalid="ignore"):
                broken[at] = shapely.linestrings([[0.0, 0.0], [1.0, bad]])
            assert not io_mod._finite_coordinates(broken), (bad, at)
    # finite values whose sum overflows: refused (the safe answer), never accepted wrongly
    assert not io_mod._finite_coordinates(np.array([shapely.linestrings([[1e308, 0], [1e308, 0]])]))


def test_frame_cache_keeps_the_recent_frames_within_the_coordinate_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
    monkeypatch.setattr(io_mod, "_FRAMES_MAX_COORDS", 12)
    square = gpd.GeoDataFrame(geometry=[SQUARE], crs="EPSG:4326")  # 5 coordinates
    for name in "abc":
        io_mod._remember(("p", name, (), 0), square)
    assert [k[1] for k in io_mod._FRAMES] == ["b", "c"]  # 15 > 12: the oldest dropped
    io_mod._remember(("p", "big", (), 0), gpd.GeoDataFrame(geometry=[SQUARE] * 3, crs="EPSG:4326"))
    assert [k[1] for k in io_mod._FRAMES] == ["big"]  # the newest is always kept
    monkeypatch.setattr(io_mod, "_FRAMES_MAX_COORDS", 10**9)
    monkeypatch.setattr(io_mod, "_FRAMES_MAX", 2)
    for name in "de":
        io_mod._remember(("p", name, (), 0), square)
    assert [k[1] for k in io_mod._FRAMES] == ["d", "e"]


def test_real_run_written_layers_served_equal_a_fresh_read(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every spatial layer written in a real run (both levels), as the cache serves it.

    Small layers too (in a plain run only layers of 100,000 coordinates or more are written
    through), and shrinkage.gpkg's as when report or atlas follow export in the run.
    """
    monkeypatch.setattr(io_mod, "_WRITE_THROUGH_MIN_COORDS", 0)
    monkeypatch.setattr(cli_export, "_read_later", lambda ctx: True)
    recorded: dict[tuple[Any, ...], gpd.GeoDataFrame] = {}
    real_remember = io_mod._remember

    def recording(key: tuple[Any, ...], frame: gpd.GeoDataFrame, *, copy: bool = True) -> None:
        if not copy:  # a write-through entry
            recorded[key] = frame.copy(deep=True)
        real_remember(key, frame, copy=copy)

    monkeypatch.setattr(io_mod, "_remember", recording)
    cfg = write_config(tmp_path, mirror)
    with warnings.catch_warnings():
        warnings.simplefilter("default", DataQualityWarning)
        result = CliRunner().invoke(main, ["-c", str(cfg), "-q", "run", "--to", "export"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    monkeypatch.setattr(io_mod, "_remember", real_remember)
    processed = tmp_path / "data_processed"
    with contextlib.closing(sqlite3.connect(processed / "shrinkage.gpkg")) as con:
        views = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert {"lisa", "prefecture_lisa"} <= views  # a view is read from the file
    written = {
        (str(gpkg.resolve()), layer)
        for gpkg in processed.glob("*.gpkg")
        for layer, geom_type in pyogrio.list_layers(gpkg)
        if geom_type is not None and not (gpkg.name == "shrinkage.gpkg" and layer in views)
    }
    assert {k[:2] for k in recorded} == written
    assert {Path(p).name for p, _ in written} >= {
        "boundaries.gpkg", "population.gpkg", "distance_prefecture.gpkg", "infrastructure_prefecture.gpkg",
        "shrinkage.gpkg"}
    big = {(Path(k[0]).name, k[1]) for k, f in recorded.items() if io_mod._coordinates(f) >= 100_000}
    assert big == {("boundaries.gpkg", "counties"), ("boundaries.gpkg", "prefectures"),
                   ("boundaries.gpkg", "provinces"), ("population.gpkg", "units"),
                   ("population.gpkg", "prefectures"), ("shrinkage.gpkg", "units"),
                   ("shrinkage.gpkg", "prefecture_units"), ("shrinkage.gpkg", "provinces")}  # in a plain run
    reads = _count_geometry_reads(monkeypatch)
    for key, frame in recorded.items():
        path, layer = Path(key[0]), key[1]
        st = os.stat(path)
        assert (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == key[3:7], path  # the final file
        size = int(shapely.get_num_coordinates(np.asarray(frame.geometry.values, dtype=object)).sum())
        monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict({key: (frame, size)}))
        served = read_layer(path, layer)
        assert not reads, reads  # from the cache
        _same_frame(served, _fresh(path, layer), f"{path.name}:{layer}")
        assert served.attrs[TRUSTED_ATTR]


def test_export_keeps_its_layers_only_for_a_later_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_all tells each stage which stages follow; export writes through when one reads its file."""
    import geo_pipeline.cli as cli_mod

    seen: dict[str, tuple[str, ...]] = {}
    monkeypatch.setattr(cli_mod, "_run_stage",
                        lambda module, ctx, levels, **k: seen.setdefault(ctx.stage, ctx.later))
    cfg = write_config(tmp_path, tmp_path / "no_mirror")
    result = CliRunner().invoke(main, ["-c", str(cfg), "-q", "run", "--from", "infrastructure",
                                       "--to", "report"])
    assert result.exit_code == 0, result.output
    assert seen == {"infrastructure": ("export", "report"), "export": ("report",), "report": ()}
    settings = load_settings(cfg)
    for later, keep in (((), False), (("report",), True), (("atlas", "qgis_project"), True),
                        (("qgis_project",), True), (("fetch",), False)):
        assert cli_export._read_later(StageContext(settings=settings, stage="export", later=later)) is keep
    assert StageContext(settings=settings).for_level("prefecture").later == ()


def test_stage_writes_through_only_when_stages_follow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single stage command does not pay for the write-through; a stage of `run` followed by others does."""
    monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
    monkeypatch.setattr(io_mod, "_WRITE_THROUGH_MIN_COORDS", 0)
    settings = load_settings(write_config(tmp_path, tmp_path / "no_mirror"))
    settings.path("data_processed").mkdir(parents=True, exist_ok=True)
    alone = StageContext(settings=settings, stage="population")
    alone.write_gpkg("alone.gpkg", {"plain": _layers()["plain"]})
    assert list(io_mod._FRAMES) == []
    in_run = StageContext(settings=settings, stage="population", later=("distance",))
    in_run.for_level("prefecture").write_gpkg("in_run.gpkg", {"plain": _layers()["plain"]})
    assert [(Path(k[0]).name, k[1]) for k in io_mod._FRAMES] == [("in_run.gpkg", "plain")]
    # the default of the library function is off
    write_gpkg(tmp_path / "lib.gpkg", {"plain": _layers()["plain"]})
    assert len(io_mod._FRAMES) == 1
