"""Command-line interface: ``geo-pipeline <stage>`` and ``geo-pipeline run``.

Each stage has a thin wrapper module ``geo_pipeline.cli._<stage>`` that defines

``run(ctx: StageContext, **options) -> None``
    read inputs, validate, call the stage's pure function, write outputs atomically
    with :meth:`StageContext.write_gpkg`, log one INFO summary;
``OPTIONS`` (optional)
    extra :class:`click.Option` objects of that stage; each defaults to None,
    meaning "take the value from the config".
``PER_LEVEL = True`` (optional)
    the stage analyses units and runs once per unit level of
    ``[pipeline] levels`` (or the one given with ``--level``): it reads
    ``ctx.units_layer`` of population.gpkg and writes ``ctx.level_file(name)``
    (see :mod:`geo_pipeline._levels`).

Stage wrappers are imported only when their command runs or its ``--help`` is
asked for (:class:`_LazyGroup`); ``geo-pipeline --help`` lists them from the
first line of their ``run`` docstring read from the source, so the CLI starts
without geopandas, matplotlib, esda, osmnx or rasterio (test_cli_startup.py).
Keep this module's own imports light for the same reason.

Only this module configures logging and prints; library modules only log.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from .. import __version__
from .._errors import GeoPipelineError
from .._levels import BASE_LEVEL, LEVELS, UNITS_LAYER, check_levels, level_file, level_layer, level_title
from ..config import Settings, load_settings

if TYPE_CHECKING:  # pandas, geopandas and _io load when a stage writes, not at start-up
    import pandas as pd

__all__ = ["main", "StageContext", "STAGE_ORDER", "settings_to_toml"]

log = logging.getLogger("geo_pipeline.cli")

#: Stages in the order ``geo-pipeline run`` executes them.
STAGE_ORDER = [
    "fetch",
    "boundaries",
    "population",
    "raster",
    "distance",
    "autocorrelation",
    "infrastructure",
    "export",
    "report",
    "atlas",
    "qgis_project",
]

DEFAULT_CONFIG = "geo_pipeline.toml"


@dataclass
class StageContext:
    """What a stage wrapper gets: settings, overwrite flag, unit level and path helpers.

    ``level`` is the unit level the stage runs at (``"county"`` or
    ``"prefecture"``). A per-level stage reads its units from
    ``population.gpkg`` layer :attr:`units_layer` and names its outputs with
    :meth:`level_file` (``distance.gpkg`` -> ``distance_prefecture.gpkg``);
    county outputs keep their plain names.
    """

    settings: Settings
    overwrite: bool = False
    stage: str = ""
    level: str = BASE_LEVEL
    #: The stages ``geo-pipeline run`` runs after this one in the same process (empty for a
    #: single stage command): a stage may keep what they will read (see the export stage).
    later: tuple[str, ...] = ()
    _record: dict[str, Any] | None = None

    @property
    def levels(self) -> list[str]:
        """The configured unit levels (``[pipeline] levels``), in pipeline order."""
        return check_levels(self.settings.pipeline.levels, source="[pipeline] levels")

    @property
    def units_layer(self) -> str:
        """Layer of ``population.gpkg`` with the units of this level (``units`` or ``prefectures``)."""
        return UNITS_LAYER[self.level]

    @property
    def label(self) -> str:
        """``stage`` for counties, ``stage[prefecture]`` else: for logs and the manifest."""
        return self.stage if self.level == BASE_LEVEL else f"{self.stage}[{self.level}]"

    def level_file(self, name: str, level: str | None = None) -> str:
        """File name of an output at this (or the given) level (:func:`geo_pipeline._levels.level_file`)."""
        return level_file(name, level or self.level)

    def level_layer(self, name: str, level: str | None = None) -> str:
        """Layer name at this (or the given) level in a file shared by the levels (``prefecture_units``)."""
        return level_layer(name, level or self.level)

    def level_output(self, name: str, level: str | None = None) -> Path:
        """Path in ``data_processed`` of an output at this (or the given) level."""
        return self.output(self.level_file(name, level))

    def for_level(self, level: str) -> StageContext:
        """A copy of this context at ``level``."""
        return dataclasses.replace(self, level=level)

    @property
    def raw(self) -> Path:
        """The ``data_raw`` folder."""
        return self.settings.path("data_raw")

    @property
    def processed(self) -> Path:
        """The ``data_processed`` folder."""
        return self.settings.path("data_processed")

    @property
    def maps(self) -> Path:
        """The ``maps`` folder."""
        return self.settings.path("maps")

    def raw_file(self, rel: str | Path) -> Path:
        """Path of a raw input in ``data_raw``, checked against the SHA-256 fetch recorded for it."""
        from .._io import recorded_inputs
        from ..fetch import verify_raw_file

        fetched = recorded_inputs(self.output("manifest.json"), "fetch")
        return verify_raw_file(self.raw, rel, expected=fetched.get(Path(rel).as_posix()))

    def output(self, name: str) -> Path:
        """Path of an output file in ``data_processed``."""
        return self.processed / name

    def write_gpkg(
        self, name: str, layers: Mapping[str, pd.DataFrame], *, descriptions: Mapping[str, str] | None = None
    ) -> Path:
        """Write layers atomically to ``data_processed/<name>`` and log them.

        ``descriptions``: layer abstracts, see :func:`geo_pipeline._io.write_gpkg`. The
        large spatial layers are kept in the frame cache only when stages follow in this
        process (:attr:`later`): a single stage command does not pay for it.
        """
        from .._io import write_gpkg

        path = write_gpkg(self.output(name), layers, overwrite=self.overwrite, descriptions=descriptions,
                          cache=bool(self.later))
        for lname, frame in layers.items():
            crs = getattr(frame, "crs", None)
            log.info(
                "%s: wrote layer %s (%d rows%s) to %s",
                self.label, lname, len(frame), f", {crs.to_string()}" if crs is not None else "", path,
            )
        return path

    def write_csv(self, name: str, frame: pd.DataFrame) -> Path:
        """Write a CSV atomically to ``data_processed/<name>``."""
        from .._io import write_csv

        path = write_csv(self.output(name), frame, overwrite=self.overwrite)
        log.info("%s: wrote %s (%d rows)", self.label, path, len(frame))
        return path

    def manifest(
        self,
        *,
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
        parameters: Mapping[str, Any] | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """Record this stage in ``data_processed/manifest.json`` (key ``stage`` or ``stage[level]``).

        Written by :meth:`finish` after the stage's last write.
        """
        section = getattr(self.settings, self.stage, None)
        params = dict(parameters or {})
        if section is not None and not params:
            params = dataclasses.asdict(section)
        if self.level != BASE_LEVEL:
            params.setdefault("level", self.level)
        self._record = {"inputs": dict(inputs), "outputs": dict(outputs), "parameters": params,
                        "summary": summary}

    def finish(self) -> None:
        """Write the manifest entry after the stage's last write (output SHA-256 of the final files)."""
        if self._record is None:
            return
        from .._io import write_manifest

        write_manifest(self.output("manifest.json"), stage=self.label, **self._record)
        self._record = None


