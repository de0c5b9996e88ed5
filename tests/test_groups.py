"""group_figures: the figures of groups of units, on a small synthetic frame with exact values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from geo_pipeline._groups import figure_columns, group_figures


def _units() -> pd.DataFrame:
    return pd.DataFrame({
        "pop_2010": pd.array([100, 200, 50, 150, 0], dtype="Int64"),
        "pop_2020": pd.array([90, 220, 40, 150, 10], dtype="Int64"),
        "change_pct": [-10.0, 10.0, -20.0, np.nan, np.inf],
        "shrinking": pd.array([True, False, None, False, False], dtype="boolean"),
    })


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == value, key
            assert type(got[key]) is type(value), key


def test_group_figures_exact_values_masks_positions_and_missing_values() -> None:
    nan = float("nan")
    groups = [
        np.array([True, True, True, True, False]),  # missing shrinking and change_pct
        np.array([True, False, True, False, False]),
        np.array([3]),  # one unit whose change_pct is missing
        np.array([], dtype=np.int64),  # empty group
        np.array([4]),  # pop_2010 = 0, change_pct = inf
    ]
    rows = group_figures(_units(), groups)
    _same(rows[0], {"n_units": 4, "n_shrinking": 1, "shrinking_share": 0.25, "pop_2010": 500,
                    "pop_2020": 500, "pop_weighted_change_pct": 0.0, "median_change_pct": -10.0})
    _same(rows[1], {"n_units": 2, "n_shrinking": 1, "shrinking_share": 0.5, "pop_2010": 150,
                    "pop_2020": 130, "pop_weighted_change_pct": -40 / 3, "median_change_pct": -15.0})
    _same(rows[2], {"n_units": 1, "n_shrinking": 0, "shrinking_share": 0.0, "pop_2010": 150,
                    "pop_2020": 150, "pop_weighted_change_pct": 0.0, "median_change_pct": nan})
    _same(rows[3], {"n_units": 0, "n_shrinking": 0, "shrinking_share": nan, "pop_2010": 0,
                    "pop_2020": 0, "pop_weighted_change_pct": nan, "median_change_pct": nan})
    _same(rows[4], {"n_units": 1, "n_shrinking": 0, "shrinking_share": 0.0, "pop_2010": 0,
                    "pop_2020": 10, "pop_weighted_change_pct": nan, "median_change_pct": math.inf})


def test_group_figures_options_reproduce_each_callers_rule() -> None:
    units = _units()
    # band_summary: the median is NaN unless a finite change_pct is there.
    finite = group_figures(units, [np.array([4]), np.array([0, 4])], median="finite")
    assert math.isnan(finite[0]["median_change_pct"])
    assert finite[1]["median_change_pct"] == math.inf  # median of (-10, inf): their mean
    # underused_lines: no median, the pooled change named pop_change_pct.
    lines = group_figures(units, [np.array([0, 1])], median=None, change_column="pop_change_pct")
    assert lines == [{"n_units": 2, "n_shrinking": 1, "shrinking_share": 0.5, "pop_2010": 300,
                      "pop_2020": 310, "pop_change_pct": 100.0 * 10 / 300}]
    # corridor_summary: shrinking cast with astype(bool); a missing value raises.
    with pytest.raises(ValueError, match="NaN"):
        group_figures(units, [np.array([0])], missing_shrinking="error")
    known = units.assign(shrinking=units["shrinking"].fillna(True))
    assert group_figures(known, [np.ones(5, dtype=bool)], missing_shrinking="error")[0]["n_shrinking"] == 2
    # missing population: skipped (corridor_summary, access_change_summary) or propagated
    # into a NaN sum that cannot be rounded (underused_lines).
    gap = units.assign(pop_2010=pd.array([100, None, 50, 150, 0], dtype="Int64"))
    skipped = group_figures(gap, [np.array([0, 1, 2])])[0]
    assert (skipped["pop_2010"], skipped["pop_2020"]) == (150, 350)
    assert skipped["pop_weighted_change_pct"] == 100.0 * 200 / 150
    assert group_figures(gap, [np.array([0, 2])], missing_population="propagate")[0]["pop_2010"] == 150
    with pytest.raises(ValueError, match="NaN"):
        group_figures(gap, [np.array([0, 1])], missing_population="propagate")
    with pytest.raises(ValueError, match="missing_shrinking"):
        group_figures(units, [], missing_shrinking="na")  # type: ignore[arg-type]


@pytest.mark.parametrize(("change_column", "median"), [
    ("pop_weighted_change_pct", "skipna"), ("pop_change_pct", "finite"), ("pop_change_pct", None),
])
def test_figure_columns_are_the_keys_and_types_of_group_figures(
    change_column: str, median: str | None
) -> None:
    kinds = {int: "int64", float: "float64"}
    row = group_figures(_units(), [np.array([0, 1])], median=median, change_column=change_column)[0]
    assert figure_columns(change_column=change_column, median=median is not None) == {
        k: kinds[type(v)] for k, v in row.items()
    }
