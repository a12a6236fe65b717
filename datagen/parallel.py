"""Process-parallel map over work units with a progress bar.

Results always come back paired with the key of the unit that produced them: the original stage 6
matched ``imap_unordered`` results to file names by position, so a slow file could get another
file's verdict and valid patches were deleted. Here completion order never matters.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence

from tqdm import tqdm

from datagen.storage import InputError

__all__ = ["WorkUnit", "map_units"]

WorkUnit = tuple[str, object]
_CONTEXT = None


def _context():
    """forkserver: workers start from a clean server process (no inherited threads or locks)."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["datagen.pipeline"])
    return _CONTEXT


def _init_worker() -> None:
    import cv2

    # One process per core: OpenCV's own thread pool would oversubscribe the cores.
    cv2.setNumThreads(1)


def _call(task: tuple[Callable, WorkUnit]) -> tuple[str, dict]:
    fn, (key, payload) = task
    try:
        return key, fn(payload)
    except InputError as exc:
        return key, {"skipped": exc.reason, "message": str(exc)}


def default_chunksize(count: int, workers: int) -> int:
    return max(1, min(16, count // (workers * 8) or 1))


def map_units(
    fn: Callable[[object], dict],
    units: Sequence[WorkUnit],
    *,
    workers: int = 1,
    desc: str = "",
    unit: str = "item",
    chunksize: int | None = None,
    progress: bool = True,
    min_units_per_worker: int = 1,
) -> Iterator[tuple[str, dict]]:
    """Apply ``fn`` to each unit's payload; yield ``(key, result)`` in completion order.

    A unit whose input is bad (:class:`InputError`) yields ``{'skipped': reason, 'message': ...}``
    instead of stopping the run; any other exception stops it (a bug, not bad data).

    Args:
        fn: a module-level function (it is sent to worker processes by reference).
        units: ``(key, payload)`` pairs; keys must be unique.
        workers: processes; 1 runs in this process.
        min_units_per_worker: run in this process when there are fewer units than this per
            worker (process start-up would cost more than the work).
    """
    bar = tqdm(total=len(units), desc=desc, unit=unit, disable=not progress or not units)
    try:
        if workers <= 1 or len(units) < max(2, workers * min_units_per_worker):
            _init_worker()
            for task in units:
                yield _call((fn, task))
                bar.update()
            return
        size = chunksize or default_chunksize(len(units), workers)
        with _context().Pool(workers, initializer=_init_worker) as pool:
            for key, result in pool.imap_unordered(_call, [(fn, u) for u in units], size):
                yield key, result
                bar.update()
    finally:
        bar.close()
