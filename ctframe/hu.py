"""Stored values to Hounsfield units, with padding and scan-circle fill as NaN.

``HU = stored * RescaleSlope + RescaleIntercept``, each slice with its own slope
and intercept (DICOM PS3.3 C.11.1, the Modality LUT), computed in float64 and
returned as float32, so values equal pydicom's ``apply_modality_lut`` cast to
float32.

Voxels that are not tissue become **NaN** (not a masked array, not a sentinel):

* stored values equal to PixelPaddingValue, or within the PixelPaddingValue ..
  PixelPaddingRangeLimit range (PS3.3 C.7.5.1.1.2), with the signed/unsigned
  mismatch of some scanners fixed (LIDC-IDRI-0001 writes 63536 for -2000);
* HU below ``hu.fill_below_hu`` (default -1500): the outside-the-scan-circle fill
  (-2048, -3024, ...) that no tissue or air can reach (air is about -1000 HU).

Downstream, NaN is never counted: histograms, statistics and masks skip it,
projections use nan-aware reductions.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

import ctframe.accessor  # noqa: F401  (registers .ct on every volume ctframe makes)
from ctframe.calibration import calibration_of_volume, per_slice_values
from ctframe.config import get_config
from ctframe.errors import NotHUCalibratedError
from ctframe.kernels import lookup_kernel

__all__ = ["hu_kernel", "rescale_values", "to_hu"]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def rescale_values(
    stored: np.ndarray,
    slope: float | np.ndarray,
    intercept: float | np.ndarray,
    *,
    padding_value: float | np.ndarray,
    padding_range_limit: float | np.ndarray,
    fill_below_hu: float,
) -> tuple[np.ndarray, np.ndarray]:
    """HU (float64) of stored values and whether each is tissue (not padding or fill).

    The one place where the Modality LUT and the padding rules are applied;
    :func:`hu_kernel` and the cohort histograms both call it.

    Parameters
    ----------
    stored : ndarray
        Stored values.
    slope, intercept : float or ndarray broadcastable to `stored`
        Rescale slope and intercept.
    padding_value, padding_range_limit : float or ndarray broadcastable to `stored`
        Stored-domain padding (NaN when absent), per slice where it differs
        (a stack whose rescale changes from slice to slice stores the same
        padding HU as different values).
    fill_below_hu : float
        HU below this are fill.

    Returns
    -------
    hu : ndarray of float64
    valid : ndarray of bool
        False for padding, fill and HU that float32 cannot hold (a corrupt slope).

    Examples
    --------
    >>> hu, valid = rescale_values(np.array([[0, 5, 9]]), 1.0, -1000.0, padding_value=np.array([[5.0]]),
    ...                            padding_range_limit=np.nan, fill_below_hu=-1500)
    >>> hu.tolist(), valid.tolist()
    ([[-1000.0, -995.0, -991.0]], [[True, False, True]])
    """
    with np.errstate(over="ignore", invalid="ignore"):  # absurd slopes from corrupt headers
        hu = stored * np.asarray(slope, float) + np.asarray(intercept, float)
        # HU that float32 cannot hold (or inf/NaN) are no tissue either
        valid = (hu >= fill_below_hu) & (np.abs(hu) <= _FLOAT32_MAX)
    pad = np.asarray(padding_value, float)
    limit = np.asarray(padding_range_limit, float)
    if np.isfinite(pad).any():
        has_range = np.isfinite(pad) & np.isfinite(limit)
        lo, hi = np.fmin(pad, limit), np.fmax(pad, limit)
        padding = np.where(has_range, (stored >= lo) & (stored <= hi), stored == pad)  # NaN pad: never equal
        valid &= ~padding
    return hu, valid


def _lookup_table(
    lo: int,
    hi: int,
    slope: float,
    intercept: float,
    padding_value: float,
    padding_range_limit: float,
    fill_below_hu: float,
) -> np.ndarray:
    """float32 HU of every stored value from `lo` to `hi`, indexed by ``value - lo``."""
    hu, valid = rescale_values(
        np.arange(lo, hi + 1), slope, intercept, padding_value=padding_value, padding_range_limit=padding_range_limit,
        fill_below_hu=fill_below_hu,
    )  # fmt: skip
    return np.where(valid, hu, np.nan).astype(np.float32)


def hu_kernel(
    stored: np.ndarray,
    slope: np.ndarray,
    intercept: np.ndarray,
    padding_value: float | np.ndarray = np.nan,
    padding_range_limit: float | np.ndarray = np.nan,
    *,
    fill_below_hu: float,
) -> np.ndarray:
    """Eager HU conversion of one block; the body of :func:`to_hu`.

    8- and 16-bit stored values go through a lookup table built once per
    distinct (slope, intercept, padding) of the block, over the values the
    block holds (from its minimum to its maximum), which gives the same float32
    values as converting voxel by voxel in float64, at a fraction of the cost.

    Parameters
    ----------
    stored : ndarray (slice, row, col) or (row, col)
        Stored values.
    slope, intercept : ndarray, broadcastable to `stored`
        Per-slice rescale slope and intercept.
    padding_value, padding_range_limit : float or ndarray, broadcastable to `stored`
        Per-slice stored-domain padding (NaN when absent).
    fill_below_hu : float
        HU below this become NaN.

    Returns
    -------
    ndarray of float32
    """
    stored = np.asarray(stored)
    if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.ndim >= 2 and stored.size:
        planes = np.ascontiguousarray(stored.reshape(-1, *stored.shape[-2:]))
        n = planes.shape[0]
        per_slice = [
            np.broadcast_to(np.asarray(v, float).reshape(-1), (n,))
            for v in (slope, intercept, padding_value, padding_range_limit)
        ]
        out = np.empty(planes.shape, np.float32)
        lo, hi = int(planes.min()), int(planes.max())  # tables cover the values present, not all 65,536
        lookup = lookup_kernel() if planes.dtype.isnative else None  # numba takes native byte order only
        tables: dict[tuple[float | None, ...], np.ndarray] = {}
        for k in range(n):
            values = [float(v[k]) for v in per_slice]
            key = tuple(None if math.isnan(x) else x for x in values)  # NaN != NaN: it would never hit the cache
            if key not in tables:
                tables[key] = _lookup_table(lo, hi, *values, fill_below_hu=fill_below_hu)
            if lookup is not None:  # a compiled loop that releases the GIL
                lookup(tables[key], planes[k], lo, out[k])
            else:
                np.take(tables[key], np.subtract(planes[k], lo, dtype=np.intp), out=out[k])
        return out.reshape(stored.shape)
    hu, valid = rescale_values(
        stored, slope, intercept, padding_value=padding_value, padding_range_limit=padding_range_limit,
        fill_below_hu=fill_below_hu,
    )  # fmt: skip
    return np.where(valid, hu, np.nan).astype(np.float32)


def to_hu(volume: xr.DataArray, *, fill_below_hu: float | None = None, assume_hu: bool = False) -> xr.DataArray:
    """Convert stored values to Hounsfield units (float32, padding as NaN).

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        Stored values from :func:`ctframe.open_series`, with per-slice
        ``rescale_slope`` and ``rescale_intercept`` coordinates.
    fill_below_hu : float, optional
        HU below this are outside-the-circle fill and become NaN
        (default ``hu.fill_below_hu`` = -1500).
    assume_hu : bool
        Convert even when the header does not declare HU (non-CT modality or a
        RescaleType other than HU). Off by default.

    Returns
    -------
    DataArray (slice, row, col)
        float32 HU with NaN for padding and fill; attrs ``units="HU"``.
        A volume already in HU is returned unchanged.

    Raises
    ------
    NotHUCalibratedError
        The stack breaks a rule of :mod:`ctframe.calibration` (not CT, a
        RescaleType other than HU, a slope or intercept missing, non-finite or
        zero on some slice, padding that differs between slices); the message
        names the series and the rule.

    Notes
    -----
    **Lazy**: one fused task per chunk.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(4, 64, 64))
    >>> hu = ctframe.to_hu(ctframe.open_series(folder))
    >>> hu.dtype, hu.attrs["units"]
    (dtype('float32'), 'HU')
    """
    if volume.attrs.get("units") == "HU":
        return volume
    key = volume.attrs.get("stack_key", volume.attrs.get("series_uid", "(unnamed)"))
    if "rescale_slope" not in volume.coords or "rescale_intercept" not in volume.coords:
        raise NotHUCalibratedError(
            f"series {key}: no rescale_slope/rescale_intercept coordinates; open it with ctframe.open_series"
        )
    calibration = calibration_of_volume(volume)  # the same rules as series_table and the cohort path
    if not calibration.usable and not assume_hu:
        raise NotHUCalibratedError(
            f"series {key}: stored values cannot be mapped to HU: {calibration.issue} "
            "(pass assume_hu=True to apply the rescale anyway, missing slope/intercept as 1/0)"
        )
    slope = volume["rescale_slope"].astype(float).fillna(1.0)
    intercept = volume["rescale_intercept"].astype(float).fillna(0.0)
    threshold = get_config()["hu"]["fill_below_hu"] if fill_below_hu is None else float(fill_below_hu)
    padding, padding_limit = (per_slice_values(volume, name) for name in ("padding_value", "padding_range_limit"))
    hu = xr.apply_ufunc(
        hu_kernel,
        volume,
        slope,
        intercept,
        padding,
        padding_limit,
        kwargs={"fill_below_hu": threshold},
        dask="parallelized",
        output_dtypes=[np.float32],
        keep_attrs=True,
    )
    hu.attrs.update(units="HU", fill_below_hu=threshold)
    hu.name = "hu"
    return hu.transpose(*volume.dims)
