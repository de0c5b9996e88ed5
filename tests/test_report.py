"""Tests of the findings statistics, the verdict rules and the report stage (synthetic and real data)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import libpysal
import numpy as np
import pandas as pd
import pyogrio
import pytest
import spreg
from click.testing import CliRunner
from conftest import write_config
from scipy import stats
from shapely.geometry import box

from geo_pipeline import findings as fd
from geo_pipeline import report as rp
from geo_pipeline._io import write_gpkg
from geo_pipeline.cli import main


# -- synthetic data ------------------------------------------------------------------------------
def _units(n: int = 600, *, beyond_shrinks: bool = True, seed: int = 1) -> pd.DataFrame:
    """Units 0-600 km from a core; beyond 150 km 80 % shrink (or 20 % when not ``beyond_shrinks``)."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 600, n)
    p_beyond = 0.8 if beyond_shrinks else 0.2
    shrink = rng.random(n) < np.where(d >= 150, p_beyond, 0.3)
    p10 = rng.integers(100_000, 1_000_000, n)
    pct = np.where(shrink, -rng.uniform(1, 20, n), rng.uniform(1, 20, n))
    p20 = np.round(p10 * (1 + pct / 100)).astype(int)
    bands = np.digitize(d, [50, 100, 150])
    labels = np.array(["0-50 km", "50-100 km", "100-150 km", "150+ km"])
    return pd.DataFrame(
        {
            "unit_id": [f"{i:06d}" for i in range(n)],
            "name": [f"u{i}" for i in range(n)],
            "province": np.where(np.arange(n) % 2, "甲省", "乙省"),
            "distance_km": d,
            "band": labels[bands],
            "band_index": bands,
            "pop_2010": p10,
            "pop_2020": p20,
            "change_pct": 100 * (p20 - p10) / p10,
            "shrinking": p20 < p10,
        }
    )


def test_wilson_interval_matches_formula() -> None:
    k, n, z = 37, 120, stats.norm.ppf(0.975)
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    lo, hi = fd.wilson_interval(k, n)
    assert lo[0] == pytest.approx(centre - half, abs=1e-12) and hi[0] == pytest.approx(
        centre + half, abs=1e-12
    )
    assert np.isnan(fd.wilson_interval(0, 0)[0][0])


def test_share_table_counts_and_bootstrap() -> None:
    u = _units()
    t = fd.share_table(u, ["band"], bootstrap=199, seed=3)
    for _, r in t.iterrows():
        g = u[u["band"] == r["band"]]
        assert r["n_units"] == len(g) and r["n_shrinking"] == int(g["shrinking"].sum())
        assert r["pop_weighted_change_pct"] == pytest.approx(100 * (g.pop_2020.sum() / g.pop_2010.sum() - 1))
        assert r["change_ci_low"] < r["pop_weighted_change_pct"] < r["change_ci_high"]
        assert r["share_ci_low"] < r["shrinking_share"] < r["share_ci_high"]
    # the same units get the same bootstrap interval in another table
    side = fd.share_table(
        u.assign(side=np.where(u["band"] == "150+ km", "far", "near")), ["side"], bootstrap=199, seed=3
    ).set_index("side")
    far = t.set_index("band").loc["150+ km"]
    assert side.loc["far", "change_ci_low"] == far["change_ci_low"]
    assert side.loc["far", "change_ci_high"] == far["change_ci_high"]


def test_segmented_regression_recovers_known_break() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 600, 1500)
    y = 2.0 - 0.04 * np.maximum(x - 120.0, 0.0) + rng.normal(0, 2.0, len(x))  # decline beyond 120 km
    fit = fd.segmented_regression(x, y, bootstrap=499, seed=11)
    assert fit.break_ci[0] <= 120 <= fit.break_ci[1]
    assert fit.contains(120) and not fit.contains(300)
    assert fit.has_break and fit.slope_change < 0
    assert fit.slope_before == pytest.approx(0.0, abs=0.01) and fit.slope_after == pytest.approx(
        -0.04, abs=0.005
    )
    # flipped: a straight line has no break (the slope-change interval contains 0)
    y_line = 2.0 - 0.01 * x + rng.normal(0, 2.0, len(x))
    assert not fd.segmented_regression(x, y_line, bootstrap=499, seed=11).has_break


