"""CLI wrapper of the atlas stage."""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from .. import __version__
from .._heap import frozen_heap
from .._io import atomic_path, check_writable, list_layers, read_layer
from .._levels import BASE_LEVEL, level_layer, level_title
from .._outputs import pending_source
from ..atlas import (
    THEMES,
    AtlasData,
    PageSpec,
    _font_text,
    atlas_pages,
    atlas_text,
    cjk_font,
    pdf_path_precision,
    plan_pages,
    prepare_atlas,
    rc_params,
)
from . import StageContext

log = logging.getLogger("geo_pipeline.cli.atlas")

INPUT = "shrinkage.gpkg"
PDF = "atlas.pdf"

#: Processes drawing the pages: this one and, with 2, a forked second one (the pipeline's
#: target machine has 2 cores). Measured on the real atlas (36 pages) with the second core
#: free: drawing the pages 10.5 s -> 5.5 s; with 1 the pages are drawn here, one by one.
_WORKERS = min(2, os.cpu_count() or 1)
#: Relative drawing time of a national page (with its PNG) and a province page.
_COST = {True: 4.0, False: 1.0}

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
    clusters, rail corridors (each when its data are in shrinkage.gpkg),
    the same at the prefecture level (layer prefecture_units, when the
    prefecture level is in [pipeline] levels); then one page per province.
    Every page has a title, legend, scale bar, north arrow, inset, data
    sources and page number. Reads
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
    provinces = optional("provinces")
    data = prepare_atlas(
        units, provinces=provinces, cores=optional("cores"), rings=optional("distance_rings"),
        rail_lines=optional("rail_lines"), corridors=optional("corridors"), simplify_m=s.simplify_m,
    )
    log.info("atlas: projected to Albers (China) and simplified at %g m in %.1f s: %s vertices",
             s.simplify_m, time.perf_counter() - t0, f"{sum(data.vertices.values()):,}")
    specs = plan_pages(data, per_province=per_province)
    datas = {BASE_LEVEL: data}
    level_specs: list[PageSpec] = []
    for level in ctx.levels:  # national pages of the further levels, after the county ones
        layer = level_layer("units", level)
        if level == BASE_LEVEL:
            continue
        if layer not in present:
            log.warning("atlas: %s has no layer %s; no %s pages (run `geo-pipeline export`)", src, layer,
                        level_title(level))
            continue
        shared = None if provinces is None else (data.provinces, data.provinces_overview)  # not per level
        ldata = prepare_atlas(read_layer(src, layer), provinces=provinces, simplify_m=s.simplify_m,
                              prepared_provinces=shared)
        datas[level] = replace(ldata, cores=data.cores, rings=data.rings, rail_lines=data.rail_lines,
                               corridors=data.corridors)
        level_specs += plan_pages(datas[level], per_province=False, level=level)
    specs = [sp for sp in specs if sp.national] + level_specs + [sp for sp in specs if not sp.national]
    pngs = {spec.key: ctx.maps / f"{spec.key}.png" for spec in specs if spec.national}
    for path in pngs.values():
        check_writable(path, overwrite=ctx.overwrite)
    family = cjk_font(atlas_text(data), font=s.font)

    metadata = {"Title": "Shrinking cities in China, 2010–2020: atlas", "Author": "geo_pipeline",
                "Subject": "Population change, net outflow, distance bands, LISA clusters, rail corridors",
                "Creator": f"geo_pipeline {__version__} (geo-pipeline atlas)"}
    job = _Job(datas=datas, specs=specs, paper=paper, dpi=dpi, generalise_mm=s.generalise_mm, pngs=pngs,
               overwrite=ctx.overwrite, family=family)
    groups = _split(specs, _WORKERS if _can_fork() else 1)
    with matplotlib.rc_context(rc_params(family)), pdf_path_precision():
        with atomic_path(pdf_path, overwrite=ctx.overwrite) as tmp:
            if len(groups) == 1:
                with PdfPages(tmp, metadata=metadata) as pdf:
                    written = job.draw(pdf, groups[0])
            else:
                written = _draw_in_processes(job, groups, tmp, metadata)
    size_mb = pending_source(pdf_path).stat().st_size / 1e6  # moved into place when the stage ends
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


