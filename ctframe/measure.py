"""Region statistics of a HU volume under a label volume, in one pass.

:func:`region_stats` is a sink: it computes. Each chunk of slices is reduced,
one slice at a time, to a histogram of HU in 1-HU bins per label (one
``np.bincount`` on ``label * n_bins + bin`` per slice) plus exact sums of HU and
HU²; the chunk results are added up and every statistic follows from them with
:func:`ctframe.histogram.statistics_from_counts`, the same definitions the
cohort tables use. Memory is bounded by one chunk (and a few 1-D arrays per
label); NaN voxels (padding, scan-circle fill) are never counted.

Percentiles from 1-HU bins equal ``np.percentile`` (linear interpolation) for
integer HU, which is every CT with an integer rescale slope and intercept; for
other data they are exact to the 1-HU bin. Means and standard deviations come
from the sums and are exact for any data.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize

from ctframe.config import get_config
from ctframe.errors import NotHUCalibratedError, ParameterError
from ctframe.geometry import voxel_spacing
from ctframe.histogram import N_FINE, fine_bin_values, fine_index, statistics_from_counts

__all__ = ["label_names", "region_stats"]

_KEY_COLUMNS = ("region", "label")
_SLICE_COLUMNS = ("slice_index", "slice_position_mm", "area_mm2")


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", volume.name or "(unnamed volume)")))


def label_names(labels: xr.DataArray) -> dict[int, str]:
    """Region names of a label volume from its CF ``flag_values`` / ``flag_meanings`` attrs.

    Parameters
    ----------
    labels : DataArray
        Labels, e.g. from :func:`ctframe.lung_mask` or :mod:`ctframe.masks`.

    Returns
    -------
    dict
        Label value -> name; empty when the attrs are absent or inconsistent.

    Examples
    --------
    >>> import xarray as xr
    >>> labels = xr.DataArray([0, 1], attrs={"flag_values": [0, 1], "flag_meanings": "background lesion"})
    >>> label_names(labels)
    {0: 'background', 1: 'lesion'}
    """
    values = labels.attrs.get("flag_values")
    meanings = labels.attrs.get("flag_meanings")
    if values is None or not isinstance(meanings, str):
        return {}
    values = list(np.atleast_1d(values))
    words = meanings.split()
    if len(words) != len(values):
        return {}
    return {int(v): w for v, w in zip(values, words, strict=True)}


def _check_inputs(volume: xr.DataArray, labels: xr.DataArray) -> None:
    if not isinstance(volume, xr.DataArray) or not isinstance(labels, xr.DataArray):
        raise ParameterError("region_stats needs two xarray.DataArrays: the HU volume and the labels")
    name = _series_name(volume)
    if tuple(volume.dims) != ("slice", "row", "col"):
        raise ParameterError(f"region_stats: volume of series {name} has dims {volume.dims}; need (slice, row, col)")
    units = volume.attrs.get("units")
    if (units is not None and units != "HU") or not np.issubdtype(volume.dtype, np.floating):
        raise NotHUCalibratedError(
            f"region_stats needs HU (float, units 'HU'); series {name} has dtype {volume.dtype} and units "
            f"{units!r}; convert it with ctframe.to_hu(volume)"
        )
    if tuple(labels.dims) != ("slice", "row", "col") or labels.shape != volume.shape:
        raise ParameterError(
            f"region_stats: labels have dims {labels.dims} and shape {labels.shape}, the volume of series {name} "
            f"has {volume.dims} {volume.shape}; labels must lie on the volume's grid (see ctframe.masks to import)"
        )
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ParameterError(
            f"region_stats: labels must be integers or bool, got dtype {labels.dtype} (series {name}); "
            "cast them with labels.astype('int16') if they hold whole numbers"
        )
    for dim in ("slice", "row", "col"):
        if dim in volume.coords and dim in labels.coords:
            a = np.asarray(volume[dim].values, float)
            b = np.asarray(labels[dim].values, float)
            if not np.allclose(a, b, atol=1e-3):
                raise ParameterError(
                    f"region_stats: the {dim!r} coordinates of the labels and of the volume of series {name} "
                    "differ; the labels belong to another grid (resample or re-import them on this series)"
                )


def _statistics_options(
    percentiles: Sequence[float] | None,
    laa_thresholds_hu: Sequence[int] | None,
    haa_range_hu: Sequence[int] | None,
    consolidation_range_hu: Sequence[int] | None = None,
) -> dict[str, Any]:
    cfg = get_config()["statistics"]
    dense = list(cfg["consolidation_range_hu"] if consolidation_range_hu is None else consolidation_range_hu)
    for value in dense:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParameterError(f"HU thresholds must be whole numbers (1-HU bins), got {value!r}")
    if len(dense) != 2 or dense[0] >= dense[1]:
        raise ParameterError(f"consolidation_range_hu must be [low, high] with low < high (HU), got {dense!r}")
    qs = list(cfg["percentiles"] if percentiles is None else percentiles)
    laa = list(cfg["laa_thresholds_hu"] if laa_thresholds_hu is None else laa_thresholds_hu)
    haa = list(cfg["haa_range_hu"] if haa_range_hu is None else haa_range_hu)
    for q in qs:
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 100:
            raise ParameterError(f"percentiles must be numbers in [0, 100], got {q!r}")
    for value in (*laa, *haa):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ParameterError(f"HU thresholds must be whole numbers (1-HU bins), got {value!r}")
    if len(haa) != 2 or haa[0] >= haa[1]:
        raise ParameterError(f"haa_range_hu must be [low, high] with low < high (HU), got {haa!r}")
    return {"percentiles": qs, "laa_thresholds_hu": [int(v) for v in laa], "haa_range_hu": [int(v) for v in haa],
            "consolidation_range_hu": [int(v) for v in dense]}  # fmt: skip


def _statistics(counts: np.ndarray, s: float, s2: float, *, voxel_volume_ml: float, options: Mapping[str, Any]
                ) -> dict[str, Any]:  # fmt: skip
    """:func:`statistics_from_counts` plus the consolidated (dense) part of the region.

    ``consolidation_pct`` and ``consolidation_volume_ml``: voxels with
    low <= HU < high of ``consolidation_range_hu`` (default -100..150 HU:
    consolidation, atelectasis, and also vessels and airway walls, which make
    up a few percent of a healthy lung).
    """
    histogram = {k: v for k, v in (options or {}).items() if k != "consolidation_range_hu"}
    out = statistics_from_counts(counts, s, s2, voxel_volume_ml=voxel_volume_ml, **histogram)
    lo, hi = (options or {}).get("consolidation_range_hu", get_config()["statistics"]["consolidation_range_hu"])
    counts = np.asarray(counts)
    left = fine_bin_values()  # the same bins and rule as haa_pct
    n = int(counts.sum())
    in_range = int(counts[(left >= lo) & (left < hi)].sum())
    out["consolidation_pct"] = float(100.0 * in_range / n) if n else np.nan
    out["consolidation_volume_ml"] = float(in_range * voxel_volume_ml)
    return out


def summarize_labels(
    hu: np.ndarray,
    labels: np.ndarray,
    *,
    first_slice: int = 0,
    per_slice: bool = False,
    voxel_volume_ml: float = 1.0,
    pixel_area_mm2: float = 1.0,
    options: Mapping[str, Any] | None = None,
) -> tuple[dict[int, tuple[np.ndarray, float, float]], list[dict[str, Any]]]:
    """Histograms and sums per label of one block; per-slice statistics on request.

    Parameters
    ----------
    hu : ndarray (slice, row, col)
        HU, NaN for voxels that are not counted.
    labels : ndarray (slice, row, col) of non-negative integers or bool
    first_slice : int
        Index of the block's first slice in the volume.
    per_slice : bool
        Also return one statistics row per slice and label present there.
    voxel_volume_ml, pixel_area_mm2 : float
        For the per-slice rows.
    options : mapping
        ``percentiles``, ``laa_thresholds_hu``, ``haa_range_hu`` for the rows.

    Returns
    -------
    totals : dict
        label -> (counts of shape (N_FINE,), sum of HU, sum of HU²).
    rows : list of dict
        Per-slice rows (``label``, ``slice_index``, ``area_mm2`` and the statistics).

    Raises
    ------
    ParameterError
        Negative labels.

    Notes
    -----
    **Computes** (eager numpy on one block; the body of :func:`region_stats`).

    Examples
    --------
    >>> hu = np.array([[[-900.0, -800.0, np.nan, 40.0]]])
    >>> totals, _ = summarize_labels(hu, np.array([[[1, 1, 1, 0]]]))
    >>> int(totals[1][0].sum()), totals[1][1]
    (2, -1700.0)
    """
    hu = np.asarray(hu)
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.size and labels.min() < 0:
        raise ParameterError(f"labels must be >= 0, found {int(labels.min())}")
    seen = np.zeros(int(labels.max()) + 1 if labels.size else 0, np.int64)
    for k in range(labels.shape[0]):  # slice by slice: bincount casts to intp
        seen += np.bincount(labels[k].ravel(), minlength=seen.size)
    present = np.flatnonzero(seen)
    n = present.size
    lookup = np.zeros(int(present.max()) + 1 if n else 1, np.intp)
    lookup[present] = np.arange(n)
    counts = np.zeros((n, N_FINE), np.int64)
    sums = np.zeros(n)
    sumsq = np.zeros(n)
    rows: list[dict[str, Any]] = []
    for k in range(hu.shape[0]):
        valid = ~np.isnan(hu[k])
        values = hu[k][valid].astype(np.float64)
        which = lookup[labels[k][valid]]
        slice_counts = np.bincount(which * N_FINE + fine_index(values), minlength=n * N_FINE).reshape(n, N_FINE)
        slice_sums = np.bincount(which, weights=values, minlength=n)
        slice_sumsq = np.bincount(which, weights=values * values, minlength=n)
        counts += slice_counts
        sums += slice_sums
        sumsq += slice_sumsq
        if per_slice:
            for j in np.flatnonzero(slice_counts.sum(axis=1)):
                stats = _statistics(
                    slice_counts[j], slice_sums[j], slice_sumsq[j], voxel_volume_ml=voxel_volume_ml,
                    options=options or {},
                )  # fmt: skip
                rows.append(
                    {"label": int(present[j]), "slice_index": first_slice + k,
                     "area_mm2": stats["voxel_count"] * pixel_area_mm2, **stats}
                )  # fmt: skip
    totals = {int(present[j]): (counts[j], float(sums[j]), float(sumsq[j])) for j in range(n)}
    return totals, rows


def _merge(parts: Sequence[tuple[dict[int, Any], list[dict[str, Any]]]]) -> tuple[dict[int, Any], list[dict[str, Any]]]:
    totals: dict[int, list[Any]] = {}
    rows: list[dict[str, Any]] = []
    for part_totals, part_rows in parts:
        for label, (counts, s, s2) in part_totals.items():
            if label in totals:
                totals[label][0] = totals[label][0] + counts
                totals[label][1] += s
                totals[label][2] += s2
            else:
                totals[label] = [counts, s, s2]
        rows.extend(part_rows)
    return {k: tuple(v) for k, v in totals.items()}, rows


def region_stats(
    volume: xr.DataArray,
    labels: xr.DataArray,
    *,
    per_slice: bool = False,
    names: Mapping[int, str] | None = None,
    include_background: bool = False,
    percentiles: Sequence[float] | None = None,
    laa_thresholds_hu: Sequence[int] | None = None,
    haa_range_hu: Sequence[int] | None = None,
    consolidation_range_hu: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Statistics of HU per region of a label volume, as a tidy table.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        HU from :func:`ctframe.to_hu` (float, NaN for padding).
    labels : DataArray (slice, row, col) of integers or bool
        On the volume's grid: from :func:`ctframe.lung_mask`,
        :func:`ctframe.body_mask` (bool: one region, label 1) or
        :mod:`ctframe.masks` (NIfTI, DICOM SEG, RTSTRUCT).
    per_slice : bool
        One row per region and slice (every slice, zeros where the region is
        absent) instead of one row per region.
    names : mapping of int to str, optional
        Region names; default from the labels' ``flag_values`` /
        ``flag_meanings`` attrs, else ``label_<n>``.
    include_background : bool
        Also report label 0.
    percentiles, laa_thresholds_hu, haa_range_hu : optional
        Override the ``statistics`` configuration (percentiles in [0, 100];
        whole-HU thresholds; high-attenuation range [low, high) in HU,
        default -700..-250).
    consolidation_range_hu : (int, int), optional
        The consolidated (dense) part [low, high) in HU, default
        ``statistics.consolidation_range_hu`` = -100..150.

    Returns
    -------
    DataFrame
        One row per region (sorted by label): ``region``, ``label``,
        ``voxel_count``, ``volume_ml`` (from the real spacing), ``hu_mean``,
        ``hu_std`` (population), ``hu_median``, ``hu_p<q>`` (e.g. ``hu_p15``,
        Perc15), ``laa_950_pct``, ``laa_910_pct``, ``laa_856_pct`` (percent of
        voxels below -950, -910, -856 HU), ``haa_pct`` and ``haa_volume_ml``
        (low <= HU < high), ``consolidation_pct`` and
        ``consolidation_volume_ml`` (the dense part, same rule). With
        `per_slice`, also ``slice_index``, ``slice_position_mm`` and
        ``area_mm2``. NaN voxels are never counted;
        statistics of an empty region are NaN.

    Raises
    ------
    ParameterError
        Dims, shapes or coordinates that differ, non-integer or negative
        labels, bad statistics options, unknown spacing.
    NotHUCalibratedError
        `volume` holds stored values, not HU.

    Notes
    -----
    **Computes**: one ``dask.compute`` (on the caller's scheduler) of one
    task per chunk of slices, each reducing its slices one at a time to 1-HU
    histograms per label with ``np.bincount``. When the labels were computed
    from the same volume (e.g. :func:`ctframe.lung_mask`), the volume's chunks
    are read again after the labels are done (``dask.graph_manipulation.bind``)
    instead of being held in memory while the one-task-per-series
    segmentation runs, so memory stays at one series of int8 labels plus one
    chunk per worker.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(16, 64, 64), spacing_mm=(10, 5, 5))
    >>> hu = ctframe.to_hu(ctframe.open_series(truth.folder))
    >>> table = ctframe.region_stats(hu, ctframe.lung_mask(hu))
    >>> table["region"].tolist()
    ['right_lung', 'left_lung']
    >>> bool((table["hu_mean"] < -800).all())
    True
    """
    _check_inputs(volume, labels)
    if not isinstance(per_slice, bool) or not isinstance(include_background, bool):
        raise ParameterError("per_slice and include_background must be True or False")
    options = _statistics_options(percentiles, laa_thresholds_hu, haa_range_hu, consolidation_range_hu)
    dz, dy, dx = voxel_spacing(volume)
    voxel_ml = dz * dy * dx / 1000.0
    pixel_mm2 = dy * dx
    kwargs = {"per_slice": per_slice, "voxel_volume_ml": voxel_ml, "pixel_area_mm2": pixel_mm2, "options": options}

    hu_data, label_data = volume.data, labels.data
    if isinstance(hu_data, da.Array) or isinstance(label_data, da.Array):
        hu_data = da.asarray(hu_data)
        if hu_data.numblocks[1:] != (1, 1):
            hu_data = hu_data.rechunk({1: -1, 2: -1})
        label_data = da.asarray(label_data).rechunk(hu_data.chunks)
        if set(label_data.__dask_graph__()).intersection(hu_data.__dask_graph__()):
            # labels made from this volume: read the volume again once they are done
            from dask.graph_manipulation import bind

            hu_data = bind(hu_data, label_data, seed=tokenize(hu_data.name, label_data.name))
        bounds = np.cumsum((0, *hu_data.chunks[0]))
        summarize = dask.delayed(summarize_labels, pure=True)
        parts = [
            summarize(h, lab, first_slice=int(lo), **kwargs)
            for h, lab, lo in zip(
                hu_data.to_delayed().ravel(), label_data.to_delayed().ravel(), bounds[:-1], strict=True
            )
        ]
        results = dask.compute(*parts)
    else:
        results = (summarize_labels(np.asarray(hu_data), np.asarray(label_data), **kwargs),)
    totals, rows = _merge(results)

    known = {**label_names(labels), **dict(names or {})}

    def region_name(label: int) -> str:
        return known.get(label, f"label_{label}")

    found = sorted(v for v in totals if include_background or v != 0)
    if not per_slice:
        records = []
        for label in found:
            counts, s, s2 = totals[label]
            stats = _statistics(counts, s, s2, voxel_volume_ml=voxel_ml, options=options)
            records.append({"region": region_name(label), "label": label, **stats})
        columns = _columns(options, per_slice=False)
        return pd.DataFrame.from_records(records, columns=columns)

    empty = _statistics(np.zeros(N_FINE, np.int64), 0.0, 0.0, voxel_volume_ml=voxel_ml, options=options)
    by_key = {(r["label"], r["slice_index"]): r for r in rows}
    positions = np.asarray(volume["slice"].values, float) if "slice" in volume.coords else np.arange(volume.shape[0])
    records = []
    for label in found:
        for k in range(volume.shape[0]):
            row = by_key.get((label, k)) or {"label": label, "slice_index": k, "area_mm2": 0.0, **empty}
            records.append({**row, "region": region_name(label), "slice_position_mm": float(positions[k])})
    return pd.DataFrame.from_records(records, columns=_columns(options, per_slice=True))


def _columns(options: Mapping[str, Any], *, per_slice: bool) -> list[str]:
    stats = list(_statistics(np.zeros(N_FINE, np.int64), 0.0, 0.0, voxel_volume_ml=1.0, options=options).keys())
    keys = list(_KEY_COLUMNS)
    if per_slice:
        keys += list(_SLICE_COLUMNS)
    return keys + stats
