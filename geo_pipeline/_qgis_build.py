"""Build the QGIS project ``shrinkage.qgz`` from a plan, with PyQGIS (run by the system Python).

This file is run as a script by the Python that has Debian's ``python3-qgis``
(``/usr/bin/python3``), not imported by the pipeline: it uses only the standard
library and ``qgis``. :mod:`geo_pipeline.qgis_project` makes the plan (layers,
groups, map themes, layouts, extents: everything decided from the data) and
runs this script as a subprocess::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 _qgis_build.py PLAN.json

The script writes ``plan["output"]`` (a ``.qgz``; layer paths saved relative to
it), opens the written project again and prints one JSON report on the last
line of stdout: per layer its validity and renderer, the map themes, and per
layout its items and atlas feature count. Exit code 0 on success, 1 when a
layer is invalid or the project cannot be written (the message on stderr).
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from typing import Any

#: Layout item ids the tests and users can rely on.
ITEM_IDS = ("map", "title", "subtitle", "legend", "scalebar", "north_arrow", "locator", "source",
            "page_number", "scs_inset")

#: The main map on an A4 page (x, y, width, height in mm; scaled for A3).
MAP_BOX = (10.0, 28.0, 200.0, 165.0)


def _qgis() -> Any:
    import qgis.core as qc

    return qc


def _font(family: str, size: float) -> Any:
    """A regular-weight font of ``family`` at ``size`` points.

    No bold: the pip-installed Noto Sans CJK has no bold face, and the bold Qt would synthesise
    is the text drawn twice (so twice in the PDF text, too).
    """
    from qgis.PyQt.QtGui import QFont

    f = QFont(family)
    f.setPointSizeF(size)
    return f


def _color(hex_color: str) -> Any:
    from qgis.PyQt.QtGui import QColor

    return QColor(hex_color)


class Builder:
    """Builds one project from ``plan`` (see :func:`geo_pipeline.qgis_project.plan_project`)."""

    def __init__(self, plan: dict[str, Any]) -> None:
        qc = _qgis()
        self.qc = qc
        self.plan = plan
        self.project = qc.QgsProject.instance()
        self.project.clear()
        self.crs = qc.QgsCoordinateReferenceSystem.fromWkt(plan["crs_wkt"])
        self.layers: dict[str, Any] = {}
        self.mm = qc.QgsUnitTypes.LayoutMillimeters
        self.k = plan["page"]["width_mm"] / 297.0  # furniture scales with the page (A4 = 1)

    # -- layers ------------------------------------------------------------------------------
    def add_layers(self) -> None:
        """Load every layer of the plan into its group, with its styles, in drawing order."""
        qc = self.qc
        root = self.project.layerTreeRoot()
        gpkg = self.plan["gpkg"]
        for group in self.plan["groups"]:
            node = root.addGroup(group["name"])
            node.setExpanded(group.get("expanded", True))
            for spec in group["layers"]:
                layer = qc.QgsVectorLayer(f"{gpkg}|layername={spec['name']}", spec["title"], "ogr")
                if not layer.isValid():
                    raise RuntimeError(f"QGIS cannot open layer {spec['name']!r} of {gpkg}")
                self._styles(layer, spec)
                key = spec.get("key") or spec["name"]
                layer.setCustomProperty("geo_pipeline/key", key)
                if spec.get("description"):
                    layer.setAbstract(spec["description"])
                self.project.addMapLayer(layer, False)
                child = node.addLayer(layer)
                child.setItemVisibilityChecked(bool(spec.get("visible")))
                child.setExpanded(bool(spec.get("expanded", False)))
                self.layers[key] = layer
            node.setItemVisibilityChecked(any(s.get("visible") for s in group["layers"]) or
                                          group["name"] != "Tables")

    def _styles(self, layer: Any, spec: dict[str, Any]) -> None:
        """Named styles in the layer's style manager; the default one current."""
        qc = self.qc
        styles = spec.get("styles") or []
        if not styles:
            return
        manager = layer.styleManager()
        default = next((s for s in styles if s["default"]), styles[0])
        first = manager.currentStyle()
        for style in styles:
            if style["name"] == first or style["name"] in manager.styles():
                continue
            if not manager.addStyle(style["name"], qc.QgsMapLayerStyle(style["qml"])):
                raise RuntimeError(f"layer {spec['name']}: QGIS refused style {style['name']!r}")
        # the layer opened with its default style from layer_styles; keep that one under its own name
        manager.setCurrentStyle(default["name"])
        if first not in [s["name"] for s in styles]:
            manager.removeStyle(first)
        manager.setCurrentStyle(default["name"])

    # -- themes ------------------------------------------------------------------------------
    def add_themes(self) -> None:
        """One map theme per plan theme: visible layers and the style each uses."""
        qc = self.qc
        collection = self.project.mapThemeCollection()
        for theme in self.plan["themes"]:
            records = []
            for name, style in theme["layers"].items():
                rec = qc.QgsMapThemeCollection.MapThemeLayerRecord(self.layers[name])
                rec.isVisible = True
                rec.usingCurrentStyle = True
                rec.currentStyle = style
                records.append(rec)
            record = qc.QgsMapThemeCollection.MapThemeRecord()
            record.setLayerRecords(records)
            collection.insert(theme["name"], record)

    # -- layouts -----------------------------------------------------------------------------
    def _place(self, item: Any, x: float, y: float, w: float, h: float, item_id: str) -> Any:
        qc, k = self.qc, self.k
        item.setId(item_id)
        # size before position: moving a map item that has no extent yet breaks it (NaN size)
        item.attemptResize(qc.QgsLayoutSize(w * k, h * k, self.mm))
        item.attemptMove(qc.QgsLayoutPoint(x * k, y * k, self.mm))
        return item

    def _label(self, layout: Any, text: str, size: float, *, align: str = "left") -> Any:
        from qgis.PyQt.QtCore import Qt

        qc = self.qc
        label = qc.QgsLayoutItemLabel(layout)
        layout.addLayoutItem(label)
        label.setText(text)
        label.setFont(_font(self.plan["font"], size * self.k))
        label.setHAlign({"left": Qt.AlignLeft, "right": Qt.AlignRight, "center": Qt.AlignHCenter}[align])
        label.setVAlign(Qt.AlignVCenter)
        return label

    def _map(self, layout: Any, box: tuple[float, float, float, float], item_id: str, extent: list[float],
             theme: str) -> Any:
        """A map item placed at ``box`` (mm on A4), showing ``extent`` (zoomed to keep the item's shape)."""
        qc = self.qc
        item = qc.QgsLayoutItemMap(layout)
        layout.addLayoutItem(item)
        item.setCrs(self.crs)
        x, y, w, h = box
        # the size first, then the extent zoomed to the item's shape (setExtent would reshape the item),
        # then the position (moving a map item without an extent gives it a NaN size)
        item.attemptResize(qc.QgsLayoutSize(w * self.k, h * self.k, self.mm))
        item.zoomToExtent(qc.QgsRectangle(*extent))
        self._place(item, *box, item_id)
        item.setFrameEnabled(True)
        item.setFrameStrokeWidth(qc.QgsLayoutMeasurement(0.3, self.mm))
        item.setBackgroundColor(_color("#ffffff"))
        item.setFollowVisibilityPreset(True)  # a theme, not a fixed layer set (saved with absolute paths)
        item.setFollowVisibilityPresetName(theme)
        return item

    def _page(self, layout: Any) -> None:
        page = layout.pageCollection().page(0)
        page.setPageSize(self.plan["page"]["paper"], self.qc.QgsLayoutItemPage.Landscape)

    def _locator(self, layout: Any, main: Any) -> None:
        """Locator map: the whole country (provinces), with the main map's extent as a red frame."""
        qc, plan = self.qc, self.plan
        locator = self._map(layout, (215, 28, 72, 52), "locator", plan["extents"]["national"],
                            plan["locator_theme"])
        overview = qc.QgsLayoutItemMapOverview("extent", locator)
        overview.setLinkedMap(main)
        overview.frameSymbol().setColor(_color("#d7191c"))
        overview.frameSymbol().setOpacity(0.6)
        locator.overviews().addOverview(overview)
        self._place(self._label(layout, plan["text"]["locator"], 6.5), 215, 80, 72, 4, "locator_label")

    def _furniture(self, layout: Any, main: Any, spec: dict[str, Any]) -> None:
        """Title, subtitle, legend, scale bar, north arrow, locator, source text and page number."""
        qc = self.qc
        plan = self.plan
        self._place(self._label(layout, spec["title"], 20), 10, 6, 200, 12, "title")
        self._place(self._label(layout, spec["subtitle"], 10), 10, 18, 200, 8, "subtitle")
        if spec.get("locator"):
            self._locator(layout, main)
        # legend of the map's layers (the theme's styles), without the context-only layers
        legend = qc.QgsLayoutItemLegend(layout)
        layout.addLayoutItem(legend)
        legend.setLinkedMap(main)
        legend.setAutoUpdateModel(False)
        root = legend.model().rootGroup()
        root.clear()
        for name in spec["legend_layers"]:
            root.addLayer(self.layers[name])
        legend.setTitle(plan["text"]["legend"])
        legend.setColumnCount(1)
        legend.setSymbolWidth(6 * self.k)
        legend.setSymbolHeight(3.5 * self.k)
        for part, size in ((qc.QgsLegendStyle.Title, 10.5), (qc.QgsLegendStyle.Subgroup, 8.5),
                           (qc.QgsLegendStyle.SymbolLabel, 7)):
            legend.rstyle(part).setFont(_font(plan["font"], size * self.k))
        legend.setResizeToContents(False)
        self._place(legend, 215, 86, 72, 92, "legend")
        legend.adjustBoxSize()
        # north arrow: true north at the map centre
        arrow = qc.QgsLayoutItemPicture(layout)
        layout.addLayoutItem(arrow)
        arrow.setPicturePath(_svg(plan["north_arrow_svg"]))
        arrow.setLinkedMap(main)
        arrow.setNorthMode(qc.QgsLayoutItemPicture.TrueNorth)
        self._place(arrow, 196, 30, 12, 16, "north_arrow")
        # scale bar on the map, lower left
        bar = qc.QgsLayoutItemScaleBar(layout)
        layout.addLayoutItem(bar)
        bar.setLinkedMap(main)
        bar.setStyle("Single Box")
        bar.setUnits(qc.QgsUnitTypes.DistanceKilometers)
        bar.setUnitLabel("km")
        bar.setNumberOfSegments(2)
        bar.setNumberOfSegmentsLeft(0)
        bar.setSegmentSizeMode(qc.QgsScaleBarSettings.SegmentSizeFitWidth)
        bar.setMinimumBarWidth(25 * self.k)
        bar.setMaximumBarWidth(45 * self.k)
        bar.setFont(_font(plan["font"], 7 * self.k))
        bar.setBackgroundEnabled(True)
        bar.setBackgroundColor(_color("#ffffff"))
        self._place(bar, 13, 178, 50, 12, "scalebar")
        bar.update()
        source = self._label(layout, plan["text"]["source"], 6)
        source.setHAlign(0x0001)  # Qt.AlignLeft; wraps inside the box
        self._place(source, 10, 195, 240, 11, "source")
        number = self._label(layout, spec["page_number"], 8, align="right")
        self._place(number, 252, 197, 35, 6, "page_number")

    def _mask(self, layout: Any, points: list[list[float]]) -> None:
        """A white polygon without outline at ``points`` (mm on A4), above the main map."""
        from qgis.PyQt.QtCore import QPointF
        from qgis.PyQt.QtGui import QPolygonF

        qc = self.qc
        polygon = QPolygonF([QPointF(x * self.k, y * self.k) for x, y in points])
        item = qc.QgsLayoutItemPolygon(polygon, layout)
        item.setSymbol(qc.QgsFillSymbol.createSimple({"color": "255,255,255,255", "outline_style": "no"}))
        item.setId("south_mask")
        layout.addLayoutItem(item)

    def add_national_layout(self, spec: dict[str, Any]) -> None:
        """A one-page layout of the whole country for one map theme, with the South China Sea inset."""
        qc = self.qc
        layout = qc.QgsPrintLayout(self.project)
        layout.initializeDefaults()
        layout.setName(spec["name"])
        self._page(layout)
        main = self._map(layout, MAP_BOX, "map", self.plan["extents"]["national"], spec["theme"])
        if self.plan.get("south_mask_mm"):  # the islands south of 17.5 N are shown in the inset only
            self._mask(layout, self.plan["south_mask_mm"])
        if self.plan["extents"].get("scs"):
            x, y, w, h = self.plan["scs_box_mm"]
            self._map(layout, (x, y, w, h), "scs_inset", self.plan["extents"]["scs"], spec["theme"])
            label = self._label(layout, self.plan["text"]["scs"], 5.5, align="center")
            self._place(label, x, y + h - 5, w, 4.5, "scs_label")
        self._furniture(layout, main, spec)
        self.project.layoutManager().addLayout(layout)

    def add_atlas_layout(self, spec: dict[str, Any]) -> None:
        """The province atlas: one page per coverage feature, title from its name."""
        qc = self.qc
        layout = qc.QgsPrintLayout(self.project)
        layout.initializeDefaults()
        layout.setName(spec["name"])
        self._page(layout)
        atlas = layout.atlas()
        coverage = self.layers[spec["coverage"]]
        atlas.setCoverageLayer(coverage)
        atlas.setHideCoverage(False)
        atlas.setPageNameExpression(f'"{spec["name_field"]}"')
        atlas.setSortFeatures(True)
        atlas.setSortExpression(f'"{spec["sort_field"]}"')
        atlas.setSortAscending(True)
        if spec.get("filter"):
            atlas.setFilterFeatures(True)
            atlas.setFilterExpression(spec["filter"])
        atlas.setFilenameExpression(f"'province_' || \"{spec['sort_field']}\"")
        atlas.setEnabled(True)
        main = self._map(layout, MAP_BOX, "map", self.plan["extents"]["national"], spec["theme"])
        main.setAtlasDriven(True)
        main.setAtlasScalingMode(qc.QgsLayoutItemMap.Auto)
        main.setAtlasMargin(spec["margin"])
        # provinces whose islands far away would shrink the page (Hainan and the South China Sea)
        # get the extent of their main parts, as data-defined bounds; NULL elsewhere = the atlas extent
        overrides = spec.get("extent_overrides") or {}
        if overrides:
            field = spec["sort_field"]
            props = main.dataDefinedProperties()
            for i, key in enumerate((qc.QgsLayoutObject.MapXMin, qc.QgsLayoutObject.MapYMin,
                                     qc.QgsLayoutObject.MapXMax, qc.QgsLayoutObject.MapYMax)):
                cases = " ".join(f"WHEN \"{field}\" = '{code}' THEN {bounds[i]!r}"
                                 for code, bounds in sorted(overrides.items()))
                props.setProperty(key, qc.QgsProperty.fromExpression(f"CASE {cases} ELSE NULL END"))
            main.setDataDefinedProperties(props)
        if spec.get("clip_layers"):  # the units of the page's province only; other layers as context
            clipping = main.atlasClippingSettings()
            clipping.setEnabled(True)
            clipping.setFeatureClippingType(qc.QgsMapClippingRegion.FeatureClippingType.ClipPainterOnly)
            clipping.setRestrictToLayers(True)
            clipping.setLayersToClip([self.layers[k] for k in spec["clip_layers"]])
        self._furniture(layout, main, spec)
        self.project.layoutManager().addLayout(layout)
        atlas.updateFeatures()

    # -- write -------------------------------------------------------------------------------
    def write(self) -> None:
        """Save the project (relative paths) and name the .qgs inside the archive after the final file."""
        qc = self.qc
        project = self.project
        project.setTitle(self.plan["title"])
        project.setCrs(self.crs)
        project.setEllipsoid("WGS84")
        project.setDistanceUnits(qc.QgsUnitTypes.DistanceKilometers)
        project.setAreaUnits(qc.QgsUnitTypes.AreaSquareKilometers)
        project.writeEntry("Paths", "/Absolute", False)
        view = project.viewSettings()
        view.setDefaultViewExtent(qc.QgsReferencedRectangle(qc.QgsRectangle(*self.plan["extents"]["national"]),
                                                            self.crs))
        for name, bounds in self.plan.get("bookmarks", {}).items():
            bookmark = qc.QgsBookmark()
            bookmark.setName(name)
            bookmark.setExtent(qc.QgsReferencedRectangle(qc.QgsRectangle(*bounds), self.crs))
            project.bookmarkManager().addBookmark(bookmark)
        out = self.plan["output"]
        if not project.write(out):
            raise RuntimeError(f"QGIS could not write {out}: {project.error()}")
        gpkg = self.plan["gpkg"]
        relative = os.path.relpath(gpkg, os.path.dirname(out))
        _rewrite_archive(out, self.plan.get("inner_name") or "", {gpkg: relative})