def test_segmented_regression_equals_direct_least_squares() -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 400, 300)
    y = np.where(x < 200, 0.0, -(x - 200) * 0.05) + rng.normal(0, 1, 300)
    fit = fd.segmented_regression(x, y, grid=[100, 150, 200, 250], bootstrap=0)
    sse = []
    for k in (100, 150, 200, 250):
        X = np.column_stack([np.ones_like(x), x, np.maximum(x - k, 0)])
        beta, res, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse.append(float(res[0]))
    best = int(np.argmin(sse))
    assert fit.break_x == (100, 150, 200, 250)[best]
    np.testing.assert_allclose(fit.sse_grid, sse, rtol=1e-8)


@pytest.mark.parametrize("process", ["none", "lag", "error"])
def test_spatial_regression_equals_direct_spreg(process: str) -> None:
    w = libpysal.weights.lat2W(18, 18)
    w.transform = "r"
    rng = np.random.default_rng(5)
    n = w.n
    x = rng.normal(size=(n, 2))
    dense = w.sparse.toarray()
    e = rng.normal(size=n)
    if process == "lag":
        y = np.linalg.solve(np.eye(n) - 0.6 * dense, x @ [1.0, -2.0] + e)
    elif process == "error":
        y = x @ [1.0, -2.0] + np.linalg.solve(np.eye(n) - 0.7 * dense, e)
    else:
        y = x @ [1.0, -2.0] + e
    r = fd.spatial_regression(y, x, w=w, name_x=["a", "b"])
    with fd._quiet_spreg():
        ols = spreg.OLS(y.reshape(-1, 1), x, w=w, spat_diag=True, moran=True)
    o = r.coefficients[r.coefficients["model"] == "OLS"]
    np.testing.assert_allclose(o["coef"], ols.betas.ravel(), rtol=1e-12)
    np.testing.assert_allclose(o["std_err"], ols.std_err, rtol=1e-12)
    d = r.diagnostics.set_index("test")
    assert d.loc["LM lag", "statistic"] == pytest.approx(ols.lm_lag[0], rel=1e-12)
    assert d.loc["robust LM error", "p"] == pytest.approx(ols.rlm_error[1], rel=1e-12)
    if process == "none":  # the rule, from the direct diagnostics (a 5 % test can fire on no process)
        assert (r.choice == "OLS") == (ols.lm_lag[1] >= 0.05 and ols.lm_error[1] >= 0.05)
    else:
        assert r.choice == process
    if r.choice == "OLS":
        assert r.model is None
        return
    with fd._quiet_spreg():
        direct = (spreg.GM_Lag if r.choice == "lag" else spreg.GM_Error_Het)(y.reshape(-1, 1), x, w=w)
    m = r.coefficients[r.coefficients["model"] != "OLS"]
    np.testing.assert_allclose(m["coef"], direct.betas.ravel(), rtol=1e-10)
    np.testing.assert_allclose(m["std_err"], direct.std_err, rtol=1e-10)


def test_mantel_haenszel_single_stratum_equals_cross_ratio() -> None:
    est, lo, hi = fd.mantel_haenszel([[[30, 10], [20, 40]]])
    assert est == pytest.approx(30 * 40 / (10 * 20))
    se = np.sqrt(1 / 30 + 1 / 10 + 1 / 20 + 1 / 40)  # RGB reduces to Woolf's for one stratum
    assert lo == pytest.approx(np.exp(np.log(6) - 1.959964 * se), rel=1e-5)
    assert hi == pytest.approx(np.exp(np.log(6) + 1.959964 * se), rel=1e-5)


# -- verdict rules flip with their data ----------------------------------------------------------
def test_verdict_distance_flips() -> None:
    yes = rp.section_distance(_units(beyond_shrinks=True), bootstrap=99, dpi=30)
    no = rp.section_distance(_units(beyond_shrinks=False), bootstrap=99, dpi=30)
    assert yes.verdict.tests["majority"] and yes.verdict.tests["contrast"]
    assert not no.verdict.tests["majority"] and not no.verdict.tests["contrast"]
    assert yes.verdict.label in ("supported", "partly supported")
    assert no.verdict.label in ("partly supported", "not supported")
    flat = fd.verdict_distance(
        beyond_k=800, beyond_n=1000, within_k=300, within_n=1000, fit=None, distance_coef=(-1.0, 0.001)
    )
    assert flat.label == "supported"
    assert (
        fd.verdict_distance(
            beyond_k=800,
            beyond_n=1000,
            within_k=300,
            within_n=1000,
            fit=None,
            distance_coef=(-1.0, 0.001),
            region_shares={"East": 0.4, "West": 0.9},
        ).label
        == "partly supported"
    )
    assert (
        fd.verdict_distance(
            beyond_k=200, beyond_n=1000, within_k=300, within_n=1000, fit=None, distance_coef=(1.0, 0.001)
        ).label
        == "not supported"
    )


