"""Findings report: one section per seed claim, computed from the run's outputs, as HTML and Markdown.

:func:`build_report` turns the exported units (and the optional tables of the
other stages) into a :class:`Report`: per claim the tables, figures, text and
verdict computed by :mod:`geo_pipeline.findings`. :func:`render_html` writes
one self-contained page (figures as ``data:`` URIs, CSS inline, no external
reference, print styles); :func:`render_markdown` the same content as
Markdown with the figures as PNG files beside it. No file I/O here: the CLI
wrapper (``geo_pipeline.cli._report``) reads and writes.

Every figure is computed: the module holds no number about the data except
the published reference figures in :data:`PUBLISHED` (each with its source),
which are only compared against.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import findings as fd
from ._errors import InputError
from ._validate import check_frame

__all__ = [
    "ACCESS_GAIN_MIN",
    "BV_PAIR",
    "CLAIMS",
    "MAP_THEMES",
    "PUBLISHED",
    "Report",
    "ReportFigure",
    "ReportTable",
    "SECTION_MAPS",
    "Section",
    "analysable_units",
    "band_chart",
    "build_report",
    "external_references",
    "line_crossings",
    "manifest_tables",
    "render_html",
    "render_markdown",
    "section_ageing",
    "section_distance",
    "section_hsr",
    "section_intercity",
    "section_net_outflow",
    "section_northeast",
    "segmented_chart",
]

log = logging.getLogger(__name__)

#: The claims: key -> (Chinese wording, English gloss).
CLAIMS: dict[str, tuple[str, str]] = {
    "distance": (
        "距中心城市150公里外的县域普遍出现收缩",
        "Counties more than 150 km from a central city generally shrink.",
    ),
    "northeast": ("东北地区是人口流失的集中区域", "The Northeast is a cluster of population loss."),
    "ageing": (
        "辽宁、吉林60岁及以上人口占比超过23%，人口收缩与老龄化相伴",
        "In Liaoning and Jilin more than 23 % of residents are aged 60+; shrinkage goes with ageing.",
    ),
    "net_outflow": (
        "常住人口少于户籍人口即为人口净流出",
        "Net outflow: fewer residents than registered (hukou) people, and it goes with shrinkage.",
    ),
    "hsr": (
        "高铁沿线县域与非沿线县域的收缩程度不同",
        "Counties along high-speed rail shrink differently from counties away from it.",
    ),
    "intercity": (
        "部分城际铁路客流仅为设计能力的40%",
        "Some intercity lines carry only 40 % of their design ridership.",
    ),
}

#: Published reference figures compared against (value, description, source).
PUBLISHED: dict[str, tuple[float, str, str]] = {
    "county_shrinking": (
        1507,
        "1,507 of 2,896 county units shrinking (52 %), 2010-2020",
        "Environment and Planning A (2022), as cited in issue 13",
    ),
    "county_units": (2896, "county units in that study", "Environment and Planning A (2022)"),
    "prefecture_shrinking": (
        266,
        "266 shrinking cities (prefecture level), 2010-2020",
        "published figure as cited in issue 12",
    ),
    "northeast_change": (
        -11.01e6,
        "Northeast (Liaoning, Jilin, Heilongjiang) population change -11.01 million, 2010-2020",
        "NBS, 7th national census briefing (2021), as cited in issue 13",
    ),
}

#: Region that is the Northeast in the ``region`` column.
NORTHEAST = "Northeast"
#: Minutes of door-to-core travel time saved (2010 -> 2020 rail network) that count as a large gain.
ACCESS_GAIN_MIN = 30
#: The bivariate pair of claim 3 as the autocorrelation stage names it (``<x>_vs_<y>``).
BV_PAIR = "change_pct_vs_share_60plus_2020"
#: Provinces of claim 3.
AGEING_PROVINCES = ("辽宁省", "吉林省")
_LL = ("LL", "Low-Low", "low-low")


# -- containers ----------------------------------------------------------------------------------
@dataclass
class ReportTable:
    """A table of the report; ``key`` names its CSV ``report_<level>_<key>.csv``."""

    key: str
    title: str
    frame: pd.DataFrame
    note: str = ""


@dataclass
class ReportFigure:
    """A figure of the report: PNG bytes and a caption; ``key`` names ``report_<key>.png``."""

    key: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One claim at one level."""

    key: str
    level: str
    title: str
    claim_zh: str
    claim_en: str
    text: list[str] = field(default_factory=list)
    tables: list[ReportTable] = field(default_factory=list)
    figures: list[ReportFigure] = field(default_factory=list)
    comparisons: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    verdict: fd.Verdict = field(default_factory=lambda: fd.Verdict(fd.VERDICTS[3]))


@dataclass
class Report:
    """The whole report."""

    title: str
    sections: list[Section]
    summary: pd.DataFrame
    methods: list[str]
    inputs: pd.DataFrame
    versions: pd.DataFrame
    figures: list[ReportFigure] = field(default_factory=list)
    intro: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by its CSV name (without ``.csv``), the verdict summary included."""
        out = {"report_summary": self.summary}
        for s in self.sections:
            for t in s.tables:
                out[f"report_{s.level}_{t.key}"] = t.frame
        return out


# -- figures -------------------------------------------------------------------------------------
def _png(fig: Any, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def band_chart(table: pd.DataFrame, *, label: str, group: str | None = None, dpi: int = 110) -> bytes:
    """Bar chart of shrinking shares with their 95 % intervals, per band (and group).

    ``table`` is a :func:`findings.share_table` result with a ``label`` column
    (the bands) and optionally a ``group`` column (one bar colour per group).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.4))
    ax = fig.subplots()
    groups = [None] if group is None else list(dict.fromkeys(table[group]))
    labels = list(dict.fromkeys(table[label]))
    width = 0.8 / len(groups)
    cmap = ["#b2182b", "#2166ac", "#4d9221", "#8073ac", "#e08214", "#35978f", "#666666"]
    for gi, g in enumerate(groups):
        d = table if g is None else table[table[group] == g]
        pos = (
            np.array([labels.index(v) for v in d[label]], dtype=float) + (gi - (len(groups) - 1) / 2) * width
        )
        share = 100 * d["shrinking_share"].to_numpy(dtype=float)
        err = np.vstack(
            [
                share - 100 * d["share_ci_low"].to_numpy(dtype=float),
                100 * d["share_ci_high"].to_numpy(dtype=float) - share,
            ]
        )
        ax.bar(
            pos,
            share,
            width=width * 0.95,
            color=cmap[gi % len(cmap)],
            alpha=0.85,
            label=None if g is None else str(g),
            yerr=err,
            capsize=2,
            error_kw={"linewidth": 0.8},
        )
    ax.axhline(50, color="#333333", linewidth=0.6, linestyle="--")
    ax.set_xticks(range(len(labels)), [str(v) for v in labels])
    ax.set_ylabel("Shrinking units (%), 95 % CI")
    ax.set_ylim(0, 100)
    if group is not None:
        ax.legend(fontsize=7, ncols=min(4, len(groups)), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig, dpi)


def segmented_chart(
    x: np.ndarray, y: np.ndarray, fit: fd.SegmentedFit, *, km: float = fd.CLAIM_KM, dpi: int = 110
) -> bytes:
    """Scatter of change against distance with the segmented fit, its break and break interval."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 3.6))
    ax = fig.subplots()
    ok = np.isfinite(x) & np.isfinite(y)
    lo, hi = np.nanpercentile(y[ok], [0.5, 99.5])
    ax.scatter(x[ok], np.clip(y[ok], lo, hi), s=3, color="#777777", alpha=0.35, linewidths=0)
    grid = np.linspace(np.nanmin(x[ok]), np.nanmax(x[ok]), 400)
    ax.plot(grid, fit.predict(grid), color="#b2182b", linewidth=1.4, label="segmented fit")
    ax.axvspan(fit.break_ci[0], fit.break_ci[1], color="#b2182b", alpha=0.12, label="95 % CI of the break")
    ax.axvline(km, color="#2166ac", linestyle="--", linewidth=0.9, label=f"{km:g} km (claim)")
    ax.axhline(0, color="#333333", linewidth=0.5)
    ax.set_xlabel("Distance to the nearest core (km)")
    ax.set_ylabel("100 ln(pop 2020 / pop 2010)")
    ax.legend(fontsize=7, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig, dpi)


# -- helpers -------------------------------------------------------------------------------------
def _missing(units: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c not in units.columns or units[c].isna().all()]


def _bool(s: pd.Series) -> np.ndarray:
    return s.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _analysable(units: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Units used by the statistics: those with ``comparable`` not False (when the column exists)."""
    if "comparable" in units.columns:
        keep = units["comparable"].astype("boolean").fillna(True).to_numpy(dtype=bool)
        n_out = int((~keep).sum())
        if n_out:
            names = ", ".join(units.loc[~keep, "name"].astype(str).head(5)) if "name" in units.columns else ""
            return units[keep], (
                f"{n_out} unit(s) whose population is not comparable between the censuses "
                f"({names}) are left out of every statistic."
            )
    return units, ""


