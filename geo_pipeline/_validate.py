"""The one validation module: collect every problem, then raise one error.

Each check appends human-readable problems (what was expected, what was found,
how to fix it) to a :class:`Problems` collector; :meth:`Problems.raise_if_any`
raises a single exception listing them all. Stages call :func:`check_frame`
at their boundary, never ``assert``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyproj

from ._errors import CRSError, GeometryError, InputError, UnknownCodeError

__all__ = ["Problems", "check_frame", "check_same_crs", "check_codes", "as_crs"]

Kind = Literal["numeric", "integer", "string", "bool", "any"]


@dataclass
class Problems:
    """Collector of validation problems for one input.

    Parameters
    ----------
    name : str
        Name of the input as the user knows it (layer or file name).
    """

    name: str
    items: list[tuple[type[InputError], str]] = field(default_factory=list)

    def add(self, message: str, *, kind: type[InputError] = InputError) -> None:
        """Record one problem."""
        self.items.append((kind, message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        """Raise one error listing every problem; do nothing when there are none.

        Raises
        ------
        InputError
            Or the more specific :class:`CRSError`, :class:`GeometryError` or
            :class:`UnknownCodeError` when all problems are of that kind.
        """
        if not self.items:
            return
        kinds = {k for k, _ in self.items}
        cls = kinds.pop() if len(kinds) == 1 else InputError
        lines = "\n".join(f"  - {msg}" for _, msg in self.items)
        n = len(self.items)
        raise cls(f"{self.name}: {n} problem{'s' if n > 1 else ''} found:\n{lines}")


def as_crs(value: Any) -> pyproj.CRS:
    """Parse a CRS once with :meth:`pyproj.CRS.from_user_input`.

    Raises
    ------
    CRSError
        If ``value`` is not a CRS pyproj understands.
    """
    try:
        return pyproj.CRS.from_user_input(value)
    except pyproj.exceptions.CRSError as exc:
        raise CRSError(
            f"expected a CRS such as 'EPSG:4326', found {value!r}: {exc}"
        ) from exc


def _kind_ok(series: pd.Series, kind: Kind) -> bool:
    if kind == "any":
        return True
    if kind == "numeric":
        return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if kind == "integer":
        return pd.api.types.is_integer_dtype(series)
    if kind == "bool":
        return pd.api.types.is_bool_dtype(series)
    if kind == "string":
        return pd.api.types.is_string_dtype(series) or pd.api.types.is_object_dtype(series)
    raise ValueError(f"unknown column kind {kind!r}")


def check_frame(
    frame: pd.DataFrame,
    *,
    name: str,
    columns: Mapping[str, Kind] | Sequence[str] = (),
    crs: Any = None,
    geometry: bool | None = None,
    geom_types: Iterable[str] | None = None,
    unique: Sequence[str] = (),
    not_null: Sequence[str] = (),
    known_valid: bool = False,
    problems: Problems | None = None,
) -> Problems:
    """Check a (Geo)DataFrame against what a stage expects.

    Parameters
    ----------
    frame : pandas.DataFrame or geopandas.GeoDataFrame
        The input to check. It is not modified.
    name : str
        Name of the input used in messages (e.g. ``"units layer"``).
    columns : mapping or sequence, optional
        Required columns, optionally with the kind of values expected
        (``"numeric"``, ``"integer"``, ``"string"``, ``"bool"``, ``"any"``).
    crs : CRS-like, ``"geographic"``, ``"projected"`` or None, optional
        Required CRS. ``None`` only requires that a CRS is set when
        ``geometry`` is true.
    geometry : bool, optional
        If true, the frame must be a GeoDataFrame with a CRS and valid,
        non-empty geometries.
    geom_types : iterable of str, optional
        Allowed geometry types, e.g. ``("Polygon", "MultiPolygon")``.
    unique : sequence of str, optional
        Columns whose values must be unique.
    not_null : sequence of str, optional
        Columns that must not contain missing values.
    known_valid : bool, default False
        The caller has already checked the geometries' validity (e.g. the
        boundaries stage, whose :func:`geo_pipeline.boundaries.repair_polygons`
        returns only valid polygons): validity is not checked again; the other
        geometry checks are made.
    problems : Problems, optional
        Collector to add to; a new one is made when not given.

    Returns
    -------
    Problems
        The collector; call :meth:`Problems.raise_if_any` to raise.
    """
    p = problems if problems is not None else Problems(name)
    if isinstance(columns, Mapping):
        wanted: dict[str, Kind] = dict(columns)
    else:
        wanted = {c: "any" for c in columns}
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        p.add(
            f"missing column(s) {missing}; expected {list(wanted)}, found {list(map(str, frame.columns))}"
        )
    for col, kind in wanted.items():
        if col in frame.columns and not _kind_ok(frame[col], kind):
            p.add(f"column {col!r} should be {kind}, found dtype {frame[col].dtype}")
    for col in unique:
        if col in frame.columns:
            dup = frame[col][frame[col].duplicated()].unique()
            if len(dup):
                p.add(f"column {col!r} must be unique; {len(dup)} duplicated value(s), e.g. {list(dup[:5])}")
    for col in not_null:
        if col in frame.columns:
            n = int(frame[col].isna().sum())
            if n:
                p.add(f"column {col!r} has {n} missing value(s); fill or drop those rows")
    if geometry:
        _check_geometry(frame, p, crs=crs, geom_types=geom_types, known_valid=known_valid)
    return p


def _check_geometry(
    frame: pd.DataFrame, p: Problems, *, crs: Any, geom_types: Iterable[str] | None, known_valid: bool = False
) -> None:
    import geopandas as gpd
    import shapely

    if not isinstance(frame, gpd.GeoDataFrame) or frame._geometry_column_name not in frame.columns:
        p.add("expected a GeoDataFrame with a geometry column, found none", kind=GeometryError)
        return
    if frame.crs is None:
        p.add("layer has no CRS; set one (e.g. EPSG:4326) before running the stage", kind=CRSError)
    elif crs is not None:
        if crs == "geographic":
            if not frame.crs.is_geographic:
                p.add(f"expected a geographic CRS (lon/lat), found {frame.crs.to_string()}", kind=CRSError)
        elif crs == "projected":
            if not frame.crs.is_projected:
                p.add(f"expected a projected CRS, found {frame.crs.to_string()}", kind=CRSError)
        else:
            want = as_crs(crs)
            if not frame.crs.equals(want):
                p.add(
                    f"expected CRS {want.to_string()}, found {frame.crs.to_string()}; "
                    f"reproject with .to_crs({want.to_string()!r})",
                    kind=CRSError,
                )
    geoms = frame.geometry.values
    n_missing = int(np.sum(shapely.is_missing(geoms)))
    n_empty = int(np.sum(shapely.is_empty(geoms) & ~shapely.is_missing(geoms)))
    if n_missing or n_empty:
        p.add(f"{n_missing} missing and {n_empty} empty geometries; drop or repair them", kind=GeometryError)
    # a layer read from a stage output whose SHA-256 matches the manifest was validated where its
    # geometry entered the pipeline (boundaries, user layers): not checked again (~4 M vertices)
    trusted = known_valid or bool(frame.attrs.get("geo_pipeline_written_by"))
    invalid = np.zeros(len(geoms), bool) if trusted else ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)
    if invalid.any():
        idx = list(frame.index[invalid][:5])
        reason = shapely.is_valid_reason(geoms[invalid][:1])[0]
        p.add(
            f"{int(invalid.sum())} invalid geometries (rows {idx}; first: {reason}); "
            "repair with shapely.make_valid",
            kind=GeometryError,
        )
    if geom_types is not None:
        allowed = set(geom_types)
        found = set(frame.geometry.geom_type.dropna().unique())
        bad = found - allowed
        if bad:
            p.add(f"expected geometry types {sorted(allowed)}, found {sorted(bad)}", kind=GeometryError)


def check_same_crs(*layers: tuple[str, Any]) -> None:
    """Raise :class:`CRSError` unless all named layers share one CRS.

    Parameters
    ----------
    *layers : tuple of (str, GeoDataFrame or GeoSeries)
        Name and layer pairs.

    Raises
    ------
    CRSError
        When a layer has no CRS or two CRSs differ. A mismatch before a join
        or overlay is an error, never a warning.
    """
    p = Problems("CRS check")
    crss = [(name, getattr(layer, "crs", None)) for name, layer in layers]
    for name, crs in crss:
        if crs is None:
            p.add(f"{name} has no CRS", kind=CRSError)
    known = [(n, c) for n, c in crss if c is not None]
    if known:
        n0, c0 = known[0]
        for n, c in known[1:]:
            if not c.equals(c0):
                p.add(
                    f"{n} is in {c.to_string()} but {n0} is in {c0.to_string()}; "
                    f"reproject one of them (GCJ-02 data must be converted to WGS84 first)",
                    kind=CRSError,
                )
    p.raise_if_any()


def check_codes(codes: Iterable[Any], known: Iterable[Any], *, name: str) -> None:
    """Raise :class:`UnknownCodeError` listing codes that are not in ``known``."""
    known_set = set(known)
    unknown = sorted({str(c) for c in codes if c not in known_set})
    if unknown:
        shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise UnknownCodeError(f"{name}: {len(unknown)} unknown code(s): {shown}")
