"""CLI wrapper of the atlas stage."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click
import matplotlib
from matplotlib.backends.backend_pdf import PdfPages

from .. import __version__
from .._io import atomic_path, check_writable, list_layers, read_layer
from ..atlas import THEMES, atlas_pages, atlas_text, cjk_font, plan_pages, prepare_atlas, rc_params
from . import StageContext

log = logging.getLogger("geo_pipeline.cli.atlas")

INPUT = "shrinkage.gpkg"
PDF = "atlas.pdf"

OPTIONS = [
    click.Option(["--paper"], type=click.Choice(["A4", "A3"]), default=None,
                 help="Landscape paper size [config: paper]."),
    click.Option(["--dpi"], type=click.IntRange(20, 1200), default=None,
                 help="Resolution of the PNG exports [config: dpi]."),
    click.Option(["--per-province/--no-per-province"], default=None,
                 help="Add a page per province [config: per_province]."),
]


def run(ctx: StageContext, paper: str | None = None, dpi: int | None = None,
        per_province: bool | None = None) -> None:
    """Draw maps/atlas.pdf (A4/A3 landscape) and PNGs of the national pages.

    National pages: population change, net outflow, distance bands, LISA
    clusters, rail corridors (each when its data are in shrinkage.gpkg);
    then one page per province. Every page has a title, legend, scale bar,
    north arrow, inset, data sources and page number. Reads
    data_processed/shrinkage.gpkg (run `geo-pipeline export` first).
    """
    s = ctx.settings.atlas
    paper = paper or s.paper
    dpi = dpi or s.dpi
    per_province = s.per_province if per_province is None else per_province
    pdf_path = ctx.maps / PDF
    check_writable(pdf_path, overwrite=ctx.overwrite)  # fail before the work, not after
    src = ctx.output(INPUT)
    units = read_layer(src, "units", hint="run `geo-pipeline export` first")
    present = set(list_layers(src))

    def optional(name: str):  # noqa: ANN202 - GeoDataFrame or None
        return read_layer(src, name) if name in present else None

    t0 = time.perf_counter()
    data = prepare_atlas(
        units, provinces=optional("provinces"), cores=optional("cores"), rings=optional("distance_rings"),
        rail_lines=optional("rail_lines"), corridors=optional("corridors"), simplify_m=s.simplify_m,
    )
    log.info("atlas: projected to Albers (China) and simplified at %g m in %.1f s: %s vertices",
             s.simplify_m, time.perf_counter() - t0, f"{sum(data.vertices.values()):,}")
    specs = plan_pages(data, per_province=per_province)
    pngs = {spec.key: ctx.maps / f"{spec.key}.png" for spec in specs if spec.national}
    for path in pngs.values():
        check_writable(path, overwrite=ctx.overwrite)
    family = cjk_font(atlas_text(data), font=s.font)

    written: list[Path] = []
    metadata = {"Title": "Shrinking cities in China, 2010–2020: atlas", "Author": "geo_pipeline",
                "Subject": "Population change, net outflow, distance bands, LISA clusters, rail corridors",
                "Creator": f"geo_pipeline {__version__} (geo-pipeline atlas)"}
    with matplotlib.rc_context(rc_params(family)):
        with atomic_path(pdf_path, overwrite=ctx.overwrite) as tmp:
            with PdfPages(tmp, metadata=metadata) as pdf:
                for number, page in enumerate(
                    atlas_pages(data, paper=paper, generalise_mm=s.generalise_mm, specs=specs), 1
                ):
                    pdf.savefig(page.figure)
                    if page.national:
                        with atomic_path(pngs[page.key], overwrite=ctx.overwrite) as png_tmp:
                            page.figure.savefig(png_tmp, dpi=dpi, format="png")
                        written.append(pngs[page.key])
                    log.info("atlas: page %d/%d %s", number, len(specs), page.title)
    size_mb = pdf_path.stat().st_size / 1e6
    ctx.manifest(
        inputs={"shrinkage": src},
        outputs={"atlas": pdf_path, **{p.stem: p for p in written}},
        parameters={"paper": paper, "dpi": dpi, "per_province": per_province, "simplify_m": s.simplify_m,
                    "generalise_mm": s.generalise_mm, "font": s.font or "Noto Sans CJK SC"},
        summary={"pages": len(specs), "national_pages": len(pngs), "pdf_mb": round(size_mb, 2),
                 "themes_missing": [k for k in THEMES if k not in pngs]},
    )
    log.info("atlas: wrote %s (%d pages, %s, %.1f MB) and %d PNGs at %d dpi to %s",
             pdf_path, len(specs), paper, size_mb, len(written), dpi, ctx.maps)
