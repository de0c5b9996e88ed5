"""Tests of the spatial weights: fast queen = libpysal's Queen, geodesic KNN/distance, island links."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
from libpysal import weights as lw
from shapely.geometry import MultiPolygon, Polygon, box

from geo_pipeline import CRSError, GeometryError, InputError
from geo_pipeline._io import read_layer
from geo_pipeline.weights import (
    UnitWeights,
    build_weights,
    distance_pairs,
    equal_area_centroids,
    knn_pairs,
    queen_pairs,
    weights_key,
)

GEOD = pyproj.Geod(ellps="WGS84")
UTM50 = "EPSG:32650"  # projected CRS over eastern China


def libpysal_queen(geoms: gpd.GeoSeries) -> set[tuple[int, int]]:
    """Return libpysal.weights.Queen neighbour pairs (i < j): the reference."""
    frame = gpd.GeoDataFrame(geometry=geoms.reset_index(drop=True))
    with warnings.catch_warnings():  # libpysal warns about islands / components
        warnings.simplefilter("ignore", UserWarning)
        w = lw.Queen.from_dataframe(frame, use_index=False)
    return {(min(i, j), max(i, j)) for i, nb in w.neighbors.items() for j in nb}


def lattice(nrow: int = 4, ncol: int = 5, *, size: float = 10_000.0, crs: str = UTM50) -> gpd.GeoDataFrame:
    """Make nrow x ncol squares of ``size`` m, ids 'r<row>c<col>', near (500 km E, 3,300 km N) in UTM 50N."""
    x0, y0 = 500_000.0, 3_300_000.0
    geoms, ids = [], []
    for r in range(nrow):
        for c in range(ncol):
            geoms.append(box(x0 + c * size, y0 + r * size, x0 + (c + 1) * size, y0 + (r + 1) * size))
            ids.append(f"r{r}c{c}")
    return gpd.GeoDataFrame({"unit_id": ids}, geometry=geoms, crs=crs)


def with_islands(size: float = 10_000.0) -> gpd.GeoDataFrame:
    """Make a 4x5 lattice, an island (30 km east of r0c4) and a two-square group to the north-east."""
    base = lattice(size=size)
    x0, y0 = 500_000.0, 3_300_000.0
    extra = gpd.GeoDataFrame(
        {"unit_id": ["island", "grpA", "grpB"]},
        geometry=[
            box(x0 + 7 * size, y0, x0 + 8 * size, y0 + size),  # 2 squares east of r0c4
            box(x0 + 7 * size, y0 + 5 * size, x0 + 8 * size, y0 + 6 * size),
            box(x0 + 8 * size, y0 + 5 * size, x0 + 9 * size, y0 + 6 * size),
        ],
        crs=base.crs,
    )
    return gpd.GeoDataFrame(pd.concat([base, extra], ignore_index=True), crs=base.crs)


# ---------------------------------------------------------------------------
# queen contiguity
# ---------------------------------------------------------------------------
def test_queen_pairs_on_lattice_counts() -> None:
    # 4x5 queen lattice: horizontal 4*4 + vertical 3*5 + 2 diagonals per inner cell corner 3*4*2
    i, j = queen_pairs(lattice().geometry.values)
    assert len(i) == 16 + 15 + 24
    assert (i < j).all()


def test_queen_pairs_equal_libpysal_on_tricky_shapes() -> None:
    # corner-only touch, multipolygon parts, a hole with an inner unit, an island, shuffled order
    shapes = [
        box(0, 0, 2, 2),
        box(2, 2, 4, 4),  # touches the first at one corner only (queen, not rook)
        MultiPolygon([box(4, 0, 5, 1), box(6, 0, 7, 1)]),  # second part touches nothing
        Polygon([(8, 0), (14, 0), (14, 6), (8, 6)], [[(10, 2), (12, 2), (12, 4), (10, 4)]]),
        box(10, 2, 12, 4),  # fills the hole: shares the hole's vertices
        box(20, 20, 21, 21),  # island
        box(2, 0, 4, 2),  # shares an edge with the first and a corner with the second
        box(7, 0, 8, 1),  # touches the multipolygon's second part and the holed polygon
        box(30, 0, 32, 2),
        box(32, 1, 34, 3),  # T-junction: touches the previous box but shares no vertex
    ]
    rng = np.random.default_rng(3)
    order = rng.permutation(len(shapes))
    geoms = gpd.GeoSeries([shapes[k] for k in order], crs=UTM50)
    i, j = queen_pairs(geoms.values)
    ours = set(zip(i.tolist(), j.tolist(), strict=True))
    assert ours == libpysal_queen(geoms)
    # by hand: 0-1 (corner), 0-6, 1-6, 2-6 (corner), 2-7, 3-7, 3-4 (hole); not the T-junction
    expected = {(0, 1), (0, 6), (1, 6), (2, 6), (2, 7), (3, 7), (3, 4)}
    pos = {int(k): p for p, k in enumerate(order)}
    assert ours == {(min(pos[a], pos[b]), max(pos[a], pos[b])) for a, b in expected}


def test_queen_pairs_degenerate_inputs() -> None:
    assert [len(a) for a in queen_pairs([])] == [0, 0]
    assert [len(a) for a in queen_pairs([box(0, 0, 1, 1)])] == [0, 0]


def lexsort_queen_pairs(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return queen pairs as the previous ``queen_pairs`` found them (lexsort of all vertices): reference."""
    geoms = np.asarray(geometries, dtype=object)
    n = len(geoms)
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    x, y = coords[:, 0], coords[:, 1]
    order = np.lexsort((y, x))
    x, y, owner = x[order], y[order], owner[order]
    new_group = np.ones(len(x), dtype=bool)
    new_group[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
    group = np.cumsum(new_group) - 1
    shared = np.bincount(group)[group] > 1
    group, owner = group[shared], owner[shared]
    rows, cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for d in range(1, len(group)):
        hit = group[d:] == group[:-d]
        if not hit.any():
            break
        a, b = owner[:-d][hit], owner[d:][hit]
        rows.append(a[a != b])
        cols.append(b[a != b])
    a, b = np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)
    key = np.unique(np.minimum(a, b) * n + np.maximum(a, b))
    return key // n, key % n


