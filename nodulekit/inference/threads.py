"""Independent per-slice work of a whole scan on the usable cores, in threads.

SciPy's distance transforms, NumPy's element-wise kernels and Pillow's PNG encoder release the
GIL, so a scan's slices (the lung mask's closing, the overlay PNGs) go through two cores in threads
without copies or processes. Each item's result is the same as in a plain loop, and results come
back in the items' order, so the outputs do not depend on the thread count.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from ..utils import available_cores

__all__ = ["MAX_THREADS", "map_in_threads"]

T = TypeVar("T")
R = TypeVar("R")

#: At most this many threads (a few cores already take the per-slice steps off the critical path).
MAX_THREADS = 4


def map_in_threads(function: Callable[[T], R], items: Iterable[T], *, threads: int | None = None) -> list[R]:
    """``[function(item) for item in items]``, with the items spread over threads.

    Parameters
    ----------
    function : callable
        Applied to each item; must not depend on the order in which the items run.
    items : iterable
    threads : int, optional
        Default: the cores this process may use (:func:`nodulekit.utils.available_cores`), at most :data:`MAX_THREADS`; 1 runs a plain loop.

    Returns
    -------
    list
        The results in the items' order.

    Examples
    --------
    >>> map_in_threads(lambda x: x * x, range(5), threads=2)
    [0, 1, 4, 9, 16]
    """
    items = list(items)
    count = min(MAX_THREADS, available_cores()) if threads is None else max(1, int(threads))
    if count == 1 or len(items) < 2:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(count, len(items))) as pool:
        return list(pool.map(function, items))
