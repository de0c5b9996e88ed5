"""Tests of the autocorrelation stage: planted clusters, seeds, FDR, pygeoda cross-check, CLI, real data."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pygeoda
import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure
from pygeoda.libgeoda import gda_load_gal
from pygeoda.weights.weight import Weight
from shapely.geometry import Polygon, box

from geo_pipeline import CRSError, DataQualityWarning, GeometryError, InputError
from geo_pipeline._io import list_layers, read_layer, read_table, write_gpkg
from geo_pipeline.autocorrelation import (
    GLOBAL_COLUMNS,
    NO_DATA,
    benjamini_hochberg,
    conditional_pvalues,
    local_bivariate,
    local_statistics,
    moran_scatterplot,
    spatial_autocorrelation,
    start_warm_up,
    warm_up,
)
from geo_pipeline.cli import main
from geo_pipeline.weights import UnitWeights, build_weights

N = 10  # lattice side
SIZE = 10_000.0  # m
UTM50 = "EPSG:32650"
HH_BLOCK = {(r, c) for r in range(3) for c in range(3)}
LL_BLOCK = {(r, c) for r in range(7, 10) for c in range(7, 10)}


def planted(seed: int = 0, crs: str = UTM50) -> gpd.GeoDataFrame:
    """Make a 10x10 lattice of 10 km squares: noise U(-1, 1), +10 in one corner block, -10 opposite."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(N):
        for c in range(N):
            v = rng.uniform(-1.0, 1.0)
            v += 10.0 if (r, c) in HH_BLOCK else -10.0 if (r, c) in LL_BLOCK else 0.0
            geom = box(
                500_000 + c * SIZE, 3_300_000 + r * SIZE, 500_000 + (c + 1) * SIZE, 3_300_000 + (r + 1) * SIZE
            )
            rows.append(
                {
                    "unit_id": f"r{r}c{c}",
                    "name": f"cell {r},{c}",
                    "row": r,
                    "col": c,
                    "v": v,
                    "geometry": geom,
                }
            )
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=crs)


def queen_matrix(units: gpd.GeoDataFrame) -> np.ndarray:
    """Return the binary queen matrix of the lattice from row/col (Chebyshev distance 1): the reference."""
    r, c = units["row"].to_numpy(), units["col"].to_numpy()
    cheb = np.maximum(np.abs(r[:, None] - r[None, :]), np.abs(c[:, None] - c[None, :]))
    return (cheb == 1).astype(float)


def near(block: set[tuple[int, int]], r: int, c: int) -> bool:
    """Return whether (r, c) is in ``block`` or touches it (queen)."""
    return any(max(abs(r - a), abs(c - b)) <= 1 for a, b in block)


@pytest.fixture(scope="module")
def lattice_result() -> tuple[gpd.GeoDataFrame, object]:
    units = planted()
    return units, spatial_autocorrelation(units, variables=["v"], permutations=999, seed=7)


# ---------------------------------------------------------------------------
# synthetic lattice: known clusters and independent formulas
# ---------------------------------------------------------------------------
def test_planted_clusters_found_where_planted(lattice_result) -> None:  # type: ignore[no-untyped-def]
    units, res = lattice_result
    out = res.units.set_index("unit_id")
    label = {(r, c): out.loc[f"r{r}c{c}", "lisa_v_cluster"] for r in range(N) for c in range(N)}
    assert all(label[rc] == "HH" for rc in HH_BLOCK)
    assert all(label[rc] == "LL" for rc in LL_BLOCK)
    for (r, c), lab in label.items():
        if lab == "HH":
            assert near(HH_BLOCK, r, c), (r, c)
        if lab == "LL":
            assert near(LL_BLOCK, r, c), (r, c)
        if not (near(HH_BLOCK, r, c) or near(LL_BLOCK, r, c)):
            assert lab == "not significant", (r, c, lab)
    hot = {(r, c) for r in range(N) for c in range(N) if out.loc[f"r{r}c{c}", "gi_v_class"] == "hot spot"}
    cold = {(r, c) for r in range(N) for c in range(N) if out.loc[f"r{r}c{c}", "gi_v_class"] == "cold spot"}
    assert HH_BLOCK <= hot and all(near(HH_BLOCK, *rc) for rc in hot)
    assert LL_BLOCK <= cold and all(near(LL_BLOCK, *rc) for rc in cold)
    # the weights summary columns: a 10x10 queen lattice has corners with 3, edges with 5 neighbours
    assert out.loc["r0c0", "w_neighbors"] == 3 and out.loc["r0c5", "w_neighbors"] == 5
    assert out.loc["r5c5", "w_neighbors"] == 8 and not out["w_linked"].any()


def test_global_and_local_moran_equal_textbook_formulas(lattice_result) -> None:  # type: ignore[no-untyped-def]
    units, res = lattice_result
    y = units["v"].to_numpy()
    w = queen_matrix(units)
    wr = w / w.sum(axis=1, keepdims=True)
    z = y - y.mean()
    moran_i = len(y) / wr.sum() * (z @ wr @ z) / (z @ z)
    row = res.global_moran.set_index("variable").loc["v"]
    assert row["I"] == pytest.approx(moran_i, abs=1e-12)
    assert row["EI"] == pytest.approx(-1 / (len(y) - 1))
    assert row["p_sim"] == pytest.approx(1 / 1000)  # no permutation beats a planted pattern
    assert row["n"] == 100 and row["n_missing"] == 0 and row["permutations"] == 999 and row["seed"] == 7
    zs = z / y.std()
    local = (len(y) - 1) * zs * (wr @ zs) / (zs @ zs)
    assert np.allclose(res.units["lisa_v_I"], local, atol=1e-12)
    assert np.allclose(res.units["lisa_v_std"], zs) and np.allclose(res.units["lisa_v_lag"], wr @ zs)


def test_gi_star_equals_ord_getis_z(lattice_result) -> None:  # type: ignore[no-untyped-def]
    # Ord & Getis (1995) z*: binary weights with the unit itself, population s, shift-invariant
    units, res = lattice_result
    y = units["v"].to_numpy()
    n = len(y)
    ws = queen_matrix(units) + np.eye(n)
    wi = ws.sum(axis=1)
    s1 = (ws**2).sum(axis=1)
    zstar = (ws @ y - y.mean() * wi) / (y.std() * np.sqrt((n * s1 - wi**2) / (n - 1)))
    assert np.allclose(res.units["gi_v_z"], zstar, atol=1e-10)


@pytest.mark.parametrize("engine", ["numpy", "esda"])
def test_seed_reproducible_and_global_rng_untouched(engine: str) -> None:
    units = planted(seed=3)
    state = np.random.get_state()
    a = spatial_autocorrelation(units, variables=["v"], permutations=199, seed=11, engine=engine)
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
    b = spatial_autocorrelation(units, variables=["v"], permutations=199, seed=11, engine=engine)
    c = spatial_autocorrelation(units, variables=["v"], permutations=199, seed=12, engine=engine)
    for col in ("lisa_v_p", "gi_v_p"):
        assert np.array_equal(a.units[col], b.units[col])
        assert not np.array_equal(a.units[col], c.units[col])
    ga, gb, gc = (r.global_moran.iloc[0] for r in (a, b, c))
    assert ga["z_sim"] == gb["z_sim"] and ga["z_sim"] != gc["z_sim"]
    # pseudo p-values are exact multiples of 1/(P+1) in float64
    k = a.units["lisa_v_p"].to_numpy() * 200
    assert np.allclose(k, np.round(k), atol=1e-9)


