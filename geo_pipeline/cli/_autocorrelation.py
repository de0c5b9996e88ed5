"""CLI wrapper of the autocorrelation stage: read, cache weights, compute, write."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from .._errors import ConfigError, GeoPipelineError, InputError
from .._io import atomic_path, attribute_table, check_writable, read_layer
from .._levels import level_title
from .._validate import check_frame
from ..autocorrelation import DERIVED, moran_scatterplot, pair_key, spatial_autocorrelation, start_warm_up
from ..weights import UnitWeights, build_weights, weights_key

log = logging.getLogger("geo_pipeline.cli.autocorrelation")

PNG_DPI = 150

#: Runs once per unit level ([pipeline] levels): autocorrelation_prefecture.gpkg,
#: maps/moran_<variable>_prefecture.png at the prefecture level.
PER_LEVEL = True

OPTIONS = [
    click.Option(
        ["--variables"],
        default=None,
        metavar="COL[,COL...]",
        help="Comma-separated numeric unit columns (config: variables).",
    ),
    click.Option(
        ["--bivariate"],
        default=None,
        metavar="X:Y[,X:Y...]",
        help="Comma-separated pairs for the bivariate Moran's I of X with the neighbours' Y; '' for none "
        "(config: bivariate).",
    ),
    click.Option(
        ["--weights"],
        type=click.Choice(["queen", "knn", "distance"]),
        default=None,
        help="Spatial weights (config: weights).",
    ),
    click.Option(["--k"], type=click.IntRange(min=1), default=None, help="Neighbours for knn weights."),
    click.Option(
        ["--distance-km"],
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Threshold for distance weights, km on the ground.",
    ),
    click.Option(
        ["--max-island-link-km"],
        type=click.FloatRange(min=0),
        default=None,
        help="Longest link joining an island to its nearest unit, km; farther islands stay isolated "
        "(0: no limit; config: max_island_link_km).",
    ),
    click.Option(
        ["--permutations"],
        type=click.IntRange(min=0),
        default=None,
        help="Permutations for pseudo p-values (config: permutations).",
    ),
    click.Option(["--seed"], type=int, default=None, help="Random seed (config: seed)."),
    click.Option(
        ["--alpha"],
        type=click.FloatRange(0, 1, min_open=True, max_open=True),
        default=None,
        help="Significance level of LISA clusters and Gi* spots.",
    ),
    click.Option(
        ["--fdr/--no-fdr"], default=None, help="Judge local significance on FDR q-values (config: fdr)."
    ),
    click.Option(
        ["--engine"],
        type=click.Choice(["numpy", "esda"]),
        default=None,
        help="Local permutations in NumPy or with esda's numba kernels (config: engine).",
    ),
    click.Option(
        ["--dask/--no-dask", "dask"],
        default=None,
        help="Run the local permutations on Dask (a local cluster or [dask] scheduler); same p-values "
        "(config: dask).",
    ),
]


def _load_cached(path: Path) -> UnitWeights | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return UnitWeights.from_arrays({k: data[k] for k in data.files})
    except (GeoPipelineError, OSError, ValueError, KeyError) as exc:
        log.warning("cached weights %s unreadable (%s); rebuilding them", path, exc)
        return None


def _weights(ctx: Any, units: Any, cfg: Any) -> tuple[UnitWeights, Path, bool]:
    """Weights for these (analysed) units from the cache in data_processed, or built and cached."""
    opts = {
        "kind": cfg.weights,
        "k": cfg.k,
        "distance_km": cfg.distance_km,
        "link_k": cfg.link_k,
        "max_link_km": cfg.max_island_link_km or None,
    }
    key = weights_key(units, **opts)
    path = ctx.processed / f"weights_{key[:20]}.npz"
    if path.is_file():
        cached = _load_cached(path)
        if cached is not None and cached.n == len(units):
            log.debug("weights: reusing %s", path)
            return cached, path, True
    weights = build_weights(units, **opts)
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **weights.to_arrays())  # type: ignore[arg-type]
    log.debug("weights: cached in %s", path)
    return weights, path, False


def save_png(fig: Any, path: Any, *, dpi: float) -> None:
    """``fig.savefig(path, dpi=dpi, format="png")``, the same bytes, with the layout run once.

    For a figure with a layout engine (the scatterplots' constrained layout),
    ``savefig`` first draws the whole figure into a renderer that paints
    nothing, only to run the layout, and then draws it for real. Running the
    layout engine at the output ``dpi`` and saving without the engine gives
    the same positions without that first drawing: the 12 PNGs of a run are
    byte-identical (test), 0.78-0.92 -> 0.67-0.69 s CPU for the 6 county
    scatterplots. The figure is left without its layout engine.
    """
    engine = fig.get_layout_engine()
    if engine is not None and fig.axes:
        old = fig.dpi
        fig.dpi = dpi
        try:
            engine.execute(fig)
        finally:
            fig.dpi = old
        fig.set_layout_engine(None)
    fig.savefig(path, dpi=dpi, format="png")


def _describe_components(weights: UnitWeights, names: np.ndarray) -> list[str]:
    """'name' for islands, 'name +k' for groups, one per component joined by links."""
    out = []
    for c in range(1, int(weights.component.max()) + 1 if weights.n else 0):
        members = np.flatnonzero(weights.component == c)
        first = str(names[members[0]])
        out.append(first if len(members) == 1 else f"{first} +{len(members) - 1}")
    return out


def run(ctx: Any, **options: Any) -> None:
    """Spatial autocorrelation: global Moran's I, LISA clusters, Gi* hot and cold spots.

    Reads data_processed/population.gpkg (layer units), leaves out units with
    comparable = False, builds queen (or knn / distance-band) weights with
    islands and island groups linked to their nearest units unless farther than
    max_island_link_km (cached as data_processed/weights_<hash>.npz and reused
    while the units and options are unchanged), and writes
    data_processed/autocorrelation.gpkg (layers units, global_moran,
    island_links) and maps/moran_<variable>.png. Local clusters are labelled
    when p (q with --fdr) is strictly below alpha.
    With --dask ([autocorrelation] dask = true) the local permutations run on
    a Dask cluster ([dask] settings: a local cluster by default) and give the
    same p-values as in one process.
    """
    t_start = time.perf_counter()
    cfg = ctx.settings.autocorrelation
    if "variables" in options:
        options["variables"] = [v.strip() for v in str(options["variables"]).split(",") if v.strip()]
        if not options["variables"]:
            raise InputError("--variables: expected comma-separated column names, found none")
    if "bivariate" in options:
        options["bivariate"] = [v.strip() for v in str(options["bivariate"]).split(",") if v.strip()]
    cfg = dataclasses.replace(cfg, **options)
    pairs = []
    for pair in cfg.bivariate:
        parts = [part.strip() for part in str(pair).split(":")]
        if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
            raise ConfigError(f"--bivariate: {pair!r}; expected X:Y with two different column names")
        pairs.append((parts[0], parts[1]))
    if cfg.dask and cfg.engine != "numpy":
        raise ConfigError(
            f"--dask needs the numpy engine (esda's kernels do not run on Dask), found engine "
            f"{cfg.engine!r}; use --engine numpy or --no-dask"
        )

    gpkg_name = ctx.level_file("autocorrelation.gpkg")
    gpkg = ctx.output(gpkg_name)
    pngs = {v: ctx.maps / ctx.level_file(f"moran_{v}.png") for v in cfg.variables}
    pngs.update({pair_key(x, y): ctx.maps / ctx.level_file(f"moran_{pair_key(x, y)}.png") for x, y in pairs})
    for path in (gpkg, *pngs.values()):
        check_writable(path, overwrite=ctx.overwrite)

    # engine "esda": numba compiles esda's kernels (16-45 s) while we read and build weights
    warm = start_warm_up() if cfg.permutations and cfg.engine == "esda" else None

    source = ctx.output("population.gpkg")
    units = read_layer(source, ctx.units_layer, hint="run `geo-pipeline population` first")
    check_frame(
        units,
        name=f"{source} layer {ctx.units_layer}",
        columns={
            "unit_id": "string",
            # derived ones (change_pct_eb) are made from pop_2010/pop_2020 and checked by the stage
            **{
                v: "numeric"
                for v in [*cfg.variables, *(c for pair in pairs for c in pair)]
                if v not in DERIVED or v in units.columns
            },
        },
        geometry=True,
        crs="EPSG:4326",
        geom_types=("Polygon", "MultiPolygon"),
        unique=["unit_id"],
        not_null=["unit_id"],
    ).raise_if_any()

    comparable = units["comparable"].astype(bool) if "comparable" in units.columns else None
    analysed = units if comparable is None else units.loc[comparable.to_numpy()]
    t0 = time.perf_counter()
    weights, cache, reused = _weights(ctx, analysed, cfg)
    t_weights = time.perf_counter() - t0
    names = analysed["name"].astype(str).to_numpy() if "name" in units.columns else weights.ids
    joined = _describe_components(weights, names)
    name_of = dict(zip(weights.ids.astype(str), names, strict=True))
    for row in weights.unlinked.itertuples(index=False):
        log.warning(
            "weights: island %s (%s) left without neighbours: %s",
            name_of.get(row.unit_id, row.unit_id),
            row.members,
            row.reason,
        )
    log.info(
        "weights: %s (%s in %.1f s); components joined: %s",
        weights.description,
        "cached" if reused else "built",
        t_weights,
        (", ".join(joined[:12]) + (f", ... ({len(joined) - 12} more)" if len(joined) > 12 else "")) or "none",
    )

    t0 = time.perf_counter()
    if warm is not None:
        warm.join()
    t_wait = time.perf_counter() - t0

    dsk = ctx.settings.dask
    t_cluster = 0.0
    with contextlib.ExitStack() as stack:
        client: Any = None
        if cfg.dask and cfg.permutations:
            from ..parallel import dask_client

            t0 = time.perf_counter()
            client = stack.enter_context(
                dask_client(dsk.scheduler, n_workers=dsk.workers, threads_per_worker=dsk.threads_per_worker)
            )
            t_cluster = time.perf_counter() - t0
            log.info(
                "autocorrelation: permutations on Dask (%s, %d worker(s)), connected in %.1f s",
                dsk.scheduler or "local cluster",
                len(client.scheduler_info().get("workers", {})),
                t_cluster,
            )
        t0 = time.perf_counter()
        result = spatial_autocorrelation(
            units,
            variables=cfg.variables,
            weights=weights,
            max_link_km=cfg.max_island_link_km or None,
            bivariate=pairs,
            permutations=cfg.permutations,
            seed=cfg.seed,
            alpha=cfg.alpha,
            fdr=cfg.fdr,
            engine=cfg.engine,
            client=client,
        )
        t_stats = time.perf_counter() - t0

    links = result.links
    if "name" in units.columns:
        lookup = dict(zip(units["unit_id"].astype(str), units["name"].astype(str), strict=True))
        links = links.assign(
            unit_name=links["unit_id"].map(lookup), neighbor_name=links["neighbor_id"].map(lookup)
        )[
            [
                "unit_id",
                "unit_name",
                "neighbor_id",
                "neighbor_name",
                "distance_km",
                "status",
                "reason",
                "geometry",
            ]
        ]
    ctx.write_gpkg(
        gpkg_name,
        {"units": attribute_table(result.units), "global_moran": result.global_moran, "island_links": links},
    )
    written = {}
    for row in result.global_moran.itertuples(index=False):
        if not np.isfinite(row.I):
            log.warning("%s: no Moran scatterplot (statistics undefined)", row.variable)
            continue
        ptxt = f", p = {row.p_sim:.3g}" if np.isfinite(row.p_sim) else ""
        bivariate = row.statistic == "moran_bv"
        std = f"bv_{row.variable}_std" if bivariate else f"lisa_{row.variable}_std"
        what = f"{row.x} with neighbours' {row.y}" if bivariate else row.variable
        fig = moran_scatterplot(
            result.units,
            row.x,
            moran_i=row.I,
            p_sim=row.p_sim,
            y_variable=row.y if bivariate else None,
            title=f"Moran scatterplot, {level_title(ctx.level)}: {what} (I = {row.I:.3f}{ptxt}, "
            f"n = {int(result.units[std].notna().sum())})",
        )
        with atomic_path(pngs[row.variable], overwrite=ctx.overwrite) as tmp:
            save_png(fig, tmp, dpi=PNG_DPI)
        written[f"moran_{row.variable}"] = pngs[row.variable]

    summary = {
        "units": len(units),
        "weights": weights.description,
        "weights_cached": reused,
        "links_added": weights.n_links,
        "components_joined": joined,
        "islands_not_linked": weights.unlinked[["unit_id", "members", "neighbor_id", "distance_km"]].to_dict(
            "records"
        ),
        "not_comparable": (
            [] if comparable is None else units.loc[~comparable.to_numpy(), "unit_id"].astype(str).tolist()
        ),
        "significance": result.global_moran["significance"].iloc[0] if len(result.global_moran) else "",
        "global_moran": {
            r.variable: {"I": r.I, "p_sim": r.p_sim, "n": r.n} for r in result.global_moran.itertuples()
        },
        "seconds": {
            "weights": round(t_weights, 2),
            "numba_wait": round(t_wait, 2),
            "dask_start": round(t_cluster, 2),
            "statistics": round(t_stats, 2),
        },
    }
    params = dataclasses.asdict(cfg)
    if cfg.dask:
        params["dask_settings"] = dataclasses.asdict(dsk)
    ctx.manifest(
        inputs={"units": source},
        outputs={"gpkg": gpkg, "weights_cache": cache, **written},
        parameters=params,
        summary=summary,
    )
    parts = []
    for r in result.global_moran.itertuples():
        col = result.units.get(f"{'bv' if r.statistic == 'moran_bv' else 'lisa'}_{r.variable}_cluster")
        counts = col.value_counts() if col is not None else {}
        parts.append(
            f"{r.variable} I={r.I:.3f} p={r.p_sim:.3g} (HH {counts.get('HH', 0)}, LL {counts.get('LL', 0)})"
        )
    log.info(
        "%s: %d units, %s weights with %d added link(s); %s; statistics %.1f s "
        "(%s permutations%s%s); %.1f s in all -> %s",
        ctx.label,
        len(units),
        cfg.weights,
        weights.n_links,
        "; ".join(parts),
        t_stats,
        cfg.engine,
        " on Dask" if cfg.dask and cfg.permutations else "",
        f", waited {t_wait:.1f} s for numba" if warm is not None else "",
        time.perf_counter() - t_start,
        gpkg,
    )
