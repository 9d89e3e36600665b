"""Whether, and how, a stack's stored values become Hounsfield units.

The one owner of the Modality LUT rules (as xarray's ``CFScaleOffsetCoder`` is
for scale and offset): :func:`ctframe.series_table` (the ``not_hu_calibrated``
flag and its ``calibration_issue``), :func:`ctframe.to_hu`, the cohort path and
the CLI all ask :func:`assess_calibration`, so a stack is either converted the
same way everywhere or refused everywhere with the same reason.

The rules (see ``docs/reliability.md``):

* every slice is CT (Modality), declares HU or nothing as RescaleType, and has a
  finite, non-zero RescaleSlope and a finite RescaleIntercept (Type 1 in the CT
  Image module: a slice without them cannot be mapped; no default is guessed);
* slope and intercept may differ from slice to slice (each slice uses its own:
  the stack is flagged ``rescale_varies``, not refused);
* PixelPaddingValue and PixelPaddingRangeLimit apply slice by slice (a stack
  whose rescale varies stores the same padding HU as different values), so
  they travel as per-slice coordinates like slope and intercept.

A stack that breaks a rule is refused with a reason naming the rule, how many
slices break it and the first file, never converted with a value taken from
another slice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["HUCalibration", "assess_calibration", "calibration_of_rows", "calibration_of_volume", "per_slice_values"]

@dataclass(frozen=True)
class HUCalibration:
    """The verdict on a stack: can it become HU, and with which padding.

    Attributes
    ----------
    usable : bool
        Stored values can be mapped to HU.
    issue : str
        Why not (empty when `usable`).
    rescale_type : str
        The stack's RescaleType (``"HU"``, ``""`` or, when refused, what it says).
    padding_value, padding_range_limit : float
        Stored-domain padding when every slice has the same (NaN when absent
        or when it differs; the per-slice values are the catalog's).
    rescale_varies : bool
        Slope or intercept differ between slices (each slice uses its own).
    """

    usable: bool
    issue: str
    rescale_type: str
    padding_value: float
    padding_range_limit: float
    rescale_varies: bool


def _first(values: np.ndarray, bad: np.ndarray, names: Sequence[str] | None) -> str:
    """`` (first: NAME)`` for the first bad slice, when names are known."""
    if names is None or not bad.any():
        return ""
    return f" (first: {os.path.basename(str(names[int(np.flatnonzero(bad)[0])]))})"


def _same(values: np.ndarray) -> bool:
    """All equal, NaN counting as a value of its own."""
    if values.size == 0:
        return True
    nan = np.isnan(values)
    if nan.any():
        return bool(nan.all())
    return bool((values == values[0]).all())


def assess_calibration(
    *,
    modality: Sequence[str] | str,
    rescale_type: Sequence[str] | str,
    slope: Any,
    intercept: Any,
    padding_value: Any = np.nan,
    padding_range_limit: Any = np.nan,
    names: Sequence[str] | None = None,
) -> HUCalibration:
    """Decide whether stored values can become HU, from per-slice header values.

    Parameters
    ----------
    modality, rescale_type : str or sequence of str
        Per slice (or one value for all). RescaleType as normalised by
        :func:`ctframe.dicom.normalise_rescale_type` (``"HU"`` or ``""`` pass).
    slope, intercept : array-like of float
        Per-slice RescaleSlope and RescaleIntercept (NaN when missing).
    padding_value, padding_range_limit : float or array-like of float
        Per-slice stored-domain padding (NaN when absent).
    names : sequence of str, optional
        Per-slice file names, for the reason.

    Returns
    -------
    HUCalibration

    Examples
    --------
    >>> assess_calibration(modality="CT", rescale_type="HU", slope=[1.0, 1.0], intercept=[-1024.0, -1024.0]).usable
    True
    >>> assess_calibration(modality="CT", rescale_type="", slope=[1.0, np.nan], intercept=[-1024.0, -1024.0],
    ...                    names=["a/IM1", "a/IM2"]).issue
    'RescaleSlope missing or not a finite number on 1 of 2 slice(s) (first: IM2)'
    """
    slope = np.atleast_1d(np.asarray(slope, float))
    intercept = np.broadcast_to(np.asarray(intercept, float), slope.shape)
    n = slope.size
    modalities = np.broadcast_to(np.asarray(modality, dtype=object), slope.shape)
    types = np.broadcast_to(np.asarray(rescale_type, dtype=object), slope.shape)
    padding = np.broadcast_to(np.asarray(padding_value, float), slope.shape)
    limit = np.broadcast_to(np.asarray(padding_range_limit, float), slope.shape)

    issues: list[str] = []
    not_ct = modalities != "CT"
    if not_ct.any():
        found = "/".join(sorted({str(m) or "missing" for m in modalities[not_ct]}))
        issues.append(f"modality is {found}, not CT, on {int(not_ct.sum())} of {n} slice(s)" + _first(
            modalities, not_ct, names))
    not_hu = ~np.isin(types.astype(str), ["", "HU"])
    if not_hu.any():
        found = "/".join(sorted({str(t) for t in types[not_hu]}))
        issues.append(f"RescaleType is {found!r}, not HU, on {int(not_hu.sum())} of {n} slice(s)" + _first(
            types, not_hu, names))
    for label, values in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        bad = ~np.isfinite(values)
        if bad.any():
            issues.append(
                f"{label} missing or not a finite number on {int(bad.sum())} of {n} slice(s)"
                + _first(values, bad, names)
            )
    zero = np.isfinite(slope) & (slope == 0)
    if zero.any():
        issues.append(f"RescaleSlope is 0 on {int(zero.sum())} of {n} slice(s)" + _first(slope, zero, names))
    finite_slope, finite_intercept = slope[np.isfinite(slope)], intercept[np.isfinite(intercept)]
    types_ok = types[~not_hu]
    return HUCalibration(
        usable=not issues,
        issue="; ".join(issues),
        rescale_type=str(types_ok[0]) if types_ok.size and not not_hu.any() else "/".join(
            sorted({str(t) for t in types})),
        padding_value=float(padding[0]) if n and _same(np.asarray(padding)) else float("nan"),
        padding_range_limit=float(limit[0]) if n and _same(np.asarray(limit)) else float("nan"),
        rescale_varies=bool(np.unique(finite_slope).size > 1 or np.unique(finite_intercept).size > 1),
    )


def calibration_of_rows(rows: pd.DataFrame) -> HUCalibration:
    """:func:`assess_calibration` of one stack's catalog rows (see :func:`ctframe.scan`).

    Examples
    --------
    >>> rows = pd.DataFrame({"modality": ["CT", "CT"], "rescale_type": ["", ""], "rescale_slope": [1.0, 1.0],
    ...     "rescale_intercept": [-1024.0, -1000.0], "padding_value": [np.nan] * 2,
    ...     "padding_range_limit": [np.nan] * 2, "path": ["IM1", "IM2"]})
    >>> calibration = calibration_of_rows(rows)
    >>> calibration.usable, calibration.rescale_varies
    (True, True)
    """
    return assess_calibration(
        modality=rows["modality"].astype(str).to_numpy(),
        rescale_type=rows["rescale_type"].fillna("").astype(str).to_numpy(),
        slope=rows["rescale_slope"].to_numpy(float),
        intercept=rows["rescale_intercept"].to_numpy(float),
        padding_value=rows["padding_value"].to_numpy(float),
        padding_range_limit=rows["padding_range_limit"].to_numpy(float),
        names=rows["path"].astype(str).tolist() if "path" in rows else None,
    )


def per_slice_values(volume: xr.DataArray, name: str) -> xr.DataArray:
    """A calibration value of each slice (float): the coordinate `name`, or the attribute for every slice.

    Slope, intercept and padding travel as per-slice coordinates of a volume
    from :func:`ctframe.open_series`; a volume without the coordinate gives its
    attribute (or NaN) as a 0-d DataArray, which broadcasts over the slices.

    Examples
    --------
    >>> volume = xr.DataArray(np.zeros((2, 1, 1)), dims=("slice", "row", "col"), attrs={"padding_value": -2000})
    >>> per_slice_values(volume, "padding_value").item(), per_slice_values(volume, "padding_range_limit").item()
    (-2000.0, nan)
    """
    if name in volume.coords:
        return volume[name].astype(float).reset_coords(drop=True)
    return xr.DataArray(float(volume.attrs.get(name, np.nan)))


def calibration_of_volume(volume: xr.DataArray) -> HUCalibration:
    """:func:`assess_calibration` of a stored volume (its per-slice coords and attrs).

    Slope, intercept and padding are per-slice coordinates; modality and
    RescaleType are attributes that :func:`ctframe.open_series` sets from every
    slice's header (a stack that mixes RescaleTypes says so, e.g. ``"HU/US"``).
    """
    n = volume.sizes.get("slice", 1)
    nan = np.full(n, np.nan)
    has = "rescale_slope" in volume.coords and "rescale_intercept" in volume.coords
    result = assess_calibration(
        modality=str(volume.attrs.get("modality", "")),
        rescale_type=str(volume.attrs.get("rescale_type", "")),
        slope=volume["rescale_slope"].to_numpy().astype(float) if has else nan,
        intercept=volume["rescale_intercept"].to_numpy().astype(float) if has else nan,
        padding_value=per_slice_values(volume, "padding_value").to_numpy(),
        padding_range_limit=per_slice_values(volume, "padding_range_limit").to_numpy(),
    )
    if not has:
        return HUCalibration(False, "no rescale_slope/rescale_intercept coordinates; open it with "
                             "ctframe.open_series", result.rescale_type, result.padding_value,
                             result.padding_range_limit, False)
    return result
