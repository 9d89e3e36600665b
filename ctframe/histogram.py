"""One-pass HU summaries: 1-HU histograms per region, from which every statistic follows.

A *summary* of a volume (or of one chunk of slices) holds, for each region
category (0 outside the body, 1 body but not lung, 2 right lung, 3 left lung;
or a single category when no mask is given):

* ``counts``: a histogram of HU in 1-HU bins from ``FINE_MIN_HU`` to
  ``FINE_MAX_HU`` plus an underflow and an overflow bin;
* ``sums`` and ``sumsq``: exact sums of HU and HU², for means and standard
  deviations;
* ``slice_counts``: voxels per slice and category (areas per slice).

Summaries add up (chunks into series, series into patients and cohorts), they
are small (about 200 kB per series) and they are computed from the *stored*
integers: a chunk's stored values are counted (:func:`_count_values`) and each
distinct stored value is mapped once through its slice's rescale slope and
intercept (in float64, exactly as pydicom's ``apply_modality_lut``), with
padding and scan-circle fill dropped. That is several times faster than
converting every voxel to float HU and calling ``np.histogram``.

Region statistics follow exactly from a summary: counts and volumes, means and
standard deviations (from the sums), fractions below or between integer HU
thresholds (%LAA-950, high-attenuation areas) and, for integer HU (every CT
with an integer rescale slope and intercept), percentiles equal to
``np.percentile``; otherwise percentiles are exact to the 1-HU bin.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ctframe import kernels
from ctframe.hu import rescale_values

__all__ = [
    "CATEGORIES",
    "FINE_MAX_HU",
    "FINE_MIN_HU",
    "HUSummary",
    "coarse_counts",
    "earth_movers_distance",
    "fine_bin_values",
    "fine_index",
    "percentile_from_counts",
    "statistics_from_counts",
    "summarize_block",
]

#: Region categories of a summary, by code.
CATEGORIES: tuple[str, ...] = ("outside", "body", "right_lung", "left_lung")
#: Fine histogram range: 1-HU bins [FINE_MIN_HU, FINE_MAX_HU), plus under- and overflow.
FINE_MIN_HU = -2048
FINE_MAX_HU = 4096
N_FINE = FINE_MAX_HU - FINE_MIN_HU + 2  # + underflow + overflow
_MAX_BINS = 1 << 23  # bins of one bincount (64 MiB of int64)


def fine_bin_values() -> np.ndarray:
    """Left edge (HU) of every fine bin; -inf and FINE_MAX_HU for under/overflow."""
    values = np.empty(N_FINE, float)
    values[0] = -np.inf
    values[1:-1] = np.arange(FINE_MIN_HU, FINE_MAX_HU)
    values[-1] = FINE_MAX_HU
    return values


@dataclass
class HUSummary:
    """Histogram and moments of HU per region category (see the module docstring)."""

    counts: np.ndarray  # (n_categories, N_FINE) int64
    sums: np.ndarray  # (n_categories,) float64
    sumsq: np.ndarray  # (n_categories,) float64
    slice_counts: np.ndarray  # (n_slices, n_categories) int64
    slice_hist: np.ndarray | None = None  # (n_slices, n_categories, n_coarse) int64, on request

    def __add__(self, other: HUSummary) -> HUSummary:
        """Combine summaries of consecutive chunks (slices are concatenated)."""
        slice_hist = None
        if self.slice_hist is not None and other.slice_hist is not None:
            slice_hist = np.concatenate([self.slice_hist, other.slice_hist])
        return HUSummary(
            counts=self.counts + other.counts,
            sums=self.sums + other.sums,
            sumsq=self.sumsq + other.sumsq,
            slice_counts=np.concatenate([self.slice_counts, other.slice_counts]),
            slice_hist=slice_hist,
        )

    @property
    def n_categories(self) -> int:
        """Number of region categories."""
        return int(self.counts.shape[0])

    def select(self, categories: Sequence[int]) -> HUSummary:
        """Merge the given categories into one (e.g. both lungs)."""
        idx = list(categories)
        return HUSummary(
            counts=self.counts[idx].sum(axis=0, keepdims=True),
            sums=self.sums[idx].sum(keepdims=True),
            sumsq=self.sumsq[idx].sum(keepdims=True),
            slice_counts=self.slice_counts[:, idx].sum(axis=1, keepdims=True),
            slice_hist=None if self.slice_hist is None else self.slice_hist[:, idx].sum(axis=1, keepdims=True),
        )


def fine_index(hu: np.ndarray) -> np.ndarray:
    """Fine bin of each HU value (0: underflow, N_FINE - 1: overflow; NaN goes to underflow)."""
    with np.errstate(invalid="ignore"):
        index = np.floor(hu) - FINE_MIN_HU + 1
    return np.clip(np.nan_to_num(index, nan=0.0), 0, N_FINE - 1).astype(np.int64)


def summarize_block(
    stored: np.ndarray,
    slope: np.ndarray,
    intercept: np.ndarray,
    category: np.ndarray | None = None,
    *,
    n_categories: int = 1,
    padding_value: float = np.nan,
    padding_range_limit: float = np.nan,
    fill_below_hu: float = -1500.0,
    slice_edges: np.ndarray | None = None,
) -> HUSummary:
    """Summarise one chunk of stored values (eager; the body of the cohort tasks).

    Parameters
    ----------
    stored : ndarray (slice, row, col) of integers
        Stored values as read from DICOM.
    slope, intercept : ndarray (slice,)
        Rescale slope and intercept of each slice.
    category : ndarray (slice, row, col) of small integers, optional
        Region category per voxel (< `n_categories`); all 0 when omitted.
    n_categories : int
        Number of categories.
    padding_value, padding_range_limit : float or ndarray (slice,)
        Stored-domain padding of each slice (NaN when absent), as in :func:`ctframe.hu.hu_kernel`.
    fill_below_hu : float
        HU below this are scan-circle fill and are not counted.
    slice_edges : ndarray of integers, optional
        Also keep a histogram per slice on these HU edges (see :func:`coarse_counts`).

    Returns
    -------
    HUSummary

    Notes
    -----
    **Computes** (eager numpy on one chunk). Voxels that :func:`ctframe.to_hu`
    makes NaN are exactly the voxels this function leaves out.

    Examples
    --------
    >>> stored = np.array([[[0, 1024, 1034, -1000]]], dtype=np.int16)
    >>> s = summarize_block(stored, np.array([1.0]), np.array([-1024.0]))
    >>> int(s.counts.sum()), float(s.sums[0])
    (3, -1014.0)
    """
    stored = np.asarray(stored)
    n_slices = stored.shape[0]
    slope = np.asarray(slope, float).reshape(-1, 1)
    intercept = np.asarray(intercept, float).reshape(-1, 1)
    n_coarse = None if slice_edges is None else len(slice_edges) + 1
    empty = HUSummary(
        counts=np.zeros((n_categories, N_FINE), np.int64),
        sums=np.zeros(n_categories),
        sumsq=np.zeros(n_categories),
        slice_counts=np.zeros((n_slices, n_categories), np.int64),
        slice_hist=None if n_coarse is None else np.zeros((n_slices, n_categories, n_coarse), np.int64),
    )
    if stored.size == 0:
        return empty
    # per-slice padding (a stack whose rescale varies stores the padding HU as different values), like slope
    padding_value = np.broadcast_to(np.asarray(padding_value, float).reshape(-1), (n_slices,)).reshape(-1, 1)
    padding_range_limit = np.broadcast_to(np.asarray(padding_range_limit, float).reshape(-1), (n_slices,)).reshape(
        -1, 1
    )
    padding = dict(padding_value=padding_value, padding_range_limit=padding_range_limit, fill_below_hu=fill_below_hu)
    lo, hi = int(stored.min()), int(stored.max())
    n_values = hi - lo + 1
    if n_slices * n_categories * n_values > _MAX_BINS:
        if n_slices == 1:  # 32-bit data with a huge range: voxel by voxel
            return _summarize_voxels(
                stored,
                slope,
                intercept,
                category,
                empty,
                float(padding_value[0, 0]),
                float(padding_range_limit[0, 0]),
                fill_below_hu,
                slice_edges,
            )
        options = dict(n_categories=n_categories, fill_below_hu=fill_below_hu, slice_edges=slice_edges)
        parts = (
            summarize_block(
                stored[k : k + 1], slope[k], intercept[k], None if category is None else category[k : k + 1],
                padding_value=padding_value[k], padding_range_limit=padding_range_limit[k], **options,
            )
            for k in range(n_slices)
        )
        return functools.reduce(operator.add, parts)

    by_value = _count_values(stored, lo, n_values, category, n_categories)  # (slice, category, stored value)

    # map every stored value once, through its own slice's rescale
    values = np.arange(lo, hi + 1)
    hu, valid = rescale_values(values[None, :], slope, intercept, **padding)  # (slice, value)
    index = fine_index(hu)
    weights = by_value * valid[:, None, :]  # (slice, category, value)
    summary = empty
    for c in range(n_categories):
        summary.counts[c] = np.bincount(index.ravel(), weights=weights[:, c, :].ravel(), minlength=N_FINE)
    hu_valid = np.where(valid, hu, 0.0)[:, None, :]
    summary.sums[:] = (weights * hu_valid).sum(axis=(0, 2))
    summary.sumsq[:] = (weights * hu_valid**2).sum(axis=(0, 2))
    summary.slice_counts[:] = weights.sum(axis=2)
    if slice_edges is not None and summary.slice_hist is not None:
        target = np.searchsorted(np.asarray(slice_edges), fine_bin_values()[index], side="right")  # (slice, value)
        for k in range(n_slices):
            for c in range(n_categories):
                summary.slice_hist[k, c] = np.bincount(target[k], weights=weights[k, c], minlength=n_coarse)
    return summary


def _count_values(
    stored: np.ndarray, lo: int, n_values: int, category: np.ndarray | None = None, n_categories: int = 1
) -> np.ndarray:
    """Voxels per slice, category and stored value: ``out[k, c, v - lo]``.

    Parameters
    ----------
    stored : ndarray (slice, row, col) of integers
        Values in ``[lo, lo + n_values)``.
    lo, n_values : int
        The value range counted.
    category : ndarray (slice, row, col) of small integers, optional
        Category per voxel, below `n_categories`; all 0 when omitted.
    n_categories : int
        Number of categories.

    Returns
    -------
    ndarray (slice, category, value) of int64

    Notes
    -----
    **Computes**. With numba installed, a compiled loop that releases the GIL
    (``np.bincount`` holds it, so threads would count one at a time); without
    it, one ``np.bincount`` per slice. Both give the same counts (tested).
    """
    stored = np.ascontiguousarray(stored)
    out = np.zeros((stored.shape[0], n_categories, n_values), np.int64)
    compiled = kernels.counting_kernels()
    native = stored.dtype.isnative and (category is None or np.asarray(category).dtype.isnative)
    if compiled is not None and stored.dtype.kind in "iu" and native:
        plain, by_category = compiled
        counted = (
            plain(stored, lo, out) if category is None else by_category(stored, np.ascontiguousarray(category), lo, out)
        )
        if not counted:
            raise ValueError(
                f"stored values outside [{lo}, {lo + n_values}) or region categories not below {n_categories}"
            )
        return out
    # one bincount per slice: small temporaries that stay in cache are twice as fast as one big bincount
    for k in range(stored.shape[0]):
        key = np.subtract(stored[k], lo, dtype=np.intp)
        if category is not None:
            if category[k].size and int(category[k].max()) >= n_categories:
                raise ValueError(f"region categories not below {n_categories}")
            key += np.multiply(category[k], n_values, dtype=np.intp)
        out[k] = np.bincount(key.ravel(), minlength=n_categories * n_values).reshape(n_categories, n_values)
    return out


def _summarize_voxels(
    stored: np.ndarray,
    slope: np.ndarray,
    intercept: np.ndarray,
    category: np.ndarray | None,
    summary: HUSummary,
    padding_value: float,
    padding_range_limit: float,
    fill_below_hu: float,
    slice_edges: np.ndarray | None,
) -> HUSummary:
    """One slice with a huge range of stored values (32-bit data): voxel by voxel."""
    n_categories = summary.n_categories
    hu, valid = rescale_values(
        stored, float(np.ravel(slope)[0]), float(np.ravel(intercept)[0]), padding_value=padding_value,
        padding_range_limit=padding_range_limit, fill_below_hu=fill_below_hu,
    )  # fmt: skip
    index = fine_index(hu)
    cat = np.zeros(stored.shape, np.int64) if category is None else np.asarray(category, np.int64)
    c_valid, i_valid, h_valid = cat[valid], index[valid], hu[valid]
    summary.counts[:] = np.bincount(c_valid * N_FINE + i_valid, minlength=n_categories * N_FINE).reshape(
        n_categories, N_FINE
    )
    summary.sums[:] = np.bincount(c_valid, weights=h_valid, minlength=n_categories)
    summary.sumsq[:] = np.bincount(c_valid, weights=h_valid**2, minlength=n_categories)
    summary.slice_counts[0] = np.bincount(c_valid, minlength=n_categories)
    if slice_edges is not None and summary.slice_hist is not None:
        summary.slice_hist[0] = coarse_counts(summary.counts, np.asarray(slice_edges))
    return summary


def coarse_counts(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Re-bin fine counts onto integer HU `edges`, with an under- and an overflow bin.

    Parameters
    ----------
    counts : ndarray (..., N_FINE)
        Fine histograms.
    edges : ndarray of integers (n_edges,)
        Increasing bin edges in HU within [FINE_MIN_HU, FINE_MAX_HU].

    Returns
    -------
    ndarray (..., n_edges + 1)
        Counts in (-inf, e0), [e0, e1), ..., [e_last, inf).

    Examples
    --------
    >>> fine = np.zeros(N_FINE, int); fine[1 + 10 - FINE_MIN_HU] = 5  # five voxels at 10 HU
    >>> coarse_counts(fine, np.array([0, 10, 20])).tolist()
    [0, 0, 5, 0]
    """
    edges = np.asarray(edges)
    if not np.array_equal(edges, np.round(edges)) or edges.min() < FINE_MIN_HU or edges.max() > FINE_MAX_HU:
        raise ValueError(f"histogram edges must be integers within [{FINE_MIN_HU}, {FINE_MAX_HU}] HU")
    if np.any(np.diff(edges) <= 0):
        raise ValueError("histogram edges must increase")
    # fine bin i (i >= 1) starts at FINE_MIN_HU + i - 1; np.searchsorted gives its coarse bin
    left = fine_bin_values()
    target = np.searchsorted(edges, left, side="right")  # 0 = underflow, len(edges) = overflow
    flat = np.asarray(counts).reshape(-1, counts.shape[-1])
    out = np.stack([np.bincount(target, weights=row, minlength=len(edges) + 1) for row in flat])
    return out.astype(counts.dtype).reshape(*counts.shape[:-1], len(edges) + 1)