def _beyond(units: pd.DataFrame, km: float) -> pd.Series:
    return pd.Series(
        np.where(units["distance_km"].to_numpy(dtype=float) >= km, f"{km:g}+ km", f"<{km:g} km"),
        index=units.index,
        name="side",
    )


def _pct(x: float, d: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.{d}f} %"


# -- sections ------------------------------------------------------------------------------------
def _section(key: str, level: str) -> Section:
    zh, en = CLAIMS[key]
    titles = {
        "distance": "1. Distance to a central city",
        "northeast": "2. The Northeast",
        "ageing": "3. Ageing",
        "net_outflow": "4. Net outflow (2010)",
        "hsr": "5. High-speed rail and shrinkage",
        "intercity": "6. Intercity lines and design ridership",
    }
    return Section(key=key, level=level, title=titles[key], claim_zh=zh, claim_en=en)


def section_distance(
    units: pd.DataFrame,
    *,
    level: str = "county",
    w: Any = None,
    core_sets: pd.DataFrame | None = None,
    bootstrap: int = 999,
    seed: int = 20201101,
    dpi: int = 110,
    km: float = fd.CLAIM_KM,
) -> Section:
    """Claim 1: shrinking shares by band (national, region, unit kind, core set), threshold, spatial model.

    ``w`` is a :class:`geo_pipeline.weights.UnitWeights` in the row order of
    ``units`` after the non-comparable units are dropped; without it no
    spatial model is fitted.
    ``core_sets`` is an optional frame with ``core_set`` and the share-table
    columns (the distance stage's sensitivity table), reported as given.
    """
    sec = _section("distance", level)
    miss = _missing(units, ["distance_km", "band", "pop_2010", "pop_2020", "shrinking"])
    if miss:
        sec.verdict = fd.not_testable(fd.RULES["distance"].format(km=km), miss)
        return sec
    u, note = _analysable(units)
    if note:
        sec.text.append(note)
    u = u.assign(side=_beyond(u, km))
    order = u.groupby("band")["distance_km"].min().sort_values().index
    bands = fd.share_table(u, ["band"], bootstrap=bootstrap, seed=seed)
    bands = bands.set_index("band").loc[order].reset_index()
    sides = fd.share_table(u, ["side"], bootstrap=bootstrap, seed=seed)
    allrow = fd.share_table(u.assign(all="all"), ["all"], bootstrap=bootstrap, seed=seed)
    sec.tables.append(
        ReportTable(
            "bands", f"Shrinking share and population-weighted change by distance band ({level} units)", bands
        )
    )
    sec.tables.append(ReportTable("claim_sides", f"Within vs beyond {km:g} km", sides))
    sec.figures.append(
        ReportFigure(
            f"{level}_bands",
            f"Shrinking share by distance band ({level} units), 95 % Wilson intervals; dashed line: 50 %.",
            band_chart(bands, label="band", dpi=dpi),
        )
    )
    b = sides.set_index("side")
    beyond_k, beyond_n = (
        (int(b.loc[f"{km:g}+ km", "n_shrinking"]), int(b.loc[f"{km:g}+ km", "n_units"]))
        if f"{km:g}+ km" in b.index
        else (0, 0)
    )
    within_k, within_n = (
        (int(b.loc[f"<{km:g} km", "n_shrinking"]), int(b.loc[f"<{km:g} km", "n_units"]))
        if f"<{km:g} km" in b.index
        else (0, 0)
    )
    a = allrow.iloc[0]
    sec.text.append(
        f"{int(a['n_shrinking']):,} of {int(a['n_units']):,} {level} units shrank between 2010 and 2020 "
        f"({_pct(a['shrinking_share'])}); the population-weighted change was "
        f"{a['pop_weighted_change_pct']:+.2f} % "
        f"(95 % bootstrap CI {a['change_ci_low']:+.2f} to {a['change_ci_high']:+.2f} %)."
    )
    region_shares = None
    core_set_lows = None
    for col, title in (("region", "region"), ("unit_kind", "unit kind")):
        if col in u.columns and u[col].notna().any():
            t = fd.share_table(u, [col, "band"], bootstrap=bootstrap, seed=seed)
            t["_o"] = t["band"].map({v: i for i, v in enumerate(order)})
            t = t.sort_values([col, "_o"]).drop(columns="_o").reset_index(drop=True)
            sec.tables.append(ReportTable(f"bands_by_{col}", f"By {title} and band", t))
            sec.figures.append(
                ReportFigure(
                    f"{level}_bands_by_{col}",
                    f"Shrinking share by band and {title} ({level} units), 95 % Wilson intervals.",
                    band_chart(t, label="band", group=col, dpi=dpi),
                )
            )
            s2 = fd.share_table(u, [col, "side"], bootstrap=0)
            beyond = s2[s2["side"] == f"{km:g}+ km"]
            if col == "region":
                region_shares = dict(zip(beyond["region"], beyond["shrinking_share"], strict=True))
            sec.text.append(
                f"Beyond {km:g} km by {title}: "
                + "; ".join(
                    f"{r[col]} {_pct(r['shrinking_share'])} of {int(r['n_units'])} (CI "
                    f"{_pct(r['share_ci_low'])}-"
                    f"{_pct(r['share_ci_high'])})"
                    for _, r in beyond.iterrows()
                )
                + "."
            )
        else:
            sec.text.append(f"By {title}: not testable with these data: {col} missing.")
    if (
        core_sets is not None
        and len(core_sets)
        and {"n_beyond", "n_shrinking_beyond"} <= set(core_sets.columns)
    ):
        cs = core_sets.copy()
        cs["share_ci_low"], cs["share_ci_high"] = fd.wilson_interval(cs["n_shrinking_beyond"], cs["n_beyond"])
        sec.tables.append(
            ReportTable(
                "core_sets",
                f"Sensitivity to the core set: shrinking share beyond {km:g} km (distance stage; 95 % "
                "Wilson intervals added here)",
                cs,
            )
        )
        low = cs[(cs["n_beyond"] > 0) & (cs["share_ci_low"] <= 0.5)]["core_set"].astype(str).tolist()
        has = cs[cs["n_beyond"] > 0]  # a set with no unit beyond the distance says nothing
        core_set_lows = dict(zip(has["core_set"].astype(str), has["share_ci_low"], strict=True))
        sec.text.append(
            f"Under each core set, the shrinking share beyond {km:g} km: "
            + "; ".join(
                f"{r['core_set']} "
                f"{_pct(r['n_shrinking_beyond'] / r['n_beyond'] if r['n_beyond'] else np.nan)} "
                f"of {int(r['n_beyond']):,} (CI {_pct(r['share_ci_low'])}-{_pct(r['share_ci_high'])})"
                for _, r in cs.iterrows()
            )
            + (
                f". Not clearly above 50 % under: {', '.join(low)}."
                if low
                else ". Above 50 % under every set."
            )
        )
    else:
        sec.text.append(
            "Under other core sets: not testable with these data: core-set sensitivity table "
            "(core_set_sensitivity of the distance stage) missing."
        )
    if not _missing(u, ["rail_minutes_to_core", "rail_time_band"]):
        tb_order = u.groupby("rail_time_band")["rail_minutes_to_core"].min().sort_values().index
        tb = fd.share_table(u, ["rail_time_band"], bootstrap=bootstrap, seed=seed)
        tb = tb.set_index("rail_time_band").loc[tb_order].reset_index()
        sec.tables.append(
            ReportTable(
                "rail_time_bands",
                "By door-to-core travel time by road and rail (infrastructure stage), instead of distance",
                tb,
            )
        )
        sec.figures.append(
            ReportFigure(
                f"{level}_rail_time_bands",
                f"Shrinking share by travel-time band to the nearest core ({level} units), 95 % "
                f"Wilson intervals.",
                band_chart(tb, label="rail_time_band", dpi=dpi),
            )
        )
        rho = stats.spearmanr(u["rail_minutes_to_core"], u["change_pct"], nan_policy="omit")
        sec.text.append(
            f"Travel time instead of distance: Spearman correlation of rail_minutes_to_core with change_pct "
            f"{float(rho.statistic):+.3f} (p = {float(rho.pvalue):.3g}); shares by time band in the table."
        )
    else:
        sec.text.append("By rail travel time: not testable with these data: rail_minutes_to_core missing.")
    county_counts = None
    if "unit_kind" in u.columns and u["unit_kind"].notna().any():
        far = u[(u["side"] == f"{km:g}+ km") & u["unit_kind"].isin(["county", "city", "other"]).to_numpy()]
        county_counts = (int(_bool(far["shrinking"]).sum()), len(far))
    # threshold
    x = u["distance_km"].to_numpy(dtype=float)
    y = fd.log_change(u["pop_2010"], u["pop_2020"])
    fit = None
    try:
        fit = fd.segmented_regression(x, y, bootstrap=bootstrap, seed=seed)
    except InputError as exc:
        sec.text.append(f"Segmented regression not fitted: {exc}.")
    if fit is not None:
        seg = pd.DataFrame(
            [
                {
                    "n": fit.n,
                    "break_km": fit.break_x,
                    "break_ci_low": fit.break_ci[0],
                    "break_ci_high": fit.break_ci[1],
                    "slope_before_per_km": fit.slope_before,
                    "slope_after_per_km": fit.slope_after,
                    "slope_change_ci_low": fit.slope_change_ci[0],
                    "slope_change_ci_high": fit.slope_change_ci[1],
                    "r2_linear": fit.r2_linear,
                    "r2_segmented": fit.r2_segmented,
                    "bootstrap": fit.bootstrap,
                    "has_break": fit.has_break,
                    "ci_contains_claim_km": fit.contains(km),
                }
            ]
        )
        sec.tables.append(
            ReportTable("threshold", "Segmented regression of 100 ln(pop2020/pop2010) on distance", seg)
        )
        sec.text.append(
            f"Segmented regression: change falls by {-fit.slope_before:.3f} log-% per km up to "
            f"{fit.break_x:g} km "
            f"(95 % bootstrap CI of the break {fit.break_ci[0]:g}-{fit.break_ci[1]:g} km) and changes by "
            f"{fit.slope_after:+.4f} log-% per km beyond it; R² {fit.r2_linear:.3f} (one line) -> "
            f"{fit.r2_segmented:.3f} (segmented)."
            if fit.slope_before < 0
            else f"Segmented regression: change varies by {fit.slope_before:+.3f} log-% per km up "
            f"to {fit.break_x:g} km "
            f"(95 % CI of the break {fit.break_ci[0]:g}-{fit.break_ci[1]:g} km) and by "
            f"{fit.slope_after:+.4f} beyond "
            f"it; R² {fit.r2_linear:.3f} (one line) -> {fit.r2_segmented:.3f} (segmented)."
        )
        sec.figures.append(
            ReportFigure(
                f"{level}_threshold",
                "Change against distance with the segmented fit; "
                "shaded: 95 % bootstrap interval of the break; points outside the 0.5th-"
                "99.5th percentiles drawn at those limits.",
                segmented_chart(x, y, fit, km=km, dpi=dpi),
            )
        )
    step = None
    try:
        step = fd.step_change(x, _bool(u["shrinking"]).astype(float), bootstrap=bootstrap, seed=seed)
    except InputError as exc:
        sec.text.append(f"Change-point of the shrinking share not estimated: {exc}.")
    if step is not None:
        sec.tables.append(
            ReportTable(
                "change_point",
                "Change-point of the shrinking share along distance (step model, least squares)",
                pd.DataFrame(
                    [
                        {
                            "n": step.n,
                            "break_km": step.break_x,
                            "break_ci_low": step.break_ci[0],
                            "break_ci_high": step.break_ci[1],
                            "below_share": step.below,
                            "above_share": step.above,
                            "jump_ci_low": step.diff_ci[0],
                            "jump_ci_high": step.diff_ci[1],
                            "bootstrap": step.bootstrap,
                            "ci_contains_claim_km": step.contains(km),
                        }
                    ]
                ),
            )
        )
        sec.text.append(
            f"Change-point of the shrinking share: {_pct(step.below)} of units shrink nearer than "
            f"{step.break_x:g} km, {_pct(step.above)} from there on (95 % bootstrap CI of the change-point "
            f"{step.break_ci[0]:g}-{step.break_ci[1]:g} km)."
        )
    # spatial regression
    coef = None
    if w is not None:
        reg = _regression(u, w)
        if isinstance(reg, str):
            sec.text.append(reg)
        else:
            r, used, left = reg
            sec.tables.append(
                ReportTable("regression_diagnostics", "OLS spatial diagnostics (spreg)", r.diagnostics)
            )
            sec.tables.append(
                ReportTable(
                    "regression",
                    "Coefficients (OLS and the model the diagnostics point "
                    "to); response 100 ln(pop2020/pop2010)",
                    r.coefficients,
                )
            )
            final = r.coefficients[r.coefficients["model"] == r.coefficients["model"].iloc[-1]]
            row = final[final["variable"] == "log_distance_km"].iloc[0]
            coef = (float(row["coef"]), float(row["p"]))
            sec.text.append(
                f"Spatial regression on {r.ols.n:,} units with {', '.join(used)}: the diagnostics choose the "
                f"{r.choice} model ({r.reason}). Log distance: {row['coef']:+.3f} (SE {row['std_err']:.3f}, "
                f"p = {row['p']:.3g}) in the {final['model'].iloc[0]}: distance "
                f"{'still matters' if coef[0] < 0 and coef[1] < 0.05 else 'does not clearly matter'} "
                "once spatial "
                f"dependence{' and region' if 'region' in ' '.join(used) else ''} are accounted for."
            )
            if left:
                sec.text.append("Model notes: " + "; ".join(left) + ".")
    else:
        sec.text.append("Spatial regression not fitted: no spatial weights for these units.")
    sec.verdict = fd.verdict_distance(
        beyond_k=beyond_k,
        beyond_n=beyond_n,
        within_k=within_k,
        within_n=within_n,
        fit=fit,
        step=step,
        distance_coef=coef,
        region_shares=region_shares,
        core_set_lows=core_set_lows,
        county_counts=county_counts,
        km=km,
    )
    if level == "county":
        v, desc, src = PUBLISHED["county_shrinking"]
        n_pub = PUBLISHED["county_units"][0]
        sec.comparisons.append(
            f"Published: {desc} ({src}). This run: {int(a['n_shrinking']):,} of {int(a['n_units']):,} "
            f"({_pct(a['shrinking_share'])}); difference {int(a['n_shrinking']) - int(v):+,} units and "
            f"{100 * (a['shrinking_share'] - v / n_pub):+.1f} points. The unit sets differ: this run merges "
            "units that changed between the censuses."
        )
    elif level == "prefecture":
        v, desc, src = PUBLISHED["prefecture_shrinking"]
        sec.comparisons.append(
            f"Published: {desc} ({src}). This run: {int(a['n_shrinking'])} of "
            f"{int(a['n_units'])} prefecture units shrink ({int(a['n_shrinking']) - int(v):+d}). "
            "Definitions and unit sets differ: here a unit is a whole prefecture-level unit of the "
            "census city table and it shrinks when it had fewer residents in 2020 than in 2010; "
            "published counts of shrinking cities may use other units (e.g. urban districts only) or "
            "thresholds."
        )
    sec.limits += [
        "Distance is measured from one representative point per unit to the nearest core of the chosen set; "
        "it is geodesic distance, not travel time.",
        "Shares and regressions describe units, not people; a band's population-weighted change can "
        "grow while "
        "most of its units shrink.",
        "Associations with distance are not causal: distance stands for many things (market access, "
        "administrative rank, terrain, history).",
    ]
    return sec


