"""Open a QGIS project in a real, headless QGIS, describe it and export its layouts.

Run with the system Python that has Debian's ``python3-qgis`` (not the venv)::

    /usr/bin/python3 tests/qgis_project_check.py maps/shrinkage.qgz [--atlas-pdf OUT.pdf] [--pages N]
        [--national-pdf OUT.pdf] [--png DIR] [--font-file FONT.ttc]

Prints one JSON object on the last line of stdout: the QGIS version, each layer
(valid, renderer, styles, whether its default style matches the GeoPackage's
``layer_styles`` default), the map themes, each layout's items and atlas
feature count, and what was exported (atlas PDF pages and their names, time
taken). ``--pages N`` exports only the first N atlas pages (in atlas order);
``--png DIR`` also renders the first atlas page and each national layout as
PNG (for looking at them). The PDF export simplifies geometry at 0.25 mm on
paper (as the matplotlib atlas does), otherwise QGIS writes every vertex of
the full-resolution units (about 150 MB for the 31 provinces).
The tests ``tests/test_qgis_project.py`` run this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time

_SIMPLIFY_MM = 0.25


def _pdf_settings(qc, dpi: float = 300.0):  # noqa: ANN001, ANN202 - QGIS objects
    settings = qc.QgsLayoutExporter.PdfExportSettings()
    settings.dpi = dpi
    settings.simplifyGeometries = False  # we set our own, coarser simplification below
    settings.textRenderFormat = qc.QgsRenderContext.TextFormatAlwaysText
    settings.rasterizeWholeImage = False
    return settings


def _simplify(qc, layout, dpi: float = 300.0) -> None:  # noqa: ANN001
    method = qc.QgsVectorSimplifyMethod()
    method.setSimplifyHints(qc.QgsVectorSimplifyMethod.GeometrySimplification)
    method.setSimplifyAlgorithm(qc.QgsVectorSimplifyMethod.SnappedToGridGlobal)
    method.setThreshold(_SIMPLIFY_MM / 25.4 * dpi)
    method.setForceLocalOptimization(True)
    layout.renderContext().setSimplifyMethod(method)


def _default_styles(gpkg: str) -> dict[str, str]:
    """Layer name -> renderer type of its default style in ``layer_styles``."""
    import xml.etree.ElementTree as ET

    with sqlite3.connect(gpkg) as con:
        rows = con.execute(
            "SELECT f_table_name, styleQML FROM layer_styles WHERE useAsDefault = 1"
        ).fetchall()
    out = {}
    for name, qml in rows:
        node = ET.fromstring(qml.split("\n", 1)[1]).find("renderer-v2")
        out[name] = node.get("type") if node is not None else None
    return out


def _key(layer) -> str:  # noqa: ANN001
    """The layer's key given by the builder (``units``, ``units_ageing``...), else its table."""
    return layer.customProperty("geo_pipeline/key") or layer.source().split("layername=")[-1]


def describe(qc, project) -> dict:  # noqa: ANN001
    """Layers, tree, themes and layouts of the open project."""
    out: dict = {"qgis_version": qc.Qgis.QGIS_VERSION, "crs_proj": project.crs().toProj(),
                 "crs_valid": project.crs().isValid(), "title": project.title(), "layers": {}, "tree": [],
                 "themes": {}, "layouts": {},
                 "bookmarks": [b.name() for b in project.bookmarkManager().bookmarks()]}
    gpkg = None
    for group in project.layerTreeRoot().children():
        names = []
        for child in group.children():
            layer = child.layer()
            name = layer.customProperty("geo_pipeline/key") or layer.source().split("layername=")[-1]
            gpkg = gpkg or layer.source().split("|")[0]
            names.append(name)
            renderer = layer.renderer() if layer.isSpatial() else None
            out["layers"][name] = {
                "title": layer.name(), "valid": layer.isValid(), "visible": child.isVisible(),
                "spatial": layer.isSpatial(), "features": layer.featureCount(), "crs": layer.crs().authid(),
                "renderer": renderer.type() if renderer else None,
                "attribute": renderer.classAttribute() if hasattr(renderer, "classAttribute") else None,
                "styles": layer.styleManager().styles(), "current_style": layer.styleManager().currentStyle(),
                "source": layer.source(), "table": layer.source().split("layername=")[-1],
            }
        out["tree"].append({"group": group.name(), "layers": names})
    defaults = _default_styles(gpkg) if gpkg and os.path.isfile(gpkg) else {}
    for name, info in out["layers"].items():
        info["default_renderer_in_gpkg"] = defaults.get(name)
    collection = project.mapThemeCollection()
    for name in collection.mapThemes():
        records = collection.mapThemeState(name).layerRecords()
        out["themes"][name] = {_key(r.layer()): r.currentStyle for r in records}
    for layout in project.layoutManager().printLayouts():
        items = {i.id(): type(i).__name__ for i in layout.items()
                 if isinstance(i, qc.QgsLayoutItem) and i.id()}
        page = layout.pageCollection().page(0).pageSize()
        info: dict = {"items": items, "page_mm": [round(page.width(), 1), round(page.height(), 1)]}
        atlas = layout.atlas()
        if atlas.enabled():
            info["atlas_features"] = atlas.updateFeatures()
        main = layout.itemById("map")
        if main is not None:
            info["theme"] = main.followVisibilityPresetName() if main.followVisibilityPreset() else None
            info["atlas_driven"] = main.atlasDriven()
            clipping = main.atlasClippingSettings()
            info["atlas_clip_layers"] = ([_key(layer) for layer in clipping.layersToClip()]
                                         if clipping.enabled() else [])
        for item_id in ("north_arrow", "legend", "scalebar", "locator"):
            item = layout.itemById(item_id)
            if item is not None and hasattr(item, "linkedMap"):
                info.setdefault("linked", {})[item_id] = bool(item.linkedMap())
        legend = layout.itemById("legend")
        if legend is not None:
            info["legend_layers"] = [_key(n.layer()) for n in legend.model().rootGroup().findLayers()]
        out["layouts"][layout.name()] = info
    return out


