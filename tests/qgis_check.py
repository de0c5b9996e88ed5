"""Open every layer of a GeoPackage in a real, headless QGIS and report what QGIS sees.

Run with the system Python that has Debian's ``python3-qgis`` (not the venv)::

    /usr/bin/python3 tests/qgis_check.py data_processed/shrinkage.gpkg

Prints one JSON object on the last line of stdout::

    {"qgis_version": "3.22.16-...", "layers": {"units": {"data_type": "features",
     "valid": true, "crs_valid": true, "authid": "EPSG:4326", "feature_count": 2846,
     "fields": [...], "sums": {"pop_2020": ...}, "renderer": "graduatedSymbol",
     "default_style_loaded": true, "renderer_without_default": "singleSymbol",
     "styles_in_db": 3, "detail": [...]}, ...}}

``default_style_loaded`` is the result of ``QgsVectorLayer.loadDefaultStyle()``
(which reads the ``layer_styles`` row with ``useAsDefault``);
``renderer_without_default`` is the renderer of the same layer opened with
``loadDefaultStyle=False``, to show that the style came from the file.
The pytest test ``tests/test_export.py::test_qgis_round_trip`` runs this script.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys


def _renderer_detail(renderer) -> object:  # noqa: ANN001 - QGIS objects
    kind = renderer.type()
    if kind == "graduatedSymbol":
        return [
            [r.lowerValue(), r.upperValue(), r.symbol().color().name(), r.label()] for r in renderer.ranges()
        ]
    if kind == "categorizedSymbol":
        return [[str(c.value()), c.symbol().color().name(), c.label()] for c in renderer.categories()]
    if kind == "singleSymbol":
        return renderer.symbol().color().name()
    return None


def check(path: str) -> dict:
    """Open each table of ``gpkg_contents`` in QGIS and describe it."""
    from qgis.core import Qgis, QgsAggregateCalculator, QgsVectorLayer

    with sqlite3.connect(path) as con:
        contents = con.execute(
            "SELECT table_name, data_type FROM gpkg_contents ORDER BY table_name"
        ).fetchall()
    out: dict = {"qgis_version": Qgis.QGIS_VERSION, "layers": {}}
    for name, data_type in contents:
        uri = f"{path}|layername={name}"
        layer = QgsVectorLayer(uri, name, "ogr")
        info: dict = {"data_type": data_type, "valid": layer.isValid()}
        if not layer.isValid():
            out["layers"][name] = info
            continue
        info["crs_valid"] = layer.crs().isValid()
        info["authid"] = layer.crs().authid()
        info["feature_count"] = layer.featureCount()
        info["fields"] = [f.name() for f in layer.fields()]
        sums = {}
        for field in layer.fields():
            if field.isNumeric() and field.typeName().lower() not in ("boolean", "bool"):
                value, ok = layer.aggregate(QgsAggregateCalculator.Sum, field.name())
                if ok and value is not None:
                    sums[field.name()] = float(value)
        info["sums"] = sums
        if data_type == "features":
            message, loaded = layer.loadDefaultStyle()
            info["default_style_loaded"] = bool(loaded)
            info["style_message"] = message
            info["renderer"] = layer.renderer().type() if layer.renderer() else None
            info["detail"] = _renderer_detail(layer.renderer()) if layer.renderer() else None
            options = QgsVectorLayer.LayerOptions()
            options.loadDefaultStyle = False
            bare = QgsVectorLayer(uri, name, "ogr", options)
            info["renderer_without_default"] = bare.renderer().type() if bare.renderer() else None
            listed = layer.listStylesInDatabase()
            info["styles_in_db"] = int(listed[0]) if listed else 0
        out["layers"][name] = info
    return out


def main(argv: list[str]) -> int:
    """Entry point: ``qgis_check.py PATH.gpkg``; prints JSON, exits 0 (2 on bad usage)."""
    if len(argv) != 2 or not os.path.isfile(argv[1]):
        sys.stderr.write("usage: /usr/bin/python3 tests/qgis_check.py PATH.gpkg\n")
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    result = check(os.path.abspath(argv[1]))
    sys.stdout.write("\n" + json.dumps(result, ensure_ascii=False) + "\n")
    sys.stdout.flush()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