def _regression(u: pd.DataFrame, w: Any) -> tuple[fd.SpatialRegression, list[str], list[str]] | str:
    """Build the regressors from the columns present and fit :func:`findings.spatial_regression`.

    ``w`` is a :class:`geo_pipeline.weights.UnitWeights` on the rows of ``u``;
    units without a value are dropped and the weights re-linked
    (:meth:`UnitWeights.subset`), then row-standardised.
    """
    cols: dict[str, np.ndarray] = {}
    left: list[str] = []
    cols["log_distance_km"] = np.log(np.maximum(u["distance_km"].to_numpy(dtype=float), 1.0))
    if "in_corridor" in u.columns:
        cols["in_corridor"] = _bool(u["in_corridor"]).astype(float)
    else:
        left.append("no HSR corridor term (in_corridor missing)")
    for c in ("share_60plus_2010", "net_outflow_ratio"):
        if c in u.columns and u[c].notna().any():
            cols[c] = u[c].to_numpy(dtype=float)
        else:
            left.append(f"no {c} term ({c} missing)")
    if "region" in u.columns and u["region"].notna().any():
        regions = sorted(u["region"].dropna().unique())
        base = "East" if "East" in regions else regions[0]
        for r in regions:
            if r != base:
                cols[f"region_{r}"] = (u["region"] == r).to_numpy(dtype=float)
        left.append(f"region baseline: {base}")
    else:
        left.append("no region dummies (region missing)")
    y = fd.log_change(u["pop_2010"], u["pop_2020"])
    x = np.column_stack(list(cols.values()))
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    ids = np.asarray(w.ids, dtype=str)
    if len(ids) != len(u) or not np.array_equal(ids, u["unit_id"].astype(str).to_numpy()):
        return (
            f"Spatial regression not fitted: the weights' {len(ids)} units are not the data's {len(u)} units."
        )
    if not ok.all():
        gaps = {c: int((~np.isfinite(v)).sum()) for c, v in cols.items() if (~np.isfinite(v)).any()}
        left.append(
            f"{int((~ok).sum())} unit(s) without a value ("
            + ", ".join(f"{c}: {n}" for c, n in gaps.items())
            + "; weights re-linked without them)"
        )
        y, x = y[ok], x[ok]
    ww = w.subset(ok).graph().to_W()
    ww.transform = "r"
    w = ww
    r = fd.spatial_regression(y, x, w=w, name_y="log_change", name_x=list(cols))
    return r, list(cols), left