def register_font(path: str) -> list[str]:
    """Make the fonts of ``path`` known to Qt for this process; return their family names."""
    from qgis.PyQt.QtGui import QFontDatabase

    font_id = QFontDatabase.addApplicationFont(path)
    return list(QFontDatabase.applicationFontFamilies(font_id)) if font_id >= 0 else []


def _svg(name: str) -> str:
    """Full path of a QGIS SVG symbol by its name under the SVG paths (``arrows/NorthArrow_02.svg``)."""
    for folder in _qgis().QgsApplication.svgPaths():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return name


def _rewrite_archive(path: str, stem: str, replace: dict[str, str]) -> None:
    """Name the ``.qgs``/``.qgd`` inside the archive ``<stem>.qgs``/``.qgd``; replace paths in the .qgs.

    QGIS saves layer paths relative to the project, but a few layer references (the atlas coverage
    layer) keep the absolute path next to the layer id; they are made relative too, so nothing in the
    project names the folder it was built in.
    """
    from xml.sax.saxutils import escape

    with zipfile.ZipFile(path) as zin:
        members = [(info, zin.read(info)) for info in zin.infolist()]
    tmp = path + ".rewrite"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for info, data in members:
            ext = next((e for e in (".qgs", ".qgd") if info.filename.endswith(e)), "")
            if ext == ".qgs":
                for old, new in replace.items():
                    for a, b in {(old, new), (escape(old, {'"': "&quot;"}), escape(new, {'"': "&quot;"}))}:
                        data = data.replace(f'"{a}|'.encode(), f'"{b}|'.encode())
                        data = data.replace(f'"{a}"'.encode(), f'"{b}"'.encode())
            zout.writestr(stem + ext if ext and stem else info.filename, data)
    os.replace(tmp, path)