def _stage_module(name: str) -> ModuleType | None:
    modname = f"{__name__}._{name}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            return None
        raise


def _stage_source(name: str) -> Path | None:
    """Source file of the stage wrapper ``_<name>.py`` (found without importing it), or None."""
    spec = importlib.util.find_spec(f"{__name__}._{name}")
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _stage_short_help(name: str, limit: int) -> str:
    """First sentence of the stage's ``run`` docstring, read from its source without importing it."""
    path = _stage_source(name)
    doc = None
    if path is not None:
        src = path.read_text(encoding="utf-8")
        start = src.find("\ndef run(")
        if start >= 0:  # parse from `def run` to the next top-level def/class/decorator: ~20x faster
            ends = [i for i in (src.find(m, start + 1) for m in ("\ndef ", "\nclass ", "\n@")) if i > 0]
            chunk = src[start:min(ends)] if ends else src[start:]
            try:
                tree = ast.parse(chunk)
            except SyntaxError:
                tree = ast.parse(src)
            for node in tree.body:
                if isinstance(node, ast.FunctionDef) and node.name == "run":
                    doc = ast.get_docstring(node)
    return click.Command(name, help=doc or f"Run the {name} stage.").get_short_help_str(limit)


class _LazyGroup(click.Group):
    """Click group whose stage commands (``STAGE_ORDER``) are imported on first use.

    ``geo-pipeline --help`` lists them without importing any stage; the wrapper
    module is imported when the stage's command is resolved (run, or its own
    ``--help``).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        stages = [n for n in STAGE_ORDER if n not in self.commands and _stage_source(n) is not None]
        return sorted([*self.commands, *stages])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in STAGE_ORDER:
            module = _stage_module(cmd_name)
            if module is not None:
                self.add_command(_make_stage_command(cmd_name, module))
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            cmd = self.commands.get(name)
            if cmd is not None:
                if not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, _stage_short_help(name, limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _configure_logging(verbosity: int) -> None:
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if verbosity < -2:
        level = logging.CRITICAL
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("geo_pipeline")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    logging.captureWarnings(True)
    wlog = logging.getLogger("py.warnings")
    wlog.handlers[:] = [handler]
    wlog.setLevel(logging.WARNING if level <= logging.WARNING else level)


def _run_guarded(fn: Callable[[], None]) -> None:
    """Run ``fn``; print one message and exit with the documented code on the errors users meet.

    The one place where builtin I/O errors become messages: a full disk or a
    read-only folder (exit 6), a file removed under a running stage (exit 3),
    a damaged zip file (exit 2). Anything else is a bug and keeps its traceback.
    """
    import zipfile

    try:
        fn()
    except GeoPipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except zipfile.BadZipFile as exc:
        click.echo(f"error: a zip file (or .xlsx workbook) is damaged: {exc}; fetch it again", err=True)
        sys.exit(2)
    except FileNotFoundError as exc:
        click.echo(f"error: {exc.filename or ''}: not found ({exc.strerror or exc}); run the stage that "
                   "makes it (or fetch) first", err=True)
        sys.exit(3)
    except OSError as exc:
        from .._outputs import storage_error

        err = storage_error(exc)
        click.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except Exception as exc:  # GDAL and SQLite report a full disk in their own error classes
        text = str(exc)
        if "disk is full" not in text.lower() and "no space left" not in text.lower():
            raise
        click.echo(f"error: cannot write an output ({type(exc).__name__}: {text}): the disk is full; "
                   "free some space and run again", err=True)
        sys.exit(6)


def _locked(settings: Settings, fn: Callable[[], None]) -> None:
    """Run ``fn`` holding the lock of data_processed, after removing leftovers of killed runs."""
    from .._outputs import clean_leftovers, output_lock

    processed = settings.path("data_processed")
    with output_lock(processed, timeout_s=settings.paths.lock_timeout_s):
        clean_leftovers(processed, settings.path("maps"))
        fn()


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geo-pipeline")
@click.option(
    "-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help=f"TOML config file (default: ./{DEFAULT_CONFIG} if present, else built-in defaults).",
)
@click.option("-v", "--verbose", count=True, help="More output (-vv for debug).")
@click.option("-q", "--quiet", count=True, help="Less output (-q warnings only, -qq errors only).")
@click.pass_context
def main(click_ctx: click.Context, config_path: Path | None, verbose: int, quiet: int) -> None:
    """Population net outflow and shrinking cities in China, stage by stage.

    Run every stage with `geo-pipeline run`, or one stage with
    `geo-pipeline <stage>`. Outputs go to data_processed/ and maps/.
    """
    _configure_logging(verbose - quiet)
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        config_path = Path(DEFAULT_CONFIG)

    def load() -> None:
        click_ctx.obj = load_settings(config_path)
        if config_path is not None:
            log.debug("config: %s", config_path)

    _run_guarded(load)


_overwrite_option = click.option(
    "--overwrite", is_flag=True, default=False, help="Replace existing outputs (default: refuse)."
)


def _per_level(module: ModuleType) -> bool:
    return bool(getattr(module, "PER_LEVEL", False))


def _has_units(ctx: StageContext) -> bool:
    """True when population.gpkg is absent (the stage then says so) or has the level's units layer."""
    path = ctx.output("population.gpkg")
    if ctx.level == BASE_LEVEL or not path.is_file():
        return True
    from .._io import list_layers

    return ctx.units_layer in list_layers(path)


