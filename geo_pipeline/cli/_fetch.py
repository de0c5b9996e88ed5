"""CLI wrapper of the fetch stage."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ..fetch import fetch_inputs
from . import StageContext

log = logging.getLogger(__name__)

OPTIONS = [
    click.Option(
        ["--mirror"],
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Copy the inputs from this local mirror folder instead of downloading "
        "(wins over GEO_PIPELINE_MIRROR and [paths] mirror).",
    ),
    click.Option(
        ["--offline/--online", "offline"],
        default=None,
        help="Forbid downloads; a mirror folder is then required (config: [fetch] offline).",
    ),
]


def run(ctx: StageContext, **options: Any) -> None:
    """Fetch the raw inputs into data_raw/ with SHA-256 checks.

    Copies every input listed in the package registry from a mirror folder
    (--mirror, GEO_PIPELINE_MIRROR or [paths] mirror), or downloads it from
    its public source at a pinned commit. Files already in data_raw with the
    right checksum are kept; a file with a wrong checksum is an error unless
    --overwrite is given.
    """
    settings = ctx.settings.fetch
    mirror = options.get("mirror")
    mirror = Path(mirror) if mirror is not None else ctx.settings.mirror()
    offline = options.get("offline")
    offline = settings.offline if offline is None else bool(offline)
    report = fetch_inputs(
        ctx.raw, mirror=mirror, offline=offline, overwrite=ctx.overwrite,
        base_url=settings.base_url, timeout_s=settings.timeout_s,
    )
    files = {row.path: ctx.raw / row.path for row in report.itertuples()}
    counts = report["action"].value_counts().to_dict()
    ctx.manifest(
        inputs=files,
        outputs={"data_raw": ctx.raw},
        parameters={
            "mirror": str(mirror) if mirror else "", "offline": offline, "base_url": settings.base_url,
        },
        summary={
            "files": {
                row.path: {"sha256": row.sha256, "action": row.action, "source": row.source,
                           "license": row.license}
                for row in report.itertuples()
            },
            **{a: int(counts.get(a, 0)) for a in ("kept", "copied", "downloaded")},
        },
    )
    log.info(
        "fetch: %d files verified in %s (%d kept, %d copied, %d downloaded)",
        len(report), ctx.raw, counts.get("kept", 0), counts.get("copied", 0), counts.get("downloaded", 0),
    )
