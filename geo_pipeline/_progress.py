"""Progress reporting for long steps, through logging only (the CLI decides output)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["progress", "timed"]


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str, logger: logging.Logger, every_s: float = 2.0
) -> Iterator[T]:
    """Yield ``items``, logging ``desc: i/total`` at INFO at most every ``every_s`` seconds.

    Short loops log nothing; long ones say how far they are.
    """
    start = last = time.perf_counter()
    i = 0
    for i, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            logger.info("%s: %d%s (%.0f s)", desc, i, of, now - start)
    if time.perf_counter() - start >= every_s:
        logger.info("%s: done, %d items in %.1f s", desc, i, time.perf_counter() - start)


class timed:
    """Context manager logging how long a step took (DEBUG, or INFO when slow)."""

    def __init__(self, desc: str, logger: logging.Logger, *, slow_s: float = 2.0) -> None:
        self.desc, self.logger, self.slow_s = desc, logger, slow_s

    def __enter__(self) -> timed:
        self.logger.debug("%s ...", self.desc)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start
        level = logging.INFO if self.elapsed >= self.slow_s else logging.DEBUG
        self.logger.log(level, "%s took %.1f s", self.desc, self.elapsed)