def section_northeast(
    units: pd.DataFrame, *, level: str = "county", dpi: int = 110, bootstrap: int = 999, seed: int = 20201101
) -> Section:
    """Claim 2: change and Low-Low shares by province, the Northeast total, shrinking counties."""
    sec = _section("northeast", level)
    miss = _missing(units, ["region", "province", "pop_2010", "pop_2020", "shrinking"])
    if miss:
        sec.verdict = fd.not_testable(fd.RULES["northeast"], miss)
        sec.text.append(f"Not testable with these data: {', '.join(miss)} missing.")
        return sec
    u, note = _analysable(units)
    if note:
        sec.text.append(note)
    lisa = next(
        (c for c in ("lisa_change_pct_cluster", "lisa_change_pct_eb_cluster") if c in u.columns), None
    )
    ll = u[lisa].isin(_LL).to_numpy() if lisa else np.zeros(len(u), dtype=bool)
    u = u.assign(low_low=ll)
    prov = fd.share_table(u, ["region", "province"], bootstrap=0)
    ll_by = u.groupby(["region", "province"])["low_low"].sum().rename("n_low_low").reset_index()
    prov = prov.merge(ll_by, on=["region", "province"], how="left")
    lo, hi = fd.wilson_interval(prov["n_low_low"], prov["n_units"])
    prov["low_low_share"] = prov["n_low_low"] / prov["n_units"]
    prov["low_low_ci_low"], prov["low_low_ci_high"] = lo, hi
    prov = prov.sort_values(["region", "pop_weighted_change_pct"]).reset_index(drop=True)
    sec.tables.append(
        ReportTable("provinces", "Change and Low-Low (LISA of change_pct) share by province", prov)
    )
    ne = u["region"].to_numpy() == NORTHEAST
    total = float(u.loc[ne, "pop_2020"].sum() - u.loc[ne, "pop_2010"].sum()) if ne.any() else None
    kind_ok = "unit_kind" in u.columns and u["unit_kind"].notna().any()
    if level == "prefecture":  # prefecture-level units: (c) asks whether most Northeast prefectures shrink
        counties, label = ne, "prefectures"
    elif kind_ok:
        counties = ne & u["unit_kind"].isin(["county", "city", "other"]).to_numpy()
        label = "counties, county-level cities and banners (not urban districts)"
    else:
        counties, label = None, ""
        sec.text.append("Counties vs districts: not testable with these data: unit_kind missing.")
    ck = int(_bool(u.loc[counties, "shrinking"]).sum()) if counties is not None else None
    cn = int(counties.sum()) if counties is not None else 0
    if lisa is None:
        sec.text.append("Low-Low shares: not testable with these data: LISA cluster column missing.")
    regions = fd.share_table(u, ["region"], bootstrap=bootstrap, seed=seed)
    sec.tables.append(ReportTable("regions", "By region", regions))
    if total is not None:
        v, desc, src = PUBLISHED["northeast_change"]
        sec.text.append(
            f"The Northeast's units changed by {total / 1e6:+.2f} million residents "
            f"({100 * total / u.loc[ne, 'pop_2010'].sum():+.2f} %)."
        )
        sec.comparisons.append(
            f"Published: {desc} ({src}). This run: {total / 1e6:+.2f} million "
            f"(difference {(total - v) / 1e6:+.2f} million, {100 * (total - v) / abs(v):+.1f} %)."
        )
    sec.verdict = fd.verdict_northeast(
        total_change=total,
        ll_k=int(ll[ne].sum()) if lisa else None,
        ll_n=int(ne.sum()),
        rest_ll_k=int(ll[~ne].sum()) if lisa else None,
        rest_ll_n=int((~ne).sum()),
        county_k=ck,
        county_n=cn,
        units_label=label,
    )
    sec.limits += [
        "Low-Low marks units whose change and whose neighbours' change are both low with a "
        "permutation p below alpha; it depends on the weights and on multiple testing.",
        f"The census briefing counts whole provinces; the {level} units here add up to the census "
        "province rows (population stage check).",
    ]
    return sec


