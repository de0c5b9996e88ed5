"""The garbage collector's full passes kept off the objects alive when a stage starts (issue 16)."""

from __future__ import annotations

import gc
import types
import weakref
from pathlib import Path

import pytest

from geo_pipeline._heap import frozen_heap
from geo_pipeline.cli import StageContext, _run_stage
from geo_pipeline.config import Settings


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _no_frozen_heap() -> None:
    assert gc.get_freeze_count() == 0  # the tests start without frozen objects


def test_frozen_heap_freezes_what_exists_and_collects_what_is_new() -> None:
    old = _cycle()  # a cycle of garbage made before the block: frozen with the rest
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        new = _cycle()  # made inside: collected as usual
        gc.collect()
        assert new() is None
        assert old() is not None
        with frozen_heap():  # nested: objects made since are frozen too, unfrozen by the outer block
            assert gc.get_freeze_count() > frozen
        assert gc.get_freeze_count() > frozen
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old() is None  # returned to the collector at the end


def test_frozen_heap_unfreezes_after_an_error() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("stage failed")
    assert gc.get_freeze_count() == 0


def test_each_stage_runs_with_the_heap_frozen(tmp_path: Path) -> None:
    seen: list[int] = []
    module = types.SimpleNamespace(run=lambda ctx: seen.append(gc.get_freeze_count()))
    ctx = StageContext(settings=Settings(), overwrite=False, stage="report")
    _run_stage(module, ctx, ["county"])  # type: ignore[arg-type]
    assert len(seen) == 1 and seen[0] > 1000  # the modules imported so far, at least
    assert gc.get_freeze_count() == 0
