"""Tests of the fetch stage: registry, mirror copies, real pooch downloads from a local server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from geo_pipeline import ChecksumError, ConfigError, MissingInputError
from geo_pipeline.cli import main
from geo_pipeline.fetch import REPORT_COLUMNS, RegistryEntry, fetch_inputs, fetch_one, load_registry


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- registry
def test_registry_matches_provenance_and_mirror(mirror: Path) -> None:
    reg = {e.path: e for e in load_registry()}
    # The census hashes are published in PROVENANCE.md: an independent source.
    text = (mirror / "PROVENANCE.md").read_text(encoding="utf-8")
    pattern = r"- (\S+\.(?:xlsx|csv)) ([0-9a-f]{64})"
    published = {m.group(1): m.group(2) for m in re.finditer(pattern, text)}
    assert len(published) == 3
    for name, digest in published.items():
        assert reg[f"census/{name}"].sha256 == digest
    # Every mirror file (but PROVENANCE.md) is registered, with its hash.
    files = {p.relative_to(mirror).as_posix() for p in mirror.rglob("*") if p.is_file()} - {"PROVENANCE.md"}
    assert files == set(reg)
    for rel in files:
        assert _sha((mirror / rel).read_bytes()) == reg[rel].sha256, rel


def test_registry_sources_follow_provenance() -> None:
    reg = {e.path: e for e in load_registry()}
    assert reg["census/census_county_2010_v1.xlsx"].url() == (
        "https://raw.githubusercontent.com/leiii/census/0ba0f1efae092f4aa6569ef38e53b3bb4d2f0087/"
        "data/census/census_county_2010_v1.xlsx"
    )
    assert reg["osm/guixi_jiangxi.osm"].url().endswith(
        "16yunH/MapNavigation/dd0e7f5b3212fe9e8c84ad6a24a3f578f811e45b/backend/data/mapofgx.osm"
    )
    assert reg["rail/railways_lines.csv"].method == "download-gbk"
    assert reg["rail/osm_railway_stations.zip"].commit == "29eeb63f0c0216899de431156a5493eef0b27eae"
    mirror_only = sorted(p for p, e in reg.items() if e.method == "mirror")
    assert mirror_only == [
        "rail/LICENSE.Apache-2.0.txt", "rail/approx_corridors_keystations.geojson",
        "rail/derived_station_train_counts.csv",
    ]
    assert all(e.url() == "" for p, e in reg.items() if p in mirror_only)


def test_registry_is_package_data() -> None:
    import tomllib

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    globs = tomllib.loads(text)["tool"]["setuptools"]["package-data"]["geo_pipeline"]
    assert any(Path("data/registry.toml").match(g) for g in globs)


def test_bad_registry_is_rejected(tmp_path: Path) -> None:
    from geo_pipeline import InputError

    bad = tmp_path / "r.toml"
    bad.write_text('[[file]]\npath = "a.txt"\nsha256 = "xyz"\nmethod = "download"\n', encoding="utf-8")
    with pytest.raises(InputError, match="sha256 must be 64 lowercase hex digits"):
        load_registry(bad)
    bad.write_text(f'[[file]]\npath = "a.txt"\nsha256 = "{"0" * 64}"\nmethod = "ftp"\n', encoding="utf-8")
    with pytest.raises(InputError, match="method must be one of"):
        load_registry(bad)


# --------------------------------------------------------------------------- mirror
@pytest.fixture()
def small_mirror(tmp_path: Path) -> tuple[Path, list[RegistryEntry]]:
    root = tmp_path / "mirror"
    files = {"census/a.csv": b"code,pop\n110101,1\n", "rail/b.txt": "贵溪\n".encode()}
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append(RegistryEntry(path=rel, sha256=_sha(data), method="mirror"))
    return root, entries


def test_mirror_copy_then_keep(tmp_path: Path, small_mirror: tuple[Path, list[RegistryEntry]]) -> None:
    root, entries = small_mirror
    raw = tmp_path / "data_raw"
    report = fetch_inputs(raw, mirror=root, entries=entries)
    assert list(report.columns) == REPORT_COLUMNS
    assert report["action"].tolist() == ["copied", "copied"]
    assert (raw / "rail/b.txt").read_bytes() == (root / "rail/b.txt").read_bytes()
    stamp = (raw / "census/a.csv").stat().st_mtime_ns
    (root / "census/a.csv").unlink()  # not needed any more: kept files are not re-copied
    report = fetch_inputs(raw, mirror=root, entries=entries)
    assert report["action"].tolist() == ["kept", "kept"]
    assert (raw / "census/a.csv").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (raw / "census").iterdir()) == ["a.csv"]  # no temp leftovers


def test_corrupted_mirror_copy_is_checksum_error(
    tmp_path: Path, small_mirror: tuple[Path, list[RegistryEntry]]
) -> None:
    root, entries = small_mirror
    (root / "census/a.csv").write_bytes(b"code,pop\n110101,2\n")
    raw = tmp_path / "data_raw"
    with pytest.raises(ChecksumError) as err:
        fetch_one(entries[0], raw, mirror=root)
    msg = str(err.value)
    assert "census/a.csv" in msg and entries[0].sha256 in msg
    assert _sha(b"code,pop\n110101,2\n") in msg and "Replace the mirror copy" in msg
    assert not (raw / "census/a.csv").exists()
    assert [p.name for p in (raw / "census").iterdir()] == []  # temp copy removed
    assert err.value.exit_code == 3


def test_missing_in_mirror_is_missing_input_error(
    tmp_path: Path, small_mirror: tuple[Path, list[RegistryEntry]]
) -> None:
    root, entries = small_mirror
    (root / "rail/b.txt").unlink()
    with pytest.raises(MissingInputError, match=r"rail/b.txt not found in the mirror folder"):
        fetch_inputs(tmp_path / "raw", mirror=root, entries=entries)


def test_offline_without_mirror_and_missing_mirror_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"offline = true but no mirror folder is set"):
        fetch_inputs(tmp_path, offline=True)
    with pytest.raises(ConfigError, match="mirror folder .* does not exist"):
        fetch_inputs(tmp_path, mirror=tmp_path / "nope")


def test_wrong_file_in_data_raw_needs_overwrite(
    tmp_path: Path, small_mirror: tuple[Path, list[RegistryEntry]]
) -> None:
    root, entries = small_mirror
    raw = tmp_path / "raw"
    (raw / "census").mkdir(parents=True)
    (raw / "census/a.csv").write_bytes(b"edited by hand")
    with pytest.raises(ChecksumError, match="delete the file or rerun with --overwrite"):
        fetch_one(entries[0], raw, mirror=root)
    assert (raw / "census/a.csv").read_bytes() == b"edited by hand"
    _, action = fetch_one(entries[0], raw, mirror=root, overwrite=True)
    assert action == "copied" and (raw / "census/a.csv").read_bytes() == (root / "census/a.csv").read_bytes()


def test_real_mirror_fetch(tmp_path: Path, mirror: Path) -> None:
    report = fetch_inputs(tmp_path, mirror=mirror)
    assert len(report) == 10 and set(report["action"]) == {"copied"}
    for row in report.itertuples():
        assert _sha((tmp_path / row.path).read_bytes()) == row.sha256


# --------------------------------------------------------------------------- downloads
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture()
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], str]]:
    """Serve a folder on 127.0.0.1 (random port) in a daemon thread.

    The server stops after the test or, at the latest, after 120 s.
    """
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        guard = threading.Timer(120, server.shutdown)
        guard.daemon = True
        guard.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _publish(site: Path, entry: RegistryEntry, data: bytes) -> None:
    target = site / entry.repo / entry.commit / entry.source_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def test_download_with_pooch_from_local_server(tmp_path: Path, serve: Callable[[Path], str]) -> None:
    site = tmp_path / "site"
    plain = b"<osm version='0.6'/>\n"
    text = "线路,线路类型\n京沪高铁,高速铁路\n"
    e_plain = RegistryEntry("osm/x.osm", _sha(plain), "download", "o/r", "c0ffee", "data/x.osm")
    e_gbk = RegistryEntry(
        "rail/lines.csv", _sha(text.encode("utf-8")), "download-gbk", "o/r", "c0ffee", "l.csv"
    )
    _publish(site, e_plain, plain)
    _publish(site, e_gbk, text.encode("gbk"))
    base = serve(site)
    raw = tmp_path / "raw"
    report = fetch_inputs(raw, base_url=base, entries=[e_plain, e_gbk])
    assert report["action"].tolist() == ["downloaded", "downloaded"]
    assert report["source"].tolist()[0] == f"{base}/o/r/c0ffee/data/x.osm"
    assert (raw / "osm/x.osm").read_bytes() == plain
    assert (raw / "rail/lines.csv").read_text(encoding="utf-8") == text  # converted from GBK
    assert sorted(p.name for p in (raw / "rail").iterdir()) == ["lines.csv"]
    # second run: kept, nothing downloaded (the server may be gone)
    shutil.rmtree(site)
    report = fetch_inputs(raw, base_url=base, entries=[e_plain, e_gbk])
    assert report["action"].tolist() == ["kept", "kept"]


def test_download_corrupt_or_missing(tmp_path: Path, serve: Callable[[Path], str]) -> None:
    site = tmp_path / "site"
    good = RegistryEntry("osm/x.osm", _sha(b"published"), "download", "o/r", "c1", "x.osm")
    _publish(site, good, b"tampered")
    gbk = RegistryEntry("rail/l.csv", _sha("甲".encode()), "download-gbk", "o/r", "c1", "l.csv")
    _publish(site, gbk, "乙".encode("gbk"))
    base = serve(site)
    raw = tmp_path / "raw"
    with pytest.raises(ChecksumError) as err:
        fetch_one(good, raw, base_url=base)
    assert good.sha256 in str(err.value) and _sha(b"tampered") in str(err.value)
    assert not (raw / "osm/x.osm").exists()
    with pytest.raises(ChecksumError, match=f"expected {gbk.sha256}, found {_sha('乙'.encode())}"):
        fetch_one(gbk, raw, base_url=base)
    missing = RegistryEntry("osm/y.osm", _sha(b"y"), "download", "o/r", "c1", "y.osm")
    with pytest.raises(MissingInputError, match="could not download osm/y.osm .*404"):
        fetch_one(missing, raw, base_url=base)
    assert [p.name for p in (raw / "osm").iterdir()] == []


# --------------------------------------------------------------------------- CLI
def _config(folder: Path, extra: str = "") -> Path:
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        f'[paths]\ndata_raw = "{(folder / "data_raw").as_posix()}"\n'
        f'data_processed = "{(folder / "out").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


def test_cli_mirror_option_and_manifest(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GEO_PIPELINE_MIRROR", raising=False)
    cfg = _config(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "fetch", "--mirror", str(mirror)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out/manifest.json").read_text(encoding="utf-8"))["stages"]["fetch"]
    census = manifest["inputs"]["census/census_county_2010_v1.xlsx"]
    assert census["sha256"] == "fccd3f094d1c8b7e404c8453add123826c53bc44cb85c65f6406d8e61f3f5d0b"
    assert manifest["summary"]["copied"] == 10
    assert manifest["summary"]["files"]["rail/railways_lines.csv"]["action"] == "copied"
    result = runner.invoke(main, ["-c", str(cfg), "fetch", "--mirror", str(mirror)])
    assert result.exit_code == 0
    manifest = json.loads((tmp_path / "out/manifest.json").read_text(encoding="utf-8"))["stages"]["fetch"]
    assert manifest["summary"]["kept"] == 10


def test_cli_offline_without_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEO_PIPELINE_MIRROR", raising=False)
    cfg = _config(tmp_path, "[fetch]\noffline = true\n")
    result = CliRunner().invoke(main, ["-c", str(cfg), "fetch"])
    assert result.exit_code == 2
    assert "offline = true but no mirror folder is set" in result.output


def test_cli_corrupted_mirror_exit_code(
    tmp_path: Path, mirror: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad_mirror"
    shutil.copytree(mirror, bad)
    (bad / "osm/guixi_jiangxi.osm").chmod(0o644)
    with open(bad / "osm/guixi_jiangxi.osm", "ab") as fh:
        fh.write(b"\n")
    monkeypatch.setenv("GEO_PIPELINE_MIRROR", str(bad))  # the environment variable names the mirror
    cfg = _config(tmp_path)
    result = CliRunner().invoke(main, ["-c", str(cfg), "fetch"])
    assert result.exit_code == 3
    assert "osm/guixi_jiangxi.osm: SHA-256 mismatch: expected 170cf4cb" in result.output


def test_cli_downloads_real_registry_from_local_server(
    tmp_path: Path, mirror: Path, serve: Callable[[Path], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real registry downloaded with pooch from a local copy of the GitHub layout."""
    monkeypatch.delenv("GEO_PIPELINE_MIRROR", raising=False)
    site = tmp_path / "site"
    for e in load_registry():
        if e.method == "mirror":
            continue
        data = (mirror / e.path).read_bytes()
        if e.method == "download-gbk":
            data = data.decode("utf-8").encode("gbk")  # as published
        _publish(site, e, data)
    base = serve(site)
    cfg = _config(tmp_path, f'[fetch]\nbase_url = "{base}"\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "fetch"])
    # the three mirror-only files cannot be downloaded: exit 3, listing them
    assert result.exit_code == 3
    assert "3 input(s) have no public download" in result.output
    assert "rail/derived_station_train_counts.csv" in result.output
    raw = tmp_path / "data_raw"
    got = {p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()}
    assert len(got) == 7
    for rel in got:
        assert (tmp_path / "data_raw" / rel).read_bytes() == (mirror / rel).read_bytes(), rel