def test_verdict_distance_counties_flip() -> None:
    """Test (g), the claim's 县域: county-type units beyond 150 km, districts left out."""
    u = _units(beyond_shrinks=True)
    u["unit_kind"] = "county"
    sec = rp.section_distance(u, bootstrap=0, dpi=30)
    assert sec.verdict.tests["counties_majority"] is True
    # the same units labelled urban districts: no county-type unit beyond 150 km, (g) not applied
    assert (
        rp.section_distance(u.assign(unit_kind="district"), bootstrap=0, dpi=30).verdict.tests[
            "counties_majority"
        ]
        is None
    )
    v = fd.verdict_distance(
        beyond_k=800,
        beyond_n=1000,
        within_k=300,
        within_n=1000,
        fit=None,
        distance_coef=(-1.0, 0.001),
        county_counts=(100, 400),
    )
    assert v.tests["counties_majority"] is False and v.label == "partly supported"


def test_missing_columns_are_not_testable() -> None:
    u = _units().drop(columns=["distance_km"])
    sec = rp.section_distance(u, bootstrap=0)
    assert sec.verdict.label == "not testable with these data"
    assert "distance_km" in sec.verdict.reasons[0]
    assert rp.section_northeast(_units()).verdict.label == "not testable with these data"
    assert "region" in rp.section_northeast(_units()).verdict.reasons[0]
    assert "share_60plus_2020" in rp.section_ageing(_units()).verdict.reasons[0]


def _northeast(flip: bool) -> pd.DataFrame:
    u = _units(400, seed=3)
    ne = np.arange(len(u)) < 100
    u["region"] = np.where(ne, "Northeast", "East")
    u["unit_kind"] = np.where(np.arange(len(u)) % 4 == 0, "district", "county")
    shrink_ne = not flip
    u.loc[ne, "shrinking"] = shrink_ne
    u.loc[ne, "pop_2020"] = (u.loc[ne, "pop_2010"] * (0.9 if shrink_ne else 1.1)).round().astype(int)
    u["lisa_change_pct_cluster"] = np.where(ne & shrink_ne, "LL", "not significant")
    return u


def test_verdict_northeast_flips() -> None:
    assert rp.section_northeast(_northeast(False), bootstrap=0).verdict.label == "supported"
    assert rp.section_northeast(_northeast(True), bootstrap=0).verdict.label == "not supported"
    # a test that cannot be made caps the verdict at "partly supported" and says why
    no_lisa = rp.section_northeast(_northeast(False).drop(columns="lisa_change_pct_cluster"), bootstrap=0)
    assert no_lisa.verdict.label == "partly supported" and no_lisa.verdict.tests["low_low"] is None
    assert any("LISA cluster column missing" in r for r in no_lisa.verdict.reasons)
    pref = rp.section_northeast(_northeast(False).drop(columns="unit_kind"), level="prefecture", bootstrap=0)
    assert pref.verdict.label == "supported" and "prefectures shrink" in pref.verdict.reasons[2]


def _ageing(flip: bool) -> pd.DataFrame:
    u = _units(300, seed=4)
    u["province"] = np.where(
        np.arange(len(u)) % 3 == 0, "辽宁省", np.where(np.arange(len(u)) % 3 == 1, "吉林省", "广东省")
    )
    base = 30.0 - 0.5 * u["change_pct"].to_numpy()  # older where shrinking
    u["share_60plus_2020"] = base if not flip else 10.0 + 0.5 * u["change_pct"].to_numpy() + 5
    return u


def test_verdict_ageing_flips() -> None:
    yes = rp.section_ageing(_ageing(False))
    no = rp.section_ageing(_ageing(True))
    assert yes.verdict.label == "supported"
    assert no.verdict.label == "not supported"
    prov = yes.tables[0].frame.set_index("province")
    u = _ageing(False)
    g = u[u.province == "辽宁省"]
    assert prov.loc["辽宁省", "share_60plus_2020_pct"] == pytest.approx(
        (g.share_60plus_2020 * g.pop_2020).sum() / g.pop_2020.sum()
    )


