"""Compiled loops (numba) for the two per-voxel steps that numpy runs holding the GIL.

``np.bincount`` and ``np.take`` keep the GIL for their whole loop, so on the
threaded scheduler chunks would count and convert one at a time. These loops
are compiled with ``nogil=True`` (and cached on disk), so threads run them in
parallel; each caller keeps the numpy version as the reference and as the
fallback when numba is missing, and the tests prove both give the same result.
Kernels compile on first use (about a second; later processes load the cache).
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["counting_kernels", "lookup_kernel"]


@functools.cache
def counting_kernels() -> tuple[Any, Any] | None:
    """The counting loops of :func:`ctframe.histogram._count_values` (plain, by category), or None.

    They check every index (a value outside the range would otherwise write
    outside the counts) and return False instead of counting out of bounds.
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None

    @numba.njit(nogil=True, cache=True)
    def plain(stored, lo, out):  # pragma: no cover - compiled
        n_values = out.shape[2]
        for k in range(stored.shape[0]):
            for i in range(stored.shape[1]):
                for j in range(stored.shape[2]):
                    v = stored[k, i, j] - lo
                    if v < 0 or v >= n_values:
                        return False
                    out[k, 0, v] += 1
        return True

    @numba.njit(nogil=True, cache=True)
    def by_category(stored, category, lo, out):  # pragma: no cover - compiled
        n_categories, n_values = out.shape[1], out.shape[2]
        for k in range(stored.shape[0]):
            for i in range(stored.shape[1]):
                for j in range(stored.shape[2]):
                    c = category[k, i, j]
                    v = stored[k, i, j] - lo
                    if c < 0 or c >= n_categories or v < 0 or v >= n_values:
                        return False
                    out[k, c, v] += 1
        return True

    return plain, by_category


@functools.cache
def lookup_kernel() -> Any | None:
    """``out[i, j] = table[plane[i, j] - lo]`` (the LUT step of :func:`ctframe.hu.hu_kernel`), or None.

    The caller takes `lo` (and the table's length) from the plane's own minimum
    and maximum, so every index is inside the table.
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a declared dependency
        return None

    @numba.njit(nogil=True, cache=True)
    def lookup(table, plane, lo, out):  # pragma: no cover - compiled
        for i in range(plane.shape[0]):
            for j in range(plane.shape[1]):
                out[i, j] = table[plane[i, j] - lo]

    return lookup
