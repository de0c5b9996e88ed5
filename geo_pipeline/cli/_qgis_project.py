"""CLI wrapper of the qgis_project stage."""

from __future__ import annotations

import logging
import os

import click

from .._io import _existing, atomic_path, check_writable, read_layer, read_table
from ..qgis_project import QGIS_PYTHON, build_project, plan_project, qgis_problem, read_layer_infos
from . import StageContext

log = logging.getLogger("geo_pipeline.cli.qgis_project")

INPUT = "shrinkage.gpkg"
OUTPUT = "shrinkage.qgz"

OPTIONS = [
    click.Option(["--paper"], type=click.Choice(["A4", "A3"]), default=None,
                 help="Landscape paper size of the layouts [config: paper, else [atlas] paper]."),
]


def run(ctx: StageContext, paper: str | None = None) -> None:
    """Write maps/shrinkage.qgz: a QGIS project with the styled layers and print layouts.

    The layers of data_processed/shrinkage.gpkg (paths relative to the project)
    in groups, with their styles; a map theme and a national print layout per
    theme; an atlas layout with a page per province. Built with PyQGIS by the
    system Python (Debian's python3-qgis); without it the stage is skipped with
    a warning.
    """
    s = ctx.settings.qgis_project
    python = s.python or QGIS_PYTHON
    paper = paper or s.paper or ctx.settings.atlas.paper
    out = ctx.maps / OUTPUT
    src = ctx.output(INPUT)
    problem = qgis_problem(python)
    if problem:
        log.warning("qgis_project: skipped, %s: QGIS is missing. Install Debian's python3-qgis "
                    "(`sudo apt-get install python3-qgis`) to get %s", problem, out)
        return
    layers = read_layer_infos(_existing(src, "run `geo-pipeline export` first"))
    check_writable(out, overwrite=ctx.overwrite)
    names = {layer.name for layer in layers}
    provinces = read_layer(src, "provinces") if "provinces" in names else None
    codes = read_table(src, "units")["province_code"].dropna().astype(str).unique()
    if provinces is None:  # extents from the units themselves
        provinces = read_layer(src, "units")
    from ..atlas import SOURCE_LINE, THEMES, packaged_font

    font = packaged_font()  # the pip-installed Noto Sans CJK, registered with Qt while building

    with atomic_path(out, overwrite=ctx.overwrite) as tmp:
        plan = plan_project(layers, gpkg=src, output=tmp, provinces=provinces, province_codes=codes,
                            paper=paper, titles=THEMES, source_text=SOURCE_LINE,
                            font_file=font[0] if font else "")
        report = build_project(plan, python=python)
    bad = [n for n, info in report["layers"].items() if not info["valid"]]
    atlas = {n: info["atlas_features"] for n, info in report["layouts"].items() if "atlas_features" in info}
    ctx.manifest(
        inputs={"shrinkage": src}, outputs={"qgis_project": out},
        parameters={"paper": paper, "python": python},
        summary={"qgis_version": report["qgis_version"], "layers": len(report["layers"]),
                 "groups": [g["group"] for g in report["tree"]], "themes": sorted(report["themes"]),
                 "layouts": sorted(report["layouts"]), "atlas_pages": atlas, "invalid_layers": bad},
    )
    log.info("qgis_project: wrote %s (QGIS %s): %d layers in %d groups, %d map themes, %d layouts (%s), "
             "data paths relative to %s", out, report["qgis_version"], len(report["layers"]),
             len(report["tree"]), len(report["themes"]), len(report["layouts"]),
             ", ".join(f"{n}: {k} pages" for n, k in atlas.items()) or "no atlas",
             os.path.relpath(src, out.parent))