def gradient_lattice(seed: int = 6) -> gpd.GeoDataFrame:
    """Make the lattice with a weak north-south gradient in noise: p-values over the whole range."""
    units = planted(seed=seed)
    rng = np.random.default_rng(seed)
    units["v"] = 0.25 * units["row"] + rng.normal(size=len(units))
    return units


def test_numpy_and_esda_engines_agree_within_monte_carlo_error() -> None:
    # same null distribution, different random draws: p-values differ by Monte Carlo error only
    # (standard error of a difference <= sqrt(2 * 0.25 / 999) = 0.022)
    units = gradient_lattice()
    y = units["v"].to_numpy()
    w = build_weights(units)
    a = local_statistics(y, w, permutations=999, seed=1, alpha=0.05, fdr=False, engine="numpy")
    b = local_statistics(y, w, permutations=999, seed=2, alpha=0.05, fdr=False, engine="esda")
    assert np.array_equal(a["I"], b["I"]) and np.array_equal(a["gi_z"], b["gi_z"])
    for col in ("p", "gi_p"):
        diff = np.abs(a[col] - b[col])
        assert diff.max() < 0.1 and diff.mean() < 0.02, (col, diff.max(), diff.mean())
        assert np.corrcoef(a[col], b[col])[0, 1] > 0.97
    assert a["p"].min() < 0.01 and a["p"].max() > 0.3  # the test covers the whole range
    clear = (np.maximum(a["p"], b["p"]) < 0.02) | (np.minimum(a["p"], b["p"]) > 0.1)
    assert (a.loc[clear, "cluster"] == b.loc[clear, "cluster"]).all()


def _strip(values: list[float]) -> tuple[gpd.GeoDataFrame, UnitWeights]:
    units = gpd.GeoDataFrame(
        {"unit_id": [f"s{i}" for i in range(len(values))], "v": values},
        geometry=[box(i * SIZE, 0, (i + 1) * SIZE, SIZE) for i in range(len(values))],
        crs=UTM50,
    )
    return units, build_weights(units)


@pytest.mark.parametrize(("unit", "sign"), [(3, 1.0), (3, -1.0), (0, 1.0)])
def test_conditional_pvalues_match_exact_enumeration(unit: int, sign: float) -> None:
    # 1 x 7 strip: unit 3 has neighbours 2 and 4, unit 0 only 1; enumerate every neighbour draw
    from itertools import combinations

    values = [5.0, 1.0, 3.5, 0.0, 2.0, 6.0, 4.2]
    _, w = _strip(values)
    k = 2 if unit == 3 else 1
    observed = sum(values[j] for j in w.neighbor_sets()[unit])
    others = [values[j] for j in range(7) if j != unit]
    sums = [sum(c) for c in combinations(others, k)]
    at_least = np.mean([sc >= observed - 1e-12 if sign > 0 else sc <= observed + 1e-12 for sc in sums])
    exact = min(at_least, 1 - at_least)  # esda's folded ("directed") p-value as P -> infinity
    direction = np.full(7, sign)
    p = conditional_pvalues(np.array(values), w, permutations=20_000, seed=4, direction=direction)
    assert p[unit] == pytest.approx(exact, abs=0.012)  # 3.4 standard errors at P = 20,000


def test_benjamini_hochberg_matches_step_up_rule() -> None:
    rng = np.random.default_rng(5)
    p = np.r_[rng.uniform(0, 0.01, 20), rng.uniform(0, 1, 80), [np.nan]]
    q = benjamini_hochberg(p)
    assert np.isnan(q[-1])
    finite = p[:-1]
    m = len(finite)
    order = np.sort(finite)
    passing = np.nonzero(order <= np.arange(1, m + 1) * 0.05 / m)[0]
    cutoff = order[passing.max()] if len(passing) else -1.0
    assert set(np.nonzero(q[:-1] <= 0.05)[0]) == set(np.nonzero(finite <= cutoff)[0])
    assert (q[:-1] >= finite).all()


def test_fdr_is_stricter(lattice_result) -> None:  # type: ignore[no-untyped-def]
    # 99,999 draws: the planted-block edge r2c2 has p ~ 0.0086, q ~ 0.041 (estimated with 199,999
    # draws), so at 999 draws its q crosses 0.05 for about a third of all seeds; here the Monte Carlo
    # error of its p (sd 0.0003) is far below that margin and the assertions below test the FDR rule,
    # not the luck of one seed
    units, _ = lattice_result
    plain = spatial_autocorrelation(units, variables=["v"], permutations=99_999, seed=7)
    fdr = spatial_autocorrelation(units, variables=["v"], permutations=99_999, seed=7, fdr=True)
    assert np.array_equal(fdr.units["lisa_v_p"], plain.units["lisa_v_p"])  # same draws, other judgement
    sig_plain = plain.units["lisa_v_cluster"] != "not significant"
    sig_fdr = fdr.units["lisa_v_cluster"] != "not significant"
    assert (sig_fdr <= sig_plain).all() and sig_fdr.sum() < sig_plain.sum()
    assert (fdr.units.loc[sig_fdr, "lisa_v_q"] <= 0.05).all()
    # the planted blocks survive the correction
    out = fdr.units.set_index("unit_id")
    assert all(out.loc[f"r{r}c{c}", "lisa_v_cluster"] == "HH" for r, c in HH_BLOCK)


def test_alpha_changes_labels(lattice_result) -> None:  # type: ignore[no-untyped-def]
    units, res = lattice_result
    strict = spatial_autocorrelation(units, variables=["v"], permutations=999, seed=7, alpha=0.002)
    p = res.units["lisa_v_p"]
    assert ((strict.units["lisa_v_cluster"] != "not significant") == (p < 0.002)).all()
    assert (p == 0.002).any()  # units exactly at alpha exist here, and are not significant


def test_p_equal_to_alpha_is_not_significant() -> None:
    # 19 permutations: a planted-block unit that no permutation beats has p = 1/20 = 0.05 exactly
    units = planted()
    at = spatial_autocorrelation(units, variables=["v"], permutations=19, seed=7, alpha=0.05)
    out = at.units.set_index("unit_id")
    assert out.loc["r0c0", "lisa_v_p"] == 0.05 and out.loc["r0c0", "gi_v_p"] == 0.05
    assert out.loc["r0c0", "lisa_v_cluster"] == "not significant"
    assert out.loc["r0c0", "gi_v_class"] == "not significant"
    assert (out["lisa_v_cluster"] == "not significant").all()  # 0.05 is the smallest p with 19 draws
    above = spatial_autocorrelation(units, variables=["v"], permutations=19, seed=7, alpha=0.05000001)
    assert above.units.set_index("unit_id").loc["r0c0", "lisa_v_cluster"] == "HH"
    assert above.units.set_index("unit_id").loc["r0c0", "gi_v_class"] == "hot spot"
    row = at.global_moran.iloc[0]
    assert (
        row["significance"]
        == "p < 0.05 (pseudo p-value, 19 conditional permutations, no multiple-testing correction)"
    )
    assert row["alpha"] == 0.05 and not row["fdr"]


def test_q_equal_to_alpha_is_not_significant() -> None:
    # alpha set to the smallest BH q-value of the run: the units at that q (the best ones) are not significant
    units = planted()
    res = spatial_autocorrelation(units, variables=["v"], permutations=199, seed=7, fdr=True)
    q = res.units["lisa_v_q"].to_numpy()
    smallest = float(np.nanmin(q))
    at = spatial_autocorrelation(units, variables=["v"], permutations=199, seed=7, fdr=True, alpha=smallest)
    sig = at.units["lisa_v_cluster"] != "not significant"
    assert not sig[q == smallest].any() and sig.sum() == 0
    assert at.global_moran.loc[0, "significance"].startswith(f"q < {smallest:g} (Benjamini-Hochberg FDR")