def section_ageing(
    units: pd.DataFrame, *, level: str = "county", global_moran: pd.DataFrame | None = None
) -> Section:
    """Claim 3: 60+ shares of Liaoning and Jilin in 2020 and the association of shrinkage with ageing."""
    sec = _section("ageing", level)
    miss = _missing(units, ["share_60plus_2020", "province", "pop_2020", "change_pct"])
    if miss:
        sec.verdict = fd.not_testable(fd.RULES["ageing"].format(share=fd.SEED_AGEING_SHARE), miss)
        sec.text.append(f"Not testable with these data: {', '.join(miss)} missing.")
        return sec
    u, note = _analysable(units)
    if note:
        sec.text.append(note)
    s = u["share_60plus_2020"].to_numpy(dtype=float)
    scale = 1.0 if np.nanmax(s) > 1.0 else 100.0  # shares in % or as fractions
    u = u.assign(_p60=s * scale * u["pop_2020"].to_numpy(dtype=float) / 100.0)
    prov = (
        u.groupby("province").agg(pop_2020=("pop_2020", "sum"), pop_60plus_2020=("_p60", "sum")).reset_index()
    )
    prov["share_60plus_2020_pct"] = 100 * prov["pop_60plus_2020"] / prov["pop_2020"]
    prov = prov.sort_values("share_60plus_2020_pct", ascending=False).reset_index(drop=True)
    sec.tables.append(
        ReportTable("provinces", "Share aged 60+ in 2020 by province (recomputed from the units)", prov)
    )
    shares = {
        p: float(prov.loc[prov["province"] == p, "share_60plus_2020_pct"].iloc[0])
        for p in AGEING_PROVINCES
        if (prov["province"] == p).any()
    }
    ok = np.isfinite(s) & np.isfinite(u["change_pct"].to_numpy(dtype=float))
    rho = stats.spearmanr(u.loc[ok, "change_pct"], s[ok])
    sp = (float(rho.statistic), float(rho.pvalue))
    sec.text.append(
        f"Spearman correlation of change_pct with the 2020 60+ share over {int(ok.sum()):,} units: "
        f"{sp[0]:+.3f} (p = {sp[1]:.3g})."
    )
    bv = None
    if global_moran is not None and "variable" in global_moran.columns:
        var = global_moran["variable"].astype(str)
        rows = global_moran[var.str.contains("60plus") & var.str.contains("change_pct")]
        if "statistic" in rows.columns:  # the autocorrelation stage's Moran_BV rows
            rows = rows[rows["statistic"].astype(str).str.lower().isin(["moran_bv", "bv"])]
        if len(rows):
            # the pair of the claim: change at a unit with the 2020 60+ share of its neighbours
            key = rows["variable"].astype(str)
            pick = rows[key == BV_PAIR] if (key == BV_PAIR).any() else rows
            r = pick.iloc[0]
            p = (
                float(r["p_sim"])
                if "p_sim" in rows.columns and np.isfinite(r["p_sim"])
                else float(r["p_norm"])
            )
            bv = (float(r["I"]), p)
            sec.tables.append(ReportTable("moran_bv", "Bivariate Moran's I (autocorrelation stage)", rows))
            sec.text.append(
                f"Bivariate Moran's I of {r['variable']}: {bv[0]:+.3f} (pseudo p = {bv[1]:.3g}); "
                f"negative means "
                "units that shrink more have neighbours with older populations."
            )
    col = f"bv_{BV_PAIR}_cluster"
    if col in u.columns:
        counts = u[col].astype(str).value_counts().rename_axis("cluster").reset_index(name="n_units")
        counts["share"] = counts["n_units"] / counts["n_units"].sum()
        sec.tables.append(ReportTable("bv_clusters", f"Local bivariate clusters ({col})", counts))
    if bv is None:
        sec.text.append(
            "Bivariate Moran's I: not testable with these data: no Moran_BV row of change_pct with the "
            "60+ share in global_moran."
        )
    sec.verdict = fd.verdict_ageing(province_shares=shares, spearman=sp, moran_bv=bv)
    sec.comparisons.append(
        "Seed: over 23 % aged 60+ in Liaoning and Jilin (2020). This run: "
        + ", ".join(f"{k} {v:.2f} %" for k, v in shares.items())
        + "."
    )
    sec.limits += [
        "Ageing shares are of residents; out-migration of the young raises them, so the association "
        "does not say which causes which.",
        "A correlation across units can differ from the relation within any one unit (ecological fallacy).",
    ]
    return sec


def section_net_outflow(units: pd.DataFrame, *, level: str = "county") -> Section:
    """Claim 4: net outflow in 2010 (resident below hukou) and 2010-2020 shrinkage."""
    sec = _section("net_outflow", level)
    miss = _missing(units, ["net_outflow_ratio", "net_outflow", "shrinking", "change_pct"])
    if miss:
        sec.verdict = fd.not_testable(fd.RULES["net_outflow"], miss)
        sec.text.append(f"Not testable with these data: {', '.join(miss)} missing.")
        return sec
    u, note = _analysable(units)
    if note:
        sec.text.append(note)
    u = u[u["net_outflow_ratio"].notna()]
    out = _bool(u["net_outflow"])
    shr = _bool(u["shrinking"])
    table = [
        [int((out & shr).sum()), int((out & ~shr).sum())],
        [int((~out & shr).sum()), int((~out & ~shr).sum())],
    ]
    ct = pd.DataFrame(
        {
            "net_outflow_2010": ["yes", "no", "all"],
            "shrinking": [table[0][0], table[1][0], table[0][0] + table[1][0]],
            "growing": [table[0][1], table[1][1], table[0][1] + table[1][1]],
        }
    )
    ct["n_units"] = ct["shrinking"] + ct["growing"]
    ct["shrinking_share"] = ct["shrinking"] / ct["n_units"]
    ct["share_ci_low"], ct["share_ci_high"] = fd.wilson_interval(ct["shrinking"], ct["n_units"])
    sec.tables.append(ReportTable("crosstab", "Net outflow in 2010 vs shrinkage 2010-2020", ct))
    rho = stats.spearmanr(u["net_outflow_ratio"], u["change_pct"])
    pear = stats.pearsonr(u["net_outflow_ratio"], u["change_pct"])
    sp = (float(rho.statistic), float(rho.pvalue))
    corr = pd.DataFrame(
        [
            {"method": "Spearman", "r": sp[0], "p": sp[1], "n": len(u)},
            {"method": "Pearson", "r": float(pear.statistic), "p": float(pear.pvalue), "n": len(u)},
        ]
    )
    sec.tables.append(
        ReportTable("correlation", "Correlation of net_outflow_ratio (2010) with change_pct", corr)
    )
    sec.text.append(
        f"{int(out.sum()):,} of {len(u):,} units had fewer residents than registered people in 2010 "
        f"(net outflow); their total hukou surplus was "
        f"{(u.loc[out, 'hukou_2010'].sum() - u.loc[out, 'pop_2010'].sum()) / 1e6:.2f} million."
        if "hukou_2010" in u.columns
        else f"{int(out.sum()):,} of {len(u):,} units had net outflow in 2010."
    )
    sec.verdict = fd.verdict_net_outflow(table=table, spearman=sp)
    sec.limits += [
        "Net outflow is measured in 2010 only: the 2020 county table has no hukou total, so the "
        "2020 balance cannot be computed.",
        "Resident minus hukou mixes migration with registration practice (students, the army, "
        "unregistered births); it is a stock, not a flow over the decade.",
    ]
    return sec


def section_hsr(units: pd.DataFrame, *, level: str = "county", dpi: int = 110) -> Section:
    """Claim 5: inside vs outside HSR corridors within the same distance band, and by first service."""
    sec = _section("hsr", level)
    miss = _missing(units, ["in_corridor", "band", "shrinking", "pop_2010", "pop_2020"])
    if miss:
        sec.verdict = fd.not_testable(fd.RULES["hsr"], miss)
        sec.text.append(f"Not testable with these data: {', '.join(miss)} missing.")
        return sec
    u, note = _analysable(units)
    if note:
        sec.text.append(note)
    u = u.assign(corridor=np.where(_bool(u["in_corridor"]), "inside", "outside"))
    order = (
        list(u.groupby("band")["distance_km"].min().sort_values().index)
        if "distance_km" in u.columns
        else sorted(u["band"].unique())
    )
    t = fd.share_table(u, ["band", "corridor"], bootstrap=0)
    t["_o"] = t["band"].map({v: i for i, v in enumerate(order)})
    t = t.sort_values(["_o", "corridor"]).drop(columns="_o").reset_index(drop=True)
    sec.tables.append(ReportTable("corridor_by_band", "Inside vs outside HSR corridors, by distance band", t))
    sec.figures.append(
        ReportFigure(
            f"{level}_corridor_by_band",
            "Shrinking share inside and outside high-speed "
            "rail corridors within each distance band, 95 % Wilson intervals.",
            band_chart(t, label="band", group="corridor", dpi=dpi),
        )
    )
    strata, labels = [], []
    for b in order:
        d = u[u["band"] == b]
        o, i = d[d["corridor"] == "outside"], d[d["corridor"] == "inside"]
        so, si = _bool(o["shrinking"]), _bool(i["shrinking"])
        strata.append([[int(so.sum()), int((~so).sum())], [int(si.sum()), int((~si).sum())]])
        labels.append(str(b))
    if not _missing(u, ["rail_minutes_saved"]):
        saved = u["rail_minutes_saved"].to_numpy(dtype=float)
        big, small = f"{ACCESS_GAIN_MIN}+ min saved", f"< {ACCESS_GAIN_MIN} min saved"
        u = u.assign(
            access=np.where(~np.isfinite(saved), "unknown", np.where(saved >= ACCESS_GAIN_MIN, big, small))
        )
        acc = fd.share_table(u[u["access"] != "unknown"], ["band", "access"], bootstrap=0)
        acc["_o"] = acc["band"].map({v: i for i, v in enumerate(order)})
        acc = acc.sort_values(["_o", "access"]).drop(columns="_o").reset_index(drop=True)
        sec.tables.append(
            ReportTable(
                "access_change_by_band",
                "By travel time saved between the 2010 and the 2020 rail network, within distance bands",
                acc,
            )
        )
        acc_strata = []
        for b in order:
            d = u[(u["band"] == b) & (u["access"] != "unknown")]
            lo_, hi_ = d[d["access"] == small], d[d["access"] == big]
            sl, sh = _bool(lo_["shrinking"]), _bool(hi_["shrinking"])
            acc_strata.append([[int(sl.sum()), int((~sl).sum())], [int(sh.sum()), int((~sh).sum())]])
        orr, olo, ohi = fd.mantel_haenszel(acc_strata)
        sec.text.append(
            f"Access change: Mantel-Haenszel odds ratio of shrinking, units that gained under "
            f"{ACCESS_GAIN_MIN} "
            f"minutes vs units that gained {ACCESS_GAIN_MIN} minutes or more between the 2010 and "
            f"2020 networks, within "
            f"distance bands: "
            f"{orr:.2f} (95 % CI {olo:.2f}-{ohi:.2f}); above 1 means units with faster new access "
            f"shrank less "
            "often. Descriptive only (not part of the verdict)."
        )
    else:
        sec.text.append("By access change: not testable with these data: rail_minutes_saved missing.")
    if "hsr_period" in u.columns:
        per = fd.share_table(u, ["hsr_period"], bootstrap=0)
        sec.tables.append(ReportTable("by_period", "By period of first high-speed service", per))
    else:
        sec.text.append("By period of first service: not testable with these data: hsr_period missing.")
    sec.verdict = fd.verdict_hsr(strata=strata, labels=labels)
    sec.limits += [
        "Corridors are buffers around APPROXIMATE line geometry (straight segments between key "
        "stations); membership near a corridor edge can be wrong.",
        "Lines opened during 2010-2020 could not have shaped the whole decade's change, and lines are "
        "routed to places that were already larger: the comparison is an association, not an effect.",
    ]
    return sec


