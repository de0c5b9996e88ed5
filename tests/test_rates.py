"""Tests of the Empirical-Bayes rates: esda's formulas, shrinkage of small units, EB Moran = Moran_Rate."""

from __future__ import annotations

import esda
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from esda.smoothing import Empirical_Bayes, assuncao_rate
from shapely.geometry import box

from geo_pipeline import InputError
from geo_pipeline.autocorrelation import spatial_autocorrelation
from geo_pipeline.rates import change_eb, eb_rates
from geo_pipeline.weights import build_weights


def test_eb_rates_equal_esda_smoother_and_assuncao_rate() -> None:
    rng = np.random.default_rng(3)
    pop = rng.integers(500, 200_000, size=60).astype(float)
    events = rng.poisson(pop * rng.uniform(0.8, 1.3, size=60))
    out = eb_rates(events, pop)
    assert np.allclose(out["standardised"], assuncao_rate(events, pop), rtol=0, atol=1e-12)
    assert np.allclose(out["smoothed"], Empirical_Bayes(events, pop).r.ravel(), rtol=0, atol=1e-12)
    assert np.allclose(out["rate"], events / pop)
    assert out.attrs["b"] == pytest.approx(events.sum() / pop.sum())


def test_eb_shrinks_a_tiny_units_extreme_rate_and_keeps_a_large_one() -> None:
    # 40 units of 100,000 people with rates 0.9-1.1 (growth ratios), plus a unit of 400 people whose
    # ratio is 5 (+400 %) and a large unit of 2 million at 1.2: the tiny unit's extreme ratio is pulled
    # far toward the mean, the large unit's barely moves
    rng = np.random.default_rng(1)
    pop = np.r_[np.full(40, 100_000.0), 400.0, 2_000_000.0]
    ratio = np.r_[rng.uniform(0.9, 1.1, 40), 5.0, 1.2]
    out = eb_rates(ratio * pop, pop)
    b, a = out.attrs["b"], out.attrs["a"]
    assert a > 0
    tiny, large = out.iloc[40], out.iloc[41]
    # Marshall's weight a / (a + b / P): computed independently
    assert tiny["shrinkage"] == pytest.approx(a / (a + b / 400.0), rel=1e-12)
    assert b < tiny["smoothed"] < tiny["rate"]
    assert tiny["rate"] - tiny["smoothed"] > 0.15 * (tiny["rate"] - b)  # pulled at least 15 % of the way
    assert large["rate"] - large["smoothed"] < 1e-4 * (large["rate"] - b)  # large: unchanged in practice
    # the standardised value divides by the unit's own standard error: the tiny unit's z is much
    # smaller than a plain standardisation by the between-unit spread would make it
    assert tiny["standardised"] < (tiny["rate"] - b) / np.sqrt(a)


def test_negative_prior_variance_shrinks_everyone_to_the_mean() -> None:
    pop = np.full(5, 1000.0)
    events = np.array([1000.0, 1001.0, 999.0, 1000.0, 1000.0])  # spread far below Poisson
    out = eb_rates(events, pop)
    assert out.attrs["a"] < 0
    assert np.allclose(out["smoothed"], out.attrs["b"]) and (out["shrinkage"] == 0).all()
    assert np.allclose(out["standardised"], assuncao_rate(events, pop))


def test_eb_rates_bad_and_excluded_units() -> None:
    with pytest.raises(InputError, match="1 unit\\(s\\) with a population at risk <= 0"):
        eb_rates([1.0, 2.0], [0.0, 5.0])
    with pytest.raises(InputError, match="negative events"):
        eb_rates([-1.0, 2.0], [3.0, 5.0])
    out = eb_rates([10.0, 20.0, 30.0, 99.0], [10.0, 20.0, 30.0, 0.0], include=[True, True, True, False])
    assert out["standardised"].isna().tolist() == [False, False, False, True]
    assert out.attrs["n"] == 3 and out.attrs["b"] == 1.0


def strip_units() -> gpd.GeoDataFrame:
    rng = np.random.default_rng(8)
    n = 30
    pop10 = rng.integers(2_000, 300_000, size=n)
    change = np.linspace(-20, 25, n) + rng.normal(0, 4, n)
    return gpd.GeoDataFrame(
        {
            "unit_id": [f"u{i:02d}" for i in range(n)],
            "pop_2010": pop10,
            "pop_2020": np.round(pop10 * (1 + change / 100)).astype(int),
        },
        geometry=[
            box(i * 10_000, (i % 3) * 10_000, (i + 1) * 10_000, (i % 3 + 1) * 10_000) for i in range(n)
        ],
        crs="EPSG:32650",
    )


def test_change_eb_moran_equals_esda_moran_rate() -> None:
    units = strip_units()
    units["change_pct"] = 100 * (units["pop_2020"] / units["pop_2010"] - 1)
    eb = change_eb(units)
    assert np.allclose(eb["change_pct_eb"], assuncao_rate(units["pop_2020"], units["pop_2010"]))
    w = build_weights(units)
    res = spatial_autocorrelation(units, variables=["change_pct_eb"], weights=w, permutations=0)
    ref = esda.Moran_Rate(units["pop_2020"], units["pop_2010"], w.graph(), permutations=0)
    assert res.global_moran.loc[0, "I"] == pytest.approx(ref.I, abs=1e-12)
    assert np.allclose(res.units["change_pct_eb"], eb["change_pct_eb"])
    # the smoothed change is in percent and close to the raw change for units of thousands of people
    assert np.abs(res.units["change_pct_eb_smooth"] - units["change_pct"]).max() < 0.5


def test_change_eb_keeps_index_and_leaves_out_excluded() -> None:
    units = strip_units()
    units.index = units.index * 10 + 7
    keep = np.ones(len(units), dtype=bool)
    keep[4] = False
    eb = change_eb(units, include=keep)
    assert list(eb.index) == list(units.index) and np.isnan(eb["change_pct_eb"].iloc[4])
    ref = assuncao_rate(units["pop_2020"].to_numpy()[keep], units["pop_2010"].to_numpy()[keep])
    assert np.allclose(eb["change_pct_eb"].to_numpy()[keep], ref)
    with pytest.raises(InputError, match=r"missing column\(s\) \['pop_2020'\]"):
        change_eb(pd.DataFrame({"pop_2010": [1.0]}))
