"""Statistics behind the findings report: shares with confidence intervals, thresholds, spatial regression.

Pure functions on plain frames and arrays, no file I/O and no drawing. The
report stage (:mod:`geo_pipeline.report`) calls them on the run's outputs and
renders what they return; every number and every verdict of the report comes
from here.

Contents
--------
:func:`wilson_interval`
    95 % Wilson score interval of a share (:func:`scipy.stats.binomtest`).
:func:`share_table`
    Shrinking share with its Wilson interval and the population-weighted change
    with a bootstrap interval, per group (distance band, region, unit kind...).
:func:`segmented_regression`
    Continuous piecewise-linear regression of change on distance with the
    break estimated by grid search, and a bootstrap interval of the break.
:func:`spatial_regression`
    OLS with Lagrange-multiplier diagnostics (PySAL ``spreg``), then the
    spatial lag or error model (GMM) that the diagnostics point to.
:func:`mantel_haenszel`
    Odds ratio pooled over strata (e.g. inside vs outside rail corridors within
    distance bands).
``verdict_*``
    The rules that turn computed figures into a verdict; their text
    (:data:`RULES`) is printed in the report's method notes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ._errors import InputError

__all__ = [
    "CLAIM_KM",
    "CONFIDENCE",
    "RULES",
    "SEED_AGEING_SHARE",
    "VERDICTS",
    "SegmentedFit",
    "StepFit",
    "SpatialRegression",
    "Verdict",
    "log_change",
    "mantel_haenszel",
    "odds_ratio",
    "segmented_regression",
    "share_table",
    "spatial_regression",
    "step_change",
    "verdict_ageing",
    "verdict_distance",
    "verdict_hsr",
    "verdict_intercity",
    "verdict_net_outflow",
    "verdict_northeast",
    "wilson_interval",
]

log = logging.getLogger(__name__)

#: Confidence level of every interval in the report.
CONFIDENCE = 0.95
#: The distance of claim 1 (距中心城市150公里外), km.
CLAIM_KM = 150.0
#: The seed's ageing figure for Liaoning and Jilin in 2020 (share aged 60+, %).
SEED_AGEING_SHARE = 23.0
#: The verdicts, strongest first.
VERDICTS = ("supported", "partly supported", "not supported", "not testable with these data")

#: The verdict rules, as printed in the report's method notes (the code below implements them).
RULES: dict[str, str] = {
    "distance": (
        "Seven tests: (a) majority: the lower 95 % Wilson bound of the shrinking share beyond "
        "{km:g} km is above 50 %; (b) contrast: units beyond {km:g} km shrink more often than units "
        "within it (odds-ratio 95 % interval above 1); (c) threshold: the segmented regression has a "
        "break (bootstrap interval of the slope change excludes 0) whose bootstrap interval contains "
        "{km:g} km, or the shrinking share jumps up at a change-point (bootstrap interval of the jump "
        "above 0) whose interval contains {km:g} km; (d) distance matters: the log-distance "
        "coefficient of the spatial model is "
        "negative with p < 0.05; (e) generally (普遍): more than half of the units beyond {km:g} km "
        "shrink in every region (when the region column exists); (f) robust to the choice of cores: the "
        "lower Wilson bound of the shrinking share beyond {km:g} km is above 50 % under every core set "
        "of the distance stage's sensitivity table (when it exists); (g) the claim's 县域: the lower Wilson "
        "bound of the shrinking share of county-type units (counties, county-level cities, banners; not "
        "urban districts) beyond {km:g} km is above 50 % (when unit_kind exists). Supported when (a), "
        "(b), (c or d), (e), (f) and (g) hold; partly supported when at least one holds; not supported "
        "when none does."
    ),
    "northeast": (
        "Three tests: (a) the Northeast's total population fell; (b) its share of Low-Low "
        "(LISA) units of change is above the rest of the country's (95 % Wilson intervals do not "
        "overlap); (c) most Northeast counties (not urban districts; at prefecture level, "
        "prefectures) shrink (lower Wilson bound above 50 %). Supported when all three hold; partly "
        "supported when one or two hold (or a test cannot be made); not supported when none does. "
        "Not testable without the region column."
    ),
    "ageing": (
        "Two tests: (a) the 2020 60+ share of both Liaoning and Jilin, recomputed from the units, is "
        "above the seed's {share:g} %; (b) shrinkage goes with ageing: the Spearman correlation of "
        "change_pct with the 2020 60+ share is negative with p < 0.05 (and, when the "
        "autocorrelation stage wrote a bivariate Moran's I, it is negative with pseudo p < 0.05). "
        "Supported when both hold; partly supported when one holds; not supported when none does. "
        "Not testable without the ageing columns."
    ),
    "net_outflow": (
        "Three tests: (a) units with net outflow in 2010 (resident < hukou) shrink more often than "
        "the others (odds-ratio 95 % interval above 1); (b) the Spearman correlation of the 2010 "
        "net-outflow ratio with change_pct is negative with p < 0.05; (c) most net-outflow units "
        "shrink (lower Wilson bound above 50 %). Supported when all three hold; partly supported "
        "when one or two hold; not supported when none does."
    ),
    "hsr": (
        "Units inside high-speed-rail corridors are compared with units outside within the same "
        "distance band (Mantel-Haenszel odds ratio of shrinking, outside vs inside). Supported "
        "(rail corridors go with less shrinkage beyond what distance explains) when the pooled "
        "odds ratio's 95 % interval is above 1 and inside units shrink less in most bands; partly "
        "supported when only one of the two holds; not supported otherwise."
    ),
    "intercity": (
        "Ridership over design capacity needs both numbers per line. Without a capacity table "
        "(--utilisation-file) the ratio is a train-count proxy, so the claim is not testable with "
        "these data. With one: supported when the median utilisation of intercity lines is at or "
        "below 0.4 (the seed's 40 %), partly supported when at least a quarter of them are, not "
        "supported otherwise."
    ),
}


# -- small helpers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A computed verdict: one of :data:`VERDICTS`, the tests behind it and the rule used."""

    label: str
    reasons: tuple[str, ...] = ()
    rule: str = ""
    tests: Mapping[str, bool | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in VERDICTS:
            raise InputError(f"verdict {self.label!r} unknown; expected one of {list(VERDICTS)}")


def not_testable(rule: str, missing: Sequence[str], what: str = "column") -> Verdict:
    """The verdict for a claim whose inputs are missing, naming them."""
    text = ", ".join(missing)
    return Verdict(VERDICTS[3], (f"not testable with these data: {what} {text} missing",), rule)


def _combine(
    rule: str,
    tests: Mapping[str, bool | None],
    reasons: Sequence[str],
    *,
    all_for_support: Sequence[str],
    support_if: bool | None = None,
) -> Verdict:
    """Supported when ``support_if`` (default: all tests in ``all_for_support``); partly when any holds."""
    held = [k for k, v in tests.items() if v]
    support = all(tests.get(k) for k in all_for_support) if support_if is None else support_if
    if support:
        label = VERDICTS[0]
    elif held:
        label = VERDICTS[1]
    else:
        label = VERDICTS[2]
    return Verdict(label, tuple(reasons), rule, dict(tests))


def wilson_interval(k: Any, n: Any, *, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the share ``k / n`` (element-wise; NaN where ``n == 0``).

    Computed with :meth:`scipy.stats.binomtest(k, n).proportion_ci(method="wilson")
    <scipy.stats._result_classes.BinomTestResult.proportion_ci>`.
    """
    k_arr = np.atleast_1d(np.asarray(k, dtype=np.int64))
    n_arr = np.atleast_1d(np.asarray(n, dtype=np.int64))
    lo = np.full(k_arr.shape, np.nan)
    hi = np.full(k_arr.shape, np.nan)
    for i, (ki, ni) in enumerate(zip(k_arr, n_arr, strict=True)):
        if ni > 0:
            ci = stats.binomtest(int(ki), int(ni)).proportion_ci(confidence_level=confidence, method="wilson")
            lo[i], hi[i] = ci.low, ci.high
    return lo, hi


def odds_ratio(
    a: int, b: int, c: int, d: int, *, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """Conditional ML odds ratio of the 2x2 table [[a, b], [c, d]] and its exact interval (scipy)."""
    if min(a + b, c + d, a + c, b + d) == 0:
        return (math.nan, math.nan, math.nan)
    res = stats.contingency.odds_ratio(np.array([[a, b], [c, d]]))
    ci = res.confidence_interval(confidence_level=confidence)
    return float(res.statistic), float(ci.low), float(ci.high)


def mantel_haenszel(
    tables: Sequence[Sequence[Sequence[float]]], *, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    r"""Mantel-Haenszel odds ratio pooled over 2x2 tables, with the Robins-Breslow-Greenland interval.

    Notes
    -----
    For strata :math:`k` with tables :math:`[[a_k, b_k], [c_k, d_k]]` and totals :math:`n_k`:
    :math:`OR_{MH} = \sum a_k d_k / n_k \,/\, \sum b_k c_k / n_k`. The variance of
    :math:`\log OR_{MH}` is that of Robins, Breslow and Greenland (1986). Strata with
    :math:`n_k < 2` are skipped.
    """
    r_sum = s_sum = pr = ps_qr = qs = 0.0
    for t in tables:
        a, b, c, d = (float(v) for v in (t[0][0], t[0][1], t[1][0], t[1][1]))
        n = a + b + c + d
        if n < 2:
            continue
        r, s = a * d / n, b * c / n
        p, q = (a + d) / n, (b + c) / n
        r_sum += r
        s_sum += s
        pr += p * r
        ps_qr += p * s + q * r
        qs += q * s
    if r_sum == 0 or s_sum == 0:
        return (math.nan, math.nan, math.nan)
    est = r_sum / s_sum
    var = pr / (2 * r_sum**2) + ps_qr / (2 * r_sum * s_sum) + qs / (2 * s_sum**2)
    z = stats.norm.ppf(0.5 + confidence / 2)
    half = z * math.sqrt(var)
    return est, math.exp(math.log(est) - half), math.exp(math.log(est) + half)


def log_change(pop_2010: Any, pop_2020: Any) -> np.ndarray:
    """Return ``100 * ln(pop_2020 / pop_2010)``, the log-percent change (NaN where a population is <= 0)."""
    p10 = np.asarray(pop_2010, dtype=float)
    p20 = np.asarray(pop_2020, dtype=float)
    ok = (p10 > 0) & (p20 > 0)
    out = np.full(p10.shape, np.nan)
    out[ok] = 100.0 * np.log(p20[ok] / p10[ok])
    return out


# -- share tables --------------------------------------------------------------------------------
SHARE_COLUMNS = [
    "n_units",
    "n_shrinking",
    "shrinking_share",
    "share_ci_low",
    "share_ci_high",
    "pop_2010",
    "pop_2020",
    "pop_weighted_change_pct",
    "change_ci_low",
    "change_ci_high",
]


def share_table(
    units: pd.DataFrame,
    by: Sequence[str],
    *,
    bootstrap: int = 999,
    seed: int = 20201101,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    r"""Shrinking share and population-weighted change per group, with confidence intervals.

    Parameters
    ----------
    units : pandas.DataFrame
        Columns ``pop_2010``, ``pop_2020``, ``shrinking`` and the ``by`` columns.
    by : sequence of str
        Grouping columns (e.g. ``["band"]``, ``["region", "band"]``). Rows with a
        missing group value are left out.
    bootstrap : int, default 999
        Resamples for the interval of the population-weighted change (0: none).
    seed : int
        Seed of the bootstrap.
    confidence : float, default 0.95
        Level of both intervals.

    Returns
    -------
    pandas.DataFrame
        One row per group (sorted), the ``by`` columns then :data:`SHARE_COLUMNS`.

    Notes
    -----
    ``shrinking_share`` :math:`= k/n` with the Wilson score interval.
    ``pop_weighted_change_pct`` :math:`= 100 (\sum P_{2020} - \sum P_{2010}) / \sum P_{2010}`;
    its interval is the percentile interval over resamples of the group's units
    (units drawn with replacement, ``bootstrap`` times, from a generator seeded
    with ``(seed, n)``, so a group has the same interval in every table).
    """
    missing = [c for c in ("pop_2010", "pop_2020", "shrinking", *by) if c not in units.columns]
    if missing:
        raise InputError(f"share table: columns {missing} missing; found {list(units.columns)}")
    rows = []
    frame = units.dropna(subset=list(by))
    for key, g in frame.groupby(list(by), sort=True, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        p10 = g["pop_2010"].to_numpy(dtype=float)
        p20 = g["pop_2020"].to_numpy(dtype=float)
        n = len(g)
        k = int(g["shrinking"].astype("boolean").fillna(False).sum())
        lo, hi = wilson_interval(k, n, confidence=confidence)
        s10, s20 = p10.sum(), p20.sum()
        clo = chi = math.nan
        if bootstrap and n > 1:
            # seeded by (seed, n): the same units (in the same order) get the same interval in every table
            counts = _resample_counts(np.random.default_rng([seed, n]), n, bootstrap)
            b10, b20 = counts @ p10, counts @ p20
            with np.errstate(divide="ignore", invalid="ignore"):
                boot = 100.0 * (b20 - b10) / b10
            boot = boot[np.isfinite(boot)]
            if len(boot):
                clo, chi = np.percentile(boot, [50 * (1 - confidence), 50 * (1 + confidence)])
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "n_units": n,
                "n_shrinking": k,
                "shrinking_share": k / n,
                "share_ci_low": lo[0],
                "share_ci_high": hi[0],
                "pop_2010": int(round(s10)),
                "pop_2020": int(round(s20)),
                "pop_weighted_change_pct": 100.0 * (s20 - s10) / s10 if s10 > 0 else math.nan,
                "change_ci_low": float(clo),
                "change_ci_high": float(chi),
            }
        )
    return pd.DataFrame(rows, columns=[*by, *SHARE_COLUMNS])


# -- segmented regression ------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentedFit:
    """A continuous piecewise-linear fit ``y = a + b x + c (x - k)_+`` with bootstrap intervals.

    ``break_ci`` and ``slope_change_ci`` are percentile intervals over the
    bootstrap resamples (each re-estimates the break); ``has_break`` is True when
    ``slope_change_ci`` excludes 0.
    """

    break_x: float
    intercept: float
    slope_before: float
    slope_after: float
    break_ci: tuple[float, float]
    slope_change_ci: tuple[float, float]
    r2_linear: float
    r2_segmented: float
    n: int
    grid: np.ndarray
    sse_grid: np.ndarray
    boot_breaks: np.ndarray
    bootstrap: int
    confidence: float

    @property
    def slope_change(self) -> float:
        """``slope_after - slope_before``."""
        return self.slope_after - self.slope_before

    @property
    def has_break(self) -> bool:
        """True when the slope-change interval excludes 0."""
        lo, hi = self.slope_change_ci
        return bool(lo > 0 or hi < 0)

    def contains(self, x: float) -> bool:
        """True when ``x`` lies in the break's interval."""
        return bool(self.break_ci[0] <= x <= self.break_ci[1])

    def predict(self, x: Any) -> np.ndarray:
        """Fitted values at ``x``."""
        x = np.asarray(x, dtype=float)
        return self.intercept + self.slope_before * x + self.slope_change * np.maximum(x - self.break_x, 0.0)


def _resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Case weights of ``size`` bootstrap resamples of ``n`` units: how often each unit is drawn."""
    draws = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
    return np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)


def _fit_grid(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, hinge: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of y on [1, x, hinge_j] for every grid point j and every weight row.

    ``w`` is (B, n) case weights (bootstrap counts), ``hinge`` (n, m). Returns the
    coefficients (B, m, 3) and the residual sums of squares (B, m), from the
    normal equations solved in one batch.
    """
    s0, s1, s11 = w.sum(axis=1), w @ x, w @ (x * x)
    sy, s1y, syy = w @ y, w @ (x * y), w @ (y * y)
    sh, shx, shh, shy = w @ hinge, w @ (hinge * x[:, None]), w @ (hinge * hinge), w @ (hinge * y[:, None])
    b, m = sh.shape
    a = np.empty((b, m, 3, 3))
    a[..., 0, 0] = s0[:, None]
    a[..., 0, 1] = a[..., 1, 0] = s1[:, None]
    a[..., 1, 1] = s11[:, None]
    a[..., 0, 2] = a[..., 2, 0] = sh
    a[..., 1, 2] = a[..., 2, 1] = shx
    a[..., 2, 2] = shh
    c = np.stack([np.broadcast_to(sy[:, None], (b, m)), np.broadcast_to(s1y[:, None], (b, m)), shy], axis=-1)
    ok = np.abs(np.linalg.det(a)) > 1e-12 * np.maximum(1.0, np.abs(a).max(axis=(-1, -2))) ** 3
    beta = np.full((b, m, 3), np.nan)
    beta[ok] = np.linalg.solve(a[ok], c[ok][..., None])[..., 0]
    sse = syy[:, None] - np.einsum("bmk,bmk->bm", beta, c)
    sse[~ok] = np.inf
    return beta, sse


def segmented_regression(
    x: Any,
    y: Any,
    *,
    grid: Sequence[float] | None = None,
    step: float = 5.0,
    trim: float = 0.05,
    bootstrap: int = 999,
    seed: int = 20201101,
    confidence: float = CONFIDENCE,
) -> SegmentedFit:
    r"""Continuous piecewise-linear regression with one break estimated from the data.

    Parameters
    ----------
    x, y : array-like
        Predictor (e.g. distance to the nearest core, km) and response (e.g.
        :func:`log_change`). Pairs with a missing value are dropped.
    grid : sequence of float, optional
        Candidate breaks. Default: multiples of ``step`` between the ``trim`` and
        ``1 - trim`` quantiles of ``x`` (so each side keeps at least that share).
    step : float, default 5
        Grid step in the units of ``x``.
    trim : float, default 0.05
        Share of the data that must lie on each side of a candidate break.
    bootstrap : int, default 999
        Resamples (units with replacement) for the intervals; each resample
        re-estimates the break on the same grid.
    seed : int
        Seed of the bootstrap.
    confidence : float, default 0.95

    Returns
    -------
    SegmentedFit

    Raises
    ------
    InputError
        Fewer than 10 complete pairs, or no candidate break.

    Notes
    -----
    The model is :math:`y = a + b x + c\,(x - k)_+`, continuous at the break
    :math:`k`. For every candidate :math:`k` the coefficients are the least-squares
    solution; :math:`\hat k` minimises the residual sum of squares (profile
    likelihood under normal errors). The interval of :math:`k` is the bootstrap
    percentile interval (Efron), the usual choice because the least-squares
    break has no regular asymptotic distribution. All fits of all resamples are
    solved in one batch of 3x3 normal equations with case weights.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = len(xa)
    if n < 10:
        raise InputError(f"segmented regression needs at least 10 complete (x, y) pairs, found {n}")
    if grid is None:
        lo, hi = np.quantile(xa, [trim, 1 - trim])
        cand = np.arange(math.ceil(lo / step) * step, hi + 1e-9, step)
    else:
        cand = np.asarray(sorted(grid), dtype=float)
    if len(cand) == 0:
        raise InputError(
            f"segmented regression: no candidate break between the {trim:g} and {1 - trim:g} "
            f"quantiles of x with step {step:g}; lower the step or give a grid"
        )
    hinge = np.maximum(xa[:, None] - cand[None, :], 0.0)
    beta, sse = _fit_grid(np.ones((1, n)), xa, ya, hinge)
    j = int(np.argmin(sse[0]))
    a, b, c = beta[0, j]
    tss = float(((ya - ya.mean()) ** 2).sum())
    lin = np.polyfit(xa, ya, 1)
    sse_lin = float(((ya - np.polyval(lin, xa)) ** 2).sum())
    boot_k = np.full(bootstrap, np.nan)
    boot_c = np.full(bootstrap, np.nan)
    if bootstrap:
        rng = np.random.default_rng(seed)
        chunk = max(1, int(1e8 // max(1, n * len(cand))))  # bound the (B, n) and (B, m) arrays
        for start in range(0, bootstrap, chunk):
            bsz = min(chunk, bootstrap - start)
            w = _resample_counts(rng, n, bsz)
            bb, bs = _fit_grid(w, xa, ya, hinge)
            jj = np.argmin(bs, axis=1)
            boot_k[start : start + bsz] = cand[jj]
            boot_c[start : start + bsz] = bb[np.arange(bsz), jj, 2]
    q = [50 * (1 - confidence), 50 * (1 + confidence)]
    # the breaks lie on the grid: the interval's ends are grid points (no interpolation between them)
    kci = (
        tuple(float(v) for v in np.nanpercentile(boot_k, q, method="inverted_cdf"))
        if bootstrap
        else (math.nan, math.nan)
    )
    cci = tuple(float(v) for v in np.nanpercentile(boot_c, q)) if bootstrap else (math.nan, math.nan)
    return SegmentedFit(
        break_x=float(cand[j]),
        intercept=float(a),
        slope_before=float(b),
        slope_after=float(b + c),
        break_ci=kci,
        slope_change_ci=cci,  # type: ignore[arg-type]
        r2_linear=1 - sse_lin / tss if tss > 0 else math.nan,
        r2_segmented=1 - float(sse[0, j]) / tss if tss > 0 else math.nan,
        n=n,
        grid=cand,
        sse_grid=sse[0],
        boot_breaks=boot_k,
        bootstrap=bootstrap,
        confidence=confidence,
    )


@dataclass(frozen=True)
class StepFit:
    """A change-point in the mean of ``y`` (e.g. the shrinking share): ``below`` it, ``above`` from it on.

    ``break_ci`` is the bootstrap percentile interval of the change-point,
    ``diff_ci`` that of ``above - below``.
    """

    break_x: float
    below: float
    above: float
    break_ci: tuple[float, float]
    diff_ci: tuple[float, float]
    n: int
    bootstrap: int

    @property
    def has_step(self) -> bool:
        """True when the interval of ``above - below`` excludes 0."""
        return bool(self.diff_ci[0] > 0 or self.diff_ci[1] < 0)

    def contains(self, x: float) -> bool:
        """True when ``x`` lies in the change-point's interval."""
        return bool(self.break_ci[0] <= x <= self.break_ci[1])


def step_change(
    x: Any,
    y: Any,
    *,
    step: float = 5.0,
    trim: float = 0.05,
    bootstrap: int = 999,
    seed: int = 20201101,
    confidence: float = CONFIDENCE,
) -> StepFit:
    r"""One change-point in the mean of ``y`` along ``x`` (least squares), with bootstrap intervals.

    For a 0/1 ``y`` (shrinking or not) this is the distance at which the
    shrinking share jumps: the model is :math:`E[y] = \mu_1` for :math:`x < k`
    and :math:`\mu_2` for :math:`x \ge k`; :math:`\hat k` minimises the residual
    sum of squares (for 0/1 data the same :math:`k` maximises the two-binomial
    likelihood up to ties) over the candidate grid of :func:`segmented_regression`.
    Intervals: bootstrap percentiles, each resample re-estimating :math:`k`.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = len(xa)
    if n < 10:
        raise InputError(f"step change needs at least 10 complete (x, y) pairs, found {n}")
    lo, hi = np.quantile(xa, [trim, 1 - trim])
    cand = np.arange(math.ceil(lo / step) * step, hi + 1e-9, step)
    if len(cand) == 0:
        raise InputError(f"step change: no candidate between the {trim:g} and {1 - trim:g} quantiles of x")
    upper = (xa[:, None] >= cand[None, :]).astype(float)  # (n, m)

    def fit(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w_all, s_all = w.sum(axis=1), w @ ya
        w_hi, s_hi = w @ upper, w @ (upper * ya[:, None])
        w_lo, s_lo = w_all[:, None] - w_hi, s_all[:, None] - s_hi
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where((w_lo > 0) & (w_hi > 0), s_lo**2 / w_lo + s_hi**2 / w_hi, -np.inf)
            j = np.argmax(gain, axis=1)
            r = np.arange(len(w))
            return j, s_lo[r, j] / w_lo[r, j], s_hi[r, j] / w_hi[r, j]

    j, m1, m2 = fit(np.ones((1, n)))
    kci = dci = (math.nan, math.nan)
    if bootstrap:
        rng = np.random.default_rng(seed)
        ks, ds = [], []
        chunk = max(1, int(1e8 // max(1, n * len(cand))))
        for start in range(0, bootstrap, chunk):
            bj, b1, b2 = fit(_resample_counts(rng, n, min(chunk, bootstrap - start)))
            ks.append(cand[bj])
            ds.append(b2 - b1)
        q = [50 * (1 - confidence), 50 * (1 + confidence)]
        kci = tuple(float(v) for v in np.percentile(np.concatenate(ks), q, method="inverted_cdf"))
        dci = tuple(float(v) for v in np.nanpercentile(np.concatenate(ds), q))
    return StepFit(
        break_x=float(cand[j[0]]),
        below=float(m1[0]),
        above=float(m2[0]),
        break_ci=kci,  # type: ignore[arg-type]
        diff_ci=dci,
        n=n,
        bootstrap=bootstrap,
    )  # type: ignore[arg-type]


# -- spatial regression --------------------------------------------------------------------------
@dataclass(frozen=True)
class SpatialRegression:
    """OLS, its diagnostics, and the spatial model they point to.

    Attributes
    ----------
    ols : spreg.OLS
    model : spreg model or None
        ``spreg.GM_Lag`` or ``spreg.GM_Error_Het``; None when the diagnostics
        point to OLS.
    choice : str
        ``"OLS"``, ``"lag"`` or ``"error"``.
    reason : str
        Why (the decision rule applied to the LM tests).
    diagnostics : pandas.DataFrame
        ``test``, ``statistic``, ``p``.
    coefficients : pandas.DataFrame
        ``model``, ``variable``, ``coef``, ``std_err``, ``stat``, ``p``.
    """

    ols: Any
    model: Any
    choice: str
    reason: str
    diagnostics: pd.DataFrame
    coefficients: pd.DataFrame


def _coef_rows(label: str, model: Any, stat_attr: str) -> list[dict[str, Any]]:
    return [
        {
            "model": label,
            "variable": name,
            "coef": float(beta),
            "std_err": float(se),
            "stat": float(st),
            "p": float(p),
        }
        for name, beta, se, (st, p) in zip(
            _names(model), model.betas.ravel(), model.std_err, getattr(model, stat_attr), strict=True
        )
    ]


def _names(model: Any) -> list[str]:
    names = list(model.name_x)
    if hasattr(model, "name_yend") and model.name_yend:
        names += list(model.name_yend)
    n = len(model.betas)
    if len(names) < n:  # GM_Error_Het: lambda is a coefficient without an x name in some versions
        names += ["lambda"] * (n - len(names))
    return names[:n]


@contextlib.contextmanager
def _quiet_spreg() -> Iterator[None]:
    """Silence spreg's own notes: its pandas deprecation warnings and the model names it prints.

    spreg 1.9 sorts a frame with ``inplace=True`` (a pandas 3.1 deprecation, no effect on the
    results) and prints the model name to stdout; neither says anything about the data.
    """
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        yield


def spatial_regression(
    y: Any,
    x: Any,
    *,
    w: Any,
    name_y: str = "y",
    name_x: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> SpatialRegression:
    """OLS with spatial diagnostics, then the spatial lag or error model the LM tests point to.

    Parameters
    ----------
    y : array-like, shape (n,)
    x : array-like, shape (n, k)
        Regressors without the constant (spreg adds it).
    w : libpysal.weights.W
        Row-standardised spatial weights in the order of the rows.
    name_y, name_x : str, sequence of str
        Names for the tables.
    alpha : float, default 0.05
        Significance level of the decision rule.

    Returns
    -------
    SpatialRegression

    Notes
    -----
    Decision rule (Anselin 2005, *Exploring Spatial Data with GeoDa*, ch. 23):
    when neither LM-lag nor LM-error is significant, keep OLS; when one is,
    fit that model; when both are, compare the robust tests and fit the one
    whose robust test is significant (the larger robust statistic when both or
    neither are). The lag model is ``spreg.GM_Lag`` (spatial two-stage least
    squares with WX and W²X as instruments); the error model is
    ``spreg.GM_Error_Het`` (GMM, heteroskedasticity-robust; Arraiz et al. 2010).
    """
    import spreg

    ya = np.asarray(y, dtype=float).reshape(-1, 1)
    xa = np.asarray(x, dtype=float)
    if xa.ndim == 1:
        xa = xa.reshape(-1, 1)
    names = list(name_x) if name_x is not None else [f"x{i}" for i in range(xa.shape[1])]
    if len(ya) != len(xa) or len(ya) != w.n:
        raise InputError(
            f"spatial regression: y has {len(ya)} rows, x {len(xa)}, weights {w.n}; they must agree"
        )
    if not (np.isfinite(ya).all() and np.isfinite(xa).all()):
        raise InputError("spatial regression: y and x must be finite; drop or fill missing values first")
    with _quiet_spreg():
        ols = spreg.OLS(ya, xa, w=w, spat_diag=True, moran=True, name_y=name_y, name_x=names)
    diag = pd.DataFrame(
        [
            {
                "test": "Moran's I (residuals)",
                "statistic": float(ols.moran_res[0]),
                "p": float(ols.moran_res[2]),
            },
            {"test": "LM lag", "statistic": float(ols.lm_lag[0]), "p": float(ols.lm_lag[1])},
            {"test": "LM error", "statistic": float(ols.lm_error[0]), "p": float(ols.lm_error[1])},
            {"test": "robust LM lag", "statistic": float(ols.rlm_lag[0]), "p": float(ols.rlm_lag[1])},
            {"test": "robust LM error", "statistic": float(ols.rlm_error[0]), "p": float(ols.rlm_error[1])},
            {"test": "LM SARMA", "statistic": float(ols.lm_sarma[0]), "p": float(ols.lm_sarma[1])},
        ]
    )
    lag, err = ols.lm_lag[1] < alpha, ols.lm_error[1] < alpha
    rlag, rerr = ols.rlm_lag[1] < alpha, ols.rlm_error[1] < alpha
    if not lag and not err:
        choice, reason = "OLS", f"neither LM lag nor LM error is significant at {alpha:g}"
    elif lag != err:
        choice = "lag" if lag else "error"
        reason = f"only LM {choice} is significant at {alpha:g}"
    elif rlag != rerr:
        choice = "lag" if rlag else "error"
        reason = f"both LM tests are significant; only the robust LM {choice} test is"
    else:
        choice = "lag" if ols.rlm_lag[0] >= ols.rlm_error[0] else "error"
        reason = (
            f"both LM tests and {'both' if rlag else 'neither of the'} robust tests are significant; "
            f"the robust LM {choice} statistic is larger"
        )
    model = None
    rows = _coef_rows("OLS", ols, "t_stat")
    with _quiet_spreg():
        if choice == "lag":
            model = spreg.GM_Lag(ya, xa, w=w, name_y=name_y, name_x=names)
            rows += _coef_rows("spatial lag (GMM)", model, "z_stat")
        elif choice == "error":
            model = spreg.GM_Error_Het(ya, xa, w=w, name_y=name_y, name_x=names)
            rows += _coef_rows("spatial error (GMM, het.)", model, "z_stat")
    coefs = pd.DataFrame(rows, columns=["model", "variable", "coef", "std_err", "stat", "p"])
    return SpatialRegression(ols, model, choice, reason, diag, coefs)


# -- verdict rules -------------------------------------------------------------------------------
def verdict_distance(
    *,
    beyond_k: int,
    beyond_n: int,
    within_k: int,
    within_n: int,
    fit: SegmentedFit | None,
    distance_coef: tuple[float, float] | None,
    region_shares: Mapping[str, float] | None = None,
    core_set_lows: Mapping[str, float] | None = None,
    county_counts: tuple[int, int] | None = None,
    step: StepFit | None = None,
    km: float = CLAIM_KM,
) -> Verdict:
    """Claim 1 (see :data:`RULES` ``"distance"``).

    ``distance_coef`` is (coefficient, p) of log distance in the spatial model
    (or OLS when the diagnostics keep it); None when no regression was fitted.
    ``region_shares`` maps each region to its shrinking share beyond ``km``
    (None: no region column, test (e) not applied); ``core_set_lows`` maps
    each core set to the lower Wilson bound of its shrinking share beyond
    ``km`` (None: no sensitivity table, test (f) not applied);
    ``county_counts`` is (shrinking, all) of the county-type units (县域:
    counties, county-level cities, banners; not urban districts) beyond
    ``km`` (None: no unit_kind column, test (g) not applied).
    """
    rule = RULES["distance"].format(km=km)
    if beyond_n == 0 or within_n == 0:
        return not_testable(rule, [f"units on both sides of {km:g} km"], what="data:")
    lo, hi = wilson_interval(beyond_k, beyond_n)
    share = beyond_k / beyond_n
    orr, olo, ohi = odds_ratio(beyond_k, beyond_n - beyond_k, within_k, within_n - within_k)
    tests: dict[str, bool | None] = {
        "majority": bool(lo[0] > 0.5),
        "contrast": bool(olo > 1) if np.isfinite(olo) else False,
        "threshold": (
            bool(fit is not None and fit.has_break and fit.contains(km))
            or bool(step is not None and step.has_step and step.above > step.below and step.contains(km))
        )
        if fit is not None or step is not None
        else None,
        "distance_matters": (distance_coef[0] < 0 and distance_coef[1] < 0.05)
        if distance_coef is not None
        else None,
        "every_region": all(v > 0.5 for v in region_shares.values()) if region_shares else None,
        "every_core_set": all(v > 0.5 for v in core_set_lows.values()) if core_set_lows else None,
        "counties_majority": bool(wilson_interval(*county_counts)[0][0] > 0.5)
        if county_counts and county_counts[1]
        else None,
    }
    reasons = [
        f"(a) {beyond_k:,} of {beyond_n:,} units beyond {km:g} km shrink ({100 * share:.1f} %, 95 % CI "
        f"{100 * lo[0]:.1f}-{100 * hi[0]:.1f} %): "
        f"{'above' if tests['majority'] else 'not clearly above'} 50 %.",
        f"(b) within {km:g} km {within_k:,} of {within_n:,} shrink ({100 * within_k / within_n:.1f} "
        f"%); odds ratio "
        f"beyond vs within {orr:.2f} (95 % CI {olo:.2f}-{ohi:.2f}): "
        f"{'more shrinkage beyond' if tests['contrast'] else 'no clear excess beyond'} {km:g} km.",
    ]
    if fit is not None:
        where = "contains" if fit.contains(km) else "does not contain"
        reasons.append(
            f"(c) segmented regression: break at {fit.break_x:g} km (95 % bootstrap CI {fit.break_ci[0]:g}-"
            f"{fit.break_ci[1]:g} km, which {where} {km:g} km); slope change {fit.slope_change:+.4f} per km "
            f"(CI {fit.slope_change_ci[0]:+.4f} to {fit.slope_change_ci[1]:+.4f}): "
            f"{'a break' if fit.has_break else 'no clear break (the interval contains 0)'}."
        )
    else:
        reasons.append("(c) segmented regression not fitted.")
    if step is not None:
        where = "contains" if step.contains(km) else "does not contain"
        reasons.append(
            f"(c) step change of the shrinking share: from {100 * step.below:.1f} % to "
            f"{100 * step.above:.1f} % "
            f"at {step.break_x:g} km (95 % bootstrap CI {step.break_ci[0]:g}-{step.break_ci[1]:g} km, which "
            f"{where} {km:g} km; CI of the jump {100 * step.diff_ci[0]:+.1f} to {100 * step.diff_ci[1]:+.1f} "
            "points)."
        )
    if distance_coef is not None:
        reasons.append(
            f"(d) log-distance coefficient {distance_coef[0]:+.3f} (p = {distance_coef[1]:.3g}): "
            f"{'distance still matters' if tests['distance_matters'] else 'no significant negative effect'}."
        )
    else:
        reasons.append("(d) spatial regression not fitted.")
    if region_shares:
        low = [k for k, v in region_shares.items() if not v > 0.5]
        reasons.append(
            f"(e) beyond {km:g} km "
            + ", ".join(f"{k} {100 * v:.1f} %" for k, v in region_shares.items())
            + (f": not a majority in {', '.join(low)}." if low else ": a majority in every region.")
        )
    else:
        reasons.append("(e) not applied: region column missing.")
    if core_set_lows:
        weak = [k for k, v in core_set_lows.items() if not v > 0.5]
        reasons.append(
            "(f) core sets: "
            + (f"not clearly above 50 % under {', '.join(weak)}." if weak else "above 50 % under every set.")
        )
    else:
        reasons.append("(f) not applied: core-set sensitivity table missing.")
    if county_counts and county_counts[1]:
        ck, cn = county_counts
        clo, chi = wilson_interval(ck, cn)
        reasons.append(
            f"(g) 县域 (counties, county-level cities, banners; not urban districts) beyond {km:g} "
            f"km: {ck:,} of "
            f"{cn:,} shrink ({100 * ck / cn:.1f} %, CI {100 * clo[0]:.1f}-{100 * chi[0]:.1f} %)."
        )
    else:
        reasons.append("(g) not applied: unit_kind missing (or no county-type unit beyond the distance).")
    support = bool(
        tests["counties_majority"] is not False
        and tests["every_core_set"] is not False
        and tests["majority"]
        and tests["contrast"]
        and (tests["threshold"] or tests["distance_matters"])
        and tests["every_region"] is not False
    )
    return _combine(rule, tests, reasons, all_for_support=(), support_if=support)


def verdict_northeast(
    *,
    total_change: float | None,
    ll_k: int | None,
    ll_n: int,
    rest_ll_k: int | None,
    rest_ll_n: int,
    county_k: int | None,
    county_n: int,
    units_label: str = "counties, county-level cities and banners (not urban districts)",
) -> Verdict:
    """Claim 2 (see :data:`RULES` ``"northeast"``). ``total_change`` is 2020 - 2010 residents.

    ``ll_k``/``rest_ll_k`` (Low-Low units in and outside the Northeast) and
    ``county_k`` (shrinking units among the ``county_n`` non-district
    Northeast units) are None when their column is missing: that test is
    then not applied and the verdict is at most "partly supported".
    """
    rule = RULES["northeast"]
    if ll_n == 0 or total_change is None:
        return not_testable(rule, ["Northeast units"], what="data:")
    tests: dict[str, bool | None] = {"loss": bool(total_change < 0), "low_low": None, "counties_shrink": None}
    reasons = [f"(a) total change of the Northeast {total_change / 1e6:+.2f} million."]
    if ll_k is not None and rest_ll_k is not None:
        ne_lo, ne_hi = wilson_interval(ll_k, ll_n)
        r_lo, r_hi = wilson_interval(rest_ll_k, rest_ll_n)
        tests["low_low"] = bool(ne_lo[0] > r_hi[0])
        reasons.append(
            f"(b) Low-Low units: {ll_k} of {ll_n} in the Northeast ({100 * ll_k / ll_n:.1f} %, CI "
            f"{100 * ne_lo[0]:.1f}-{100 * ne_hi[0]:.1f} %) vs {rest_ll_k} of {rest_ll_n} elsewhere "
            f"({100 * rest_ll_k / max(rest_ll_n, 1):.1f} %, CI {100 * r_lo[0]:.1f}-{100 * r_hi[0]:.1f} %)."
        )
    else:
        reasons.append("(b) not testable with these data: LISA cluster column missing.")
    if county_k is not None and county_n > 0:
        c_lo, c_hi = wilson_interval(county_k, county_n)
        tests["counties_shrink"] = bool(c_lo[0] > 0.5)
        reasons.append(
            f"(c) {county_k} of {county_n} Northeast {units_label} shrink "
            f"({100 * county_k / county_n:.1f} %, CI {100 * c_lo[0]:.1f}-{100 * c_hi[0]:.1f} %)."
        )
    else:
        reasons.append("(c) not testable with these data: unit_kind missing.")
    support = all(v is True for v in tests.values())
    return _combine(rule, tests, reasons, all_for_support=(), support_if=support)


def verdict_ageing(
    *,
    province_shares: Mapping[str, float],
    spearman: tuple[float, float] | None,
    moran_bv: tuple[float, float] | None = None,
    threshold: float = SEED_AGEING_SHARE,
) -> Verdict:
    """Claim 3 (see :data:`RULES` ``"ageing"``).

    ``province_shares`` maps province name to its 2020 60+ share in %;
    ``spearman`` is (rho, p) of change_pct with the 2020 60+ share;
    ``moran_bv`` (I, pseudo p) when available.
    """
    rule = RULES["ageing"].format(share=threshold)
    if not province_shares or spearman is None:
        return not_testable(rule, ["share_60plus_2020"])
    above = {k: v > threshold for k, v in province_shares.items()}
    assoc = bool(spearman[0] < 0 and spearman[1] < 0.05)
    if moran_bv is not None:
        assoc = assoc and bool(moran_bv[0] < 0 and moran_bv[1] < 0.05)
    tests = {"above_seed": all(above.values()), "association": assoc}
    reasons = [
        ", ".join(f"{k} {v:.2f} %" for k, v in province_shares.items())
        + f" aged 60+ in 2020 ({'all' if tests['above_seed'] else 'not all'} above {threshold:g} %).",
        f"Spearman rho of change_pct with the 60+ share {spearman[0]:+.3f} (p = {spearman[1]:.3g})"
        + (f"; bivariate Moran's I {moran_bv[0]:+.3f} (p = {moran_bv[1]:.3g})" if moran_bv else "")
        + ".",
    ]
    return _combine(rule, tests, reasons, all_for_support=tuple(tests))


def verdict_net_outflow(*, table: Sequence[Sequence[int]], spearman: tuple[float, float]) -> Verdict:
    """Claim 4 (see :data:`RULES` ``"net_outflow"``).

    ``table`` is [[outflow & shrinking, outflow & growing], [no outflow & shrinking, no outflow & growing]].
    """
    rule = RULES["net_outflow"]
    (a, b), (c, d) = table
    if a + b == 0 or c + d == 0:
        return not_testable(rule, ["units with and without net outflow"], what="data:")
    orr, olo, ohi = odds_ratio(a, b, c, d)
    lo, hi = wilson_interval(a, a + b)
    tests = {
        "odds": bool(olo > 1),
        "correlation": bool(spearman[0] < 0 and spearman[1] < 0.05),
        "majority": bool(lo[0] > 0.5),
    }
    reasons = [
        f"(a) odds ratio of shrinking, net outflow vs not: {orr:.2f} (95 % CI {olo:.2f}-{ohi:.2f}).",
        f"(b) Spearman rho of net_outflow_ratio with change_pct {spearman[0]:+.3f} (p = {spearman[1]:.3g}).",
        f"(c) {a:,} of {a + b:,} net-outflow units shrink ({100 * a / (a + b):.1f} %, CI {100 * lo[0]:.1f}-"
        f"{100 * hi[0]:.1f} %).",
    ]
    return _combine(rule, tests, reasons, all_for_support=tuple(tests))


def verdict_hsr(*, strata: Sequence[Sequence[Sequence[int]]], labels: Sequence[str]) -> Verdict:
    """Claim 5 (see :data:`RULES` ``"hsr"``).

    ``strata``: per distance band the table [[outside & shrinking, outside & growing],
    [inside & shrinking, inside & growing]].
    """
    rule = RULES["hsr"]
    usable = [(lab, t) for lab, t in zip(labels, strata, strict=True) if sum(t[0]) > 0 and sum(t[1]) > 0]
    if not usable:
        return not_testable(rule, ["units inside and outside corridors in the same band"], what="data:")
    orr, lo, hi = mantel_haenszel([t for _, t in usable])
    less = [lab for lab, t in usable if t[1][0] / sum(t[1]) < t[0][0] / sum(t[0])]
    tests = {"pooled": bool(lo > 1) if np.isfinite(lo) else False, "most_bands": len(less) > len(usable) / 2}
    reasons = [
        f"Mantel-Haenszel odds ratio of shrinking, outside vs inside corridors within distance bands: "
        f"{orr:.2f} (95 % CI {lo:.2f}-{hi:.2f}).",
        f"Inside units shrink less often in {len(less)} of {len(usable)} bands"
        + (f" ({', '.join(less)})." if less else "."),
    ]
    return _combine(rule, tests, reasons, all_for_support=tuple(tests))


def verdict_intercity(*, utilisation: Any, design_basis: bool, threshold: float = 0.4) -> Verdict:
    """Claim 6 (see :data:`RULES` ``"intercity"``).

    ``utilisation`` holds the ratios of the intercity lines; ``design_basis`` is
    True only when they come from a user capacity table (ridership or trains over
    design capacity), not from the train-count proxy.
    """
    rule = RULES["intercity"]
    u = np.asarray(utilisation, dtype=float)
    u = u[np.isfinite(u)]
    if not design_basis:
        return not_testable(
            rule, ["ridership and design capacity (utilisation_basis is a proxy)"], what="data:"
        )
    if len(u) == 0:
        return not_testable(rule, ["utilisation of intercity lines"], what="data:")
    med = float(np.median(u))
    share = float((u <= threshold).mean())
    tests = {"median": med <= threshold, "quarter": share >= 0.25}
    reasons = [
        f"median utilisation of {len(u)} intercity lines {med:.2f}; {100 * share:.0f} % at or below "
        f"{threshold:g}."
    ]
    return _combine(rule, tests, reasons, all_for_support=("median",))