def section_intercity(
    lines: pd.DataFrame | None,
    crossings: pd.DataFrame | None,
    *,
    level: str = "county",
    threshold: float = 0.4,
) -> Section:
    """Claim 6: what the open data say about intercity lines' use of design capacity.

    ``crossings``: one row per line and unit it crosses (``line_id``, ``unit_id``,
    ``shrinking``), e.g. from :func:`line_crossings`.
    """
    sec = _section("intercity", level)
    rule = fd.RULES["intercity"]
    sec.text.append(
        "Ridership and design capacity per line are not in the open data this pipeline uses: the "
        "rail catalogue has design speeds and opening dates, and the station files count trains, "
        "not passengers."
    )
    if lines is None or _missing(lines, ["utilisation", "utilisation_basis", "name"]):
        sec.verdict = fd.not_testable(rule, ["rail_lines with utilisation"], what="layer")
        return sec
    basis = lines["utilisation_basis"].fillna("").astype(str)
    inter = lines[lines["name"].astype(str).str.contains("城际")]
    user = basis.loc[inter.index].eq("user table")
    desc = lines.groupby(["class", "utilisation_basis"], dropna=False)["utilisation"].describe().reset_index()
    sec.tables.append(
        ReportTable("utilisation", "Utilisation by line class (proxy unless 'user table')", desc)
    )
    keep = [
        "line_id",
        "name",
        "class",
        "open_year",
        "trains_per_day",
        "utilisation",
        "utilisation_basis",
        "underused",
    ]
    under = lines[_bool(lines["underused"])] if "underused" in lines.columns else lines.iloc[:0]
    under = under[[c for c in keep if c in under.columns]].copy()
    if crossings is not None and len(crossings):
        g = (
            crossings.groupby("line_id")
            .agg(n_units_crossed=("unit_id", "nunique"), n_shrinking=("shrinking", "sum"))
            .reset_index()
        )
        g["shrinking_share"] = g["n_shrinking"] / g["n_units_crossed"]
        under = under.merge(g, on="line_id", how="left")
        allc = crossings.drop_duplicates("unit_id")
        u_under = crossings[crossings["line_id"].isin(under["line_id"])].drop_duplicates("unit_id")
        sec.text.append(
            f"Units crossed by underused lines shrink in {_pct(u_under['shrinking'].mean())} of "
            f"{len(u_under):,} cases, units crossed by any line in {_pct(allc['shrinking'].mean())} of "
            f"{len(allc):,}."
        )
    under = under.sort_values("utilisation").reset_index(drop=True)
    sec.tables.append(
        ReportTable(
            "underused_lines",
            f"Underused lines (utilisation < {threshold:g}) and the units they cross",
            under,
        )
    )
    n_int = len(inter)
    if n_int:
        it = inter[[c for c in keep if c in inter.columns]].copy()
        if crossings is not None and len(crossings):
            it = it.merge(g, on="line_id", how="left")
        it = it.sort_values("utilisation").reset_index(drop=True)
        sec.tables.append(
            ReportTable("intercity_lines", "Intercity (城际) lines and what the proxy says", it)
        )
        iu = inter["utilisation"].to_numpy(dtype=float)
        iu = iu[np.isfinite(iu)]
        if len(iu):
            sec.text.append(
                f"Proxy for the {len(iu)} intercity lines with counts: median {np.median(iu):.2f}, "
                f"{int((iu < threshold).sum())} below {threshold:g}; the proxy is relative to the class's "
                "busiest lines, so 0.4 on it is not 40 % of design ridership."
            )
    sec.text.append(
        f"{len(under)} of {len(lines)} lines are flagged underused; {n_int} lines are intercity (城际) "
        f"by name, {int(user.sum())} of them with a ratio from a user capacity table. The proxy "
        f"compares a line's key-station trains per day with the busiest lines of its class "
        f"({basis.replace('', np.nan).dropna().unique().tolist() or ['no basis']}): it ranks service "
        "levels; it is not a share of design ridership."
    )
    sec.text.append(
        "To get the real ratio, give a CSV with columns line, design_capacity and ridership (or "
        "trains_per_day, in the same unit) to `geo-pipeline infrastructure --utilisation-file FILE` "
        "([infrastructure] utilisation_file), then rerun export and report; matched lines get "
        "utilisation_basis = 'user table'."
    )
    sec.verdict = fd.verdict_intercity(
        utilisation=inter.loc[user[user].index, "utilisation"],
        design_basis=bool(user.any()),
        threshold=threshold,
    )
    sec.limits += [
        "Crossing a unit is judged on the approximate line geometry.",
        "Train counts are per station and day from one timetable snapshot, not per line over time.",
    ]
    return sec


def line_crossings(lines: Any, units: Any) -> pd.DataFrame:
    """Which units each line crosses: ``line_id``, ``unit_id``, ``shrinking`` (spatial join, intersects)."""
    import geopandas as gpd

    if lines is None or units is None or len(lines) == 0:
        return pd.DataFrame(columns=["line_id", "unit_id", "shrinking"])
    check_frame(lines, name="rail lines", columns={"line_id": "any"}, geometry=True).raise_if_any()
    l2 = lines[["line_id", "geometry"]].to_crs(units.crs)
    j = gpd.sjoin(l2, units[["unit_id", "shrinking", "geometry"]], predicate="intersects", how="inner")
    out = pd.DataFrame(j[["line_id", "unit_id", "shrinking"]]).reset_index(drop=True)
    out["shrinking"] = _bool(out["shrinking"])
    return out