def _outflow(flip: bool) -> pd.DataFrame:
    u = _units(500, seed=5)
    rng = np.random.default_rng(0)
    sign = -1 if flip else 1
    u["net_outflow_ratio"] = sign * np.where(u["shrinking"], 0.1, -0.1) + rng.normal(0, 0.02, len(u))
    u["net_outflow"] = u["net_outflow_ratio"] > 0
    u["hukou_2010"] = np.round(u["pop_2010"] / (1 - u["net_outflow_ratio"])).astype(int)
    return u


def test_verdict_net_outflow_flips() -> None:
    yes, no = rp.section_net_outflow(_outflow(False)), rp.section_net_outflow(_outflow(True))
    assert yes.verdict.label == "supported" and no.verdict.label == "not supported"
    ct = yes.tables[0].frame.set_index("net_outflow_2010")
    u = _outflow(False)
    assert ct.loc["yes", "shrinking"] == int((u.net_outflow & u.shrinking).sum())


def _hsr(flip: bool) -> pd.DataFrame:
    u = _units(800, seed=6)
    rng = np.random.default_rng(1)
    inside = rng.random(len(u)) < 0.5
    u["in_corridor"] = inside
    p = np.where(inside, 0.3, 0.7) if not flip else np.where(inside, 0.7, 0.3)
    shrink = rng.random(len(u)) < p
    u["shrinking"] = shrink
    u["pop_2020"] = np.where(shrink, u["pop_2010"] * 0.9, u["pop_2010"] * 1.1).round().astype(int)
    u["hsr_period"] = np.where(inside, "2010-2020", "none")
    return u


def test_verdict_hsr_flips() -> None:
    assert rp.section_hsr(_hsr(False), dpi=30).verdict.label == "supported"
    assert rp.section_hsr(_hsr(True), dpi=30).verdict.label == "not supported"


def test_verdict_intercity_needs_design_capacity() -> None:
    lines = pd.DataFrame(
        {
            "line_id": ["a", "b", "c"],
            "name": ["甲乙城际", "丙丁城际", "戊己高铁"],
            "class": ["fast", "fast", "high-speed"],
            "utilisation": [0.3, 0.35, 0.9],
            "utilisation_basis": ["proxy: key-station trains vs class p90"] * 3,
            "underused": [True, True, False],
        }
    )
    assert rp.section_intercity(lines, None).verdict.label == "not testable with these data"
    user = lines.assign(utilisation_basis="user table")
    assert rp.section_intercity(user, None).verdict.label == "supported"
    assert (
        rp.section_intercity(user.assign(utilisation=[0.8, 0.9, 0.9]), None).verdict.label == "not supported"
    )


# -- rendering -----------------------------------------------------------------------------------
_EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//""", re.I)


def _check_self_contained(text: str) -> None:
    assert not _EXTERNAL.search(text)
    assert rp.external_references(text) == []
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text.lower()


def test_html_is_self_contained_and_prints() -> None:
    u = _northeast(False)
    rep = rp.build_report({"county": u}, bootstrap=49, dpi=30)
    html = rp.render_html(rep)
    _check_self_contained(html)
    assert "@media print" in html and "data:image/png;base64," in html
    assert "距中心城市150公里外的县域普遍出现收缩" in html
    md = rp.render_markdown(rep)
    assert md.count("**Verdict: ") == len(rep.sections) == 6
    # the checker itself catches an external reference
    assert rp.external_references('<img src="https://x.org/a.png">') == ["https://x.org/a.png"]
    assert _EXTERNAL.search("<style>a{background:url( //cdn.x/y.png)}</style>")