def _run_stage(
    module: ModuleType, ctx: StageContext, levels: list[str], *, chosen: bool = False, **options: Any
) -> None:
    """Run a stage once, or once per level for a per-level stage (``PER_LEVEL = True``).

    A configured level (not ``chosen`` with ``--level``) other than counties
    whose units layer is missing from population.gpkg (a population.gpkg made
    without the census city table) is skipped with a log message; a chosen one
    fails in the stage with the missing layer named.
    """
    from .._heap import frozen_heap
    from .._outputs import output_batch

    for level in levels if _per_level(module) else [BASE_LEVEL]:
        lctx = ctx.for_level(level)
        if _per_level(module) and not chosen and not _has_units(lctx):
            log.warning(
                "%s: population.gpkg has no layer %r (the %s level); skipped. Rerun `geo-pipeline "
                "population` with the census city table, or set [pipeline] levels",
                lctx.label, lctx.units_layer, level,
            )
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        if _per_level(module):
            log.info("%s: %s", lctx.label, level_title(level))
        # the stage's outputs (and manifest entry) replace the old ones together; the objects alive
        # before the stage (imported modules, earlier stages' settings) stay out of the GC's full passes
        with output_batch(), frozen_heap():
            module.run(lctx, **options)
            lctx.finish()
        # CPU of the whole process (all its threads) during the stage, next to the wall time
        log.info("%s: finished in %.1f s (CPU %.1f s)", lctx.label, time.perf_counter() - t0,
                 time.process_time() - c0)