# -- the report ----------------------------------------------------------------------------------
def manifest_tables(manifest: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's inputs (stage, input, path, sha256) and library versions from ``manifest.json``."""
    rows = []
    for stage, entry in (manifest.get("stages") or {}).items():
        for name, info in (entry.get("inputs") or {}).items():
            rows.append(
                {
                    "stage": stage,
                    "input": name,
                    "path": info.get("path", ""),
                    "sha256": str(info.get("sha256", ""))[:16],
                    "finished": entry.get("finished", ""),
                }
            )
    inputs = pd.DataFrame(rows, columns=["stage", "input", "path", "sha256", "finished"])
    versions = pd.DataFrame(sorted((manifest.get("versions") or {}).items()), columns=["package", "version"])
    return inputs, versions


#: The atlas' national maps shown in a section (by section key), before its own figures (county level).
SECTION_MAPS: dict[str, tuple[str, ...]] = {
    "distance": ("population_change", "distance_bands"),
    "northeast": ("lisa_clusters",),
    "net_outflow": ("net_outflow",),
    "hsr": ("rail_corridors",),
}
#: Every national map the report shows (the other atlas themes are not drawn for it).
MAP_THEMES: frozenset[str] = frozenset(t for themes in SECTION_MAPS.values() for t in themes)


def build_report(
    levels: Mapping[str, pd.DataFrame],
    *,
    weights: Mapping[str, Any] | None = None,
    core_sets: Mapping[str, pd.DataFrame] | None = None,
    global_moran: Mapping[str, pd.DataFrame] | None = None,
    rail_lines: pd.DataFrame | None = None,
    crossings: pd.DataFrame | None = None,
    manifest: Mapping[str, Any] | None = None,
    maps: Mapping[str, tuple[str, bytes]] | None = None,
    bootstrap: int = 999,
    seed: int = 20201101,
    dpi: int = 110,
    underused_threshold: float = 0.4,
    extra_versions: Mapping[str, str] | None = None,
) -> Report:
    """Compute every section at every level and assemble the :class:`Report`.

    Parameters
    ----------
    levels : mapping of str to DataFrame
        Units per level (``"county"``, and ``"prefecture"`` when that level was
        run), with the exported indicator columns.
    weights : mapping of str to UnitWeights, optional
        Spatial weights per level (:class:`geo_pipeline.weights.UnitWeights`),
        in the row order of the level's comparable units (see
        :func:`analysable_units`); subset and row-standardised per model.
    core_sets : mapping of str to DataFrame, optional
        The distance stage's core-set sensitivity table per level.
    global_moran : mapping of str to DataFrame, optional
        The autocorrelation stage's global table per level.
    rail_lines, crossings : DataFrame, optional
        The rail lines with utilisation, and :func:`line_crossings`.
    manifest : mapping, optional
        ``data_processed/manifest.json``.
    maps : mapping of str to (caption, PNG bytes), optional
        National maps (the atlas' pages) by theme key.
    bootstrap, seed, dpi, underused_threshold
        Resamples, seed, chart resolution and the underused threshold of the
        infrastructure stage.
    """
    if "county" not in levels and not levels:
        raise InputError("report: no units given; run the pipeline up to export first")
    weights = weights or {}
    core_sets = core_sets or {}
    maps = dict(maps or {})
    sections: list[Section] = []
    for level, units in levels.items():
        check_frame(
            units,
            name=f"{level} units",
            columns={"unit_id": "any", "pop_2010": "numeric", "pop_2020": "numeric"},
        ).raise_if_any()
        sections.append(
            section_distance(
                units,
                level=level,
                w=weights.get(level),
                core_sets=core_sets.get(level),
                bootstrap=bootstrap,
                seed=seed,
                dpi=dpi,
            )
        )
        sections.append(section_northeast(units, level=level, dpi=dpi, bootstrap=bootstrap, seed=seed))
        sections.append(section_ageing(units, level=level, global_moran=(global_moran or {}).get(level)))
        sections.append(section_net_outflow(units, level=level))
        sections.append(section_hsr(units, level=level, dpi=dpi))
    base = "county" if "county" in levels else next(iter(levels))  # claim 6 is about lines: reported once
    sections.append(section_intercity(rail_lines, crossings, level=base, threshold=underused_threshold))
    for sec in sections:  # the atlas' national maps, where they illustrate a section (county level)
        if sec.level != "county":
            continue
        for theme in SECTION_MAPS.get(sec.key, ()):
            if theme in maps:
                cap, png = maps[theme]
                sec.figures.insert(0, ReportFigure(f"map_{theme}", cap + " (the atlas' national page)", png))
    summary = pd.DataFrame(
        [
            {
                "level": s.level,
                "claim": s.key,
                "claim_zh": s.claim_zh,
                "claim_en": s.claim_en,
                "verdict": s.verdict.label,
                "tests": "; ".join(
                    f"{k}={'n/a' if v is None else bool(v)}" for k, v in s.verdict.tests.items()
                ),
            }
            for s in sections
        ]
    )
    methods = [
        "Every number in this report is computed by geo_pipeline.findings and geo_pipeline.report from the "
        "run's outputs in data_processed/ (shrinkage.gpkg and the stage tables); published figures are only "
        "quoted for comparison, with their source.",
        f"Shares: 95 % Wilson score intervals (scipy.stats.binomtest). Population-weighted change: "
        f"percentile "
        f"intervals over {bootstrap} bootstrap resamples of the units (seed {seed}).",
        f"Threshold: continuous piecewise-linear least squares of 100 ln(pop2020/pop2010) on "
        f"distance with one "
        f"break, chosen on a 5 km grid between the 5th and 95th percentiles of distance; percentile "
        f"intervals "
        f"over {bootstrap} bootstrap resamples, each re-estimating the break.",
        "Spatial regression: PySAL spreg OLS with Lagrange-multiplier diagnostics on row-standardised queen "
        "contiguity weights (islands linked as in the autocorrelation stage); then spreg.GM_Lag or "
        "spreg.GM_Error_Het as the diagnostics indicate (Anselin's decision rule).",
        "Verdict rules (applied by the code in geo_pipeline.findings):",
        *[f"{k}: {v.format(km=fd.CLAIM_KM, share=fd.SEED_AGEING_SHARE)}" for k, v in fd.RULES.items()],
    ]
    inputs, versions = manifest_tables(manifest or {})
    if extra_versions:
        versions = pd.concat(
            [versions, pd.DataFrame(sorted(extra_versions.items()), columns=["package", "version"])]
        ).drop_duplicates("package")
    intro = _intro(levels, manifest or {})
    return Report(
        intro=intro,
        title="Shrinking cities in China, 2010-2020: testing the seeds' claims",
        sections=sections,
        summary=summary,
        methods=methods,
        inputs=inputs,
        versions=versions.reset_index(drop=True),
    )


def _intro(levels: Mapping[str, pd.DataFrame], manifest: Mapping[str, Any]) -> list[str]:
    """What the data are and what "shrinking" means in this run (from the units and the manifest)."""
    pop = (manifest.get("stages") or {}).get("population") or {}
    threshold = (pop.get("parameters") or {}).get("shrink_threshold_pct")
    out = [
        "Data: resident population (常住人口) of the 6th (2010) and 7th (2020) national censuses, county and "
        "prefecture tables, joined to today's boundaries; the 2010 registered (hukou, 户籍) "
        "population gives the "
        "net-outflow ratio. "
        + (
            f"A unit is shrinking when change_pct = 100 (pop_2020 - pop_2010) / pop_2010 is below "
            f"{float(threshold):g} (the population stage's shrink_threshold_pct; 0: any loss)."
            if threshold is not None
            else "A unit is shrinking as flagged by the population stage (column shrinking)."
        )
    ]
    for level, u in levels.items():
        a, note = _analysable(u)
        shr = int(_bool(a["shrinking"]).sum()) if "shrinking" in a.columns else 0
        out.append(
            f"{level.capitalize()} level: {len(u):,} units, {len(a):,} used in the statistics, "
            f"{shr:,} shrinking; "
            f"residents {a['pop_2010'].sum() / 1e6:,.2f} million (2010) -> "
            f"{a['pop_2020'].sum() / 1e6:,.2f} million "
            "(2020)." + (f" {note}" if note else "")
        )
    out.append(
        "What the census can show: where resident population grew or fell between two dates, its "
        "age structure and "
        "(2010 only) the gap to registered population. What it cannot show: who moved where and "
        "when, births and "
        "deaths separately, or causes; every association below is across units, not a causal effect."
    )
    return out


def analysable_units(units: pd.DataFrame) -> pd.DataFrame:
    """The units the statistics use (``comparable`` not False), in order: weights must follow these rows."""
    return _analysable(units)[0]


# -- rendering -----------------------------------------------------------------------------------
_SHARE = re.compile(r"(share|_ci_low|_ci_high)$")


def _fmt(col: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)) or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}" if col not in ("open_year", "bootstrap", "seed") else str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if _SHARE.search(col) and not col.startswith("change_") and abs(f) <= 1.0001:
            return f"{100 * f:.1f} %"
        if col in ("p", "p_norm", "p_sim") or col.endswith("_p"):
            return f"{f:.3g}"
        if col.endswith("_pct") or col.startswith("change_ci") or col.endswith("_pct_beyond"):
            return f"{f:,.2f}"
        if col.startswith("pop_") and not col.endswith("pct"):
            return f"{f:,.0f}"
        if f.is_integer() and abs(f) < 1e6 and not col.endswith(("pct", "km", "coef")):
            return f"{int(f):,}"
        return f"{f:,.0f}" if abs(f) >= 1e5 else f"{f:,.1f}" if abs(f) >= 100 else f"{f:.4g}"
    return str(v)


