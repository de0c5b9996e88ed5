"""Unit levels: which units a stage analyses and the names of the files and layers it writes.

The pipeline analyses two levels of units:

``"county"``
    The harmonised county units (layer ``units`` of ``population.gpkg``), the
    base level. Its outputs keep their plain names (``distance.gpkg``,
    ``band_summary.csv``, ``maps/moran_change_pct.png``, layer ``units``).
``"prefecture"``
    The prefecture-level units of the census city table (layer
    ``prefectures`` of ``population.gpkg``, see :mod:`geo_pipeline.prefectures`).
    Its outputs carry the level in their names: a file ``<stem>_prefecture<suffix>``
    (``distance_prefecture.gpkg``, ``band_summary_prefecture.csv``,
    ``maps/moran_change_pct_prefecture.png``) and, in a file shared by the levels
    (``shrinkage.gpkg``), a layer ``prefecture_<name>`` (``prefecture_units``).

Every stage that works per unit gets its level from
:class:`geo_pipeline.cli.StageContext` (``ctx.level``, ``ctx.units_layer``,
``ctx.level_file(name)``), which uses the functions here; stage functions
themselves stay level-agnostic (they take a units frame, whatever the level).
"""

from __future__ import annotations

from pathlib import PurePath

from ._errors import ConfigError

__all__ = ["LEVELS", "BASE_LEVEL", "UNITS_LAYER", "check_levels", "level_file", "level_layer", "level_title"]

#: The unit levels, in the order the pipeline runs them.
LEVELS = ("county", "prefecture")

#: The level whose outputs keep their plain (historical) names.
BASE_LEVEL = "county"

#: Layer of ``population.gpkg`` holding the analysis units of each level.
UNITS_LAYER = {"county": "units", "prefecture": "prefectures"}

_TITLES = {"county": "counties", "prefecture": "prefectures"}


def check_levels(levels: list[str] | tuple[str, ...], *, source: str = "levels") -> list[str]:
    """Validate a list of levels; return it in :data:`LEVELS` order.

    Raises
    ------
    ConfigError
        If it is empty, repeats a level or names an unknown one.
    """
    unknown = [lv for lv in levels if lv not in LEVELS]
    if not levels or unknown or len(set(levels)) != len(levels):
        raise ConfigError(
            f"{source} = {list(levels)}; expected one or more distinct levels of {list(LEVELS)}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    return [lv for lv in LEVELS if lv in levels]


def _check(level: str) -> None:
    if level not in LEVELS:
        raise ConfigError(f"unit level {level!r}; expected one of {list(LEVELS)}")


def level_file(name: str, level: str) -> str:
    """File name of an output at ``level``: unchanged for counties, ``<stem>_<level><suffix>`` else.

    Parameters
    ----------
    name : str
        File name (or relative path) of the county output, e.g. ``"distance.gpkg"``.
    level : str
        One of :data:`LEVELS`.

    Returns
    -------
    str

    Examples
    --------
    >>> level_file("distance.gpkg", "prefecture")
    'distance_prefecture.gpkg'
    >>> level_file("moran_change_pct.png", "county")
    'moran_change_pct.png'
    """
    _check(level)
    if level == BASE_LEVEL:
        return name
    p = PurePath(name)
    suffix = "".join(p.suffixes) if p.suffixes else ""
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    return str(p.with_name(f"{stem}_{level}{suffix}"))


def level_layer(name: str, level: str) -> str:
    """Layer name at ``level`` in a file shared by the levels: ``name`` or ``<level>_<name>``.

    Examples
    --------
    >>> level_layer("units", "prefecture")
    'prefecture_units'
    """
    _check(level)
    return name if level == BASE_LEVEL else f"{level}_{name}"


def level_title(level: str) -> str:
    """Plural noun of the units of ``level`` for titles and logs (``counties``, ``prefectures``)."""
    _check(level)
    return _TITLES[level]