def _key(layer: Any) -> str:
    """The key the builder gave the layer (``units``, ``units_ageing``...), else its table name."""
    return str(layer.customProperty("geo_pipeline/key") or layer.source().split("layername=")[-1])


def report(path: str) -> dict[str, Any]:
    """Open the project at ``path`` in a clean QgsProject and describe it (the stage logs this)."""
    qc = _qgis()
    project = qc.QgsProject.instance()
    project.clear()
    if not project.read(path):
        raise RuntimeError(f"QGIS cannot read {path}: {project.error()}")
    out: dict[str, Any] = {"qgis_version": qc.Qgis.QGIS_VERSION, "layers": {}, "tree": [], "themes": {},
                           "layouts": {}}
    for group in project.layerTreeRoot().children():
        out["tree"].append({"group": group.name(), "layers": [_key(c.layer()) for c in group.children()]})
        for child in group.children():
            layer = child.layer()
            renderer = layer.renderer() if layer.isSpatial() else None
            out["layers"][_key(layer)] = {"valid": layer.isValid(), "visible": child.isVisible(),
                                          "renderer": renderer.type() if renderer else None}
    collection = project.mapThemeCollection()
    for name in collection.mapThemes():
        records = collection.mapThemeState(name).layerRecords()
        out["themes"][name] = {_key(r.layer()): r.currentStyle for r in records if r.layer() is not None}
    for layout in project.layoutManager().printLayouts():
        info: dict[str, Any] = {"items": sorted(i.id() for i in layout.items()
                                                if isinstance(i, qc.QgsLayoutItem) and i.id())}
        if layout.atlas().enabled():
            info["atlas_features"] = layout.atlas().updateFeatures()
        out["layouts"][layout.name()] = info
    return out


def main(argv: list[str]) -> int:
    """``_qgis_build.py PLAN.json``: build, save, reopen, print the JSON report."""
    if len(argv) != 2 or not os.path.isfile(argv[1]):
        sys.stderr.write("usage: /usr/bin/python3 _qgis_build.py PLAN.json\n")
        return 2
    with open(argv[1], encoding="utf-8") as fh:
        plan = json.load(fh)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    qc = _qgis()
    app = qc.QgsApplication([], False)
    app.initQgis()
    if plan.get("font_file"):
        register_font(plan["font_file"])
    try:
        builder = Builder(plan)
        builder.add_layers()
        builder.add_themes()
        for spec in plan["layouts"]:
            if spec["kind"] == "atlas":
                builder.add_atlas_layout(spec)
            else:
                builder.add_national_layout(spec)
        builder.write()
        result = report(plan["output"])
    except RuntimeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write("\n" + json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    qc.QgsProject.instance().clear()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
