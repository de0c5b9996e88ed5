"""Hostile inputs: every bad input ends in one message, the documented exit code, outputs untouched.

(The lock file ``.geo_pipeline.lock`` is not an output and is left out of the comparisons.)

Each case copies the real work folder of the session run (hard links: outputs
are replaced by rename, never edited), damages one real input, runs one stage
with ``--overwrite`` and checks the exit code, the message's key words and
that every file of ``data_processed`` is byte-identical afterwards (no output
replaced, no temporary file left).

Damaged census tables are made "official" by recording their SHA-256 as the
fetched one in the manifest (as for another edition of the table), so the
content checks are what is tested; the case ``raw_edited_after_fetch`` does not
and expects the checksum error (exit 3).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import write_config

from geo_pipeline import DataQualityWarning, fetch
from geo_pipeline._io import read_layer, sha256
from geo_pipeline._outputs import LOCK_NAME
from geo_pipeline.cli import main

CENSUS = "census"
C2010 = f"{CENSUS}/census_county_2010_v1.xlsx"
C2020 = f"{CENSUS}/census_county_2020_v1.xlsx"
CITY = f"{CENSUS}/census_city_2010-2020_v1.csv"


# --------------------------------------------------------------------------- helpers
def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (names included: a leftover file is a difference)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != LOCK_NAME)
    # _io.sha256 hashes a file version once per process (inode, size, mtime): the clones share
    # the session's files by hard links, so each case hashes only what it changed
    return {p.name: sha256(p) for p in files}


def clone_workdir(src: Path, dst: Path, mirror: Path, extra: str = "") -> Path:
    """Hard-link the session's data_raw and data_processed into ``dst``; return its config."""
    for sub in ("data_raw", "data_processed"):
        for p in (src / sub).rglob("*"):
            if p.is_file() and p.name != LOCK_NAME:  # a linked lock file would be the same lock
                q = dst / sub / p.relative_to(src / sub)
                q.parent.mkdir(parents=True, exist_ok=True)
                os.link(p, q)
    return write_config(dst, mirror, extra)


def replace_file(path: Path, data: bytes) -> None:
    """Give ``path`` new content without touching the (hard-linked) original."""
    path.unlink()
    path.write_bytes(data)


_SHEET = "xl/worksheets/sheet1.xml"


def edit_xlsx(path: Path, edits: dict[str, object]) -> None:
    """Set cells of the first sheet (``None`` empties a cell) by editing the sheet XML."""
    with zipfile.ZipFile(path) as zin:
        members = {n: zin.read(n) for n in zin.namelist()}
    xml = members[_SHEET].decode("utf-8")
    for ref, value in edits.items():
        pattern = re.compile(rf'<c r="{ref}"(?:[^>]*?/>|[^>]*?>.*?</c>)', re.S)
        assert len(pattern.findall(xml)) == 1, ref
        if value is None:
            cell = f'<c r="{ref}"/>'
        elif isinstance(value, str):
            cell = f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>'
        else:
            cell = f'<c r="{ref}"><v>{value}</v></c>'
        xml = pattern.sub(cell, xml)
    members[_SHEET] = xml.encode("utf-8")
    path.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in members.items():
            zout.writestr(name, data)


def edit_csv(path: Path, edit: Callable[[pd.DataFrame], None]) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    edit(frame)
    path.unlink()
    frame.to_csv(path, index=False, encoding="utf-8-sig", quoting=csv.QUOTE_ALL)


def trust(processed: Path, raw: Path, rel: str) -> None:
    """Accept the damaged file as fetched (as for another edition): record its SHA-256 in the manifest."""
    manifest = processed / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["stages"]["fetch"]["inputs"][rel]["sha256"] = hashlib.sha256((raw / rel).read_bytes()).hexdigest()
    replace_file(manifest, json.dumps(data, ensure_ascii=False, indent=2).encode("utf-8"))


def invoke(cfg: Path, *args: str) -> Result:
    with warnings.catch_warnings():
        warnings.simplefilter("default", DataQualityWarning)
        return CliRunner().invoke(main, ["-c", str(cfg), *args], catch_exceptions=False)


# --------------------------------------------------------------------------- cases
def _set(col: str, row: int, value: str) -> Callable[[pd.DataFrame], None]:
    def edit(frame: pd.DataFrame) -> None:
        frame.loc[row, col] = value

    return edit