def percentile_from_counts(counts: np.ndarray, q: float | Sequence[float]) -> np.ndarray:
    """Percentiles of the values a fine histogram counts, as ``np.percentile`` computes them.

    Exact for integer HU (each fine bin then holds one value); values in the
    under- or overflow bin make the percentiles that fall there NaN.

    Examples
    --------
    >>> fine = np.zeros(N_FINE, int); fine[1 - FINE_MIN_HU + np.array([0, 1, 5])] = 1
    >>> percentile_from_counts(fine, [0, 50, 100]).tolist()
    [0.0, 1.0, 5.0]
    """
    qs = np.atleast_1d(np.asarray(q, float))
    total = int(counts.sum())
    if total == 0:
        return np.full(qs.shape, np.nan)
    values = fine_bin_values()
    values[[0, -1]] = np.nan
    cumulative = np.cumsum(counts)
    pos = qs / 100.0 * (total - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, total - 1)
    v_lo = values[np.searchsorted(cumulative, lo, side="right")]
    v_hi = values[np.searchsorted(cumulative, hi, side="right")]
    return v_lo + (pos - lo) * (v_hi - v_lo)


def earth_movers_distance(counts_a: np.ndarray, counts_b: np.ndarray, *, bin_width_hu: float = 1.0) -> float:
    """Earth mover's distance (HU) between two histograms on the same bins.

    The 1-D Wasserstein-1 distance between the normalised histograms:
    ``sum(|CDF_a - CDF_b|) * bin_width``. NaN if either is empty.

    Examples
    --------
    >>> a = np.zeros(10); a[2] = 1
    >>> b = np.zeros(10); b[5] = 4
    >>> earth_movers_distance(a, b)
    3.0
    """
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    if a.sum() == 0 or b.sum() == 0:
        return float("nan")
    return float(np.abs(np.cumsum(a) / a.sum() - np.cumsum(b) / b.sum()).sum() * bin_width_hu)