class _Job:
    """Everything needed to draw a set of pages (in this process or a forked one)."""

    def __init__(self, *, datas: dict[str, AtlasData], specs: list[PageSpec], paper: str, dpi: int,
                 generalise_mm: float, pngs: dict[str, Path], overwrite: bool, family: str) -> None:
        self.datas, self.specs, self.paper, self.dpi = datas, specs, paper, dpi
        self.data = datas[BASE_LEVEL]
        self.generalise_mm, self.pngs, self.overwrite, self.family = generalise_mm, pngs, overwrite, family

    def _pages(self, numbers: Sequence[int]) -> Iterator[Any]:
        """The pages ``numbers`` in order, each drawn from the data of its unit level."""
        runs: list[tuple[str, list[int]]] = []
        for n in numbers:
            level = self.specs[n - 1].level
            if runs and runs[-1][0] == level:
                runs[-1][1].append(n)
            else:
                runs.append((level, [n]))
        for level, run in runs:
            yield from atlas_pages(self.datas[level], paper=self.paper,  # type: ignore[arg-type]
                                   generalise_mm=self.generalise_mm, specs=self.specs, numbers=set(run))

    def draw(self, pdf: PdfPages, numbers: Sequence[int]) -> list[Path]:
        """Draw pages ``numbers`` (1-based) into ``pdf`` and their PNGs; return the PNGs written."""
        written = []
        pages = self._pages(numbers)
        for number, page in zip(numbers, pages, strict=True):
            pdf.savefig(page.figure)
            if page.national:
                with atomic_path(self.pngs[page.key], overwrite=self.overwrite) as png_tmp:
                    page.figure.savefig(png_tmp, dpi=self.dpi, format="png")
                written.append(self.pngs[page.key])
            log.info("atlas: page %d/%d %s", number, len(self.specs), page.title)
        return written

    def warm_up(self, pdf: PdfPages) -> None:
        """Draw a throw-away first page with every character the pages set as text.

        The PDF backend embeds the glyphs a file used, numbering alternate
        glyphs (e.g. proportional digits in Latin text, ligatures) in the order
        they first appear. Both processes first draw this same page, so they
        number the glyphs alike and embed the same font subsets, which
        :func:`_merge` then keeps once. The page itself is not copied.
        """
        chars = "".join(sorted(set(_font_text(self.data)) | {chr(c) for c in range(32, 127)}))
        lines = [chars[i:i + 80] for i in range(0, len(chars), 80)]
        lines += ["0123456789", "Change 0123456789 (n = 0123456789)", "人 0123456789", "ff fi fl ffi ffl"]
        fig = Figure(figsize=(8.27, 11.69))
        for i, line in enumerate(lines):
            fig.text(0.05, 0.95 - 0.03 * i, line, fontsize=8)
        pdf.savefig(fig)


