"""The benchmark's like-for-like configuration is a valid config that switches off what it says."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

from geo_pipeline.config import settings_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("geo_bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("geo_bench", module)
    spec.loader.exec_module(module)
    return module


def test_same_work_config_switches_off_the_later_options():
    bench = _bench()
    s = settings_from_dict(tomllib.loads(bench.SAME_WORK_TOML), source="SAME_WORK_TOML")
    assert list(s.pipeline.levels) == ["county"]
    assert list(s.autocorrelation.variables) == ["change_pct", "net_outflow_ratio"]
    assert list(s.autocorrelation.bivariate) == []
    assert s.infrastructure.geometry == "straight"
    assert s.infrastructure.network is False
    # everything else keeps the defaults
    default = settings_from_dict({}, source="defaults")
    assert s.distance == default.distance
    assert s.population == default.population