def assert_same_pairs(geoms: np.ndarray) -> None:
    """Assert queen_pairs equals the lexsort reference, values and dtypes."""
    got, ref = queen_pairs(geoms), lexsort_queen_pairs(geoms)
    for g, r in zip(got, ref, strict=True):
        assert g.dtype == r.dtype == np.int64
        np.testing.assert_array_equal(g, r)


def test_queen_pairs_hash_collisions_resolved_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    # weak hashes (equal vertices still get equal hashes): all vertices in one group, or grouped by x only
    # (x modulo 3): every group holds different vertices; the pairs are those of the lexsort
    from geo_pipeline import weights as wmod

    real = wmod._vertex_keys
    shapes = lattice(5, 6).geometry.to_numpy()
    tricky = np.array(
        [
            box(0, 0, 2, 2),
            box(2, 2, 4, 4),
            MultiPolygon([box(4, 0, 5, 1), box(6, 0, 7, 1)]),
            box(2, 0, 4, 2),
            box(7, 0, 8, 1),
            Polygon([(-0.0, 0), (-1, 0), (-1, 1), (-0.0, 1)]),  # -0.0 touches the first box's 0.0
            Polygon([(1, 1), (1.5, 1), (1.5, 1.5), (1, 1)]),  # closing vertex repeats the first
        ],
        dtype=object,
    )
    for geoms in (shapes, tricky):
        assert_same_pairs(geoms)
        for by_x in (False, True):

            def weak(coords: np.ndarray, by_x: bool = by_x) -> tuple[np.ndarray, int]:
                keys, bits = real(coords)
                mask = np.uint64((1 << bits) - 1)
                high = np.floor(coords[:, 0]).astype(np.int64).astype(np.uint64) % np.uint64(3) if by_x else 0
                return (keys & mask) | (np.uint64(high) << np.uint64(62)), bits

            monkeypatch.setattr(wmod, "_vertex_keys", weak)
            assert_same_pairs(geoms)
            monkeypatch.setattr(wmod, "_vertex_keys", real)
    i, j = queen_pairs(tricky)
    assert (0, 5) in set(zip(i.tolist(), j.tolist(), strict=True))