def statistics_from_counts(
    counts: np.ndarray,
    hu_sum: float,
    hu_sumsq: float,
    *,
    voxel_volume_ml: float,
    percentiles: Sequence[float] = (5, 15, 25, 50, 75, 95),
    laa_thresholds_hu: Sequence[int] = (-950, -910, -856),
    haa_range_hu: Sequence[int] = (-700, -250),
) -> dict[str, float]:
    """Region statistics from one fine histogram and its HU sums.

    Parameters
    ----------
    counts : ndarray (N_FINE,)
        Fine histogram of the region.
    hu_sum, hu_sumsq : float
        Sum of HU and of HU² over the region.
    voxel_volume_ml : float
        Volume of one voxel in mL.
    percentiles : sequence of float
        Percentiles to report as ``hu_p<q>`` (``hu_median`` is always reported).
    laa_thresholds_hu : sequence of int
        ``laa_<|X|>_pct``: percent of voxels with HU < X.
    haa_range_hu : (int, int)
        ``haa_pct`` and ``haa_volume_ml``: voxels with low <= HU < high.

    Returns
    -------
    dict
        ``voxel_count``, ``volume_ml``, ``hu_mean``, ``hu_std`` (population),
        ``hu_median``, ``hu_p<q>``, ``laa_<X>_pct``, ``haa_pct``, ``haa_volume_ml``.
        Statistics of an empty region are NaN (counts and volumes are 0).

    Examples
    --------
    >>> fine = np.zeros(N_FINE, int); fine[1 - FINE_MIN_HU + np.array([-960, -900, -500])] = 1
    >>> s = statistics_from_counts(fine, -2360.0, 921600.0 + 810000.0 + 250000.0, voxel_volume_ml=0.5)
    >>> s["voxel_count"], s["volume_ml"], s["laa_950_pct"], s["haa_pct"]
    (3, 1.5, 33.333333333333336, 33.333333333333336)
    """
    n = int(counts.sum())
    left = fine_bin_values()
    out: dict[str, float] = {"voxel_count": n, "volume_ml": float(n * voxel_volume_ml)}
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = hu_sum / n if n else np.nan
        out["hu_mean"] = float(mean)
        out["hu_std"] = float(np.sqrt(max(hu_sumsq / n - mean * mean, 0.0))) if n else np.nan
    qs = [50.0, *[float(q) for q in percentiles]]
    values = percentile_from_counts(counts, qs)
    out["hu_median"] = float(values[0])
    for q, v in zip(qs[1:], values[1:], strict=True):
        out[f"hu_p{q:g}"] = float(v)
    for threshold in laa_thresholds_hu:
        below = counts[left < threshold].sum()
        out[f"laa_{abs(int(threshold))}_pct"] = float(100.0 * below / n) if n else np.nan
    lo, hi = haa_range_hu
    in_range = counts[(left >= lo) & (left < hi)].sum()
    out["haa_pct"] = float(100.0 * in_range / n) if n else np.nan
    out["haa_volume_ml"] = float(in_range * voxel_volume_ml)
    return out
