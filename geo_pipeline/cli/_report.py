"""CLI wrapper of the report stage: read the exported outputs, compute the findings, write HTML/MD/CSV."""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .._errors import DataQualityWarning
from .._io import atomic_path, check_writable, list_layers, read_layer, read_table
from .._outputs import pending_source

if TYPE_CHECKING:
    from . import StageContext

log = logging.getLogger("geo_pipeline.cli.report")

INPUT = "shrinkage.gpkg"
HTML = "report.html"
MARKDOWN = "report.md"

OPTIONS = [
    click.Option(
        ["--bootstrap"],
        type=click.IntRange(min=0),
        default=None,
        help="Bootstrap resamples for the intervals [config: bootstrap].",
    ),
    click.Option(["--maps/--no-maps"], default=None, help="Embed the atlas' national maps [config: maps]."),
]


def _weights(ctx: StageContext, units: Any) -> Any:
    """Spatial weights of these units (the autocorrelation stage's settings, builder and cache)."""
    from ._autocorrelation import _weights as stage_weights

    weights, _, _ = stage_weights(ctx, units.reset_index(drop=True), ctx.settings.autocorrelation)
    return weights


def _atlas_maps(ctx: StageContext, units: Any, src: Path, present: set[str], dpi: int) -> dict[str, Any]:
    """The atlas' national pages that the report shows (:data:`~geo_pipeline.report.MAP_THEMES`) as PNG bytes.

    Drawn with the atlas code; the pages are numbered as in the whole national plan, and only
    the pages the report embeds are drawn (5 of the 8 county themes; the same PNGs). Measured on
    the real data, old and new alternated: report stage CPU 14.9 / 16.3 s -> 14.0 / 14.5 s.
    """
    import matplotlib

    from ..atlas import THEMES, atlas_pages, atlas_text, cjk_font, plan_pages, prepare_atlas, rc_params
    from ..report import MAP_THEMES

    def optional(name: str) -> Any:
        return read_layer(src, name) if name in present else None

    s = ctx.settings.atlas
    data = prepare_atlas(
        units,
        provinces=optional("provinces"),
        cores=optional("cores"),
        rings=optional("distance_rings"),
        rail_lines=optional("rail_lines"),
        corridors=optional("corridors"),
        simplify_m=max(s.simplify_m, 1000.0),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)  # the atlas stage reports missing themes
        specs = plan_pages(data, per_province=False)
    family = cjk_font(atlas_text(data), font=s.font)
    out: dict[str, Any] = {}
    with matplotlib.rc_context(rc_params(family)):
        shown = {number for number, spec in enumerate(specs, 1) if spec.key in MAP_THEMES}
        for page in atlas_pages(data, paper="A4", specs=specs, generalise_mm=s.generalise_mm, numbers=shown):
            buf = io.BytesIO()
            page.figure.savefig(buf, format="png", dpi=dpi)
            zh, en = THEMES[page.key]
            out[page.key] = (f"{zh} {en}", buf.getvalue())
    return out