def _can_fork() -> bool:
    """Pages can be drawn in a forked process (Linux) and merged (pypdf installed)."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and importlib.util.find_spec("pypdf") is not None)


def _split(specs: list[PageSpec], workers: int) -> list[list[int]]:
    """Page numbers per process, in order, balanced by the drawing cost of the pages."""
    numbers = list(range(1, len(specs) + 1))
    if workers < 2 or len(specs) < 4:
        return [numbers]
    costs = [_COST[spec.national] for spec in specs]
    half = sum(costs) / 2
    done, cut = 0.0, 0
    while cut < len(costs) - 1 and done + costs[cut] / 2 < half:  # first pages here, the rest forked
        done += costs[cut]
        cut += 1
    return [numbers[:cut], numbers[cut:]]


_JOB: _Job | None = None  # what the forked process draws (inherited by fork, not pickled)


def _draw_forked(numbers: list[int], out: str) -> list[str]:
    assert _JOB is not None
    with PdfPages(out) as pdf:
        _JOB.warm_up(pdf)
        written = _JOB.draw(pdf, numbers)
    return [str(p) for p in written]


def _draw_in_processes(job: _Job, groups: list[list[int]], tmp: Path, metadata: dict[str, str]) -> list[Path]:
    """Draw the first group here and the second in a forked process, then merge the PDFs in order."""
    global _JOB
    with tempfile.TemporaryDirectory(prefix=".atlas-", dir=tmp.parent) as folder:
        parts = [Path(folder) / "part0.pdf", Path(folder) / "part1.pdf"]
        _JOB = job
        try:
            # frozen before the fork: neither process's collector walks (and the child copies) the
            # prepared layers and everything else made before it (see geo_pipeline._heap)
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool, \
                    frozen_heap():
                with warnings.catch_warnings():
                    # Python >= 3.12 warns when forking with threads running (e.g. pyarrow's
                    # idle pool from the boundaries stage); the child only draws with
                    # matplotlib and shapely and takes none of their locks.
                    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
                    forked = pool.submit(_draw_forked, groups[1], str(parts[1]))  # forks here
                with PdfPages(parts[0], metadata=metadata) as pdf:
                    job.warm_up(pdf)
                    written = job.draw(pdf, groups[0])
                try:
                    written += [Path(p) for p in forked.result()]
                except BrokenProcessPool:  # the forked process died (e.g. killed): draw its pages here
                    log.warning("atlas: the second drawing process stopped; drawing its pages here")
                    with PdfPages(parts[1]) as pdf:
                        job.warm_up(pdf)
                        written += job.draw(pdf, groups[1])
        finally:
            _JOB = None
        _merge(parts, groups, tmp)
    return sorted(written, key=lambda p: list(job.pngs.values()).index(p))


def _merge(parts: list[Path], groups: list[list[int]], out: Path) -> None:
    """Copy the pages of the part PDFs into ``out`` in page order, the font subsets once.

    The parts' first pages (the warm-up pages) are left out. Fonts of the
    second part identical to fonts of the first (same glyphs, same numbering)
    are replaced by those; any that differ are kept (logged).
    """
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import DictionaryObject, NameObject

    readers = [PdfReader(p) for p in parts]
    writer = PdfWriter()
    fonts = [_fonts(r) for r in readers]
    first = {_font_key(obj): obj for obj in fonts[0].values()}
    shared = DictionaryObject()
    for name, obj in fonts[1].items():
        same = first.get(_font_key(obj))
        if same is None:
            log.info("atlas: font %s of the forked pages differs; it is embedded again", obj.get("/BaseFont"))
            shared[NameObject(name)] = obj.indirect_reference
        else:
            shared[NameObject(name)] = same.indirect_reference.clone(writer)  # type: ignore[union-attr]
    # the second part's pages (sharing one resource dictionary) point at the first part's fonts
    resources = readers[1].pages[0]["/Resources"].get_object()
    assert isinstance(resources, DictionaryObject)
    resources[NameObject("/Font")] = shared
    where = {number: (k, i) for k, group in enumerate(groups) for i, number in enumerate(group, 1)}
    for number in sorted(where):
        k, i = where[number]
        writer.add_page(readers[k].pages[i])
    info: dict[str, Any] = dict(readers[0].metadata or {})
    writer.add_metadata({str(k): str(v) for k, v in info.items()})
    with open(out, "wb") as fh:
        writer.write(fh)


def _fonts(reader: Any) -> dict[str, Any]:
    """Font resources of a matplotlib PDF (one resource dictionary shared by its pages)."""
    res = reader.pages[0]["/Resources"].get_object()
    return {str(k): v.get_object() for k, v in res.get("/Font", {}).get_object().items()}


def _font_key(obj: Any) -> bytes:
    """Return the full content of a font object and of all it refers to, for comparison."""
    from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

    def walk(o: Any) -> Any:
        if isinstance(o, IndirectObject):
            o = o.get_object()
        if isinstance(o, StreamObject):
            rest = {k: v for k, v in o.items() if k not in ("/Length", "/Filter")}
            return ("stream", o.get_data(), walk(rest))
        if isinstance(o, (DictionaryObject, dict)):
            return tuple(sorted((str(k), walk(v)) for k, v in o.items()))
        if isinstance(o, (ArrayObject, list)):
            return tuple(walk(v) for v in o)
        return repr(o)

    return repr(walk(obj)).encode()
