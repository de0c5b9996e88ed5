"""Empirical-Bayes rates: stable population change for units of very different sizes.

A raw rate such as ``change_pct`` is noisier for small units than for large
ones, so a few small units can drive a spatial statistic. The global
Empirical-Bayes (EB) methods below, which GeoDa ("EB Rate Standardization",
"Moran's I with EB rate") and esda (:func:`esda.smoothing.assuncao_rate`,
:class:`esda.moran.Moran_Rate`, :class:`esda.smoothing.Empirical_Bayes`)
use, weigh each unit's rate by how much its population can tell.

:func:`eb_rates` works on any events / population-at-risk pair;
:func:`change_eb` defines population change as such a rate (see its Notes)
and returns the two unit columns the autocorrelation stage adds:
``change_pct_eb`` (EB-standardised) and ``change_pct_eb_smooth`` (EB-smoothed,
in %). Pure functions, no I/O.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ._errors import InputError
from ._validate import check_frame

__all__ = ["eb_rates", "change_eb", "EB_COLUMNS"]

log = logging.getLogger(__name__)

#: Unit columns made by :func:`change_eb`.
EB_COLUMNS = ("change_pct_eb", "change_pct_eb_smooth")


def eb_rates(
    events: np.ndarray | pd.Series,
    population: np.ndarray | pd.Series,
    *,
    include: np.ndarray | pd.Series | None = None,
) -> pd.DataFrame:
    r"""Raw, EB-smoothed and EB-standardised rates (global Empirical Bayes).

    Parameters
    ----------
    events : array-like
        Events per unit, :math:`e_i \ge 0`.
    population : array-like
        Population at risk per unit, :math:`P_i > 0`.
    include : array-like of bool, optional
        Units that enter the estimate of the prior moments; the others get
        NaN. Default: every unit with finite ``events`` and ``population``.

    Returns
    -------
    pandas.DataFrame
        One row per unit (same order, a RangeIndex): ``rate``
        (:math:`r_i = e_i / P_i`), ``smoothed`` (Marshall's EB estimate),
        ``standardised`` (Assunção-Reis z), ``shrinkage`` (the weight
        :math:`w_i` of the unit's own rate in ``smoothed``). The prior
        moments ``b`` and ``a`` are in ``frame.attrs``.

    Raises
    ------
    InputError
        Included units with a population that is not positive or negative
        events.

    Notes
    -----
    Over the included units, with :math:`P = \sum P_i` and :math:`n` units
    (Marshall 1991; Assunção & Reis 1999):

    * prior mean :math:`b = \sum e_i / P`;
    * prior variance :math:`a = \sum P_i (r_i - b)^2 / P - b / (P / n)`,
      the population-weighted variance of the rates less the mean Poisson
      variance, set to 0 when negative (no variation beyond chance: every
      unit is shrunk to ``b``);
    * EB-smoothed rate :math:`\hat\theta_i = b + w_i (r_i - b)` with
      :math:`w_i = a / (a + b / P_i)`: a small unit (large Poisson variance
      :math:`b/P_i`) is pulled towards ``b``, a large one keeps its rate
      (esda's :class:`~esda.smoothing.Empirical_Bayes`);
    * EB-standardised rate :math:`z_i = (r_i - b) / \sqrt{v_i}` with
      :math:`v_i = a + b / P_i`, or :math:`v_i = b / P_i` when
      :math:`a + b/P_i \le 0`; 0 for a unit at the mean (esda's :func:`~esda.smoothing.assuncao_rate`;
      Moran's I of :math:`z` is GeoDa's "EB Moran" and esda's
      :class:`~esda.moran.Moran_Rate`).
    """
    e = np.asarray(events, dtype=float)
    p = np.asarray(population, dtype=float)
    if e.shape != p.shape or e.ndim != 1:
        raise InputError(f"events and population must be 1-D of one length, found {e.shape} and {p.shape}")
    finite = np.isfinite(e) & np.isfinite(p)
    use = finite if include is None else finite & np.asarray(include, dtype=bool)
    problems = []
    if (p[use] <= 0).any():
        problems.append(f"{int((p[use] <= 0).sum())} unit(s) with a population at risk <= 0")
    if (e[use] < 0).any():
        problems.append(f"{int((e[use] < 0).sum())} unit(s) with negative events")
    if problems:
        raise InputError("EB rates: " + "; ".join(problems) + "; expected events >= 0 and population > 0")
    out = pd.DataFrame(
        {"rate": np.nan, "smoothed": np.nan, "standardised": np.nan, "shrinkage": np.nan}, index=range(len(e))
    )
    if not use.any():
        out.attrs.update({"b": np.nan, "a": np.nan, "n": 0})
        return out
    eu, pu = e[use], p[use]
    r = eu / pu
    total = pu.sum()
    b = eu.sum() / total
    a_raw = float((pu * (r - b) ** 2).sum() / total - b / (total / len(pu)))
    a = max(a_raw, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(a > 0, a / (a + b / pu), 0.0)
        v = a_raw + b / pu
        v = np.where(v <= 0, b / pu, v)  # esda: v < 0; at exactly 0 esda gives 0/0
        z = np.where(r == b, 0.0, (r - b) / np.sqrt(v))
    out.loc[use, "rate"] = r
    out.loc[use, "smoothed"] = b + w * (r - b)
    out.loc[use, "standardised"] = z
    out.loc[use, "shrinkage"] = w
    out.attrs.update({"b": float(b), "a": a_raw, "n": int(use.sum())})
    return out


def change_eb(
    units: pd.DataFrame,
    *,
    include: np.ndarray | pd.Series | None = None,
    pop_columns: tuple[str, str] = ("pop_2010", "pop_2020"),
) -> pd.DataFrame:
    r"""EB-standardised and EB-smoothed population change of each unit.

    Parameters
    ----------
    units : pandas.DataFrame
        With numeric ``pop_2010`` and ``pop_2020`` (names in ``pop_columns``).
        Not modified.
    include : array-like of bool, optional
        Units that enter the EB moments (e.g. ``comparable``); the others get
        NaN. Default: every unit with both populations.
    pop_columns : (str, str)
        Population at the start and at the end of the period.

    Returns
    -------
    pandas.DataFrame
        Aligned to ``units.index``: ``change_pct_eb`` (EB-standardised change,
        a dimensionless z value) and ``change_pct_eb_smooth`` (EB-smoothed
        change in %, comparable with ``change_pct``); ``attrs`` holds the
        national ratio ``b``, the prior variance ``a`` and the smallest
        shrinkage weight.

    Raises
    ------
    InputError
        Missing or non-numeric population columns, or populations <= 0.

    Notes
    -----
    Population change is cast as a rate with non-negative events: the events
    are the 2020 residents and the population at risk the 2010 residents, so
    the rate is the growth ratio :math:`R_i = P_{2020,i} / P_{2010,i} = 1 +
    \text{change\_pct}_i / 100` and the prior mean ``b`` is the national ratio
    :math:`\sum P_{2020} / \sum P_{2010}`. (Signed losses or gains as events
    would give negative events and, for a shrinking total, a negative "rate"
    whose Poisson variance :math:`b/P_i` is undefined.) Then, with
    :func:`eb_rates`, ``change_pct_eb`` is the Assunção-Reis
    :math:`z_i = (R_i - b) / \sqrt{a + b / P_{2010,i}}` and
    ``change_pct_eb_smooth`` is :math:`100 (\hat\theta_i - 1)`. The variance
    model is Poisson: a 2020 count varies around ``b`` times the 2010 count
    with variance ``b P_{2010}``. For counties of 7,000 people or more this
    chance variance is tiny beside the real spread of change (on the 2010-2020
    counties ``a`` is about 0.056, i.e. a standard deviation of 24 points,
    while :math:`\sqrt{b/P}` is below 1.3 points), so EB moves a unit only
    when it is very small; it does not correct units whose two censuses
    count different areas or people (``comparable = False``), which must be
    left out instead.
    """
    c10, c20 = pop_columns
    check_frame(units, name="units", columns={c10: "numeric", c20: "numeric"}).raise_if_any()
    rates = eb_rates(
        units[c20].to_numpy(dtype=float, na_value=np.nan),
        units[c10].to_numpy(dtype=float, na_value=np.nan),
        include=include,
    )
    out = pd.DataFrame(
        {
            "change_pct_eb": rates["standardised"].to_numpy(),
            "change_pct_eb_smooth": 100.0 * (rates["smoothed"].to_numpy() - 1.0),
        },
        index=units.index,
    )
    w = rates["shrinkage"]
    out.attrs.update({**rates.attrs, "min_shrinkage": float(w.min()) if w.notna().any() else np.nan})
    return out