def test_missing_values_left_out_and_relinked() -> None:
    units = planted(seed=1)
    units["w"] = units["v"]
    # the corner r0c0 loses all three neighbours: it must be re-linked, not dropped
    units.loc[units["unit_id"].isin(["r0c1", "r1c0", "r1c1"]), "w"] = np.nan
    res = spatial_autocorrelation(units, variables=["v", "w"], permutations=99, seed=1)
    g = res.global_moran.set_index("variable")
    assert g.loc["w", "n"] == 97 and g.loc["w", "n_missing"] == 3 and g.loc["w", "n_links"] == 1
    assert g.loc["v", "n"] == 100 and g.loc["v", "n_links"] == 0
    out = res.units.set_index("unit_id")
    assert (out.loc[["r0c1", "r1c0", "r1c1"], "lisa_w_cluster"] == NO_DATA).all()
    assert out.loc[["r0c1", "r1c0", "r1c1"], "lisa_w_I"].isna().all()
    assert np.isfinite(out.loc["r0c0", "lisa_w_I"]) and out.loc["r0c0", "lisa_w_cluster"] != NO_DATA
    assert list(res.global_moran.columns) == GLOBAL_COLUMNS


def test_constant_variable_warns_and_stays_empty() -> None:
    units = planted().assign(flat=1.0)
    with pytest.warns(DataQualityWarning, match="flat: 100 unit.*all equal"):
        res = spatial_autocorrelation(units, variables=["flat"], permutations=9, seed=1)
    assert np.isnan(res.global_moran.loc[0, "I"])
    assert (res.units["lisa_flat_cluster"] == NO_DATA).all()


def test_empty_input_keeps_schema(lattice_result) -> None:  # type: ignore[no-untyped-def]
    _, full = lattice_result
    res = spatial_autocorrelation(planted().iloc[:0], variables=["v"], permutations=9)
    assert len(res.units) == 0 and list(res.units.columns) == list(full.units.columns)
    assert len(res.global_moran) == 0 and list(res.global_moran.columns) == GLOBAL_COLUMNS


def test_bad_inputs() -> None:
    units = planted()
    with pytest.raises(InputError, match=r"missing column\(s\) \['nope'\]"):
        spatial_autocorrelation(units, variables=["nope"])
    with pytest.raises(InputError, match="column 'name' should be numeric"):
        spatial_autocorrelation(units, variables=["name"])
    with pytest.raises(InputError, match="alpha must be in"):
        spatial_autocorrelation(units, variables=["v"], alpha=1.5)
    other = build_weights(units.iloc[:50])
    with pytest.raises(InputError, match="weights were built for 50 other units"):
        spatial_autocorrelation(units, variables=["v"], weights=other)
    with pytest.raises(CRSError, match="no CRS"):
        spatial_autocorrelation(units.set_crs(None, allow_override=True), variables=["v"])
    bad = units.copy()
    bad.loc[0, "geometry"] = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    with pytest.raises(GeometryError, match="invalid"):
        spatial_autocorrelation(bad, variables=["v"])


def test_prebuilt_weights_and_shuffled_rows_give_same_unit_results(lattice_result) -> None:  # type: ignore[no-untyped-def]
    units, res = lattice_result
    shuffled = units.sample(frac=1.0, random_state=2)
    out = spatial_autocorrelation(shuffled, variables=["v"], permutations=999, seed=7)
    a = res.units.set_index("unit_id").sort_index()
    b = out.units.set_index("unit_id").sort_index()
    assert np.allclose(a["lisa_v_I"], b["lisa_v_I"], atol=1e-12)
    assert (b.index == a.index).all()
    assert out.global_moran.loc[0, "I"] == pytest.approx(res.global_moran.loc[0, "I"], abs=1e-12)
    assert list(out.units.index) == list(shuffled.index)  # aligned to the input


def test_moran_scatterplot_slope_is_i(lattice_result) -> None:  # type: ignore[no-untyped-def]
    _, res = lattice_result
    i_val = float(res.global_moran.loc[0, "I"])
    fig = moran_scatterplot(res.units, "v", moran_i=i_val, p_sim=0.001)
    assert isinstance(fig, Figure)
    x = res.units["lisa_v_std"].to_numpy()
    lag = res.units["lisa_v_lag"].to_numpy()
    assert np.polyfit(x, lag, 1)[0] == pytest.approx(i_val, abs=1e-9)  # least squares slope = I
    line = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("slope")][0]
    xs, ys = line.get_data()
    assert (ys[1] - ys[0]) / (xs[1] - xs[0]) == pytest.approx(i_val)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_warm_up_compiles_without_warnings() -> None:
    assert warm_up() >= 0.0
    thread = start_warm_up()
    thread.join(timeout=120)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------
# cross-check with pygeoda (GeoDa's C++ library)
# ---------------------------------------------------------------------------
def write_gal(weights: UnitWeights, path: Path) -> list[str]:
    """Write ``weights`` (with added links) as a GeoDa GAL file; return the id vector."""
    sets = weights.neighbor_sets()
    lines = [f"0 {weights.n} units unit_id"]
    for i, nb in enumerate(sets):
        lines.append(f"{i + 1} {len(nb)}")
        lines.append(" ".join(str(j + 1) for j in sorted(nb)))
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return [str(i + 1) for i in range(weights.n)]


def pygeoda_check(units: gpd.GeoDataFrame, column: str, res: object, weights: UnitWeights, tmp: Path) -> None:
    """Assert pygeoda gives our queen sets, Moran's I and every local Moran's I."""
    ok = units[column].notna().to_numpy()
    # 1. contiguity built by GeoDa itself = our queen pairs (before the island links)
    gq = pygeoda.queen_weights(pygeoda.open(units[["unit_id", "geometry"]].reset_index(drop=True)))
    geoda_sets = [set(gq.get_neighbors(i)) for i in range(len(units))]
    assert geoda_sets == weights.neighbor_sets(links=False)
    # 2. same (linked, subset) weights through a GAL file: same statistics
    w_var = weights.subset(ok)
    ids = write_gal(w_var, tmp / f"{column}.gal")
    # what pygeoda.read_gal does, without its unclosed file handle (a ResourceWarning)
    gw = Weight(gda_load_gal(str(tmp / f"{column}.gal"), ids))
    y = units.loc[ok, column].to_numpy(dtype=float)
    lisa = pygeoda.local_moran(gw, list(y), permutations=99, seed=1, cpu_threads=1)
    ours = res.units.loc[ok, f"lisa_{column}_I"].to_numpy()  # type: ignore[attr-defined]
    assert np.allclose(np.asarray(lisa.lisa_values()), ours, rtol=0, atol=1e-9)
    lag = np.asarray(gw.spatial_lag(list(y)))  # row-standardised lag by GeoDa
    z = y - y.mean()
    has = w_var.cardinalities > 0  # an isolate's row of W is empty: lag of z 0, row sum (S0 share) 0
    lag_z = np.where(has, lag - y.mean(), 0.0)
    moran_i = float(len(y) / has.sum() * (z @ lag_z) / (z @ z))
    row = res.global_moran.set_index("variable").loc[column]  # type: ignore[attr-defined]
    assert row["I"] == pytest.approx(moran_i, abs=1e-9)