def _rows(frame: pd.DataFrame) -> list[list[str]]:
    return [
        [_fmt(c, v) for c, v in zip(frame.columns, row, strict=True)] for row in frame.itertuples(index=False)
    ]


def _md_table(frame: pd.DataFrame) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cell(str(c)) for c in frame.columns) + " |"
    sep = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in r) + " |" for r in _rows(frame)]
    return "\n".join([head, sep, *body])


def render_markdown(report: Report, *, figure_path: Callable[[ReportFigure], str] | None = None) -> str:
    """Markdown version of the report; figures are linked as ``report_<key>.png`` (or ``figure_path``)."""
    path = figure_path or (lambda f: f"report_{f.key}.png")
    out = [
        f"# {report.title}",
        "",
        *(f"{t}\n" for t in report.intro),
        "## Verdicts",
        "",
        _md_table(report.summary[["level", "claim", "claim_zh", "verdict"]]),
        "",
    ]
    for sec in report.sections:
        out += [
            f"## {sec.title} ({sec.level} level)",
            "",
            f"> {sec.claim_zh}",
            ">",
            f"> *{sec.claim_en}*",
            "",
        ]
        out += [*(f"{t}\n" for t in sec.text)]
        for fig in sec.figures:
            out += [f"![{fig.caption}]({path(fig)})", "", f"*{fig.caption}*", ""]
        for t in sec.tables:
            out += [f"**{t.title}** (`report_{sec.level}_{t.key}.csv`)", "", _md_table(t.frame), ""]
            if t.note:
                out += [t.note, ""]
        if sec.comparisons:
            out += ["**Published figures:**", "", *(f"- {c}" for c in sec.comparisons), ""]
        if sec.limits:
            out += ["**What these data can and cannot show:**", "", *(f"- {c}" for c in sec.limits), ""]
        out += [f"**Verdict: {sec.verdict.label}.**", "", *(f"- {r}" for r in sec.verdict.reasons), ""]
    out += [
        "## Method notes",
        "",
        *(f"- {m}" for m in report.methods),
        "",
        "## Inputs and versions",
        "",
        _md_table(report.inputs),
        "",
        _md_table(report.versions),
        "",
    ]
    return "\n".join(out)


_CSS = """
body{font-family:"Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC","Microsoft YaHei",
"Helvetica Neue",Arial,sans-serif;max-width:62rem;margin:1.5rem auto;padding:0 1rem;color:#1a1a1a;
line-height:1.45;font-size:15px}
h1{font-size:1.6rem;border-bottom:2px solid #b2182b;padding-bottom:.3rem}
h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ccc}
blockquote{margin:.6rem 0;padding:.4rem .9rem;border-left:4px solid #b2182b;background:#faf5f5}
blockquote .zh{font-size:1.1rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:12px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:2px 6px;text-align:right;vertical-align:top}
th{background:#f1f1f1}td:first-child,th:first-child{text-align:left}
caption{caption-side:top;text-align:left;font-weight:bold;padding:.2rem 0}
figure{margin:.8rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:12px;color:#444}
.verdict{padding:.5rem .8rem;margin:.8rem 0;border-radius:4px;background:#f4f4f4;border:1px solid #bbb}
.v-supported{background:#e7f3e7;border-color:#4d9221}.v-partly{background:#fdf3e1;border-color:#e08214}
.v-not{background:#f9e4e4;border-color:#b2182b}.v-untestable{background:#eeeeee;border-color:#888}
.small{font-size:12px;color:#555}.wrap{overflow-x:auto}
.toc ul{columns:2;font-size:13px;padding-left:1.2rem}.toc span{padding:0 .3rem;border-radius:3px}
@media print{body{max-width:none;margin:0;font-size:10.5pt}h2{break-before:page}
h1+h2,.summary h2{break-before:auto}figure,.verdict,blockquote,tr{break-inside:avoid}
thead{display:table-header-group}figure img{max-height:24cm}
.wrap{overflow:visible}table{font-size:7.5pt}a{color:inherit;text-decoration:none}@page{size:A4;margin:14mm}}
"""


def _verdict_class(label: str) -> str:
    return {"supported": "v-supported", "partly supported": "v-partly", "not supported": "v-not"}.get(
        label, "v-untestable"
    )


def _html_table(frame: pd.DataFrame, caption: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in _rows(frame))
    return (
        f'<div class="wrap"><table><caption>{e(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _img(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def render_html(report: Report) -> str:
    """One self-contained HTML page: inline CSS, figures as ``data:`` URIs, no external reference."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(report.title)}</h1>",
        *(f"<p>{e(t)}</p>" for t in report.intro),
        '<section class="summary"><h2>Verdicts</h2>',
        _html_table(
            report.summary[["level", "claim", "claim_zh", "verdict"]],
            "One verdict per claim and level, from the rules in the method notes",
        ),
        '<nav class="toc"><ul>'
        + "".join(
            f'<li><a href="#{e(s.level)}-{e(s.key)}">{e(s.title)} ({e(s.level)})</a>: '
            f'<span class="{_verdict_class(s.verdict.label)}">{e(s.verdict.label)}</span></li>'
            for s in report.sections
        )
        + '<li><a href="#methods">Method notes</a></li><li><a href="#inputs">Inputs and versions</a></li>'
        "</ul></nav>",
        "</section>",
    ]
    for sec in report.sections:
        parts.append(
            f'<section id="{e(sec.level)}-{e(sec.key)}"><h2>{e(sec.title)} '
            f'<span class="small">({e(sec.level)} level)</span></h2>'
        )
        parts.append(
            f'<blockquote><div class="zh" lang="zh-CN">{e(sec.claim_zh)}</div>'
            f"<div><em>{e(sec.claim_en)}</em></div></blockquote>"
        )
        parts += [f"<p>{e(t)}</p>" for t in sec.text]
        parts += [
            f"<figure>{_img(f.png, f.caption)}<figcaption>{e(f.caption)}</figcaption></figure>"
            for f in sec.figures
        ]
        parts += [
            _html_table(t.frame, f"{t.title} (report_{sec.level}_{t.key}.csv)")
            + (f'<p class="small">{e(t.note)}</p>' if t.note else "")
            for t in sec.tables
        ]
        if sec.comparisons:
            parts.append(
                "<h3>Published figures</h3><ul>"
                + "".join(f"<li>{e(c)}</li>" for c in sec.comparisons)
                + "</ul>"
            )
        if sec.limits:
            parts.append(
                "<h3>What these data can and cannot show</h3><ul>"
                + "".join(f"<li>{e(c)}</li>" for c in sec.limits)
                + "</ul>"
            )
        parts.append(
            f'<div class="verdict {_verdict_class(sec.verdict.label)}"><strong>Verdict: '
            f"{e(sec.verdict.label)}.</strong><ul>"
            + "".join(f"<li>{e(r)}</li>" for r in sec.verdict.reasons)
            + "</ul></div></section>"
        )
    parts.append(
        '<section id="methods"><h2>Method notes</h2><ul>'
        + "".join(f"<li>{e(m)}</li>" for m in report.methods)
        + "</ul></section>"
    )
    parts.append(
        '<section id="inputs"><h2>Inputs and versions</h2>'
        + _html_table(report.inputs, "Inputs of each stage (data_processed/manifest.json; SHA-256 shortened)")
        + _html_table(report.versions, "Versions")
        + "</section></body></html>"
    )
    return "\n".join(parts)


def external_references(text: str) -> list[str]:
    """URLs a page would fetch: ``src=``/``href=`` values and CSS ``url()`` other than ``data:`` or ``#``."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')\s]+)""", text, flags=re.I)
    refs = [a or b for a, b in found]
    return [r for r in refs if not r.startswith(("data:", "#"))]