def run(ctx: StageContext, bootstrap: int | None = None, maps: bool | None = None) -> None:
    """Write maps/report.html and maps/report.md: the seeds' claims tested on this run's outputs.

    One section per claim (distance to central cities, the Northeast,
    ageing, net outflow, high-speed rail, intercity ridership), at county
    level and, when exported, prefecture level: tables with 95 % intervals,
    a segmented regression of change on distance with a bootstrap interval
    of the break, a spatial regression (PySAL spreg), maps drawn by the
    atlas code, and a verdict computed by written rules. The HTML is one
    self-contained file; every table also goes to
    data_processed/report_<level>_<table>.csv. Reads
    data_processed/shrinkage.gpkg (run `geo-pipeline export` first).
    """
    from .. import report as rp

    cfg = ctx.settings.report
    bootstrap = cfg.bootstrap if bootstrap is None else bootstrap
    maps = cfg.maps if maps is None else maps
    html_path, md_path = ctx.maps / HTML, ctx.maps / MARKDOWN
    for p in (html_path, md_path):
        check_writable(p, overwrite=ctx.overwrite)
    src = ctx.output(INPUT)
    if not src.is_file():
        read_layer(src, "units", hint="run `geo-pipeline export` first")  # raises MissingInputError
    present = set(list_layers(src))
    inputs: dict[str, Path] = {"shrinkage": src}
    levels = {}
    for level in ctx.levels:  # [pipeline] levels; each exported as units / <level>_units
        layer = ctx.level_layer("units", level)
        if layer in present:
            levels[level] = read_layer(src, layer)
        else:
            log.info(
                "report: level %s not in %s (no layer %s); reported at the other levels", level, src, layer
            )
    if not levels:  # e.g. levels configured that were not exported: the base units are required
        levels["county"] = read_layer(src, "units", hint="run `geo-pipeline export` first")
    # maps and rail crossings use the county units when exported, else the first level's
    units = levels.get("county", next(iter(levels.values())))
    t0 = time.perf_counter()
    weights = {}
    for level, frame in levels.items():
        analysable = rp.analysable_units(frame)
        if analysable.geometry.notna().all():
            weights[level] = _weights(ctx, analysable)
    core_sets, global_moran = {}, {}
    for level in levels:
        # the distance stage's core-set sensitivity table, as exported (or from distance.gpkg)
        name = ctx.level_layer("core_set_sensitivity", level)
        dist = ctx.level_output("distance.gpkg", level)
        if name in present:
            core_sets[level] = read_table(src, name)
        elif dist.is_file() and "core_set_sensitivity" in list_layers(dist):
            core_sets[level] = read_table(dist, "core_set_sensitivity")
            inputs[f"distance_{level}"] = dist
        name = ctx.level_layer("global_moran", level)
        if name in present:
            global_moran[level] = read_table(src, name)
    rail = read_layer(src, "rail_lines") if "rail_lines" in present else None
    crossings = rp.line_crossings(rail, units) if rail is not None else None
    manifest_path = ctx.output("manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    map_pngs = _atlas_maps(ctx, units, src, present, cfg.dpi) if maps else {}
    t_maps = time.perf_counter()
    versions = {}
    for dist in ("spreg", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    report = rp.build_report(
        levels,
        weights=weights,
        core_sets=core_sets,
        global_moran=global_moran,
        rail_lines=None if rail is None else rail.drop(columns="geometry"),
        crossings=crossings,
        manifest=manifest,
        maps=map_pngs,
        bootstrap=bootstrap,
        seed=cfg.seed,
        dpi=cfg.dpi,
        underused_threshold=ctx.settings.infrastructure.underused_threshold,
        extra_versions=versions,
    )
    log.info(
        "report: computed %d sections in %.1f s (maps %.1f s)",
        len(report.sections),
        time.perf_counter() - t0,
        t_maps - t0,
    )
    figures = {f"report_{f.key}.png": f for s in report.sections for f in s.figures}
    outputs: dict[str, Path] = {"html": html_path, "markdown": md_path}
    ctx.maps.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        with atomic_path(ctx.maps / name, overwrite=True) as tmp:
            tmp.write_bytes(fig.png)
    for name, frame in report.tables().items():
        outputs[name] = ctx.write_csv(f"{name}.csv", frame)
    with atomic_path(md_path, overwrite=ctx.overwrite) as tmp:
        tmp.write_text(rp.render_markdown(report), encoding="utf-8")
    with atomic_path(html_path, overwrite=ctx.overwrite) as tmp:
        tmp.write_text(rp.render_html(report), encoding="utf-8")
    verdicts = {f"{s.level}:{s.key}": s.verdict.label for s in report.sections}
    ctx.manifest(
        inputs=inputs,
        outputs=outputs,
        summary={
            "verdicts": verdicts,
            "figures": len(figures),
            "html_mb": round(pending_source(html_path).stat().st_size / 1e6, 2),
        },
    )
    log.info(
        "report: wrote %s (%.1f MB), %s, %d figures and %d tables; verdicts: %s",
        html_path,
        pending_source(html_path).stat().st_size / 1e6,
        md_path,
        len(figures),
        len(report.tables()),
        ", ".join(f"{k} {v}" for k, v in verdicts.items()),
    )