def test_pygeoda_cross_check_with_islands(tmp_path: Path) -> None:
    units = planted(seed=4).to_crs(4326)
    extra = gpd.GeoDataFrame(
        {"unit_id": ["isle", "g1", "g2"], "v": [3.0, -2.0, 0.5], "row": -1, "col": -1, "name": "x"},
        geometry=[
            box(123.3, 29.8, 123.4, 29.9),
            box(123.0, 30.5, 123.1, 30.6),
            box(123.1, 30.5, 123.2, 30.6),
        ],
        crs=4326,
    )
    units = gpd.GeoDataFrame(pd.concat([units, extra], ignore_index=True), crs=4326)
    units.loc[5, "v"] = np.nan
    weights = build_weights(units, max_link_km=None)
    assert weights.n_links == 2
    res = spatial_autocorrelation(units, variables=["v"], weights=weights, permutations=99, seed=3)
    pygeoda_check(units, "v", res, weights, tmp_path)
    # default 300 km: the island joins the pair g1-g2 (~80 km), and the three stay apart from the lattice
    limited = build_weights(units)
    assert limited.n_links == 1 and limited.unlinked["n_units"].tolist() == [3]
    # 50 km: the island has no neighbour at all, the pair keeps its own contiguity: same check
    isolated = build_weights(units, max_link_km=50)
    assert isolated.n_links == 0 and len(isolated.unlinked) == 2
    res = spatial_autocorrelation(units, variables=["v"], weights=isolated, permutations=99, seed=3)
    out = res.units.set_index("unit_id")
    assert out.loc["isle", "w_neighbors"] == 0 and np.isnan(out.loc["isle", "lisa_v_p"])
    assert out.loc["isle", "lisa_v_cluster"] == "not significant" and out.loc["isle", "lisa_v_I"] == 0.0
    assert (res.links["status"] == "not linked").sum() == 2
    pygeoda_check(units, "v", res, isolated, tmp_path)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def _config(folder: Path, extra: str = "") -> Path:
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(folder / "raw").as_posix()}"\n'
        f'data_processed = "{(folder / "processed").as_posix()}"\n'
        f'maps = "{(folder / "maps").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


def _population_gpkg(folder: Path) -> gpd.GeoDataFrame:
    units = planted(seed=2).to_crs(4326)
    units["change_pct"] = units["v"]
    units["net_outflow_ratio"] = -units["v"] / 100.0
    units["pop_2010"] = 100_000 + 1000 * np.arange(len(units))
    units["pop_2020"] = np.round(units["pop_2010"] * (1 + units["change_pct"] / 100)).astype(int)
    units["share_60plus_2010"] = 15.0 - 0.2 * units["v"] + 0.01 * np.arange(len(units)) % 3
    units["share_60plus_2020"] = units["share_60plus_2010"] + 4.0 - 0.1 * units["v"]
    units["share_60plus_change_pts"] = units["share_60plus_2020"] - units["share_60plus_2010"]
    units["comparable"] = units["unit_id"] != "r9c9"
    units.loc[0, "net_outflow_ratio"] = np.nan
    write_gpkg(folder / "processed" / "population.gpkg", {"units": units.drop(columns=["v", "row", "col"])})
    return units


