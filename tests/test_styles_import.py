"""mapclassify is imported without its eager numba compile, with identical classes."""

from __future__ import annotations

import json
import subprocess
import sys

_CLASSES = """
import json, sys
import numpy as np
{importer}
rng = np.random.default_rng(7)
y = np.round(rng.normal(size=3000) * 20.0, 3)
out = {{
    "compiled_after_import": len(mc.classifiers._fisher_jenks_means.signatures),
    "quantiles": mc.Quantiles(y, k=7).bins.tolist(),
    "fisher_jenks": mc.FisherJenks(y, k=6).bins.tolist(),
    "user_defined": mc.UserDefined(y, bins=[-10.0, 0.0, 10.0]).yb.tolist()[:200],
}}
print(json.dumps(out))
"""


def _run(importer: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CLASSES.format(importer=importer)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_lazy_mapclassify_same_classes_without_compile_at_import() -> None:
    lazy = _run(
        "from geo_pipeline.styles import _mapclassify\nmc = _mapclassify()\n"
        "n0 = len(mc.classifiers._fisher_jenks_means.signatures)"
    )
    eager = _run("import mapclassify as mc")
    # the eager import compiled the Fisher-Jenks kernel; ours did not (it compiles on first use)
    assert eager["compiled_after_import"] == 1
    for key in ("quantiles", "fisher_jenks", "user_defined"):
        assert lazy[key] == eager[key], key


def test_lazy_import_does_not_compile() -> None:
    code = (
        "from geo_pipeline.styles import _mapclassify\nmc = _mapclassify()\n"
        "import numba\nprint(len(mc.classifiers._fisher_jenks_means.signatures), "
        "numba.njit is numba.core.decorators.njit)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    compiled, restored = proc.stdout.split()
    assert compiled == "0" and restored == "True"