# (id, file, damage, trusted, exit code, key words of the message)
CASES = [
    ("county_duplicated_code", C2020, {"A6": 110101}, True, 2,
     ["census_county_2020_v1.xlsx", "code 110101 appears on 2 rows", "Excel row 5 (东城区)",
      "Excel row 6 (西城区)"]),
    ("county_blank_population_2020", C2020, {"E5": None}, True, 2,
     ["census_county_2020_v1.xlsx", "Excel row 5 (东城区, 110101)", "'人口数_合计' is blank"]),
    ("county_blank_population_2010", C2010, {"C4": None}, True, 2,
     ["census_county_2010_v1.xlsx", "Excel row 4 (东城区, 110101)", "'合计' is blank"]),
    ("county_unknown_code_and_name", C2020, {"A5": 119999, "D5": "无名区"}, True, 2,
     ["1 census unit row(s) match no polygon", "2020 Excel row 5 code 119999 无名区 (population 708829)",
      'unknown_codes = "warn"']),
    ("city_not_numeric", CITY, _set("popu_2020", 0, "abc"), True, 2,
     ["census_city_2010-2020_v1.csv", "line 2 (北京市): popu_2020 = 'abc' is not a number"]),
    ("city_negative", CITY, _set("popu_2010", 1, "-5"), True, 2,
     ["census_city_2010-2020_v1.csv", "line 3 (天津市): popu_2010 = '-5' is negative"]),
    ("city_duplicated_code", CITY, _set("city_code", 1, "110100"), True, 2,
     ["census_city_2010-2020_v1.csv", "city_code 110100 appears on 2 lines", "line 2 (北京市)",
      "line 3 (天津市)"]),
    ("raw_edited_after_fetch", CITY, _set("popu_2020", 0, "21893096"), False, 3,
     ["census_city_2010-2020_v1.csv", "SHA-256 mismatch", "changed after fetch", "fetch --overwrite"]),
]


@pytest.fixture(scope="module")
def population_done(run_stage: Callable[[str], Path]) -> Path:
    """The session's real work folder after the population stage."""
    return run_stage("population").parent


