"""Crosswalk between census county rows (2010, 2020) and today's county polygons.

County codes and territories changed between the 2010 census, the 2020 census
and the boundaries (Amap polygons, about 2022): counties became districts with
new codes, districts were merged or split, prefectures were renamed or
re-coded, and 2020 lists development zones (开发区, 管理区, ...) as separate
rows although they have no polygon of their own.

:func:`match_census_rows` links every census unit row to one or more polygons,
in this order:

1. ``code``: the row's code is a polygon adcode;
   ``prefecture``: a 2010 ``市辖区`` row that stands for a whole prefecture
   without counties (its key is the prefecture code) is linked to every
   polygon of that prefecture when no polygon carries the code itself
   (三亚 2010 -> the four districts created in 2014);
2. ``table``: the rows of the known-changes table
   (``geo_pipeline/data/census_crosswalk.csv``, one documented link per row
   with relation, reason and source, plus an optional user table). A table
   row may add a link to a row that is already code-matched (``transfer``:
   part of its territory moved to another polygon);
3. ``name`` / ``stem``: rows still without a link are matched by their
   normalised name, then by the name stem (``宁河县`` ~ ``宁河区``), first
   among the polygons of the same prefecture code, then of the same province;
   the candidate must be unique and must not be claimed by a code match of
   another row of the same year (this keeps 石家庄's abolished 桥东区 off
   张家口's 桥东区). Rows linked by the table (other than by a ``transfer``)
   are not name-matched: the table wins.

:func:`harmonise` then takes the connected components of the graph whose nodes
are 2010 rows, 2020 rows and polygons and whose edges are these links: each
component with a polygon is one analysis unit, so merges and splits give one
unit with all polygons and census rows involved, and every census row and
every polygon belongs to exactly one component (population is conserved).

``unit_id`` is the smallest adcode of the unit's polygons: a unit of one
polygon keeps its adcode, and the id of a merged unit is stable as long as its
membership is (the ``members`` column lists every adcode).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ._errors import InputError, MissingInputError, UnknownCodeError
from .census import name_stem, normalise_name

__all__ = [
    "CROSSWALK_COLUMNS",
    "RELATIONS",
    "LINK_COLUMNS",
    "MEMBERSHIP_COLUMNS",
    "load_known_changes",
    "read_crosswalk_table",
    "check_crosswalk_table",
    "match_census_rows",
    "harmonise",
]

log = logging.getLogger(__name__)

#: Columns of a known-changes (crosswalk) table.
CROSSWALK_COLUMNS = ["year", "census_code", "census_name", "adcode", "relation", "reason", "source"]

#: Allowed relations. ``same``: same territory, new code or name; ``part``: the
#: row's territory is now part of the polygon; ``split``: the row's territory
#: was divided (one table row per polygon); ``transfer``: part of the row's
#: territory moved to this polygon (added to its other links); ``zone``: a
#: development zone or management area lying in this polygon; ``no_census``:
#: a polygon no census row covers (``year``/``census_*`` empty).
RELATIONS = ("same", "part", "split", "transfer", "zone", "no_census")

#: Columns of the links returned by :func:`match_census_rows`.
LINK_COLUMNS = ["census_id", "year", "adcode", "method", "relation", "detail", "source"]

#: Columns of the membership table returned by :func:`harmonise`.
MEMBERSHIP_COLUMNS = ["node", "kind", "census_id", "year", "adcode", "unit_id", "component"]


# --------------------------------------------------------------------------- tables
def _empty_table() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in CROSSWALK_COLUMNS})
    frame["year"] = frame["year"].astype("Int64")
    return frame


def _clean_table(frame: pd.DataFrame, *, source: str) -> pd.DataFrame:
    missing = [c for c in CROSSWALK_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {missing}; expected {CROSSWALK_COLUMNS}, "
            f"found {list(map(str, frame.columns))}"
        )
    out = frame[CROSSWALK_COLUMNS].copy()
    out["year"] = pd.to_numeric(out["year"], errors="coerce").astype("Int64")
    for col in ("census_code", "adcode"):
        out[col] = pd.Series(
            [_code_or_none(v, source=source, col=col) for v in out[col]], index=out.index, dtype=object
        )
    for col in ("census_name", "relation", "reason", "source"):
        out[col] = pd.Series(
            [normalise_name(v) if col == "census_name" else _text(v) for v in out[col]],
            index=out.index, dtype=object,
        )
    bad_rel = sorted(set(out["relation"]) - set(RELATIONS))
    if bad_rel:
        raise InputError(f"{source}: unknown relation(s) {bad_rel}; expected one of {list(RELATIONS)}")
    bad_year = out[out["relation"].ne("no_census") & ~out["year"].isin([2010, 2020])]
    if len(bad_year):
        raise InputError(
            f"{source}: year must be 2010 or 2020 (rows {list(bad_year.index[:5] + 2)}); "
            "only no_census rows leave it empty"
        )
    no_ref = out[out["relation"].ne("no_census") & out["census_code"].isna() & out["census_name"].eq("")]
    if len(no_ref):
        raise InputError(
            f"{source}: rows {list(no_ref.index[:5] + 2)} give neither census_code nor census_name"
        )
    if out["adcode"].isna().any():
        rows = list(out.index[out["adcode"].isna()][:5] + 2)
        raise InputError(f"{source}: adcode is required (rows {rows})")
    empty_reason = out["reason"].eq("")
    if empty_reason.any():
        raise InputError(f"{source}: every row needs a reason (rows {list(out.index[empty_reason][:5] + 2)})")
    return out.reset_index(drop=True)


def _text(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _code_or_none(value: object, *, source: str, col: str) -> str | None:
    text = _text(value)
    if text == "":
        return None
    if text.endswith(".0"):
        text = text[:-2]
    if not (text.isdigit() and len(text) == 6):
        raise InputError(f"{source}: {col} {value!r} is not a 6-digit administrative code")
    return text


def load_known_changes() -> pd.DataFrame:
    """Load the packaged table of known changes (``geo_pipeline/data/census_crosswalk.csv``).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CROSSWALK_COLUMNS`; codes as 6-digit strings.
    """
    ref = resources.files("geo_pipeline").joinpath("data/census_crosswalk.csv")
    with resources.as_file(ref) as path:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, comment="#", encoding="utf-8")
    return _clean_table(frame, source="geo_pipeline/data/census_crosswalk.csv")


def read_crosswalk_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a user-supplied crosswalk CSV with the columns :data:`CROSSWALK_COLUMNS`.

    Raises
    ------
    MissingInputError
        If the file does not exist.
    InputError
        If a column is missing or a value is malformed.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"crosswalk file {p} not found; fix [population] crosswalk_file")
    try:
        frame = pd.read_csv(p, dtype=str, keep_default_na=False, comment="#", encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{p}: cannot parse as CSV ({exc})") from exc
    return _clean_table(frame, source=str(p))


def _resolve_table_rows(
    table: pd.DataFrame, units: pd.DataFrame, adcodes: set[str], *, source: str
) -> tuple[pd.DataFrame, list[str]]:
    """Census id for each table row; list of problems (unknown codes and names)."""
    problems: list[str] = []
    by_key = {
        (int(y), k): cid
        for y, k, cid in zip(units["year"], units["key"], units["census_id"], strict=True)
        if k is not None
    }
    by_name: dict[tuple[int, str], list[str]] = {}
    for y, k, name, cid in zip(units["year"], units["key"], units["name"], units["census_id"], strict=True):
        if k is None:
            by_name.setdefault((int(y), name), []).append(cid)
    ids: list[str | None] = []
    for i, row in table.iterrows():
        line = int(i) + 2
        if row["adcode"] not in adcodes:
            problems.append(f"line {line}: adcode {row['adcode']} is not a county polygon of the boundaries")
        if row["relation"] == "no_census":
            ids.append(None)
            continue
        year = int(row["year"])
        if row["census_code"] is not None:
            cid = by_key.get((year, row["census_code"]))
            if cid is None:
                problems.append(
                    f"line {line}: census_code {row['census_code']} is no unit row of the {year} table"
                )
            ids.append(cid)
        else:
            found = by_name.get((year, row["census_name"]), [])
            if len(found) != 1:
                what = "no" if not found else f"{len(found)}"
                problems.append(
                    f"line {line}: census_name {row['census_name']!r} matches {what} uncoded unit row(s) "
                    f"of the {year} table; give census_code or a unique name"
                )
                ids.append(None)
            else:
                ids.append(found[0])
    out = table.copy()
    out["census_id"] = pd.Series(ids, index=out.index, dtype=object)
    return out, problems


def check_crosswalk_table(
    table: pd.DataFrame, census_rows: pd.DataFrame, counties: pd.DataFrame, *, source: str = "crosswalk table"
) -> None:
    """Raise :class:`UnknownCodeError` if the table names unknown codes or rows.

    Parameters
    ----------
    table : pandas.DataFrame
        A crosswalk table (:data:`CROSSWALK_COLUMNS`).
    census_rows : pandas.DataFrame
        Classified census rows of both years (:func:`~geo_pipeline.census.classify_county_rows`).
    counties : pandas.DataFrame
        County polygons with ``adcode``.

    Raises
    ------
    UnknownCodeError
        Listing every census code/name that is no unit row of its year and every
        adcode that is not a polygon.
    """
    units = census_rows[census_rows["kind"].eq("unit")]
    _, problems = _resolve_table_rows(table, units, set(counties["adcode"]), source=source)
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UnknownCodeError(
            f"{source}: {len(problems)} unknown code(s) or name(s):\n{shown}{more}\n"
            "Use 2010/2020 census codes of unit rows and adcodes of data_processed/boundaries.gpkg"
        )


# --------------------------------------------------------------------------- matching
def _empty_links() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in LINK_COLUMNS})
    frame["year"] = frame["year"].astype("int64")
    return frame


def match_census_rows(
    census_rows: pd.DataFrame,
    counties: pd.DataFrame,
    *,
    known_changes: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Link census unit rows of both years to county polygons (pure).

    Parameters
    ----------
    census_rows : pandas.DataFrame
        Classified rows of one or both census years
        (:func:`~geo_pipeline.census.classify_county_rows`); only ``kind ==
        "unit"`` rows are linked.
    counties : pandas.DataFrame
        County polygons (attributes suffice): ``adcode``, ``name``,
        ``province_code``, ``prefecture_code``.
    known_changes : pandas.DataFrame, optional
        Crosswalk table (:data:`CROSSWALK_COLUMNS`), e.g.
        :func:`load_known_changes` plus a user table. None: no table.

    Returns
    -------
    pandas.DataFrame
        One row per link (:data:`LINK_COLUMNS`): ``method`` is ``code``,
        ``prefecture``, ``table``, ``name`` or ``stem``; ``relation`` the table
        relation (``same`` for automatic matches); ``detail`` says what matched.
        Unit rows without any link do not appear (see :func:`harmonise`).

    Raises
    ------
    UnknownCodeError
        If the table names a census code/name or an adcode that does not exist.
    """
    units = census_rows[census_rows["kind"].eq("unit")]
    if len(units) == 0 or len(counties) == 0:
        return _empty_links()
    table = _empty_table() if known_changes is None else known_changes
    check_crosswalk_table(table, census_rows, counties, source="crosswalk table")
    resolved, _ = _resolve_table_rows(table, units, set(counties["adcode"]), source="crosswalk table")

    c_code = counties["adcode"].astype(str).to_numpy()
    c_name = np.array([normalise_name(v) for v in counties["name"]], dtype=object)
    c_stem = np.array([name_stem(v) for v in c_name], dtype=object)
    c_prov = counties["province_code"].astype(str).to_numpy()
    c_pref = counties["prefecture_code"].astype(object).to_numpy()
    code_set = set(c_code)
    by_pref: dict[str, list[int]] = {}
    for i, p in enumerate(c_pref):
        by_pref.setdefault(str(p), []).append(i)

    links: list[dict[str, object]] = []

    def add(
        cid: str, year: int, adcode: str, method: str, relation: str, detail: str, source: str = ""
    ) -> None:
        links.append({"census_id": cid, "year": year, "adcode": adcode, "method": method,
                      "relation": relation, "detail": detail, "source": source})

    code_linked: set[str] = set()
    claimed: dict[int, set[str]] = {}
    # 1. code and whole-prefecture matches
    for cid, year, key in zip(units["census_id"], units["year"], units["key"], strict=True):
        if key is None:
            continue
        if key in code_set:
            add(cid, int(year), key, "code", "same", f"code {key}")
            code_linked.add(cid)
            claimed.setdefault(int(year), set()).add(key)
        elif key.endswith("00") and key in by_pref:
            for i in by_pref[key]:
                add(cid, int(year), c_code[i], "prefecture", "split",
                    f"whole prefecture {key} -> its polygon {c_code[i]}")
            code_linked.add(cid)
    # 2. table
    # rows the table links as a whole (not only a ``transfer`` of part of them)
    in_table = set(resolved.loc[resolved["relation"].ne("transfer"), "census_id"].dropna())
    for row in resolved.itertuples(index=False):
        if row.relation == "no_census" or row.census_id is None:
            continue
        add(row.census_id, int(row.year), row.adcode, "table", row.relation, row.reason, row.source)
    # 3. names, for rows neither code-matched nor in the table
    todo = units[~units["census_id"].isin(code_linked) & ~units["census_id"].isin(in_table)]
    free_by_year: dict[int, np.ndarray] = {}
    for cid, year, name, prov, pref in zip(
        todo["census_id"], todo["year"], todo["name"], todo["province_code"], todo["prefecture_code"],
        strict=True,
    ):
        if not name:
            continue
        if int(year) not in free_by_year:
            taken = claimed.get(int(year), set())
            free_by_year[int(year)] = np.array([c not in taken for c in c_code], dtype=bool)
        stem = name_stem(name)
        found = None
        for scope_name, scope in (("prefecture", c_pref == pref), ("province", c_prov == prov)):
            by_name, by_stem = _name_hits(np.flatnonzero(scope & free_by_year[int(year)]), c_name, c_stem,
                                          name, stem)
            for method, hits in (("name", by_name), ("stem", by_stem)):
                if len(hits) == 1:
                    i = hits[0]
                    found = (i, method, f"{method} {name} ~ {c_name[i]} within {scope_name} "
                                        f"{pref if scope_name == 'prefecture' else prov}")
                    break
            if found:
                break
        if found:
            i, method, detail = found
            add(cid, int(year), c_code[i], method, "same", detail)
    if not links:
        return _empty_links()
    out = pd.DataFrame.from_records(links, columns=LINK_COLUMNS)
    out["year"] = out["year"].astype("int64")
    return out.drop_duplicates(["census_id", "adcode"]).reset_index(drop=True)



def _name_hits(
    candidates: np.ndarray, c_name: np.ndarray, c_stem: np.ndarray, name: str, stem: str
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons among ``candidates`` (ascending positions) matching ``name``, and by stem.

    The same positions as ``np.flatnonzero(free & (c_name == name))`` and ``np.flatnonzero(free &
    ((c_stem == stem) | (c_name == stem) | (c_stem == name)))`` with ``candidates =
    np.flatnonzero(free)``. Why: comparing only the free polygons of the scope (a prefecture's
    dozen, a province's hundred) instead of all 2,848 names four times per census row matched by
    name took match_census_rows from 0.10 to 0.066 s CPU on the real tables.
    """
    names, stems = c_name[candidates], c_stem[candidates]
    return candidates[names == name], candidates[(stems == stem) | (names == stem) | (stems == name)]

# --------------------------------------------------------------------------- graph
def harmonise(census_rows: pd.DataFrame, counties: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Find the connected components of the census-row / polygon graph (pure).

    Parameters
    ----------
    census_rows : pandas.DataFrame
        Classified census rows (both years); only unit rows become nodes.
    counties : pandas.DataFrame
        County polygons with ``adcode``.
    links : pandas.DataFrame
        Output of :func:`match_census_rows`.

    Returns
    -------
    pandas.DataFrame
        One row per node (:data:`MEMBERSHIP_COLUMNS`): ``kind`` is
        ``"census"`` or ``"polygon"``; ``component`` numbers the component;
        ``unit_id`` is the smallest adcode of the component's polygons (None
        for a component without polygon, i.e. an unmatched census row).
    """
    units = census_rows[census_rows["kind"].eq("unit")]
    c_nodes = list(units["census_id"])
    p_nodes = list(counties["adcode"].astype(str))
    n_c = len(c_nodes)
    index = {cid: i for i, cid in enumerate(c_nodes)}
    index.update({a: n_c + j for j, a in enumerate(p_nodes)})
    n = n_c + len(p_nodes)
    if n == 0:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in MEMBERSHIP_COLUMNS})
        frame["component"] = frame["component"].astype("int64")
        frame["year"] = frame["year"].astype("Int64")
        return frame
    rows = [index[c] for c in links["census_id"]]
    cols = [index[a] for a in links["adcode"]]
    graph = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    comp_ids: dict[int, str] = {}
    for j, a in enumerate(p_nodes):
        lab = int(labels[n_c + j])
        if lab not in comp_ids or a < comp_ids[lab]:
            comp_ids[lab] = a
    out = pd.DataFrame(
        {
            "node": pd.Series(
                [f"census:{c}" for c in c_nodes] + [f"polygon:{a}" for a in p_nodes], dtype=object
            ),
            "kind": pd.Series(["census"] * n_c + ["polygon"] * len(p_nodes), dtype=object),
            "census_id": pd.Series(c_nodes + [None] * len(p_nodes), dtype=object),
            "year": pd.array(list(units["year"]) + [pd.NA] * len(p_nodes), dtype="Int64"),
            "adcode": pd.Series([None] * n_c + p_nodes, dtype=object),
            "unit_id": pd.Series([comp_ids.get(int(lab)) for lab in labels], dtype=object),
            "component": labels.astype("int64"),
        }
    )
    return out
