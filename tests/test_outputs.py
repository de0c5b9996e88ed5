"""One writer per output folder, outputs replaced as one unit, I/O failures as one message.

Real processes race on a clone of the session's real work folder (hard links:
outputs are replaced by rename, never edited in place).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
import shapely
from click.testing import CliRunner
from test_bad_inputs import clone_workdir, digests

from geo_pipeline import OutputExistsError
from geo_pipeline._io import TRUSTED_ATTR, read_layer, sha256, write_csv
from geo_pipeline._outputs import LOCK_NAME, output_batch
from geo_pipeline._validate import check_frame
from geo_pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export_done(run_stage: Callable[[str], Path]) -> Path:
    """The session's real work folder after the export stage."""
    return run_stage("export").parent


def cli(cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run geo-pipeline in a new process (this tree first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "geo_pipeline.cli", "-c", str(cfg), *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )


_HOLDER = """
import sys, time
from geo_pipeline._outputs import output_lock
with output_lock(sys.argv[1], timeout_s=0):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def lock_holder(folder: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the lock of ``folder`` for ``seconds``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder), str(seconds)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def manifest_agrees(processed: Path, stage: str) -> None:
    """Every output the manifest records for ``stage`` has the recorded SHA-256."""
    entry = json.loads((processed / "manifest.json").read_text(encoding="utf-8"))["stages"][stage]
    assert entry["output_sha256"], entry
    for key, digest in entry["output_sha256"].items():
        assert hashlib.sha256(Path(entry["outputs"][key]).read_bytes()).hexdigest() == digest, key


# --------------------------------------------------------------------------- unit level
def test_batch_replaces_all_outputs_or_none(tmp_path: Path) -> None:
    old = pd.DataFrame({"a": [1]})
    write_csv(tmp_path / "b.csv", old)
    before = digests(tmp_path)
    with pytest.raises(OutputExistsError, match=r"b\.csv exists; pass --overwrite"):
        with output_batch():
            write_csv(tmp_path / "a.csv", pd.DataFrame({"a": [2]}))  # new: allowed
            write_csv(tmp_path / "b.csv", pd.DataFrame({"a": [2]}), overwrite=False)  # refused at once
    assert digests(tmp_path) == before  # a.csv not written either, no temporary left
    with pytest.raises(OutputExistsError, match="Nothing was replaced"):
        with output_batch():
            write_csv(tmp_path / "a.csv", pd.DataFrame({"a": [2]}))
            (tmp_path / "a.csv").write_text("appeared meanwhile")  # another writer, found at commit
    assert (tmp_path / "a.csv").read_text() == "appeared meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    with output_batch():
        write_csv(tmp_path / "a.csv", pd.DataFrame({"a": [3]}), overwrite=True)
        write_csv(tmp_path / "b.csv", pd.DataFrame({"a": [3]}), overwrite=True)
        assert (tmp_path / "b.csv").read_bytes() != b"\xef\xbb\xbfa\n3\n"  # not yet moved
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes() == b"\xef\xbb\xbfa\n3\n"


# --------------------------------------------------------------------------- two processes
def test_second_run_refuses_then_waits_for_the_lock(export_done: Path, mirror: Path, tmp_path: Path) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    processed = tmp_path / "data_processed"
    before = digests(processed)
    fast = tmp_path / "fast.toml"
    fast.write_text(cfg.read_text(encoding="utf-8").replace("[paths]\n", "[paths]\nlock_timeout_s = 0.5\n"),
                    encoding="utf-8")
    with lock_holder(processed, 60) as holder:
        res = cli(fast, "distance", "--overwrite")
    assert res.returncode == 5, res.stderr
    assert f"is in use by another geo-pipeline run (pid {holder.pid})" in res.stderr
    assert "Traceback" not in res.stderr
    assert digests(processed) == before
    # the second run waits while the lock is held, and runs once the holder has gone
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with lock_holder(processed, 300) as holder:
        proc = subprocess.Popen([sys.executable, "-m", "geo_pipeline.cli", "-c", str(cfg), "distance",
                                 "--overwrite"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                env=env)
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the run's first words: it waits
        assert f"is in use by another run (pid {holder.pid}); waiting up to 60 s" in first, first
        assert digests(processed) == before
        holder.terminate()
        _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, first + rest
    manifest_agrees(processed, "distance")


def test_two_runs_race_on_one_output(export_done: Path, mirror: Path, tmp_path: Path) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("[paths]\n", "[paths]\nlock_timeout_s = 0\n"),
                   encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "geo_pipeline.cli", "-c", str(cfg), "distance", "--overwrite"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes in ([0, 0], [0, 5]), outs
    if codes == [0, 5]:
        assert any("is in use by another geo-pipeline run" in o for o in outs)
    processed = tmp_path / "data_processed"
    manifest_agrees(processed, "distance")  # distance.gpkg, the CSVs and the manifest agree
    hidden = [p.name for p in processed.iterdir() if p.is_file() and p.name.startswith(".")]
    assert hidden == [LOCK_NAME]  # no temporary file left by either run


def test_exit_4_replaces_nothing_and_leftovers_are_cleaned(
    export_done: Path, mirror: Path, tmp_path: Path
) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    processed = tmp_path / "data_processed"
    (processed / "distance.gpkg").unlink()
    leftovers = {".population.abcd1234.gpkg", ".population.abcd1234.gpkg-journal", ".shrinkage.x_9y8z7w.gpkg"}
    for name in leftovers:
        (processed / name).write_bytes(b"left by a killed run")
    (processed / ".keep.me").write_text("not ours")
    before = digests(processed)
    res = CliRunner().invoke(main, ["-c", str(cfg), "distance"])
    assert res.exit_code == 4, res.output
    assert "band_summary.csv exists; pass --overwrite" in res.output
    after = digests(processed)
    assert not (processed / "distance.gpkg").exists()
    assert {k: v for k, v in before.items() if k not in leftovers} == after
    assert ".keep.me" in after


# --------------------------------------------------------------------------- stale and trusted inputs
def test_edited_output_is_stale(export_done: Path, mirror: Path, tmp_path: Path) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    processed = tmp_path / "data_processed"
    target = processed / "distance.gpkg"
    data = target.read_bytes()
    target.unlink()
    target.write_bytes(data + b"\0")
    before = digests(processed)
    res = CliRunner().invoke(main, ["-c", str(cfg), "export", "--overwrite"])
    assert res.exit_code == 3, res.output
    assert "distance.gpkg is not the file the distance stage wrote" in res.output
    assert "geo-pipeline distance --overwrite" in res.output
    assert digests(processed) == before


def test_rerun_earlier_stage_makes_later_outputs_stale(
    export_done: Path, mirror: Path, tmp_path: Path
) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    processed = tmp_path / "data_processed"
    args = ["-c", str(cfg), "-q", "population", "--overwrite", "--shrink-threshold", "-5"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    before = digests(processed)
    res = CliRunner().invoke(main, ["-c", str(cfg), "export", "--overwrite"])
    assert res.exit_code == 3, res.output
    assert "is stale: the distance stage made it from" in res.output
    assert "population.gpkg" in res.output and "geo-pipeline run --from distance --overwrite" in res.output
    assert digests(processed) == before


def test_stage_outputs_are_trusted_and_not_revalidated(export_done: Path, tmp_path: Path) -> None:
    processed = export_done / "data_processed"
    units = read_layer(processed / "population.gpkg", "units")
    assert units.attrs[TRUSTED_ATTR] == "population"
    # the trusted frame skips the validity check; the same geometry from an unlisted file does not
    bowtie = shapely.Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    bad = units.head(2).copy()
    bad.loc[bad.index[0], "geometry"] = bowtie
    assert not check_frame(bad, name="t", geometry=True)
    copy = tmp_path / "copy.gpkg"
    gpd.GeoDataFrame(bad.drop(columns=[]), crs=units.crs).to_file(copy, layer="units")
    untrusted = read_layer(copy, "units")
    assert TRUSTED_ATTR not in untrusted.attrs
    assert "invalid geometries" in str(check_frame(untrusted, name="t", geometry=True).items)
    assert sha256(processed / "population.gpkg")


def _same_frame(got: pd.DataFrame, want: pd.DataFrame, where: str) -> None:
    assert type(got) is type(want), where
    assert list(got.columns) == list(want.columns) and got.dtypes.equals(want.dtypes), where
    assert got.attrs == want.attrs, where
    pd.testing.assert_index_equal(got.index, want.index, exact=True)
    if isinstance(want, gpd.GeoDataFrame):
        assert got.geometry.name == want.geometry.name and got.crs == want.crs, where
        assert got.crs.to_wkt() == want.crs.to_wkt(), where
        assert list(shapely.to_wkb(got.geometry.values)) == list(shapely.to_wkb(want.geometry.values)), where
        got = pd.DataFrame(got.drop(columns=got.geometry.name))
        want = pd.DataFrame(want.drop(columns=want.geometry.name))
    pd.testing.assert_frame_equal(got, want, check_exact=True, check_flags=True)


def test_frames_read_again_equal_a_fresh_read(export_done: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spatial layer of a real run, read again from the process cache, equals a read of the file."""
    import pyogrio

    import geo_pipeline._io as io_mod

    processed = export_done / "data_processed"
    reads: list[str] = []
    real_read = io_mod.pyogrio.read_dataframe
    monkeypatch.setattr(io_mod.pyogrio, "read_dataframe",
                        lambda p, **k: reads.append(f"{Path(p).name}:{k['layer']}") or real_read(p, **k))
    checked = []
    for gpkg in sorted(processed.glob("*.gpkg")):
        for layer, geom_type in pyogrio.list_layers(gpkg):
            if geom_type is None:
                continue  # attribute tables are not kept
            name = f"{gpkg.name}:{layer}"
            monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
            first = read_layer(gpkg, layer)
            again = read_layer(gpkg, layer)
            assert reads.count(name) == 1, name  # the second read came from the cache
            monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
            fresh = read_layer(gpkg, layer)
            assert reads.count(name) == 2, name
            _same_frame(again, fresh, name)
            _same_frame(first, fresh, name)
            checked.append(name)
    # the layers the stages read more than once in a run are among them
    assert {"population.gpkg:units", "population.gpkg:prefectures", "distance.gpkg:cores",
            "boundaries.gpkg:counties", "shrinkage.gpkg:units"} <= set(checked)


# --------------------------------------------------------------------------- full disk, read-only folder
@contextlib.contextmanager
def small_filesystem(path: Path, *, size: str = "2m", read_only: bool = False) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted on ``path`` (root only; skipped elsewhere)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_output_folder_stops_before_any_work(
    export_done: Path, mirror: Path, tmp_path: Path
) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    with small_filesystem(tmp_path / "ro", read_only=True) as ro:
        text = cfg.read_text(encoding="utf-8")
        text = text.replace((tmp_path / "data_processed").as_posix(), ro.as_posix())
        cfg.write_text(text, encoding="utf-8")
        res = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--overwrite"])
        assert res.exit_code == 6, res.output
        assert f"{ro}" in res.output and "Read-only file system" in res.output
        assert "the file system is read-only" in res.output
        assert "distance:" not in res.output  # no stage work was started
        assert list(ro.iterdir()) == []


def test_full_disk_is_one_message_and_leaves_nothing(mirror: Path, tmp_path: Path) -> None:
    from conftest import write_config

    cfg = write_config(tmp_path, mirror)
    with small_filesystem(tmp_path / "data_processed", size="2m") as full:
        res = CliRunner().invoke(main, ["-c", str(cfg), "-q", "boundaries"])
        assert res.exit_code == 6, res.output
        assert "boundaries.gpkg" in res.output and "the disk is full" in res.output
        assert "Traceback" not in res.output
        assert sorted(p.name for p in full.iterdir()) == [LOCK_NAME]  # no temporary left behind


def test_export_refuses_before_its_work(export_done: Path, mirror: Path, tmp_path: Path) -> None:
    cfg = clone_workdir(export_done, tmp_path, mirror, "")
    processed = tmp_path / "data_processed"
    before = digests(processed)
    res = CliRunner().invoke(main, ["-c", str(cfg), "export"])
    assert res.exit_code == 4, res.output
    assert "shrinkage.gpkg exists; pass --overwrite" in res.output
    assert "export: wrote" not in res.output  # refused before reading and assembling the layers
    assert digests(processed) == before


def test_manifest_versions_looked_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from geo_pipeline import _io

    _io._versions_once.cache_clear()
    calls: list[str] = []
    real = metadata.version

    def counted(dist: str) -> str:
        calls.append(dist)
        return real(dist)

    monkeypatch.setattr(_io.metadata, "version", counted)
    path = tmp_path / "manifest.json"
    for stage in ("a", "b", "c"):
        _io.write_manifest(path, stage=stage, inputs={}, outputs={}, parameters={})
    n = len(calls)
    assert n >= 10 and n == len(set(calls))  # one look-up per library, for the first manifest only
    expected = {"python": _io.platform.python_version(), "gdal": _io.pyogrio.__gdal_version_string__}
    for dist in set(calls):
        with contextlib.suppress(metadata.PackageNotFoundError):
            expected[dist] = real(dist)
    assert _io.read_manifest(path)["versions"] == expected
    _io._versions()["python"] = "edited"  # callers get a copy
    assert _io._versions()["python"] == _io.platform.python_version()
    assert len(calls) == n
    _io._versions_once.cache_clear()