@pytest.mark.parametrize(("file", "damage", "trusted", "code", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_census_input(
    population_done: Path, mirror: Path, tmp_path: Path,
    file: str, damage: object, trusted: bool, code: int, words: list[str],
) -> None:
    cfg = clone_workdir(population_done, tmp_path, mirror)
    target = tmp_path / "data_raw" / file
    if file.endswith(".xlsx"):
        replace_file(target, target.read_bytes())
        edit_xlsx(target, damage)  # type: ignore[arg-type]
    else:
        replace_file(target, target.read_bytes())
        edit_csv(target, damage)  # type: ignore[arg-type]
    if trusted:
        trust(tmp_path / "data_processed", tmp_path / "data_raw", file)
    before = digests(tmp_path / "data_processed")
    result = invoke(cfg, "-q", "population", "--overwrite")
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, result.output
    assert "Traceback" not in result.output
    assert digests(tmp_path / "data_processed") == before


def test_unknown_codes_warn_gives_no_figure_not_minus_100(
    population_done: Path, mirror: Path, tmp_path: Path,
) -> None:
    cfg = clone_workdir(population_done, tmp_path, mirror, '[population]\nunknown_codes = "warn"\n')
    target = tmp_path / "data_raw" / C2020
    replace_file(target, target.read_bytes())
    edit_xlsx(target, {"A5": 119999, "D5": "无名区"})
    trust(tmp_path / "data_processed", tmp_path / "data_raw", C2020)
    with pytest.warns(DataQualityWarning) as record:
        result = CliRunner().invoke(main, ["-c", str(cfg), "-q", "population", "--overwrite"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    messages = " ".join(str(w.message) for w in record)
    assert "2020 Excel row 5 code 119999 无名区 (population 708829)" in messages
    units = read_layer(tmp_path / "data_processed" / "population.gpkg", "units").set_index("unit_id")
    dongcheng = units.loc["110101"]
    good = read_layer(population_done / "data_processed" / "population.gpkg", "units").set_index("unit_id")
    assert dongcheng["pop_2010"] == good.loc["110101", "pop_2010"] > 0
    assert pd.isna(dongcheng["pop_2020"]) and pd.isna(dongcheng["change_pct"])
    assert not dongcheng["shrinking"]
    # every other unit keeps its figures
    others = units.index != "110101"
    assert units.loc[others, "pop_2020"].astype("int64").equals(good.loc[units.index[others], "pop_2020"])


def test_registry_paths_cannot_escape_data_raw(tmp_path: Path) -> None:
    from geo_pipeline import InputError

    for bad in ("../outside.csv", "/etc/passwd", "census/../../x", "C:/x"):
        reg = tmp_path / "r.toml"
        text = f'[[file]]\npath = "{bad}"\nsha256 = "{"0" * 64}"\nmethod = "mirror"\n'
        reg.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match="plain relative POSIX path"):
            fetch.load_registry(reg)


# --------------------------------------------------------------------------- other stages and the config
def _corrupt(rel: str) -> Callable[[Path], str]:
    def setup(folder: Path) -> str:
        target = folder / "data_raw" / rel
        data = target.read_bytes()
        replace_file(target, data[: len(data) // 3])
        trust(folder / "data_processed", folder / "data_raw", rel)
        return ""

    return setup


def _empty_lines(folder: Path) -> str:
    import geopandas as gpd
    import shapely

    path = folder / "empty.gpkg"
    line = shapely.LineString([(0, 0), (1, 1)])
    frame = gpd.GeoDataFrame({"name": ["x"]}, geometry=[line], crs="EPSG:4326")
    frame.iloc[:0].to_file(path, layer="lines")
    return f'[infrastructure]\nlines = "{path.as_posix()}"\n'


def _config(text: str) -> Callable[[Path], str]:
    return lambda folder: text


# (id, stage, setup returning extra config, exit code, key words)
OTHER_CASES = [
    ("corrupt_zip", "infrastructure", _corrupt("rail/osm_railway_stations.zip"), 2,
     ["osm_railway_stations.zip", "not a readable zip file"]),
    ("corrupt_xlsx", "population", _corrupt(C2020), 2,
     ["census_county_2020_v1.xlsx", "cannot read as an Excel workbook"]),
    ("empty_lines_layer", "infrastructure", _empty_lines, 2, ["empty.gpkg", "no line with a geometry"]),
    ("http_base_url", "fetch", _config('[fetch]\nbase_url = "http://example.org"\n'), 2,
     ["[fetch]", "https://", "'http://example.org'"]),
    ("too_many_permutations", "autocorrelation", _config("[autocorrelation]\npermutations = 1000000\n"), 2,
     ["permutations must be in [0, 99999]", "1000000"]),
    ("lock_timeout_negative", "distance", _config("lock_timeout_s = -1\n"), 2,
     ["lock_timeout_s must be >= 0"]),
]


@pytest.fixture(scope="module")
def infrastructure_done(run_stage: Callable[[str], Path]) -> Path:
    """The session's real work folder after the infrastructure stage."""
    return run_stage("infrastructure").parent


@pytest.mark.parametrize(("stage", "setup", "code", "words"), [c[1:] for c in OTHER_CASES],
                         ids=[c[0] for c in OTHER_CASES])
def test_bad_input_other_stages(
    infrastructure_done: Path, mirror: Path, tmp_path: Path,
    stage: str, setup: Callable[[Path], str], code: int, words: list[str],
) -> None:
    cfg = clone_workdir(infrastructure_done, tmp_path, mirror)
    extra = setup(tmp_path)
    text = cfg.read_text(encoding="utf-8")
    if extra.startswith("lock_timeout_s"):
        text = text.replace("[paths]\n", "[paths]\n" + extra)
    else:
        text += extra
    cfg.write_text(text, encoding="utf-8")
    before = digests(tmp_path / "data_processed")
    result = invoke(cfg, "-q", stage, "--overwrite")
    assert result.exit_code == code, result.output
    for word in words:
        assert word in result.output, result.output
    assert "Traceback" not in result.output
    assert digests(tmp_path / "data_processed") == before


def test_config_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "geo_pipeline.toml"
    cfg.write_bytes("[atlas]\nfont = \"宋体\"\n".encode("gbk"))
    result = CliRunner().invoke(main, ["-c", str(cfg), "run"])
    assert result.exit_code == 2, result.output
    assert f"{cfg}: not UTF-8 text" in result.output and "save the config file as UTF-8" in result.output