def _limit_atlas(qc, atlas, pages: int) -> None:  # noqa: ANN001
    """Keep only the first ``pages`` features of the atlas (in its sort order)."""
    atlas.updateFeatures()
    names = []
    for i in range(min(pages, atlas.count())):
        atlas.seekTo(i)
        names.append(atlas.layout().reportContext().feature().id())
    base = atlas.filterExpression() if atlas.filterFeatures() else "true"
    atlas.setFilterFeatures(True)
    atlas.setFilterExpression(f"({base}) AND $id IN ({', '.join(str(n) for n in names)})")
    atlas.updateFeatures()


def export(qc, project, args) -> dict:  # noqa: ANN001
    """Export the atlas (and national layouts) as asked on the command line."""
    out: dict = {}
    layouts = project.layoutManager().printLayouts()
    atlas_layout = next((lay for lay in layouts if lay.atlas().enabled()), None)
    if args.atlas_pdf and atlas_layout is not None:
        atlas = atlas_layout.atlas()
        if args.pages:
            _limit_atlas(qc, atlas, args.pages)
        _simplify(qc, atlas_layout)
        t0 = time.perf_counter()
        result, error = qc.QgsLayoutExporter.exportToPdf(atlas, args.atlas_pdf, _pdf_settings(qc))
        out["atlas"] = {"result": int(result), "error": error, "seconds": round(time.perf_counter() - t0, 2),
                        "count": atlas.count(), "bytes": os.path.getsize(args.atlas_pdf)
                        if os.path.isfile(args.atlas_pdf) else 0}
        names = []
        atlas.beginRender()
        for i in range(atlas.count()):
            atlas.seekTo(i)
            names.append(atlas.currentFilename() + "|" + atlas.nameForPage(i))
        atlas.endRender()
        out["atlas"]["pages"] = names
    if args.national_pdf:
        national = [lay for lay in layouts if not lay.atlas().enabled()]
        out["national"] = {}
        for i, layout in enumerate(national):
            _simplify(qc, layout)
            path = args.national_pdf.replace(".pdf", f"_{i}.pdf")
            exporter = qc.QgsLayoutExporter(layout)
            t0 = time.perf_counter()
            result = exporter.exportToPdf(path, _pdf_settings(qc))
            out["national"][layout.name()] = {"result": int(result), "path": path,
                                              "seconds": round(time.perf_counter() - t0, 2)}
    if args.png:
        os.makedirs(args.png, exist_ok=True)
        for i, layout in enumerate(layouts):
            exporter = qc.QgsLayoutExporter(layout)
            settings = qc.QgsLayoutExporter.ImageExportSettings()
            settings.dpi = 110
            if layout.atlas().enabled():
                layout.atlas().beginRender()
                layout.atlas().seekTo(args.png_page)
                layout.atlas().refreshCurrentFeature()
            exporter.exportToImage(os.path.join(args.png, f"layout_{i}.png"), settings)
            if layout.atlas().enabled():
                layout.atlas().endRender()
    return out


def main(argv: list[str]) -> int:
    """Entry point; prints the JSON report, exits 0 (2 on bad usage, 1 when the project does not open)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("--atlas-pdf")
    parser.add_argument("--pages", type=int, default=0)
    parser.add_argument("--national-pdf")
    parser.add_argument("--png")
    parser.add_argument("--png-page", type=int, default=0)
    parser.add_argument("--font-file", help="a font file to make known to Qt (the CJK font of the layouts)")
    args = parser.parse_args(argv[1:])
    if not os.path.isfile(args.project):
        sys.stderr.write(f"no project at {args.project}\n")
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import qgis.core as qc

    app = qc.QgsApplication([], False)
    app.initQgis()
    if args.font_file:
        from qgis.PyQt.QtGui import QFontDatabase

        if QFontDatabase.addApplicationFont(args.font_file) < 0:
            sys.stderr.write(f"Qt cannot load the font {args.font_file}\n")
            return 1
    project = qc.QgsProject.instance()
    if not project.read(os.path.abspath(args.project)):
        sys.stderr.write(f"QGIS cannot read {args.project}: {project.error()}\n")
        return 1
    result = describe(qc, project)
    result["export"] = export(qc, project, args)
    sys.stdout.write("\n" + json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    project.clear()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
