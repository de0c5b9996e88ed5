"""Start-up time of the command line: ``geo-pipeline --help`` and ``geo-pipeline config``.

Usage::

    .venv/bin/python benchmarks/bench_startup.py [--repeat 5]

Each command runs ``--repeat`` times in a fresh process (wall clock, best of the runs), next to
``python -c pass`` in the same interpreter, and is reported as a ratio to it. Stage modules (and
geopandas, matplotlib, esda, osmnx, rasterio) load only when a stage runs or its own ``--help``
is asked for; ``geo-pipeline fetch --help`` is timed as an example of the latter.

Measured on the project machine (2 cores shared with other jobs), best of 5, two runs: the first
at a light load, the second at a load average of about 9 (everything slower, ratios alike):

==============================  ===============  ==========================
command                         seconds          ratio to python -c pass
==============================  ===============  ==========================
python -c pass                  0.016 / 0.092    1.0 / 1.0
geo-pipeline --help             0.065 / 0.364    4.0 / 4.0
geo-pipeline config             0.057 / 0.289    3.5 / 3.1
python -m geo_pipeline.cli -h   0.067 / 0.340    4.1 / 3.7
geo-pipeline fetch --help       0.434 / 1.828    26 / 20 (imports the fetch stage)
==============================  ===============  ==========================

Before the stage commands were loaded lazily, ``geo-pipeline --help`` imported every stage
(geopandas, matplotlib, mapclassify, esda, osmnx ...): 5.3 s wall and 2.8 s CPU at a light load;
14.6-17.6 s wall and 3.7 s CPU at a load average of about 9, against 0.37-0.40 s wall and
0.06-0.07 s CPU for the lazy group in the same minute (``/usr/bin/time``, 3 runs each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("geo-pipeline")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "geo_pipeline.cli"]


def best_of(cmd: list[str], repeat: int) -> float:
    """Best wall-clock time of ``cmd`` over ``repeat`` fresh processes (output discarded)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (best is kept)")
    args = parser.parse_args(argv)
    cli = _cli()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "geo-pipeline --help": [*cli, "--help"],
        "geo-pipeline config": [*cli, "config"],
        "python -m geo_pipeline.cli -h": [sys.executable, "-m", "geo_pipeline.cli", "-h"],
        "geo-pipeline fetch --help": [*cli, "fetch", "--help"],
    }
    results = {name: best_of(cmd, args.repeat) for name, cmd in commands.items()}
    base = results["python -c pass"]
    print(f"{'command':<32}{'seconds':>9}{'ratio':>8}   (best of {args.repeat})")
    for name, seconds in results.items():
        print(f"{name:<32}{seconds:>9.3f}{seconds / base:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