@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_queen_pairs_equal_lexsort_reference_on_real_units(run_stage: Callable[[str], Path]) -> None:
    # the hash sort finds exactly the pairs of the lexsort of all vertices (7,817 for the counties)
    path = run_stage("boundaries") / "boundaries.gpkg"
    for layer in ("counties", "prefectures"):
        assert_same_pairs(read_layer(path, layer).geometry.to_numpy())


# ---------------------------------------------------------------------------
# KNN and distance band: geodesic, checked against brute force
# ---------------------------------------------------------------------------
def _random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(74.0, 134.0, n), rng.uniform(18.0, 53.0, n)


def _all_pairs_km(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    n = len(lon)
    _, _, d = GEOD.inv(np.repeat(lon, n), np.repeat(lat, n), np.tile(lon, n), np.tile(lat, n))
    out = np.asarray(d).reshape(n, n) / 1000.0
    np.fill_diagonal(out, np.inf)
    return out


def test_knn_pairs_match_brute_force_geodesic() -> None:
    lon, lat = _random_points(120, seed=1)
    d = _all_pairs_km(lon, lat)
    focal, neighbor = knn_pairs(lon, lat, k=5)
    assert len(focal) == 120 * 5
    for i in range(120):
        expected = set(np.argsort(d[i], kind="stable")[:5].tolist())
        assert set(neighbor[focal == i].tolist()) == expected


def test_distance_pairs_match_brute_force_geodesic() -> None:
    lon, lat = _random_points(150, seed=2)
    d = _all_pairs_km(lon, lat)
    i, j = distance_pairs(lon, lat, distance_km=400.0)
    ei, ej = np.nonzero(np.triu(d <= 400.0, k=1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(ei.tolist(), ej.tolist(), strict=True))
    assert len(i) > 50  # the threshold is not trivial


def test_equal_area_centroids_of_projected_squares() -> None:
    # a square's centroid is its centre, whatever the CRS: compare with the centre converted to lon/lat
    grid = lattice(2, 2)
    lon, lat = equal_area_centroids(grid.geometry)
    centres = gpd.GeoSeries(grid.geometry.centroid, crs=grid.crs).to_crs(4326)
    _, _, metres = GEOD.inv(lon, lat, centres.x.to_numpy(), centres.y.to_numpy())
    assert np.max(metres) < 1.0


# ---------------------------------------------------------------------------
# building, islands, subsets
# ---------------------------------------------------------------------------
def test_islands_and_groups_linked_to_nearest() -> None:
    units = with_islands()
    w = build_weights(units)
    ids = list(w.ids)
    # before linking: the lattice, the island and the group are three components
    assert w.component[ids.index("r0c0")] == 0
    assert w.component[ids.index("island")] != w.component[ids.index("grpA")]
    assert w.component[ids.index("grpA")] == w.component[ids.index("grpB")] != 0
    assert w.n_links == 2
    links = w.links.set_index("unit_id")
    # the island's nearest unit is r0c4 (30 km west; the group is 50 km north); the group's
    # nearest pair is grpA - r3c4 (sqrt(30^2 + 20^2) = 36 km)
    assert links.loc["island", "neighbor_id"] == "r0c4"
    assert links.loc["grpA", "neighbor_id"] == "r3c4"
    c = gpd.GeoSeries(units.geometry.centroid, crs=units.crs).to_crs(4326)
    pos = {u: k for k, u in enumerate(units["unit_id"])}
    _, _, metres = GEOD.inv(c.x[pos["island"]], c.y[pos["island"]], c.x[pos["r0c4"]], c.y[pos["r0c4"]])
    assert links.loc["island", "distance_km"] == pytest.approx(metres / 1000.0, abs=1e-3)
    assert links.loc["island", "distance_km"] == pytest.approx(30.0, abs=0.1)
    # symmetric, connected, every unit has a neighbour
    sets = w.neighbor_sets()
    assert all(sets[j].__contains__(i) for i in range(w.n) for j in sets[i])
    assert w.graph().n_components == 1
    assert (w.cardinalities >= 1).all()
    assert w.linked.sum() == 4


def test_link_k_adds_more_links() -> None:
    w = build_weights(with_islands(), link_k=2)
    assert w.n_links == 4
    assert w.graph().n_components == 1


def test_two_small_components_join_then_reach_main() -> None:
    # two far islands near each other: the first round joins them, a second round joins the pair
    units = lattice(2, 2)
    x0, y0 = 500_000.0, 3_300_000.0
    far = gpd.GeoDataFrame(
        {"unit_id": ["f1", "f2"]},
        geometry=[
            box(x0 + 500_000, y0, x0 + 510_000, y0 + 10_000),
            box(x0 + 530_000, y0, x0 + 540_000, y0 + 10_000),
        ],
        crs=units.crs,
    )
    both = gpd.GeoDataFrame(pd.concat([units, far], ignore_index=True), crs=units.crs)
    w = build_weights(both, max_link_km=None)
    assert w.graph().n_components == 1 and len(w.unlinked) == 0
    pairs = {frozenset(p) for p in zip(w.links.unit_id, w.links.neighbor_id, strict=True)}
    assert frozenset({"f1", "f2"}) in pairs
    assert {"r0c1", "r1c1"} & {x for p in pairs for x in p}
    # with the default 300 km limit the pair (30 km apart) is joined, but not to the lattice 490 km away
    limited = build_weights(both)
    assert [set(p) for p in zip(limited.links.unit_id, limited.links.neighbor_id, strict=True)] == [
        {"f1", "f2"}
    ]
    assert limited.graph().n_components == 2
    left = limited.unlinked
    assert len(left) == 1 and left.loc[0, "unit_id"] == "f1" and left.loc[0, "n_units"] == 2
    assert left.loc[0, "members"] == "f1+f2" and left.loc[0, "neighbor_id"] in {"r0c1", "r1c1"}
    assert left.loc[0, "distance_km"] == pytest.approx(490.0, abs=1.0)  # centroid to centroid, UTM scale
    assert "beyond the 300 km limit (max_island_link_km)" in left.loc[0, "reason"]
    assert "1 left isolated" in limited.description
    # graph and unlinked are computed once per weights object; unlinked hands out copies
    assert limited.graph() is limited.graph()
    left.loc[0, "unit_id"] = "changed"
    again = limited.unlinked
    assert again.loc[0, "unit_id"] == "f1" and again is not limited.unlinked
    pd.testing.assert_frame_equal(again, limited._unlinked())
    fresh = UnitWeights.from_arrays(limited.to_arrays())  # same weights, nothing cached yet
    pd.testing.assert_frame_equal(fresh.unlinked, again)
    assert fresh.description == limited.description
    # a limit above the gap links everything again
    assert build_weights(both, max_link_km=500).graph().n_components == 1


def test_max_link_km_leaves_far_island_isolated_with_no_neighbours() -> None:
    # the island is 30 km (centroids) east of r0c4, the group's nearest unit r3c4 36 km away
    units = with_islands()
    assert len(build_weights(units, max_link_km=37).unlinked) == 0
    mid = build_weights(units, max_link_km=31)
    assert list(mid.links["unit_id"]) == ["island"] and list(mid.unlinked["unit_id"]) == ["grpA"]
    assert mid.unlinked.loc[0, "neighbor_id"] == "r3c4" and mid.unlinked.loc[0, "members"] == "grpA+grpB"
    assert mid.unlinked.loc[0, "distance_km"] == pytest.approx(36.06, abs=0.05)
    cut = build_weights(units, max_link_km=29)
    ids = list(cut.ids)
    assert cut.cardinalities[ids.index("island")] == 0 and cut.n_links == 0
    assert list(cut.unlinked["unit_id"]) == ["grpA", "island"]  # components by size
    assert cut.unlinked.loc[1, "neighbor_id"] == "r0c4"
    graph = cut.graph()
    assert graph.n_components == 3 and list(graph.isolates) == ["island"]
    with pytest.raises(InputError, match="max_link_km must be > 0"):
        build_weights(units, max_link_km=0)


def test_knn_and_distance_kinds() -> None:
    units = with_islands()
    knn = build_weights(units, kind="knn", k=3)
    assert (knn.cardinalities >= 3).all()
    assert knn.graph().n_components == 1
    band = build_weights(units, kind="distance", distance_km=15.0)
    # 10 km squares: rook neighbours (10 km) and diagonals (14.1 km) within 15 km; the
    # island (30 km away) and the group get linked
    assert band.n_links == 2
    i, j = queen_pairs(lattice().geometry.values)
    lattice_pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    sets = band.neighbor_sets(links=False)
    band_pairs = {(a, b) for a in range(20) for b in sets[a] if a < b and b < 20}
    assert band_pairs == lattice_pairs
    assert "distance band 15.0 km" in band.description


def test_subset_relinks_new_islands() -> None:
    # a 1x3 strip: removing the middle unit leaves two islands that must be linked again
    units = lattice(1, 3)
    w = build_weights(units)
    assert w.n_links == 0
    sub = w.subset(np.array([True, False, True]))
    assert list(sub.ids) == ["r0c0", "r0c2"]
    assert sub.n_links == 1 and sub.component.tolist() == [0, 1]
    assert sub.graph().n_components == 1
    assert sub.links.iloc[0]["distance_km"] == pytest.approx(20.0, abs=0.1)
    assert w.subset(np.ones(3, dtype=bool)) is w
    linked = build_weights(with_islands())
    keep = np.ones(linked.n, dtype=bool)
    keep[list(linked.ids).index("grpB")] = False
    sub2 = linked.subset(keep)
    assert sub2.n_links == 2 and int(sub2.component.max()) == 2  # lattice, island, grpA
    assert set(sub2.links["unit_id"]) == {"island", "grpA"}
    with pytest.raises(InputError, match="expected 3 flags, found 2"):
        w.subset(np.array([True, False]))


def test_graph_keeps_order_of_string_ids_and_shuffled_index() -> None:
    units = lattice(3, 3).sample(frac=1.0, random_state=4)
    units.index = [f"row{k}" for k in range(len(units))]
    w = build_weights(units)
    g = w.graph()
    assert list(g.unique_ids) == list(units["unit_id"])
    assert g.n_edges == 2 * 20  # 3x3 queen: 6 + 6 + 8 pairs
    assert (np.asarray(g.sparse.sum(axis=1)).ravel() == w.cardinalities).all()


def test_cache_arrays_roundtrip_and_key(tmp_path: Path) -> None:
    units = with_islands()
    w = build_weights(units)
    path = tmp_path / "w.npz"
    np.savez(path, **w.to_arrays())  # type: ignore[arg-type]
    with np.load(path, allow_pickle=False) as data:
        back = UnitWeights.from_arrays({k: data[k] for k in data.files})
    assert list(back.ids) == list(w.ids)
    assert back.neighbor_sets() == w.neighbor_sets()
    assert back.links.equals(w.links)
    assert back.description == w.description
    key = weights_key(units, kind="queen", k=6, distance_km=150.0, link_k=1)
    assert key == weights_key(units.copy(), kind="queen", k=6, distance_km=150.0, link_k=1)
    assert key != weights_key(units, kind="knn", k=6, distance_km=150.0, link_k=1)
    moved = units.copy()
    moved.loc[0, "geometry"] = shapely.affinity.translate(moved.geometry.iloc[0], 1.0)
    assert key != weights_key(moved, kind="queen", k=6, distance_km=150.0, link_k=1)
    renamed = units.assign(unit_id=units["unit_id"].str.upper())
    assert key != weights_key(renamed, kind="queen", k=6, distance_km=150.0, link_k=1)
    # the island-link limit changes the weights, so it is part of the key (default 300 km)
    assert key == weights_key(units, kind="queen", k=6, distance_km=150.0, link_k=1, max_link_km=300.0)
    for limit in (29.0, None):
        assert key != weights_key(units, kind="queen", k=6, distance_km=150.0, link_k=1, max_link_km=limit)
    cut = build_weights(units, max_link_km=29.0)
    np.savez(path, **cut.to_arrays())  # type: ignore[arg-type]
    with np.load(path, allow_pickle=False) as data:
        back_cut = UnitWeights.from_arrays({k: data[k] for k in data.files})
    assert back_cut.max_link_km == 29.0 and back_cut.unlinked.equals(cut.unlinked)
    arrays = w.to_arrays()
    arrays["meta"] = np.array('{"format": 0, "kind": "queen", "options": {}}')
    with pytest.raises(InputError, match="format 0, expected 2"):
        UnitWeights.from_arrays(arrays)
    with pytest.raises(InputError, match=r"missing arrays \['focal'\]"):
        UnitWeights.from_arrays({k: v for k, v in w.to_arrays().items() if k != "focal"})


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
def test_bad_inputs() -> None:
    units = lattice(2, 2)
    with pytest.raises(InputError, match=r"missing column\(s\) \['unit_id'\]"):
        build_weights(units.drop(columns="unit_id"))
    with pytest.raises(InputError, match="must be unique"):
        build_weights(units.assign(unit_id="same"))
    with pytest.raises(InputError, match="weights kind 'rook' unknown"):
        build_weights(units, kind="rook")
    with pytest.raises(InputError, match="k and link_k must be >= 1"):
        build_weights(units, link_k=0)
    with pytest.raises(CRSError, match="no CRS"):
        build_weights(units.set_crs(None, allow_override=True))
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    bad = units.copy()
    bad.loc[0, "geometry"] = bowtie
    with pytest.raises(GeometryError, match="1 invalid geometries"):
        build_weights(bad)


def test_empty_and_single_unit() -> None:
    empty = build_weights(lattice().iloc[:0])
    assert empty.n == 0 and empty.n_links == 0 and len(empty.links) == 0
    one = build_weights(lattice().iloc[:1])
    assert one.n == 1 and one.cardinalities.tolist() == [0]
    assert one.graph().n == 1  # the isolate as a zero-weight self-loop


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_counties_queen_equals_libpysal_and_islands(run_stage: Callable[[str], Path]) -> None:
    counties = read_layer(run_stage("boundaries") / "boundaries.gpkg", "counties")
    # identical neighbour sets to libpysal's Queen on the real (GCJ-02 -> WGS84) boundaries
    i, j = queen_pairs(counties.geometry.values)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == libpysal_queen(counties.geometry)
    w = build_weights(counties.rename(columns={"adcode": "unit_id"}), max_link_km=None)
    names = counties["name"].to_numpy()
    sizes = np.bincount(w.component)
    islands = {names[k] for k in range(w.n) if sizes[w.component[k]] == 1}
    # PROVENANCE.md: units without a land neighbour (Taiwan is excluded from the analysis set)
    known = {"长海县", "岱山县", "金门县", "南澳县", "西沙区", "南沙区", "台湾省"}
    assert islands == known & set(names)
    groups = [set(names[w.component == c]) for c in range(1, len(sizes)) if sizes[c] > 1]
    assert any({"美兰区", "崖州区"} <= g for g in groups)  # Hainan island (Haikou and Sanya districts)
    assert any("定海区" in g for g in groups)  # Zhoushan
    assert any("思明区" in g for g in groups)  # Xiamen island
    assert w.n_links == len(sizes) - 1  # one link per joined component with link_k = 1
    assert w.graph().n_components == 1
    # every link is short enough to be a nearest neighbour across a strait, except the Sansha islands
    far = w.links[w.links["distance_km"] > 100]
    assert set(names[np.isin(w.ids, far["unit_id"])]) <= {"西沙区", "南沙区"}
    # with the default 300 km limit exactly the two Sansha links disappear (西沙区 -> 万宁市 405 km,
    # 南沙区 -> 西沙区 898 km) and both districts are left isolated and reported
    limited = build_weights(counties.rename(columns={"adcode": "unit_id"}))
    pos = {uid: k for k, uid in enumerate(w.ids)}

    def named(frame: pd.DataFrame) -> set[tuple[str, str]]:
        return {
            (names[pos[a]], names[pos[b]])
            for a, b in zip(frame["unit_id"], frame["neighbor_id"], strict=True)
        }

    assert named(w.links) - named(limited.links) == {("西沙区", "万宁市"), ("南沙区", "西沙区")}
    assert named(limited.links) <= named(w.links) and limited.n_links == w.n_links - 2
    assert sorted(names[pos[u]] for u in limited.unlinked["unit_id"]) == ["南沙区", "西沙区"]
    assert sorted(round(d) for d in limited.unlinked["distance_km"]) == [405, 898]
