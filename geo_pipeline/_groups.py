"""The figures of a group of units, computed once for every summary table.

:func:`group_figures` gives, for each group of units (a boolean mask or an
array of row positions into one frame), the counts, summed populations, pooled
change and median change that :func:`geo_pipeline.distance.band_summary`,
:func:`geo_pipeline.infrastructure.corridor_summary`,
:func:`geo_pipeline.rail_network.access_change_summary` and
:func:`geo_pipeline.underused.underused_lines` report. The callers differ in how
a missing value counts and in their column names; the keyword options keep
each caller's rule (see the docstring), so moving a caller here changes no figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["figure_columns", "group_figures"]


def figure_columns(*, change_column: str = "pop_weighted_change_pct", median: bool = True) -> dict[str, str]:
    """The keys of :func:`group_figures`' dicts and their column dtypes, in their order.

    For the schemas of the tables built from them (``change_column`` and
    ``median`` as given to :func:`group_figures`; ``median=False`` for
    ``median=None`` there).
    """
    out = {"n_units": "int64", "n_shrinking": "int64", "shrinking_share": "float64",
           "pop_2010": "int64", "pop_2020": "int64", change_column: "float64"}
    if median:
        out["median_change_pct"] = "float64"
    return out


def group_figures(
    frame: pd.DataFrame,
    groups: Iterable[np.ndarray],
    *,
    missing_shrinking: Literal["not shrinking", "error"] = "not shrinking",
    missing_population: Literal["skip", "propagate"] = "skip",
    median: Literal["skipna", "finite"] | None = "skipna",
    change_column: str = "pop_weighted_change_pct",
) -> list[dict[str, Any]]:
    r"""Counts, populations, pooled and median change of each group of units.

    Parameters
    ----------
    frame : pandas.DataFrame
        Units with ``pop_2010``, ``pop_2020``, ``shrinking`` and, unless
        ``median`` is None, ``change_pct``. Columns are not validated here:
        each caller checks its input first.
    groups : iterable of numpy.ndarray
        One selector per group: a boolean mask of ``len(frame)`` or an array of
        row positions (an empty group is allowed).
    missing_shrinking : {"not shrinking", "error"}, default "not shrinking"
        ``"not shrinking"``: a missing ``shrinking`` counts as not shrinking
        (``astype("boolean").fillna(False)``), the rule of ``band_summary``,
        ``access_change_summary`` and ``underused_lines``. ``"error"``: the
        column is cast with ``astype(bool)``, so a missing value of a
        nullable boolean column raises ``ValueError``, the rule of
        ``corridor_summary`` (whose input check only lets boolean columns in).
    missing_population : {"skip", "propagate"}, default "skip"
        ``"skip"``: a missing ``pop_2010``/``pop_2020`` is left out of the sums
        (pandas ``Series.sum``), the rule of ``corridor_summary`` and
        ``access_change_summary`` (and of ``band_summary``, whose input check
        refuses missing populations, so it cannot differ there).
        ``"propagate"``: a missing population makes the group's sum NaN, so
        rounding it to the integer ``pop_2010``/``pop_2020`` raises
        ``ValueError``, the rule of ``underused_lines``.
    median : {"skipna", "finite"} or None, default "skipna"
        ``"skipna"``: ``median_change_pct`` is the median of the non-missing
        ``change_pct`` (pandas ``Series.median``; NaN for none), the rule of
        ``corridor_summary`` and ``access_change_summary``. ``"finite"``: the
        same median, but NaN unless at least one value is finite, the rule of
        ``band_summary``. None: no ``median_change_pct`` (``underused_lines``).
    change_column : str, default "pop_weighted_change_pct"
        Name of the pooled change: ``"pop_weighted_change_pct"`` in
        ``band_summary`` and ``access_change_summary``, ``"pop_change_pct"``
        in ``corridor_summary`` and ``underused_lines``.

    Returns
    -------
    list of dict
        One dict per group, keys in this order: ``n_units``, ``n_shrinking``,
        ``shrinking_share`` (NaN for an empty group), ``pop_2010``,
        ``pop_2020`` (sums rounded to int), ``change_column`` (NaN unless the
        summed ``pop_2010`` is positive) and ``median_change_pct`` (unless
        ``median`` is None).

    Notes
    -----
    For the units :math:`i` of a group of :math:`n` units:
    ``shrinking_share`` :math:`= n_{shrinking} / n` and the pooled change
    :math:`= 100\,(\sum P_{2020,i} - \sum P_{2010,i}) / \sum P_{2010,i}`.
    Sums are float64 sums of the group's values in frame order, exact for
    whole-number populations (every partial sum is far below :math:`2^{53}`).
    """
    if missing_shrinking == "not shrinking":
        shrinking = frame["shrinking"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    elif missing_shrinking == "error":
        shrinking = frame["shrinking"].astype(bool).to_numpy(dtype=bool)
    else:
        raise ValueError(f"missing_shrinking must be 'not shrinking' or 'error', not {missing_shrinking!r}")
    if missing_population not in ("skip", "propagate"):
        raise ValueError(f"missing_population must be 'skip' or 'propagate', not {missing_population!r}")
    if median not in ("skipna", "finite", None):
        raise ValueError(f"median must be 'skipna', 'finite' or None, not {median!r}")
    total = np.nansum if missing_population == "skip" else np.sum
    p10 = pd.to_numeric(frame["pop_2010"]).to_numpy(dtype=float, na_value=np.nan)
    p20 = pd.to_numeric(frame["pop_2020"]).to_numpy(dtype=float, na_value=np.nan)
    chg = (
        pd.to_numeric(frame["change_pct"]).to_numpy(dtype=float, na_value=np.nan)
        if median is not None else None
    )
    out = []
    for sel in groups:
        sel = np.asarray(sel)
        shr = shrinking[sel]
        n = len(shr)
        n_shrinking = int(shr.sum())
        s10, s20 = float(total(p10[sel])), float(total(p20[sel]))
        row: dict[str, Any] = {
            "n_units": n,
            "n_shrinking": n_shrinking,
            "shrinking_share": n_shrinking / n if n else np.nan,
            "pop_2010": int(round(s10)),
            "pop_2020": int(round(s20)),
            change_column: 100.0 * (s20 - s10) / s10 if s10 > 0 else np.nan,
        }
        if chg is not None:
            values = chg[sel]
            values = values[~np.isnan(values)]
            usable = np.isfinite(values).any() if median == "finite" else len(values) > 0
            row["median_change_pct"] = float(np.median(values)) if usable else np.nan
        out.append(row)
    return out