def test_cli_writes_layers_pngs_and_reuses_weights(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[autocorrelation]\npermutations = 99\n")
    _population_gpkg(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "autocorrelation", "--seed", "5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "processed" / "autocorrelation.gpkg"
    assert set(list_layers(gpkg)) == {"units", "global_moran", "island_links"}
    out = read_layer(gpkg, "units")
    assert "geometry" not in out.columns and len(out) == 100  # attribute table keyed by unit_id
    assert {"unit_id", "lisa_change_pct_cluster", "gi_net_outflow_ratio_class", "w_neighbors"} <= set(
        out.columns
    )
    gm = read_table(gpkg, "global_moran").set_index("variable")
    assert gm.loc["change_pct", "seed"] == 5 and gm.loc["change_pct", "permutations"] == 99
    assert gm.loc["net_outflow_ratio", "n"] == 98 and gm.loc["net_outflow_ratio", "n_excluded"] == 1
    assert gm.loc["net_outflow_ratio", "I"] > 0.5  # the planted pattern, sign-flipped, still clusters
    # default bivariate pairs: change_pct with the neighbours' 60+ shares (2010, 2020, change in points)
    bv = gm[gm["statistic"] == "moran_bv"]
    assert list(bv.index) == [
        "change_pct_vs_share_60plus_2010",
        "change_pct_vs_share_60plus_2020",
        "change_pct_vs_share_60plus_change_pts",
    ]
    assert (bv["x"] == "change_pct").all() and bv.loc["change_pct_vs_share_60plus_2010", "I"] < -0.5
    assert (
        gm["significance"] == "p < 0.05 (pseudo p-value, 99 conditional permutations, no multiple-testing "
        "correction)"
    ).all()
    assert (
        out.set_index("unit_id").loc["r9c9", "bv_change_pct_vs_share_60plus_2010_cluster"] == "not comparable"
    )
    for var in ("change_pct", "change_pct_eb", "net_outflow_ratio", *bv.index):
        assert (tmp_path / "maps" / f"moran_{var}.png").read_bytes()[:4] == b"\x89PNG"
    links = read_layer(gpkg, "island_links")
    assert list(links.columns) == [
        "unit_id",
        "unit_name",
        "neighbor_id",
        "neighbor_name",
        "distance_km",
        "status",
        "reason",
        "geometry",
    ]
    caches = list((tmp_path / "processed").glob("weights_*.npz"))
    assert len(caches) == 1
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"]["autocorrelation"]["summary"]["weights_cached"] is False

    again = runner.invoke(main, ["-c", str(cfg), "autocorrelation"])
    assert again.exit_code == 4 and "--overwrite" in again.output

    third = runner.invoke(
        main, ["-c", str(cfg), "autocorrelation", "--overwrite", "--variables", "change_pct"]
    )
    assert third.exit_code == 0, third.output
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"]["autocorrelation"]["summary"]["weights_cached"] is True
    assert manifest["stages"]["autocorrelation"]["parameters"]["variables"] == ["change_pct"]
    assert list((tmp_path / "processed").glob("weights_*.npz")) == caches


def test_cli_errors(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(main, ["-c", str(cfg), "autocorrelation"])
    assert missing.exit_code == 3 and "run `geo-pipeline population` first" in missing.output
    _population_gpkg(tmp_path)
    bad = runner.invoke(main, ["-c", str(cfg), "autocorrelation", "--variables", "pop_2030"])
    assert bad.exit_code == 2 and "missing column(s) ['pop_2030']" in bad.output
    alpha = runner.invoke(main, ["-c", str(cfg), "autocorrelation", "--alpha", "2"])
    assert alpha.exit_code == 2 and "--alpha" in alpha.output


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------
NORTHEAST = ("21", "22", "23")  # Liaoning, Jilin, Heilongjiang


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_units_northeast_low_low_and_pygeoda(run_stage: Callable[[str], Path], tmp_path: Path) -> None:
    processed = run_stage("autocorrelation")
    units = read_layer(processed / "population.gpkg", "units")
    out = read_layer(processed / "autocorrelation.gpkg", "units")
    assert list(out["unit_id"]) == list(units["unit_id"])
    gm = read_table(processed / "autocorrelation.gpkg", "global_moran").set_index("variable")

    # population change is strongly clustered (a national gradient from the coast and cities)
    assert gm.loc["change_pct", "I"] > 0.2
    assert gm.loc["change_pct", "p_sim"] < 0.01
    # the Northeast lost population everywhere (census 2020: Heilongjiang -16.9 %, Jilin -12.2 %)
    prov = units["province_code"].astype(str).str[:2]
    ll = out["lisa_change_pct_cluster"] == "LL"
    ne = prov.isin(NORTHEAST)
    assert ll[ne].mean() > 4 * ll[~ne].mean()  # LL is far more frequent in the Northeast
    assert ll[prov == "23"].mean() > 0.5  # a majority of Heilongjiang units are Low-Low
    assert (out.loc[ne, "lisa_change_pct_cluster"] == "HH").sum() < 0.05 * ne.sum()

    # islands derived from the data: those known to have no land neighbour (PROVENANCE.md), alone
    # or merged into one unit (e.g. "西沙区+南沙区": Sansha has no 2010 census of its own)
    inc = out["w_included"].to_numpy()  # units not comparable (Sansha) are not in the weights
    comp = out["w_component"].to_numpy()[inc]
    sizes = np.bincount(comp)
    names = units["name"].to_numpy()[inc]
    islands = {names[k] for k in range(len(comp)) if comp[k] > 0 and sizes[comp[k]] == 1}
    parts = {p for name in islands for p in name.split("+")}
    assert parts <= {"长海县", "岱山县", "金门县", "南澳县", "西沙区", "南沙区"}
    assert {"长海县", "岱山县", "南澳县"} <= parts
    groups = [set(names[comp == c]) for c in range(1, len(sizes)) if sizes[c] > 1]
    assert any("美兰区" in g for g in groups) and any("定海区" in g for g in groups)  # Hainan, Zhoushan
    assert any("思明区" in g for g in groups)  # Xiamen island
    links = read_layer(processed / "autocorrelation.gpkg", "island_links")
    assert len(links) == len(sizes) - 1  # one link (or a "not linked" row) per component (link_k = 1)
    made = links[links["status"] == "linked"]
    assert out["w_linked"].sum() >= len(made) and (made["distance_km"] < 300).all()
    # Sansha: left out as not comparable, or (before `comparable` exists) left unlinked at 1,044 km
    assert set(links.loc[links["status"] == "not linked", "unit_name"]) <= {"西沙区+南沙区"}

    analysed = units[units["comparable"].astype(bool)].reset_index(drop=True)  # Sansha left out
    weights = build_weights(analysed)
    res = spatial_autocorrelation(
        analysed, variables=["change_pct"], weights=weights, permutations=99, seed=1
    )
    assert res.global_moran.loc[0, "I"] == pytest.approx(gm.loc["change_pct", "I"], abs=1e-12)
    pygeoda_check(analysed, "change_pct", res, weights, tmp_path)


# ---------------------------------------------------------------------------
# units not comparable between the censuses, EB change
# ---------------------------------------------------------------------------
def test_not_comparable_unit_left_out_of_weights_and_statistics() -> None:
    import esda

    units = planted(seed=5)
    units["v"] = units["v"].astype(float)
    units.loc[units["unit_id"] == "r5c5", "v"] = 500.0  # a wild value that would dominate the variance
    units["pop_2010"] = 10_000 + 100 * np.arange(len(units))
    units["pop_2020"] = np.round(units["pop_2010"] * (1 + units["v"] / 100)).astype(int)
    units["comparable"] = units["unit_id"] != "r5c5"
    res = spatial_autocorrelation(units, variables=["v", "change_pct_eb"], permutations=99, seed=2)
    assert "r5c5" not in set(res.weights.ids) and res.weights.n == 99
    out = res.units.set_index("unit_id")
    assert list(out.index) == list(units["unit_id"])  # every unit stays in the layer
    assert not out.loc["r5c5", "w_included"] and out.loc["r5c5", "w_neighbors"] == 0
    assert out.loc["r5c5", "w_component"] == -1
    for col in (
        "lisa_v_I",
        "lisa_v_p",
        "gi_v_z",
        "change_pct_eb",
        "change_pct_eb_smooth",
        "lisa_change_pct_eb_I",
    ):
        assert np.isnan(out.loc["r5c5", col]), col
    assert out.loc["r5c5", "lisa_v_cluster"] == "not comparable" == out.loc["r5c5", "gi_v_class"]
    # its 8 neighbours lost one neighbour each (queen): 8 -> 7
    assert out.loc["r4c4", "w_neighbors"] == 7 and out.loc["r6c6", "w_neighbors"] == 7
    keep = units["comparable"].to_numpy()
    ref = esda.Moran(units.loc[keep, "v"].to_numpy(), res.weights.graph(), transformation="r", permutations=0)
    gm = res.global_moran.set_index("variable")
    assert gm.loc["v", "I"] == pytest.approx(ref.I, abs=1e-12)
    assert gm.loc["v", "n"] == 99 and gm.loc["v", "n_excluded"] == 1 and gm.loc["v", "n_missing"] == 0
    everything = spatial_autocorrelation(units.drop(columns="comparable"), variables=["v"], permutations=0)
    assert everything.global_moran.loc[0, "I"] != pytest.approx(ref.I, abs=1e-3)  # the unit mattered
    # EB on the comparable units only = esda's Moran_Rate on them
    rate = esda.Moran_Rate(
        units.loc[keep, "pop_2020"], units.loc[keep, "pop_2010"], res.weights.graph(), permutations=0
    )
    assert gm.loc["change_pct_eb", "I"] == pytest.approx(rate.I, abs=1e-12)
    # prebuilt weights must be those of the comparable units
    with pytest.raises(InputError, match="analysed \\(comparable\\) units"):
        spatial_autocorrelation(units, variables=["v"], weights=build_weights(units), permutations=0)
    bad = units.assign(comparable=np.where(keep, True, None))
    with pytest.raises(InputError, match="'comparable' has 1 missing value"):
        spatial_autocorrelation(bad, variables=["v"], permutations=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_sansha_left_out_and_far_island_links_not_made(run_stage: Callable[[str], Path]) -> None:
    import esda

    units = read_layer(run_stage("population") / "population.gpkg", "units")
    names = dict(zip(units["unit_id"], units["name"], strict=True))
    sansha = units.loc[units["name"].str.contains("西沙区"), "unit_id"].tolist()
    assert sansha == ["460301"] and units.set_index("unit_id").loc["460301", "pop_2010"] == 444
    if "comparable" not in units.columns:  # until the population stage writes it (h12b): the same rule
        units["comparable"] = ~units["unit_id"].isin(sansha)
    assert units.loc[~units["comparable"].astype(bool), "unit_id"].tolist() == ["460301"]

    # 1. every unit, no link limit (as before): Sansha linked to 陵水 1,044 km away
    everything = units.drop(columns="comparable")
    w_all = build_weights(everything, max_link_km=None)
    far = w_all.links[w_all.links["distance_km"] > 300]
    assert [(names[a], names[b]) for a, b in zip(far["unit_id"], far["neighbor_id"], strict=True)] == [
        ("西沙区+南沙区", "陵水黎族自治县")
    ]
    assert far["distance_km"].iloc[0] == pytest.approx(1043.8, abs=0.1)
    # 2. every unit, 300 km limit: exactly that link disappears; Sansha is left isolated and reported
    w_300 = build_weights(everything)
    made = {
        (names[a], names[b]) for a, b in zip(w_300.links["unit_id"], w_300.links["neighbor_id"], strict=True)
    }
    before = {
        (names[a], names[b]) for a, b in zip(w_all.links["unit_id"], w_all.links["neighbor_id"], strict=True)
    }
    assert before - made == {("西沙区+南沙区", "陵水黎族自治县")} and made <= before and len(made) == 6
    assert w_300.unlinked["unit_id"].tolist() == ["460301"]
    assert w_300.unlinked.loc[0, "neighbor_id"] == "469028" and "1,044 km" in w_300.unlinked.loc[0, "reason"]
    assert w_300.cardinalities[list(w_300.ids).index("460301")] == 0
    # 3. the stage's rule: Sansha (comparable = False) is not in the weights at all
    res = spatial_autocorrelation(units, variables=["change_pct", "change_pct_eb"], permutations=99, seed=1)
    assert "460301" not in set(res.weights.ids) and res.weights.n == len(units) - 1
    assert len(res.weights.unlinked) == 0 and res.weights.n_links == 6
    keep = units["comparable"].astype(bool).to_numpy()
    y = units.loc[keep, "change_pct"].to_numpy(dtype=float)
    ref = esda.Moran(y, res.weights.graph(), transformation="r", permutations=0)
    gm = res.global_moran.set_index("variable")
    assert gm.loc["change_pct", "I"] == pytest.approx(ref.I, abs=1e-12)
    assert round(gm.loc["change_pct", "I"], 3) == 0.363  # issue 12: 0.327 with Sansha linked to 陵水
    with_sansha = spatial_autocorrelation(
        everything, variables=["change_pct"], max_link_km=None, permutations=99, seed=1
    )
    assert round(with_sansha.global_moran.loc[0, "I"], 3) == 0.327
    out, out_all = res.units.set_index("unit_id"), with_sansha.units.set_index("unit_id")
    assert out_all.loc["469028", "lisa_change_pct_cluster"] == "HH"  # 陵水, only through Sansha
    assert out.loc["469028", "lisa_change_pct_cluster"] == "not significant"
    assert out.loc["460301", "lisa_change_pct_cluster"] == "not comparable"
    assert np.isnan(out.loc["460301", "lisa_change_pct_I"]) and not out.loc["460301", "w_included"]
    # EB change: GeoDa's EB Moran / esda's Moran_Rate on the same weights; for counties of 6,883 people
    # and more the EB standardisation barely moves anything (measured: I 0.36345 vs 0.36345)
    rate = esda.Moran_Rate(
        units.loc[keep, "pop_2020"].to_numpy(dtype=float),
        units.loc[keep, "pop_2010"].to_numpy(dtype=float),
        res.weights.graph(),
        permutations=0,
    )
    assert gm.loc["change_pct_eb", "I"] == pytest.approx(rate.I, abs=1e-12)
    assert gm.loc["change_pct_eb", "I"] == pytest.approx(gm.loc["change_pct", "I"], abs=1e-4)

    # 4. shrinkage with ageing on the real counties: the stage's bivariate statistics are esda's
    pairs = [("change_pct", "share_60plus_2010"), ("change_pct", "share_60plus_2020")]
    bv = spatial_autocorrelation(
        units, variables=["change_pct"], bivariate=pairs, weights=res.weights, permutations=99, seed=1
    )
    bgm, bout = bv.global_moran.set_index("variable"), bv.units.set_index("unit_id")
    for x, y in pairs:
        key = f"{x}_vs_{y}"
        xv, yv = units.loc[keep, x].to_numpy(dtype=float), units.loc[keep, y].to_numpy(dtype=float)
        ref_g = esda.Moran_BV(xv, yv, res.weights.graph(), permutations=0)
        assert bgm.loc[key, "I"] == pytest.approx(ref_g.I, abs=1e-12) and bgm.loc[key, "n"] == len(units) - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ref_l = esda.Moran_Local_BV(xv, yv, res.weights.graph(), permutations=0)
        assert np.array_equal(bout.loc[units.loc[keep, "unit_id"], f"bv_{key}_I"].to_numpy(), ref_l.Is)
        assert bgm.loc[key, "I"] < -0.1 and bgm.loc[key, "p_sim"] == 0.01  # shrinking next to older units
    assert bout.loc["460301", "bv_change_pct_vs_share_60plus_2010_cluster"] == "not comparable"


# ---------------------------------------------------------------------------
# bivariate Moran's I (shrinkage with ageing)
# ---------------------------------------------------------------------------
def bivariate_lattice() -> gpd.GeoDataFrame:
    """Make the gradient lattice with a second variable ``w`` correlated with ``v`` (seeded)."""
    units = gradient_lattice()
    rng = np.random.default_rng(2)
    units["w"] = 0.5 * units["v"] + rng.normal(size=len(units))
    return units


def test_local_bivariate_equals_esda_moran_local_bv() -> None:
    import esda

    units = bivariate_lattice()
    x, y = units["v"].to_numpy(), units["w"].to_numpy()
    w = build_weights(units)
    ours = local_bivariate(x, y, w, permutations=999, seed=1, alpha=0.05, fdr=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # esda's note about a future default
        ref = esda.Moran_Local_BV(
            x, y, w.graph(), transformation="r", permutations=999, seed=2, keep_simulations=False
        )
    assert np.array_equal(ours["I"].to_numpy(), np.asarray(ref.Is))  # the statistic is esda's, bit for bit
    # textbook: (n - 1) z_x,i * sum_j w_ij z_y,j / sum z_x^2, row-standardised
    zx, zy = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    wr = queen_matrix(units)
    wr = wr / wr.sum(axis=1, keepdims=True)
    assert np.allclose(ours["I"], (len(x) - 1) * zx * (wr @ zy) / (zx @ zx), atol=1e-12)
    assert np.allclose(ours["lag"], wr @ zy) and np.allclose(ours["std"], zx)
    # p-values: same null distribution, other draws (esda's numba RNG): Monte Carlo error only
    ref_p = np.round(np.asarray(ref.p_sim, dtype=float) * 1000) / 1000
    diff = np.abs(ours["p"].to_numpy() - ref_p)
    assert diff.max() < 0.1 and diff.mean() < 0.02, (diff.max(), diff.mean())
    assert np.corrcoef(ours["p"], ref_p)[0, 1] > 0.97
    assert ours["p"].min() < 0.01 and ours["p"].max() > 0.3
    quad = {1: "HH", 2: "LH", 3: "LL", 4: "HL"}
    sig = ours["cluster"] != "not significant"
    assert (ours.loc[sig, "cluster"] == [quad[q] for q in np.asarray(ref.q)[sig.to_numpy()]]).all()
    assert ((ours["p"] < 0.05) == sig).all()
    # seeded: same seed, same p-values; another seed, others
    again = local_bivariate(x, y, w, permutations=999, seed=1, alpha=0.05, fdr=False)
    other = local_bivariate(x, y, w, permutations=999, seed=3, alpha=0.05, fdr=False)
    assert np.array_equal(again["p"], ours["p"]) and not np.array_equal(other["p"], ours["p"])


@pytest.mark.parametrize("unit", [3, 0])
def test_local_bivariate_pvalue_matches_exact_enumeration(unit: int) -> None:
    # 1 x 7 strip: x at the unit, y drawn for its neighbours from the other six units (esda's rule)
    from itertools import combinations

    x = np.array([5.0, 1.0, 3.5, 0.0, 2.0, 6.0, 4.2])
    y = np.array([0.3, 2.0, 1.1, 5.0, 4.0, 0.2, 3.3])
    _, w = _strip(list(x))
    zx, zy = (x - x.mean()) / x.std(), (y - y.mean()) / y.std()
    nb = sorted(w.neighbor_sets()[unit])
    observed = zy[nb].sum()
    others = [zy[j] for j in range(7) if j != unit]
    sums = [sum(c) for c in combinations(others, len(nb))]
    up = np.mean([s >= observed - 1e-12 for s in sums])
    at_least = up if zx[unit] > 0 else np.mean([s <= observed + 1e-12 for s in sums])
    exact = min(at_least, 1 - at_least)
    p = local_bivariate(x, y, w, permutations=20_000, seed=4, alpha=0.05, fdr=False)["p"].to_numpy()
    assert p[unit] == pytest.approx(exact, abs=0.012)


def test_bivariate_pairs_in_the_stage() -> None:
    import esda

    units = bivariate_lattice()
    units.loc[7, "w"] = np.nan  # left out of the pair only
    units["comparable"] = units["unit_id"] != "r5c5"
    res = spatial_autocorrelation(units, variables=["v"], bivariate=[("v", "w")], permutations=99, seed=5)
    gm = res.global_moran.set_index("variable")
    assert list(res.global_moran.columns) == GLOBAL_COLUMNS
    row = gm.loc["v_vs_w"]
    assert (row["statistic"], row["x"], row["y"]) == ("moran_bv", "v", "w")
    assert (gm.loc["v", "statistic"], gm.loc["v", "x"], gm.loc["v", "y"]) == ("moran", "v", "v")
    assert row["n"] == 98 and row["n_missing"] == 1 and row["n_excluded"] == 1 and row["p_sim"] <= 0.05
    keep = units["comparable"].to_numpy() & units["w"].notna().to_numpy()
    w_pair = build_weights(units[units["comparable"]]).subset(units.loc[units["comparable"], "w"].notna())
    ref = esda.Moran_BV(units.loc[keep, "v"], units.loc[keep, "w"], w_pair.graph(), permutations=0)
    assert row["I"] == pytest.approx(ref.I, abs=1e-12)
    zx = (units.loc[keep, "v"] - units.loc[keep, "v"].mean()) / units.loc[keep, "v"].std(ddof=0)
    out = res.units.set_index("unit_id")
    assert np.allclose(out["bv_v_vs_w_std"].to_numpy()[keep], zx)
    assert out.loc["r0c7", "bv_v_vs_w_cluster"] == "no data" and np.isnan(out.loc["r0c7", "bv_v_vs_w_I"])
    assert out.loc["r5c5", "bv_v_vs_w_cluster"] == "not comparable"
    sig = out["bv_v_vs_w_cluster"].isin(["HH", "LL", "HL", "LH"])
    assert sig.any() and (out.loc[sig, "bv_v_vs_w_p"] < 0.05).all()
    # the scatterplot of the pair: least-squares slope of the lag of z_w on z_v = the bivariate I
    data = out[["bv_v_vs_w_std", "bv_v_vs_w_lag"]].dropna()
    assert np.polyfit(data["bv_v_vs_w_std"], data["bv_v_vs_w_lag"], 1)[0] == pytest.approx(row["I"], abs=1e-9)
    fig = moran_scatterplot(res.units, "v", moran_i=row["I"], p_sim=row["p_sim"], y_variable="w")
    assert fig.axes[0].get_ylabel() == "spatial lag of w (standardised)"
    assert "v with neighbours' w" in fig.axes[0].get_title() and "n = 98" in fig.axes[0].get_title()
    with pytest.raises(InputError, match="expected two different columns"):
        spatial_autocorrelation(units, variables=["v"], bivariate=[("v", "v")])
    with pytest.raises(InputError, match=r"missing column\(s\) \['share_60plus_2010'\]"):
        spatial_autocorrelation(units, variables=["v"], bivariate=[("v", "share_60plus_2010")])


# ---------------------------------------------------------------------------
# fast paths (issue 16): the same numbers as the generic computations, bit for bit
# ---------------------------------------------------------------------------
def test_column_sums_reproduce_numpy_sum_order() -> None:
    from geo_pipeline import autocorrelation as ac

    assert ac._column_sums_are_numpys()  # the fast path is on with this NumPy
    rng = np.random.default_rng(7)
    for k in (1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 64, 127, 128):
        a = rng.standard_normal((5, 33, k)) * 10.0 ** rng.integers(-6, 7, (5, 33, k))
        assert np.array_equal(ac._column_sums(lambda j, a=a: a[..., j].copy(), k), a.sum(axis=-1)), k
    # another order (plain left-to-right) differs from k = 8 on: the check can fail
    a = rng.standard_normal((5, 33, 16)) * 10.0 ** rng.integers(-6, 7, (5, 33, 16))
    assert not np.array_equal(np.add.accumulate(a, axis=-1)[..., -1], a.sum(axis=-1))


def _block_counts(values: np.ndarray, w: UnitWeights, *, permutations: int, seed: int) -> list[np.ndarray]:
    from scipy import sparse

    from geo_pipeline.autocorrelation import PERMUTATION_BLOCK, permutation_block

    n = len(values)
    adj = sparse.csr_array((np.ones(len(w.focal)), (w.focal, w.neighbor)), shape=(n, n))
    args = (
        values,
        w.cardinalities,
        adj @ values,
        np.sign(values),
        permutations,
        seed,
        float(np.abs(values).max()),
    )
    return [permutation_block(b, *args) for b in range(-(-n // PERMUTATION_BLOCK))]


def test_fast_paths_bit_identical_on_real_units(
    run_stage: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import esda

    from geo_pipeline import autocorrelation as ac
    from geo_pipeline.autocorrelation import global_moran, global_moran_bv

    units = read_layer(run_stage("population") / "population.gpkg", "units")
    analysed = units[units["comparable"].astype(bool)].reset_index(drop=True)
    w = build_weights(analysed)
    assert w.graph() is w.graph()  # built once per weights object
    assert np.array_equal(
        w.graph().sparse.toarray(), UnitWeights.from_arrays(w.to_arrays()).graph().sparse.toarray()
    )
    assert w.cardinalities.max() >= 16  # rows of 8 accumulators and more (k = 8 ... 20 on the real units)
    y = analysed["change_pct"].to_numpy(float)
    x = analysed["share_60plus_2010"].to_numpy(float)
    z = (y - y.mean()) / y.std()

    # local permutations: by columns == the (m, P, k) gather and numpy.sum, count for count
    fast = _block_counts(z, w, permutations=999, seed=20201101)
    fast_knn = _block_counts(z, build_weights(analysed, kind="knn", k=12), permutations=99, seed=3)
    monkeypatch.setattr(ac, "_column_sums_are_numpys", lambda: False)
    slow = _block_counts(z, w, permutations=999, seed=20201101)
    slow_knn = _block_counts(z, build_weights(analysed, kind="knn", k=12), permutations=99, seed=3)
    monkeypatch.undo()
    assert all(np.array_equal(a, b) for a, b in zip(fast + fast_knn, slow + slow_knn, strict=True))
    # several vectors in one call (the stage's batch): each column as if alone, bit for bit
    shifted = y - y.min()
    zx = (x - x.mean()) / x.std()
    values = np.column_stack([z, shifted, zx, np.round(z, 1)])  # rounded: many exact ties
    direction = np.column_stack([z, np.ones(len(z)), -z, z])
    batch = conditional_pvalues(values, w, permutations=999, seed=20201101, direction=direction)
    for c in range(values.shape[1]):
        alone = conditional_pvalues(
            values[:, c].copy(), w, permutations=999, seed=20201101, direction=direction[:, c].copy()
        )
        assert np.array_equal(batch[:, c], alone, equal_nan=True), c
    assert np.array_equal(
        batch[:, 1], conditional_pvalues(shifted, w, permutations=999, seed=20201101), equal_nan=True
    )

    # global Moran's I and Moran_BV: every figure equal to esda's own permutation loop
    state = np.random.get_state()
    ours = global_moran(y, w, permutations=999, seed=20201101)
    ours_bv = global_moran_bv(y, x, w, permutations=999, seed=20201101)
    after = np.random.get_state()
    assert np.array_equal(after[1], state[1]) and after[2:] == state[2:]  # global RNG untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        np.random.seed(20201101)
        mi = esda.Moran(y, w.graph(), transformation="r", permutations=999)
        np.random.seed(20201101)
        bv = esda.Moran_BV(y, x, w.graph(), transformation="r", permutations=999)
    np.random.set_state(state)
    ref = {
        "I": mi.I,
        "EI": mi.EI,
        "z_norm": mi.z_norm,
        "p_norm": mi.p_norm,
        "z_sim": mi.z_sim,
        "p_sim": mi.p_sim,
    }
    assert ours == {k: float(v) for k, v in ref.items()}
    assert ours_bv["I"] == bv.I and ours_bv["EI"] == bv.EI_sim
    assert ours_bv["z_sim"] == bv.z_sim and ours_bv["p_sim"] == bv.p_sim
    assert 0 < ours["z_sim"] and ours_bv["z_sim"] < 0  # not trivial: clustered, negative with ageing


def test_global_moran_equals_esda_loop_on_lattice() -> None:
    import esda

    from geo_pipeline.autocorrelation import global_moran, global_moran_bv

    units = gradient_lattice()
    units = units.drop(index=[5, 50]).reset_index(drop=True)  # 98 units, an odd permutation count
    w = build_weights(units)
    y = units["v"].to_numpy()
    x = units["row"].to_numpy(float) + units["col"].to_numpy(float)
    for seed in (1, 2**32 + 7):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            np.random.seed(seed % 2**32)
            mi = esda.Moran(y, w.graph(), permutations=301)
            np.random.seed(seed % 2**32)
            bv = esda.Moran_BV(x, y, w.graph(), permutations=301)
        g = global_moran(y, w, permutations=301, seed=seed)
        assert (g["z_sim"], g["p_sim"], g["I"]) == (mi.z_sim, mi.p_sim, mi.I)
        gb = global_moran_bv(x, y, w, permutations=301, seed=seed)
        assert (gb["z_sim"], gb["p_sim"], gb["EI"], gb["I"]) == (bv.z_sim, bv.p_sim, bv.EI_sim, bv.I)
    g0 = global_moran(y, w, permutations=0, seed=1)
    assert np.isnan(g0["p_sim"]) and np.isnan(g0["z_sim"]) and g0["I"] == mi.I


def test_stage_batch_equals_per_variable_functions() -> None:
    """The stage draws the local p-values of all variables at once: same as one by one, bit for bit."""
    units = bivariate_lattice()
    units.loc[7, "w"] = np.nan  # "w" and the pair on a subset of the weights, "v" on all
    res = spatial_autocorrelation(
        units, variables=["v", "w"], bivariate=[("v", "w")], permutations=199, seed=9
    )
    w = build_weights(units)
    keep = units["w"].notna().to_numpy()
    v, ww = units["v"].to_numpy(), units["w"].to_numpy()
    expect = {
        "lisa_v": local_statistics(v, w, permutations=199, seed=9, alpha=0.05, fdr=False),
        "lisa_w": local_statistics(ww[keep], w.subset(keep), permutations=199, seed=9, alpha=0.05, fdr=False),
        "bv_v_vs_w": local_bivariate(
            v[keep], ww[keep], w.subset(keep), permutations=199, seed=9, alpha=0.05, fdr=False
        ),
    }
    for prefix, frame in expect.items():
        rows = slice(None) if prefix == "lisa_v" else keep
        for col in ("I", "p", "q", "cluster", "std", "lag"):
            got, want = res.units[f"{prefix}_{col}"].to_numpy()[rows], frame[col].to_numpy()
            same = (got == want).all() if col == "cluster" else np.array_equal(got, want, equal_nan=True)
            assert same, (prefix, col)
    for var, frame in (("v", expect["lisa_v"]), ("w", expect["lisa_w"])):
        rows = slice(None) if var == "v" else keep
        assert np.array_equal(
            res.units[f"gi_{var}_p"].to_numpy()[rows], frame["gi_p"].to_numpy(), equal_nan=True
        )
        assert (res.units[f"gi_{var}_class"].to_numpy()[rows] == frame["gi_class"].to_numpy()).all()
    assert res.units["lisa_v_p"].min() < 0.05 and res.units["bv_v_vs_w_p"].min() < 0.05


def test_save_png_same_bytes_as_savefig(lattice_result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from geo_pipeline.cli._autocorrelation import PNG_DPI, save_png

    _, res = lattice_result
    row = res.global_moran.iloc[0]
    long_title = "Moran scatterplot, a title long enough to be wrapped on two lines " * 2
    for title in (None, long_title):
        a = moran_scatterplot(res.units, "v", moran_i=row["I"], p_sim=row["p_sim"], title=title)
        b = moran_scatterplot(res.units, "v", moran_i=row["I"], p_sim=row["p_sim"], title=title)
        assert a.get_layout_engine() is not None  # constrained: the layout is run once by save_png
        a.savefig(tmp_path / "plain.png", dpi=PNG_DPI, format="png")
        save_png(b, tmp_path / "once.png", dpi=PNG_DPI)
        assert (tmp_path / "once.png").read_bytes() == (tmp_path / "plain.png").read_bytes()
        assert b.get_layout_engine() is None
    # without running the layout at the output dpi the bytes differ: the test can fail
    c = moran_scatterplot(res.units, "v", moran_i=row["I"], p_sim=row["p_sim"])
    c.get_layout_engine().execute(c)  # at the figure's own 100 dpi
    c.set_layout_engine(None)
    c.savefig(tmp_path / "wrong.png", dpi=PNG_DPI, format="png")
    assert (tmp_path / "wrong.png").read_bytes() != (tmp_path / "plain.png").read_bytes()


def test_global_moran_orders_drawn_as_used_beyond_the_cache_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # many permutations (up to 99,999) are not kept in memory: drawn chunk by chunk, same figures
    from geo_pipeline import autocorrelation as ac

    units = gradient_lattice()
    w = build_weights(units)
    y = units["v"].to_numpy()
    x = units["row"].to_numpy(float)
    kept = (
        ac.global_moran(y, w, permutations=333, seed=4),
        ac.global_moran_bv(x, y, w, permutations=333, seed=4),
    )
    monkeypatch.setattr(ac, "_MAX_CACHED_ORDERS", 0)
    ac._permutation_orders.cache_clear()
    drawn = (
        ac.global_moran(y, w, permutations=333, seed=4),
        ac.global_moran_bv(x, y, w, permutations=333, seed=4),
    )
    assert ac._permutation_orders.cache_info().currsize == 0  # nothing cached on this path
    assert drawn == kept and 0 < kept[0]["p_sim"] < 0.01


def test_permutation_pairs_made_per_group_beyond_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from geo_pipeline import autocorrelation as ac

    units = gradient_lattice()
    w = build_weights(units)
    y = units["v"].to_numpy()
    values = np.column_stack([y, np.round(y, 1), -y])
    kept = conditional_pvalues(values, w, permutations=499, seed=3, direction=values)
    monkeypatch.setattr(ac, "_EAGER_PAIRS_BYTES", 0)
    made = conditional_pvalues(values, w, permutations=499, seed=3, direction=values)
    assert np.array_equal(made, kept, equal_nan=True) and np.nanmin(kept) < 0.01