# -- real data -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_report_on_real_data(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("report")
    maps = processed.parent / "maps"
    html = (maps / "report.html").read_text(encoding="utf-8")
    _check_self_contained(html)
    units = pyogrio.read_dataframe(processed / "shrinkage.gpkg", layer="units", read_geometry=False)
    units = units[units["comparable"].astype(bool)] if "comparable" in units.columns else units
    bands = pd.read_csv(processed / "report_county_bands.csv")
    # direct recount from the export's units
    for _, r in bands.iterrows():
        g = units[units["band"] == r["band"]]
        assert r["n_units"] == len(g)
        assert r["n_shrinking"] == int(g["shrinking"].sum())
        assert r["pop_2010"] == int(g["pop_2010"].sum()) and r["pop_2020"] == int(g["pop_2020"].sum())
        assert f"{int(r['n_shrinking']):,}" in html
    # and the distance stage's own band summary
    summary = pd.read_csv(processed / "band_summary.csv").set_index("band")
    for _, r in bands.iterrows():
        assert r["n_units"] == summary.loc[r["band"], "n_units"]
        assert r["shrinking_share"] == pytest.approx(summary.loc[r["band"], "shrinking_share"], rel=1e-12)
    # regions (claim 2) and the net-outflow cross-tab (claim 4), recounted
    regions = pd.read_csv(processed / "report_county_regions.csv").set_index("region")
    for region, g in units.groupby("region"):
        assert regions.loc[region, "n_units"] == len(g)
        assert regions.loc[region, "pop_2020"] - regions.loc[region, "pop_2010"] == int(
            g["pop_2020"].sum() - g["pop_2010"].sum()
        )
    ne = units[units["region"] == "Northeast"]
    assert f"{(ne['pop_2020'].sum() - ne['pop_2010'].sum()) / 1e6:+.2f} million" in html
    ct = pd.read_csv(processed / "report_county_crosstab.csv").set_index("net_outflow_2010")
    has = units[units["net_outflow_ratio"].notna()]
    assert ct.loc["yes", "shrinking"] == int((has["net_outflow"] & has["shrinking"]).sum())
    assert ct.loc["no", "growing"] == int((~has["net_outflow"] & ~has["shrinking"]).sum())
    # the same claims at prefecture level when it was exported
    if (processed / "report_prefecture_bands.csv").is_file():
        pref = pyogrio.read_dataframe(
            processed / "shrinkage.gpkg", layer="prefecture_units", read_geometry=False
        )
        if "comparable" in pref.columns:
            pref = pref[pref["comparable"].astype(bool)]
        pb = pd.read_csv(processed / "report_prefecture_bands.csv")
        assert pb["n_units"].sum() == len(pref) and pb["n_shrinking"].sum() == int(pref["shrinking"].sum())
    total = int(units["shrinking"].sum())
    assert f"{total:,} of {len(units):,} county units shrank" in html
    verdicts = pd.read_csv(processed / "report_summary.csv")
    assert set(verdicts["verdict"]) <= set(fd.VERDICTS)
    intercity = verdicts[verdicts["claim"] == "intercity"]["verdict"].iloc[0]
    assert intercity == "not testable with these data"  # the proxy is not design capacity
    assert (maps / "report.md").read_text(encoding="utf-8").count("**Verdict: ") >= 6
    # the regression in the report equals spreg on the same arrays
    reg = pd.read_csv(processed / "report_county_regression.csv")
    assert {"OLS"} < set(reg["model"]) and "log_distance_km" in set(reg["variable"])


def test_line_crossings_on_a_square() -> None:
    from shapely.geometry import LineString

    units = gpd.GeoDataFrame(
        {"unit_id": ["a", "b", "c"], "shrinking": [True, False, True]},
        geometry=[box(0, 0, 1, 1), box(1, 0, 2, 1), box(0, 2, 1, 3)],
        crs="EPSG:4326",
    )
    lines = gpd.GeoDataFrame(
        {"line_id": ["l1"]}, geometry=[LineString([(0.5, 0.5), (1.5, 0.5)])], crs="EPSG:4326"
    )
    c = rp.line_crossings(lines, units)
    assert sorted(c["unit_id"]) == ["a", "b"] and c["shrinking"].sum() == 1