def _make_stage_command(name: str, module: ModuleType) -> click.Command:
    doc = (module.run.__doc__ or f"Run the {name} stage.").strip()
    params = list(getattr(module, "OPTIONS", []))
    if _per_level(module):
        params.append(click.Option(
            ["--level"], type=click.Choice(LEVELS), default=None,
            help="Unit level to run at (default: every level of [pipeline] levels).",
        ))

    @click.pass_obj
    def callback(settings: Settings, overwrite: bool, **options: Any) -> None:
        ctx = StageContext(settings=settings, overwrite=overwrite, stage=name)
        opts = {k: v for k, v in options.items() if v is not None}
        level = opts.pop("level", None) if _per_level(module) else None

        def go() -> None:
            _run_stage(module, ctx, [level] if level else ctx.levels, chosen=level is not None, **opts)

        _run_guarded(lambda: _locked(settings, go))

    cmd = click.Command(name, callback=callback, help=doc, params=params)
    return _overwrite_option(cmd)


@main.command("run")
@_overwrite_option
@click.option("--from", "start", type=click.Choice(STAGE_ORDER), default=None, help="Start at this stage.")
@click.option("--to", "stop", type=click.Choice(STAGE_ORDER), default=None, help="Stop after this stage.")
@click.pass_obj
def run_all(settings: Settings, overwrite: bool, start: str | None, stop: str | None) -> None:
    """Run every stage in order (fetch ... atlas), per-unit stages at every level of [pipeline] levels."""
    first = STAGE_ORDER.index(start) if start else 0
    last = STAGE_ORDER.index(stop) + 1 if stop else len(STAGE_ORDER)
    names = STAGE_ORDER[first:last]

    def go() -> None:
        t_all, c_all = time.perf_counter(), time.process_time()
        for i, name in enumerate(names):
            module = _stage_module(name)
            if module is None:
                log.warning("stage %s is not available in this version; skipped", name)
                continue
            log.info("== %s ==", name)
            ctx = StageContext(settings=settings, overwrite=overwrite, stage=name, later=tuple(names[i + 1:]))
            _run_stage(module, ctx, ctx.levels)
        log.info("pipeline finished in %.1f s (CPU %.1f s)", time.perf_counter() - t_all,
                 time.process_time() - c_all)

    _run_guarded(lambda: _locked(settings, go))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def settings_to_toml(settings: Settings) -> str:
    """Render settings as a commented TOML document that :func:`load_settings` reads back."""
    out = ["# geo_pipeline configuration (all keys shown with their current values)."]
    for section in dataclasses.fields(settings):
        value = getattr(settings, section.name)
        doc = inspect.getdoc(type(value)) or ""
        out.append("")
        out.extend(f"# {line}".rstrip() for line in doc.splitlines())
        out.append(f"[{section.name}]")
        for f in dataclasses.fields(value):
            out.append(f"{f.name} = {_toml_value(getattr(value, f.name))}")
    return "\n".join(out) + "\n"


@main.command("config")
@click.pass_obj
def show_config(settings: Settings) -> None:
    """Print the effective configuration as TOML (save it as geo_pipeline.toml to edit)."""
    click.echo(settings_to_toml(settings), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