def _lattice() -> gpd.GeoDataFrame:
    u = _hsr(False).iloc[:400].reset_index(drop=True)
    u["region"] = np.where(np.arange(len(u)) < 100, "Northeast", "East")
    u["unit_kind"] = "county"
    u["net_outflow_ratio"] = np.where(u["shrinking"], 0.1, -0.1)
    u["net_outflow"] = u["net_outflow_ratio"] > 0
    u["province_code"] = "210000"
    geoms = [
        box(100 + (i % 20) * 0.2, 30 + (i // 20) * 0.2, 100.2 + (i % 20) * 0.2, 30.2 + (i // 20) * 0.2)
        for i in range(len(u))
    ]
    return gpd.GeoDataFrame(u, geometry=geoms, crs="EPSG:4326")


def test_report_cli_on_a_synthetic_lattice(tmp_path: Path) -> None:
    """The stage on a small export: writes HTML, MD and CSVs, skips missing layers, refuses to overwrite."""
    gdf = _lattice()
    u = gdf
    cfg = write_config(tmp_path, tmp_path / "mirror")
    write_gpkg(tmp_path / "data_processed" / "shrinkage.gpkg", {"units": gdf})
    args = ["-c", str(cfg), "-q", "report", "--no-maps", "--bootstrap", "50"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "maps" / "report.html").read_text(encoding="utf-8")
    _check_self_contained(html)
    summary = pd.read_csv(tmp_path / "data_processed" / "report_summary.csv").set_index("claim")
    assert summary.loc["hsr", "verdict"] == "supported"
    assert summary.loc["intercity", "verdict"] == "not testable with these data"
    bands = pd.read_csv(tmp_path / "data_processed" / "report_county_bands.csv")
    assert bands["n_units"].sum() == len(u)
    reg = pd.read_csv(tmp_path / "data_processed" / "report_county_regression.csv")
    assert "log_distance_km" in set(reg["variable"])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 4 and "overwrite" in again.output


def test_core_sets_and_rail_times_enter_the_distance_section() -> None:
    u = _hsr(False)
    u["rail_minutes_to_core"] = u["distance_km"] * 0.8 + 20
    u["rail_time_band"] = np.where(u["rail_minutes_to_core"] < 120, "0-2 h", "2 h+")
    u["rail_minutes_saved"] = np.where(u["in_corridor"], 45.0, 0.0)
    sens = pd.DataFrame({"core_set": ["all", "metro"], "n_beyond": [300, 0], "n_shrinking_beyond": [240, 0]})
    sec = rp.section_distance(u, core_sets=sens, bootstrap=0, dpi=30)
    tables = {t.key: t.frame for t in sec.tables}
    cs = tables["core_sets"].set_index("core_set")
    lo, hi = fd.wilson_interval(240, 300)
    assert cs.loc["all", "share_ci_low"] == pytest.approx(lo[0]) and np.isnan(cs.loc["metro", "share_ci_low"])
    assert sec.verdict.tests["every_core_set"] is True  # the empty set says nothing
    weak = rp.section_distance(u, core_sets=sens.assign(n_shrinking_beyond=[120, 0]), bootstrap=0, dpi=30)
    assert weak.verdict.tests["every_core_set"] is False and weak.verdict.label != "supported"
    tb = tables["rail_time_bands"].set_index("rail_time_band")
    assert tb.loc["0-2 h", "n_units"] == int((u["rail_minutes_to_core"] < 120).sum())
    assert list(tables["rail_time_bands"]["rail_time_band"]) == ["0-2 h", "2 h+"]
    hsr = rp.section_hsr(u, dpi=30)
    acc = {t.key: t.frame for t in hsr.tables}["access_change_by_band"]
    assert acc["n_units"].sum() == len(u)
    assert any("Mantel-Haenszel" in t and "minutes" in t for t in hsr.text)
    # without the columns the section says so
    plain = rp.section_distance(_units(), bootstrap=0, dpi=30)
    assert any("rail_minutes_to_core missing" in t for t in plain.text)
    assert any("core-set sensitivity table" in t and "missing" in t for t in plain.text)


def test_ageing_uses_the_bivariate_moran_row_of_the_2020_share() -> None:
    gm = pd.DataFrame(
        {
            "variable": ["change_pct", "change_pct_vs_share_60plus_2010", "change_pct_vs_share_60plus_2020"],
            "statistic": ["moran", "moran_bv", "moran_bv"],
            "I": [0.3, -0.2, -0.25],
            "p_norm": [0.0, np.nan, np.nan],
            "p_sim": [0.001, 0.001, 0.001],
        }
    )
    sec = rp.section_ageing(_ageing(False), global_moran=gm)
    assert sec.verdict.label == "supported" and "-0.250" in sec.verdict.reasons[1]
    assert len({t.key: t for t in sec.tables}["moran_bv"].frame) == 2
    # the bivariate test flips the verdict when the spatial association goes the other way
    flipped = rp.section_ageing(_ageing(False), global_moran=gm.assign(I=[0.3, 0.2, 0.25]))
    assert flipped.verdict.label == "partly supported" and flipped.verdict.tests["association"] is False


@pytest.mark.slow
def test_real_regression_equals_direct_spreg(run_stage: Callable[[str], Path], real_workdir: Path) -> None:
    """The report's county regression equals spreg called here on arrays built from the export."""
    from geo_pipeline.cli import StageContext
    from geo_pipeline.cli._report import _weights
    from geo_pipeline.config import load_settings

    processed = run_stage("report")
    gdf = pyogrio.read_dataframe(processed / "shrinkage.gpkg", layer="units")
    gdf = gdf[gdf["comparable"].astype(bool)].reset_index(drop=True)
    ctx = StageContext(settings=load_settings(real_workdir / "geo_pipeline.toml"), stage="report")
    w = _weights(ctx, gdf).graph().to_W()
    w.transform = "r"
    y = 100 * np.log(gdf["pop_2020"].to_numpy(float) / gdf["pop_2010"].to_numpy(float))
    x = np.column_stack(
        [
            np.log(np.maximum(gdf["distance_km"].to_numpy(float), 1.0)),
            gdf["in_corridor"].astype(float),
            gdf["share_60plus_2010"],
            gdf["net_outflow_ratio"],
            *[(gdf["region"] == r).astype(float) for r in ("Central", "Northeast", "West")],
        ]
    )
    reg = pd.read_csv(processed / "report_county_regression.csv")
    with fd._quiet_spreg():
        ols = spreg.OLS(y.reshape(-1, 1), x, w=w, spat_diag=True)
        np.testing.assert_allclose(reg[reg["model"] == "OLS"]["coef"], ols.betas.ravel(), rtol=1e-9)
        spatial = reg[reg["model"] != "OLS"]
        if spatial["model"].str.contains("error").any():
            direct = spreg.GM_Error_Het(y.reshape(-1, 1), x, w=w)
        else:
            direct = spreg.GM_Lag(y.reshape(-1, 1), x, w=w)
    np.testing.assert_allclose(spatial["coef"], direct.betas.ravel(), rtol=1e-8)
    np.testing.assert_allclose(spatial["std_err"], direct.std_err, rtol=1e-8)


def test_step_change_recovers_known_change_point() -> None:
    rng = np.random.default_rng(9)
    x = rng.uniform(0, 600, 2000)
    y = (rng.random(len(x)) < np.where(x >= 120, 0.7, 0.3)).astype(float)  # the share jumps at 120 km
    fit = fd.step_change(x, y, bootstrap=499, seed=4)
    assert fit.contains(120) and not fit.contains(300) and fit.has_step
    assert fit.below == pytest.approx(y[x < fit.break_x].mean()) and fit.above == pytest.approx(
        y[x >= fit.break_x].mean()
    )
    flat = fd.step_change(x, (rng.random(len(x)) < 0.5).astype(float), bootstrap=499, seed=4)
    assert not (flat.has_step and flat.contains(120))
    # the verdict's threshold test follows the step when no segmented fit is given
    v = fd.verdict_distance(
        beyond_k=800,
        beyond_n=1000,
        within_k=300,
        within_n=1000,
        fit=None,
        distance_coef=None,
        step=fd.step_change(x, y, bootstrap=199, seed=4),
        km=120,
    )
    assert v.tests["threshold"] is True


def test_report_cli_prefecture_level_only(tmp_path: Path) -> None:
    """With [pipeline] levels = ["prefecture"] the export has only prefecture_units; the report uses them."""
    cfg = write_config(tmp_path, tmp_path / "mirror", '[pipeline]\nlevels = ["prefecture"]\n')
    write_gpkg(tmp_path / "data_processed" / "shrinkage.gpkg", {"prefecture_units": _lattice()})
    result = CliRunner().invoke(
        main, ["-c", str(cfg), "-q", "report", "--no-maps", "--bootstrap", "20"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "data_processed"
    assert (out / "report_prefecture_bands.csv").is_file() and not (out / "report_county_bands.csv").exists()
    summary = pd.read_csv(out / "report_summary.csv")
    assert set(summary["level"]) == {"prefecture"} and len(summary) == 6
    assert summary.set_index("claim").loc["hsr", "verdict"] == "supported"
