"""Body and lung masks in 3-D, lazily, one task per series.

:func:`body_mask` marks the patient (not outside air, table or padding);
:func:`lung_mask` labels the right lung 1, the left lung 2 and, on request, the
trachea and main bronchi outside the lungs 3. Both work on the HU volume from
:func:`ctframe.to_hu` and return lazy DataArrays chunked like it.

How the work is laid out (bounded memory, one series per task):

1. Per chunk of slices, every threshold the method needs is applied at once and
   packed into one ``uint8`` code per voxel (bit flags, see ``CODE_*``): one
   byte per voxel leaves the chunk instead of four.
2. The code is rechunked to a single block and one task per series runs the
   3-D morphology on bool/int8/uint16 arrays (scipy.ndimage), cropped to the
   body where it can. Its in-plane steps run slab by slab in a thread pool
   (one thread per usable core; numpy and scipy.ndimage release the GIL).
3. The labels are rechunked like the input.

Right and left are decided from patient coordinates (LPS: +x is the patient's
left), never from the side of the array; the head end of the stack from
ImagePositionPatient z. docs/segmentation.md explains the method and each
default of the ``segmentation`` section of the configuration.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy import ndimage

from ctframe.config import RANGES, get_config
from ctframe.errors import NotHUCalibratedError, ParameterError, ShortStackError
from ctframe.geometry import voxel_spacing

__all__ = [
    "CODE_AIR",
    "CODE_BONE",
    "CODE_DENSE",
    "CODE_GAS",
    "CODE_LOW",
    "CODE_TRACK",
    "CODE_VALID",
    "LUNG_LABELS",
    "ShortStackError",
    "body_mask",
    "can_segment",
    "encode_block",
    "lung_mask",
    "lung_qc",
]


#: Label values of :func:`lung_mask`.
LUNG_LABELS = {"background": 0, "right_lung": 1, "left_lung": 2, "airway": 3}

#: Bit flags of the per-voxel code: not NaN.
CODE_VALID = 1
#: HU >= body threshold (tissue).
CODE_DENSE = 2
#: HU < lung threshold (lung candidate).
CODE_LOW = 4
#: HU < gas threshold (bowel gas evidence).
CODE_GAS = 8
#: HU < airway threshold, and one step lower (airway growth, leak fallback).
CODE_AIR = (16, 32)
#: HU < airway tracking threshold (the trachea followed slice by slice).
CODE_TRACK = 64
#: HU >= bone threshold (ribs, spine: the lung envelope never grows into them).
CODE_BONE = 128

_FACES_3D = ndimage.generate_binary_structure(3, 1)  # 6-connectivity
_FACES_2D = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = _FACES_2D  # in-plane neighbours only (per-slice operations on a volume)


# --------------------------------------------------------------------------- settings and geometry


def _settings(overrides: Mapping[str, Any]) -> dict[str, float]:
    settings = {k: float(v) for k, v in get_config()["segmentation"].items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ParameterError(f"{key} must be a finite number (HU), got {value!r}")
        lo, hi = RANGES.get(f"segmentation.{key}", (-math.inf, math.inf))
        if not lo <= value <= hi:
            raise ParameterError(f"{key}={value!r} is outside [{lo:g}, {hi:g}] HU; pick a value in that range")
        settings[key] = float(value)
    return settings


@dataclass(frozen=True)
class _Geometry:
    """What the 3-D task needs to know about the grid, as plain numbers."""

    spacing_mm: tuple[float, float, float]  # slice, row, col
    x0_mm: tuple[float, ...]  # LPS x of pixel (0, 0) of each slice
    x_per_col_mm: float  # change of LPS x per column index
    x_per_row_mm: float  # change of LPS x per row index
    head_last: bool  # the last slice is the head end (the arrays' slice order)

    @property
    def voxel_ml(self) -> float:
        dz, dy, dx = self.spacing_mm
        return dz * dy * dx / 1000.0

    def voxels(self, mm: float, axis: int) -> int:
        """Whole voxels along `axis` in `mm` (at least 0)."""
        return max(round(mm / self.spacing_mm[axis]), 0)

    def flipped(self) -> _Geometry:
        """The geometry of the arrays with the slice axis reversed."""
        return _Geometry(self.spacing_mm, self.x0_mm[::-1], self.x_per_col_mm, self.x_per_row_mm, not self.head_last)

    def cropped(self, box: tuple[slice, ...]) -> _Geometry:
        """The geometry of ``array[box]``."""
        x0 = np.asarray(self.x0_mm)[box[0]] + box[1].start * self.x_per_row_mm + box[2].start * self.x_per_col_mm
        return _Geometry(self.spacing_mm, tuple(float(v) for v in x0), self.x_per_col_mm, self.x_per_row_mm,
                         self.head_last)  # fmt: skip

    def mean_x(self, mask: np.ndarray) -> float:
        """Mean LPS x (mm) of the voxels of `mask` (slice, row, col)."""
        n_per_slice = np.count_nonzero(mask, axis=(1, 2))
        total = int(n_per_slice.sum())
        if total == 0:
            return float("nan")
        x0 = np.asarray(self.x0_mm)
        in_plane = mask.sum(axis=0, dtype=np.int64)  # one pass; rows and columns from the 2-D counts
        row_sum = float(in_plane.sum(axis=1) @ np.arange(mask.shape[1]))
        col_sum = float(in_plane.sum(axis=0) @ np.arange(mask.shape[2]))
        return float((n_per_slice * x0).sum() + row_sum * self.x_per_row_mm + col_sum * self.x_per_col_mm) / total

    def count_beyond(self, mask: np.ndarray, x_mm: float) -> int:
        """Voxels of `mask` whose LPS x is above `x_mm` (towards the patient's left)."""
        total = 0
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            total += int((self.x_of_columns(int(k), *mask.shape[1:])[mask[k]] > x_mm).sum())
        return total

    def x_of_columns(self, k: int, n_rows: int, n_cols: int) -> np.ndarray:
        """LPS x (mm) of every pixel of slice `k`."""
        return (
            self.x0_mm[k]
            + np.arange(n_rows)[:, None] * self.x_per_row_mm
            + np.arange(n_cols)[None, :] * self.x_per_col_mm
        )


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", volume.name or "(unnamed volume)")))


def _check_hu(volume: xr.DataArray, function: str) -> None:
    if not isinstance(volume, xr.DataArray):
        raise ParameterError(
            f"{function} needs an xarray.DataArray (slice, row, col) of HU, got {type(volume).__name__}"
        )
    if tuple(volume.dims) != ("slice", "row", "col"):
        raise ParameterError(
            f"{function} needs dims ('slice', 'row', 'col'), got {volume.dims} (series {_series_name(volume)}); "
            "transpose with volume.transpose('slice', 'row', 'col')"
        )
    units = volume.attrs.get("units")
    if (units is not None and units != "HU") or not np.issubdtype(volume.dtype, np.floating):
        raise NotHUCalibratedError(
            f"{function} needs HU (float, units 'HU'); series {_series_name(volume)} has dtype {volume.dtype} and "
            f"units {units!r}; convert it with ctframe.to_hu(volume)"
        )
    if min(volume.shape) < 1:
        raise ParameterError(f"{function}: series {_series_name(volume)} is empty (shape {volume.shape})")


def _step(volume: xr.DataArray, dim: str, fallback: float | None) -> float:
    values = np.asarray(volume[dim].values, float) if dim in volume.coords else np.array([])
    if values.size > 1:
        step = float(np.median(np.abs(np.diff(values))))
    elif fallback is not None:
        step = float(fallback)
    else:
        step = float("nan")
    if not (math.isfinite(step) and step > 0):
        raise ParameterError(
            f"series {_series_name(volume)}: the spacing along {dim!r} is unknown or zero; "
            f"give the volume a '{dim}' coordinate in mm (open it with ctframe.open_series)"
        )
    return step


def _geometry(volume: xr.DataArray, function: str) -> _Geometry:
    """Spacing, LPS x model and head direction from coordinates and attrs.

    Without an ``orientation`` attr the standard axial orientation (rows along
    +x, columns along +y) is assumed; without ``position_z_mm`` the slice
    coordinate is taken to increase towards the head.
    """
    attrs = volume.attrs
    dz, dy, dx = voxel_spacing(volume)  # ctframe.geometry: coordinates, else the spacing attrs
    orientation = np.asarray(attrs.get("orientation", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), float)
    if orientation.shape != (6,) or not np.isfinite(orientation).all():
        raise ParameterError(f"series {_series_name(volume)}: orientation attr must hold 6 direction cosines")
    normal = np.cross(orientation[:3], orientation[3:])
    if abs(normal[2]) < 0.7:
        raise ParameterError(
            f"{function} needs axial slices; series {_series_name(volume)} has slice normal "
            f"{np.round(normal, 3).tolist()} (more than 45 degrees from the head-foot axis). "
            "Open the axial series of the study"
        )
    n = volume.sizes["slice"]
    x0 = np.asarray(volume["position_x_mm"].values, float) if "position_x_mm" in volume.coords else np.zeros(n)
    if "position_z_mm" in volume.coords and n > 1:
        z = np.asarray(volume["position_z_mm"].values, float)
        head_last = bool(z[-1] >= z[0])
    else:
        head_last = True
    if not np.isfinite(x0).all():
        raise ParameterError(f"series {_series_name(volume)}: position_x_mm has missing values")
    return _Geometry(
        spacing_mm=(dz, dy, dx),
        x0_mm=tuple(float(v) for v in x0),
        x_per_col_mm=float(orientation[0] * dx),
        x_per_row_mm=float(orientation[3] * dy),
        head_last=head_last,
    )


# --------------------------------------------------------------------------- per-chunk code


def encode_block(
    hu: np.ndarray,
    *,
    body_threshold_hu: float,
    threshold_hu: float,
    gas_hu: float,
    airway_hu: float,
    airway_step_hu: float,
    bone_hu: float | None = None,
    airway_track_hu: float | None = None,
) -> np.ndarray:
    """Pack the thresholds of the segmentation into one ``uint8`` per voxel.

    Parameters
    ----------
    hu : ndarray
        HU (float), NaN for padding and fill.
    body_threshold_hu, threshold_hu, gas_hu, airway_hu, airway_step_hu : float
        See the ``segmentation`` configuration.
    bone_hu : float, optional
        Sets ``CODE_BONE`` at or above it (none when not given).
    airway_track_hu : float, optional
        Sets ``CODE_TRACK`` below it (none when not given).

    Returns
    -------
    ndarray of uint8
        Bit flags: ``CODE_VALID`` (not NaN), ``CODE_DENSE`` (>= body threshold),
        ``CODE_LOW`` (< lung threshold), ``CODE_GAS`` (< gas threshold) and
        ``CODE_AIR`` (< airway threshold, one step lower), ``CODE_TRACK``
        (< `airway_track_hu`), ``CODE_BONE`` (>= `bone_hu`). NaN sets none.

    Notes
    -----
    **Computes** (eager numpy on one block; the per-chunk step of the masks).

    Examples
    --------
    >>> code = encode_block(np.array([np.nan, -1000.0, -600.0, 40.0, 500.0]), body_threshold_hu=-500,
    ...                     threshold_hu=-320, gas_hu=-940, airway_hu=-950, airway_step_hu=25,
    ...                     bone_hu=300, airway_track_hu=-900)
    >>> code.tolist()
    [0, 125, 5, 3, 131]
    """
    hu = np.asarray(hu)
    code = np.zeros(hu.shape, np.uint8)
    with np.errstate(invalid="ignore"):
        for bit, test in (
            (CODE_VALID, hu == hu),
            (CODE_DENSE, hu >= body_threshold_hu),
            (CODE_LOW, hu < threshold_hu),
            (CODE_GAS, hu < gas_hu),
            (CODE_AIR[0], hu < airway_hu),
            (CODE_AIR[1], hu < airway_hu - airway_step_hu),
        ):
            code |= test.view(np.uint8) * np.uint8(bit)
        if bone_hu is not None:
            code |= (hu >= bone_hu).view(np.uint8) * np.uint8(CODE_BONE)
        if airway_track_hu is not None:
            code |= (hu < airway_track_hu).view(np.uint8) * np.uint8(CODE_TRACK)
    return code


def _flag(code: np.ndarray, bit: int) -> np.ndarray:
    return (code & np.uint8(bit)).astype(bool)


# --------------------------------------------------------------------------- 3-D helpers (eager)


def _label(mask: np.ndarray, structure: np.ndarray = _FACES_3D) -> tuple[np.ndarray, int]:
    """Connected components, in uint16 when they fit (half the memory of int32)."""
    try:
        return ndimage.label(mask, structure=structure, output=np.uint16)  # type: ignore[return-value]
    except RuntimeError:  # more than 65535 components
        return ndimage.label(mask, structure=structure)  # type: ignore[return-value]


def _sizes(labels: np.ndarray, count: int, where: np.ndarray | None = None) -> np.ndarray:
    """Voxels per label (optionally only where `where`), one slice at a time.

    ``np.bincount`` casts its input to intp: on a whole int16 volume that is a
    temporary of 8 bytes per voxel; slice by slice it stays small.
    """
    out = np.zeros(count + 1, np.int64)
    for k in range(labels.shape[0]):
        values = labels[k] if where is None else labels[k][where[k]]
        out += np.bincount(values.ravel(), minlength=count + 1)
    return out


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of `mask` (grown by `pad` voxels), or None when empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + 1 + pad, mask.shape[axis])))
    return tuple(box)


def _workers() -> int:
    """Threads for the per-slab steps: the cores this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def _slabs(n: int, workers: int, min_slices: int = 4) -> list[slice]:
    """Slice ranges of about equal size, a few per worker (at least `min_slices` each)."""
    count = max(min(4 * workers, n // max(min_slices, 1)), 1)
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def _per_slab(function: Any, n: int, *, min_slices: int = 4) -> None:
    """Call ``function(slab)`` for slabs of slices ``0..n`` in a thread pool.

    numpy and most of scipy.ndimage release the GIL; `function` writes its own
    part of the result.
    """
    workers = _workers()
    slabs = _slabs(n, workers, min_slices)
    if workers == 1 or len(slabs) == 1:
        for slab in slabs:
            function(slab)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(function, slab) for slab in slabs]:
            future.result()


def _rows_of(element: np.ndarray) -> list[tuple[int, int]]:
    """(row offset, half width) of a 2-D element whose rows are centred runs (a disk)."""
    rows = []
    centre_row, centre_col = element.shape[0] // 2, element.shape[1] // 2
    for i, row in enumerate(element):
        hits = np.flatnonzero(row)
        if hits.size == 0:
            continue
        half = centre_col - int(hits[0])
        if int(hits[-1]) != centre_col + half or hits.size != 2 * half + 1:
            raise ValueError("in-plane morphology needs an element whose rows are centred runs")
        rows.append((i - centre_row, half))
    return rows


def _in_plane_morphology(mask: np.ndarray, element: np.ndarray, erode: bool) -> np.ndarray:
    """Erosion (or dilation) of each slice of a 3-D bool array by a 2-D element, outside the image 0.

    The same as ``ndimage.binary_erosion(mask, element[None])`` (or
    ``binary_dilation``) for an element symmetric about its centre whose rows
    are centred runs (a disk), built from shifted AND (OR) of whole arrays:
    the run of each half width along the rows once, then the rows together.
    """
    combine = np.logical_and if erode else np.logical_or
    rows = _rows_of(element)
    runs = {0: mask}
    current = mask
    for half in range(1, max(h for _, h in rows) + 1):  # runs of half width 1, 2, ... along the columns
        grown = current.copy()
        combine(grown[..., 1:], current[..., :-1], out=grown[..., 1:])
        combine(grown[..., :-1], current[..., 1:], out=grown[..., :-1])
        if erode:
            grown[..., 0] = grown[..., -1] = False
        runs[half] = current = grown
    out = np.ones(mask.shape, bool) if erode else np.zeros(mask.shape, bool)
    n_rows = mask.shape[1]
    for dy, half in rows:
        run = runs[half]
        if abs(dy) >= n_rows:
            if erode:
                out[:] = False
            continue
        # out[:, r] combines run[:, r + dy]; rows beyond the image read 0
        if dy >= 0:
            combine(out[:, : n_rows - dy], run[:, dy:], out=out[:, : n_rows - dy])
            if erode and dy:
                out[:, n_rows - dy :] = False
        else:
            combine(out[:, -dy:], run[:, : n_rows + dy], out=out[:, -dy:])
            if erode:
                out[:, :-dy] = False
    return out


def _in_plane_opening(mask: np.ndarray, element: np.ndarray) -> np.ndarray:
    """``ndimage.binary_opening(mask, element[None])``, slab by slab in threads (see _in_plane_morphology)."""
    out = np.empty(mask.shape, bool)

    def run(slab: slice) -> None:
        eroded = _in_plane_morphology(mask[slab], element, erode=True)
        out[slab] = _in_plane_morphology(eroded, element, erode=False)

    _per_slab(run, mask.shape[0])
    return out


def _fill_in_plane(mask: np.ndarray) -> np.ndarray:
    """``mask`` with the holes of each slice filled (4-connected background), slab by slab in threads."""
    out = np.empty(mask.shape, bool)

    def run(slab: slice) -> None:
        outside, count = _label(~mask[slab], structure=_IN_PLANE)
        border = np.zeros(count + 1, bool)
        for edge in (outside[:, 0, :], outside[:, -1, :], outside[:, :, 0], outside[:, :, -1]):
            border[np.unique(edge)] = True
        border[0] = False
        out[slab] = ~border[outside]

    _per_slab(run, mask.shape[0])
    return out


def _fill_holes_3d(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask, _FACES_3D)`` from one labelling.

    Background components (face connectivity) that do not reach a face of the
    array are holes.
    """
    outside, count = _label(~mask)
    border = np.zeros(count + 1, bool)
    for axis in range(3):
        for end in (0, -1):
            border[np.unique(np.take(outside, end, axis=axis))] = True
    border[0] = False
    return ~border[outside]


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius + radius * 0.5


def _ellipsoid(mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """Structuring element of radius `mm` in physical space (at least the 6-neighbourhood)."""
    radii = [max(math.floor(mm / s + 0.5), 1) for s in spacing]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    dist = sum((g * s / mm) ** 2 for g, s in zip(grids, spacing, strict=True))
    element = np.asarray(dist <= 1.0 + 1e-9)
    centre = tuple(radii)
    for axis in range(3):  # keep the face neighbours even when mm < spacing
        for step in (-1, 1):
            index = list(centre)
            index[axis] += step
            element[tuple(index)] = True
    return element


def _propagate_labels(labels: np.ndarray, mask: np.ndarray, max_iterations: int = 10_000) -> np.ndarray:
    """Grow int8 labels (> 0) into the unlabelled voxels of `mask`, one face step at a time.

    Each voxel of `mask` takes the label that reaches it first (geodesic distance
    in voxel steps within `mask`); voxels no label reaches stay 0.
    """
    out = np.where(mask, labels, 0).astype(np.int8)
    todo = mask & (out == 0)
    for _ in range(max_iterations):
        if not todo.any():
            break
        snapshot = out.copy()
        for axis in range(out.ndim):
            n = out.shape[axis]
            if n < 2:
                continue
            lo = [slice(None)] * out.ndim
            hi = [slice(None)] * out.ndim
            lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
            for dst, src in ((tuple(hi), tuple(lo)), (tuple(lo), tuple(hi))):
                take = todo[dst] & (snapshot[src] > 0) & (out[dst] == 0)
                out[dst][take] = snapshot[src][take]
        grown = todo & (out > 0)
        if not grown.any():
            break
        todo &= ~grown
    return out


# --------------------------------------------------------------------------- body


def _body(code: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]) -> np.ndarray:
    """Body mask of one series (head-last or not: nothing here depends on the direction)."""
    dense = _flag(code, CODE_DENSE)
    # whole pixels, rounded down: the opening never exceeds the physical radius
    radius = math.floor(settings["body_opening_mm"] / max(geometry.spacing_mm[1:]))
    if radius >= 1:
        dense = _in_plane_opening(dense, _disk(radius))
    # holes: per slice, low voxels not connected to the in-plane border (one
    # labelling per slab with in-plane connectivity, instead of the iterative
    # 3-D fill); the trachea, enclosed by the neck in every slice, is inside
    # the body
    filled = _fill_in_plane(dense)
    del dense
    labels, n = _label(filled)
    del filled
    if n == 0:
        return np.zeros(code.shape, bool)
    sizes = _sizes(labels, n)
    sizes[0] = 0
    body = labels == np.argmax(sizes)
    del labels
    body &= _flag(code, CODE_VALID)
    return body


def _body_block(code: np.ndarray, *, geometry: _Geometry, settings: Mapping[str, float]) -> np.ndarray:
    return _body(code, geometry, settings)


# --------------------------------------------------------------------------- airways


def _trachea_seed(
    air: np.ndarray, body: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]
) -> tuple[int, np.ndarray] | None:
    """(slice, 2-D mask) of the trachea near the head end (head-last arrays), or None."""
    _, dy, dx = geometry.spacing_mm
    n = air.shape[0]
    n_search = min(n, geometry.voxels(settings["trachea_search_mm"], 0) + 1)
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(n - 1, n - 1 - n_search, -1):
        if not body[k].any():
            continue
        x = geometry.x_of_columns(k, *air.shape[1:])
        midline = float(x[body[k]].mean())
        labels, count = ndimage.label(air[k], structure=_FACES_2D)
        if count == 0:
            continue
        areas = np.bincount(labels.ravel())[1:] * dy * dx
        x_sum = np.bincount(labels.ravel(), weights=x.ravel())[1:]
        centres = x_sum / np.maximum(areas / (dy * dx), 1)
        for index in np.flatnonzero(
            (areas >= settings["trachea_min_area_mm2"])
            & (areas <= settings["trachea_max_area_mm2"])
            & (np.abs(centres - midline) <= settings["trachea_max_offset_mm"])
        ):
            if best is None or areas[index] > best[0]:
                best = (float(areas[index]), k, labels == index + 1)
    return None if best is None else (best[1], best[2])


def _track_airway(air: np.ndarray, k0: int, seed_2d: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]
                  ) -> np.ndarray:  # fmt: skip
    """Trachea and main bronchi followed slice by slice from the seed towards the feet (head-last arrays).

    In each slice the 2-D air components that overlap (within one pixel) what
    was followed in the slice above continue the airway, as long as each is no
    wider than ``airway_track_growth`` times the component above it and than
    ``trachea_max_area_mm2``: at the carina the lumen parts in two and both
    are followed; a bronchus that opens into the lung (a component much wider
    than the lumen above) ends there. Unlike 3-D growth this cannot leak into
    the lungs through partial volume, so it holds where growth had to give up
    (thick slices, emphysema, a lumen that reads -900 HU).
    """
    _, dy, dx = geometry.spacing_mm
    max_area = settings["trachea_max_area_mm2"] / (dy * dx)
    growth = settings["airway_track_growth"]
    out = np.zeros(air.shape, bool)
    out[k0] = seed_2d
    previous = seed_2d
    for k in range(k0 - 1, -1, -1):
        labels, count = ndimage.label(air[k], structure=_FACES_2D)
        if count == 0:
            break
        area = np.bincount(labels.ravel(), minlength=count + 1)
        window = _bbox(previous, pad=1)  # the steps below only look one pixel beyond `previous`
        assert window is not None
        prev_labels, n_prev = ndimage.label(previous[window], structure=_FACES_2D)
        prev_area = np.bincount(prev_labels.ravel(), minlength=n_prev + 1)
        # the widest component above that each component here touches
        here = labels[window]
        touching = ndimage.binary_dilation(prev_labels > 0, structure=_FACES_2D) & (here > 0)
        grown_prev = ndimage.grey_dilation(prev_labels, footprint=_FACES_2D)
        limit = np.zeros(count + 1)
        np.maximum.at(limit, here[touching], prev_area[grown_prev[touching]])
        keep = (limit > 0) & (area <= growth * limit) & (area <= max_area)
        keep[0] = False
        if not keep.any():
            break
        previous = keep[labels]
        out[k] = previous
    return out


def _airways(code: np.ndarray, body: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]) -> np.ndarray:
    """Trachea and bronchi from the trachea near the head end (head-last arrays).

    3-D growth through air finds the bronchial tree where it does not leak;
    slice-by-slice tracking (:func:`_track_airway`) always adds the trachea and
    main bronchi, so a leak (growth above ``airway_max_ml`` at every
    threshold) still leaves them out of the lungs.
    """
    limit = settings["airway_max_ml"] / geometry.voxel_ml
    loose = _flag(code, CODE_TRACK) & body
    found = _trachea_seed(loose, body, geometry, settings)
    tracked = np.zeros(code.shape, bool) if found is None else _track_airway(loose, *found, geometry, settings)
    del loose
    for bit in CODE_AIR:
        air = _flag(code, bit) & body
        found = _trachea_seed(air, body, geometry, settings)
        if found is None:
            continue
        k, seed_2d = found
        seed = np.zeros(code.shape, bool)
        seed[k] = seed_2d
        grown = _attached(air, seed)  # the air connected to the seed (face connectivity)
        if grown.sum() <= limit:
            return grown | tracked
    return tracked


# --------------------------------------------------------------------------- lungs


def _side_pieces(fields: np.ndarray, gas: np.ndarray, core: int, thin_radius: int) -> np.ndarray:
    """2-D side pieces of the lung fields that are gas pockets or streaks, sweeping out from `core`.

    From slice `core` towards the feet and then towards the head, a slice's 2-D
    component that touches (across the slice boundary) what was kept of the
    previous slice is kept, unless it is not the main continuation (the
    component overlapping it most) of a main lung section there (at least a
    quarter of the largest) and it is

    * mostly gas (``CODE_GAS``), towards the feet only: a pocket of stomach or
      bowel gas under the diaphragm, touching the lung base across a slice
      boundary; or
    * thinner than the in-plane erosion of `thin_radius` pixels, towards the
      head only: a streak artefact from the shoulders or a partial-volume line
      that connects to the apex through other slices. (Towards the feet the
      thin crescents of the costophrenic recesses are lung.)

    Small lung pieces protect nothing, so a sliver of lung above the stomach
    cannot carry the stomach in. Returns the voxels to drop.
    """
    removed = np.zeros(fields.shape, bool)
    element = _disk(thin_radius) if thin_radius > 0 else None
    # everything below is in-plane and looks at most thin_radius + 1 pixels beyond the fields
    box = _bbox(fields, pad=thin_radius + 1)
    if box is None:
        return removed
    full_removed, fields, gas = removed, fields[:, box[1], box[2]], gas[:, box[1], box[2]]
    removed = np.zeros(fields.shape, bool)
    # the components' cores without their rim (for gas) and without thin parts (for streaks), in threads
    rimless = np.empty(fields.shape, bool)
    thick = np.empty(fields.shape, bool) if element is not None else None

    def erode(slab: slice) -> None:
        rimless[slab] = _in_plane_morphology(fields[slab], _FACES_2D, erode=True)
        if thick is not None and element is not None:
            thick[slab] = _in_plane_morphology(fields[slab], element, erode=True)

    _per_slab(erode, fields.shape[0])
    for direction in (-1, 1):
        previous = fields[core]
        k = core + direction
        while 0 <= k < fields.shape[0] and previous.any():
            labels, count = ndimage.label(fields[k], structure=_FACES_2D)
            if count == 0:
                break
            flat = labels.ravel()
            touching = previous & (labels > 0)
            previous_labels, n_previous = ndimage.label(previous, structure=_FACES_2D)
            pairs = previous_labels[touching].astype(np.int64) * (count + 1) + labels[touching]
            overlap = np.bincount(pairs, minlength=(n_previous + 1) * (count + 1)).reshape(n_previous + 1, count + 1)
            previous_area = np.bincount(previous_labels.ravel(), minlength=n_previous + 1)[1:]
            main = (previous_area >= 0.25 * previous_area.max()) & (overlap[1:, 1:].max(axis=1) > 0)
            protected = np.zeros(count + 1, bool)
            protected[overlap[1:, 1:].argmax(axis=1)[main] + 1] = True
            touches = overlap[1:].sum(axis=0) > 0
            drop = np.zeros(count + 1, bool)
            if direction < 0:
                # gas against the component's core (its in-plane rim removed): the
                # partial-volume rim of a small pocket reads -940..-320 HU
                core_area = np.bincount(flat[rimless[k].ravel()], minlength=count + 1)
                drop |= 2 * np.bincount(flat[gas[k].ravel()], minlength=count + 1) >= np.maximum(core_area, 1)
            if direction > 0 and thick is not None:
                drop |= np.bincount(flat[thick[k].ravel()], minlength=count + 1) == 0
            drop &= touches & ~protected
            drop[0] = False
            keep = touches & ~drop
            keep[0] = False
            removed[k] = drop[labels]
            previous = keep[labels]
            k += direction
    full_removed[:, box[1], box[2]] = removed
    return full_removed


def _gas_pockets(
    gas: np.ndarray, candidates: np.ndarray, body: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]
) -> np.ndarray:
    """Stomach and bowel gas below the widest lung slice, with its partial-volume rim (head-last arrays).

    A pocket is a 3-D component of gas (``CODE_GAS``, face connectivity) of at
    least ``pocket_min_ml`` whose top lies below the slice where the lung
    candidates are widest and whose wall is mostly dense: of the voxels two
    steps outside it (past the partial-volume rim), at least
    ``pocket_wall_fraction`` are at or above the lung threshold (stomach wall,
    gastric fluid under an air-fluid level, bowel wall, diaphragm). Gas inside
    the lung is surrounded by lung (its wall reads below the threshold), so
    even emphysema is not taken; a pocket that touches the lung base across a
    thin diaphragm or through partial volume keeps most of its wall dense.
    Returns the pockets grown by ``pocket_rim_mm`` in-plane, within the
    candidates: the voxels to drop.
    """
    out = np.zeros(gas.shape, bool)
    widest = int(np.argmax(candidates.sum(axis=(1, 2))))
    below = gas[: widest + 1] & body[: widest + 1]
    labels, count = _label(below)
    if count == 0:
        return out
    sizes = _sizes(labels, count)
    min_voxels = settings["pocket_min_ml"] / geometry.voxel_ml
    objects = ndimage.find_objects(labels)
    _, dy, dx = geometry.spacing_mm
    rim = max(round(settings["pocket_rim_mm"] / min(dy, dx)), 1)
    for index in np.flatnonzero(sizes[1:] >= min_voxels) + 1:
        box = objects[index - 1]
        if box is None or box[0].stop > widest:  # reaches the widest slice: lung or airway, not a pocket
            continue
        grown = tuple(
            slice(max(b.start - 2 - rim, 0), min(b.stop + 2 + rim, n)) for b, n in zip(box, labels.shape, strict=True)
        )
        pocket = labels[grown] == index
        near = ndimage.binary_dilation(pocket, structure=_FACES_3D)
        shell = ndimage.binary_dilation(near, structure=_FACES_3D) & ~near & body[grown]
        n_shell = int(shell.sum())
        if n_shell == 0:
            continue
        dense = int((shell & ~candidates[grown]).sum())
        if dense < settings["pocket_wall_fraction"] * n_shell:
            continue
        drop = ndimage.binary_dilation(pocket, structure=_disk(rim)[None]) & candidates[grown]
        out[grown] |= drop
    return out


def _attached(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The 3-D components (face connectivity) of `mask` that hold voxels of `core`."""
    box = _bbox(mask)
    if box is None:
        return mask
    labels, count = _label(mask[box])
    keep = np.zeros(count + 1, bool)
    keep[np.unique(labels[core[box]])] = True
    keep[0] = False
    out = np.zeros(mask.shape, bool)
    out[box] = keep[labels]
    return out


def _fill_lung(mask: np.ndarray) -> np.ndarray:
    """Fill what the lung encloses: 3-D holes, and 2-D holes with lung above and below in their column.

    A 2-D hole (a vessel or nodule in an axial slice) is filled where the lung
    continues both above and below it in the same (row, col) column; the dome
    of the diaphragm, enclosed by the lung's base ring in a slice, has no lung
    below it and stays out.
    """
    box = _bbox(mask)
    if box is None:
        return mask
    sub = _fill_holes_3d(mask[box])
    holes = _fill_in_plane(sub) & ~sub
    if holes.any():
        present = sub.any(axis=0)
        first = np.argmax(sub, axis=0)
        last = sub.shape[0] - 1 - np.argmax(sub[::-1], axis=0)
        k = np.arange(sub.shape[0])[:, None, None]
        holes &= present & (k > first) & (k < last)
        sub |= holes
    out = mask.copy()
    out[box] = sub
    return out


def _envelope(mask: np.ndarray, blocked: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]) -> np.ndarray:
    """The lung with its in-plane envelope: concavities narrower than ``envelope_mm`` filled, per slice.

    A morphological closing (dilation, then erosion, with a disk of radius
    ``envelope_mm``) of each axial slice of `mask` fills the bites that dense
    lung takes out of the aerated lung (consolidation, atelectasis and
    nodules at the pleura, dependent density, the hilar vessels between
    bronchi) and leaves convex outlines (the chest wall side) and wide
    concavities (the heart, the diaphragm dome) as they are. It runs on a grid
    coarsened in-plane to about ``envelope_grid_mm`` (whole pixels);
    what it adds at full resolution is the coarse fill and a coarse pixel
    around it, never `blocked` (bone, outside the body, the other lung, the
    airway wall, the mediastinum). Returns a new mask.
    """
    radius_mm = settings["envelope_mm"]
    box = _bbox(mask)
    if box is None or radius_mm <= 0:
        return mask
    _, dy, dx = geometry.spacing_mm
    f = max(1, round(settings["envelope_grid_mm"] / min(dy, dx)))
    r = max(1, round(radius_mm / (f * min(dy, dx))))
    pad = (r + 1) * f
    n_rows, n_cols = mask.shape[1:]
    rows = slice(max(box[1].start - pad, 0), min(box[1].stop + pad, n_rows))
    cols = slice(max(box[2].start - pad, 0), min(box[2].stop + pad, n_cols))
    sub = mask[box[0], rows, cols]
    n, h, w = sub.shape
    hc, wc = -(-h // f), -(-w // f)
    padded = np.zeros((n, hc * f, wc * f), np.uint8)
    padded[:, :h, :w] = sub
    coarse = padded.reshape(n, hc, f, wc, f).sum(axis=(2, 4), dtype=np.uint16) * 2 >= f * f
    margin = r + 1
    coarse = np.pad(coarse, ((0, 0), (margin, margin), (margin, margin)))
    closed = ndimage.binary_closing(coarse, structure=_disk(r)[None])
    new = closed & ~coarse
    if not new.any():
        return mask
    zone = ndimage.binary_dilation(new, structure=_IN_PLANE) & closed
    zone = zone[:, margin:-margin, margin:-margin]
    full = np.repeat(np.repeat(zone, f, axis=1), f, axis=2)[:, :h, :w]
    full &= ~blocked[box[0], rows, cols]
    out = mask.copy()
    out[box[0], rows, cols] |= full
    return out


def _column_fill(
    mask: np.ndarray, blocked: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]
) -> np.ndarray:
    """Add voxels with lung both above and below them in their (row, col) column within ``envelope_z_mm``.

    Dense lung that touches the chest wall in-plane (dependent or subpleural
    consolidation, atelectasis) is not an in-slice hole, but aerated lung
    lies above and below it; the diaphragm and the heart are not sandwiched
    between lung within a few centimetres (the dome has no lung under it).
    Never adds `blocked` voxels. Returns a new mask.
    """
    n = geometry.voxels(settings["envelope_z_mm"], 0)
    box = _bbox(mask)
    if box is None or n < 2:
        return mask
    sub = mask[box]
    counts = np.zeros((sub.shape[0] + 1, *sub.shape[1:]), np.int32)
    np.cumsum(sub, axis=0, dtype=np.int32, out=counts[1:])
    k = np.arange(sub.shape[0])
    hi = np.minimum(k + 1 + n, sub.shape[0])  # slices k+1 .. k+n
    lo = np.maximum(k - n, 0)  # slices k-n .. k-1
    above = counts[hi] - counts[k + 1] > 0
    below = counts[k] - counts[lo] > 0
    del counts
    add = above & below & ~sub & ~blocked[box]
    if not add.any():
        return mask
    out = mask.copy()
    out[box] |= add
    return out


def _split(
    field: np.ndarray, geometry: _Geometry, settings: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Part one 3-D field into two lungs by in-plane erosion and regrowth, or None.

    Runs on an in-plane grid coarsened to about ``envelope_grid_mm`` (a coarse
    pixel is field where any of its pixels is): the parting line is placed to
    a coarse pixel, and the erosions, labellings and regrowth cost a fraction.
    """
    box = _bbox(field)
    if box is None:
        return None
    full = field[box]
    _, dy, dx = geometry.spacing_mm
    f = max(1, round(settings["envelope_grid_mm"] / min(dy, dx)))
    n, h, w = full.shape
    hc, wc = -(-h // f), -(-w // f)
    padded = np.zeros((n, hc * f, wc * f), bool)
    padded[:, :h, :w] = full
    sub = padded.reshape(n, hc, f, wc, f).any(axis=(2, 4))
    del padded
    steps = max(math.ceil(settings["split_max_mm"] / (f * min(dy, dx))), 1)
    eroded = sub
    for _ in range(steps):
        eroded = ndimage.binary_erosion(eroded, structure=_IN_PLANE)
        if not eroded.any():
            return None
        labels, count = _label(eroded)
        if count < 2:
            continue
        sizes = _sizes(labels, count)
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        if sizes[order[1]] < 0.1 * sizes[order[0]]:
            continue
        markers = np.zeros(sub.shape, np.int8)
        markers[labels == order[0]] = 1
        markers[labels == order[1]] = 2
        grown = _propagate_labels(markers, sub)
        grown = np.repeat(np.repeat(grown, f, axis=1), f, axis=2)[:, :h, :w]
        first = np.zeros(field.shape, bool)
        second = np.zeros(field.shape, bool)
        first[box] = full & (grown == 1)
        second[box] = full & (grown == 2)
        return first, second
    return None


def _lungs(
    code: np.ndarray, body: np.ndarray, geometry: _Geometry, settings: Mapping[str, float], airways: bool
) -> np.ndarray:
    """Lung labels of one series; arrays in head-last slice order."""
    out = np.zeros(code.shape, np.int8)
    box = _bbox(body, pad=1)
    if box is None:
        return out
    out[box] = _lungs_in_body(code[box], body[box], geometry.cropped(box), settings, airways)
    return out


def _fields(mask: np.ndarray, gas: np.ndarray, min_voxels: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-D components of `mask`, their sizes, and which are lung fields (big enough, not mostly gas)."""
    labels, count = _label(mask)
    sizes = _sizes(labels, count)
    gas_sizes = _sizes(labels, count, where=gas)
    eligible = (sizes >= min_voxels) & (2 * gas_sizes < sizes)
    eligible[0] = False
    return labels, sizes, eligible


def _lungs_in_body(
    code: np.ndarray, body: np.ndarray, geometry: _Geometry, settings: Mapping[str, float], airways: bool
) -> np.ndarray:
    voxel_ml = geometry.voxel_ml
    candidates = _flag(code, CODE_LOW) & body
    airway = _airways(code, body, geometry, settings)
    if airway.any():
        margin = _ellipsoid(settings["airway_margin_mm"], geometry.spacing_mm)
        box = _bbox(airway, pad=max(margin.shape) // 2 + 1)
        assert box is not None
        wall = ndimage.binary_dilation(airway[box], structure=margin)
        candidates[box] &= ~wall
    gas = _flag(code, CODE_GAS)
    min_voxels = settings["min_lung_ml"] / voxel_ml
    candidates &= ~_gas_pockets(gas, candidates, body, geometry, settings)

    labels, sizes, eligible = _fields(candidates, gas, min_voxels)
    if eligible.any():
        fields = eligible[labels]
        core = int(np.argmax(fields.sum(axis=(1, 2))))
        _, dy, dx = geometry.spacing_mm
        thin = math.floor(settings["min_piece_width_mm"] / (2 * min(dy, dx)))
        pockets = _side_pieces(fields, gas, core, thin)
        del fields
        if pockets.any():
            candidates &= ~pockets
            del labels  # free it before labelling again
            labels, sizes, eligible = _fields(candidates, gas, min_voxels)
        del pockets
    del candidates
    right, left = _choose_lungs(labels, sizes, eligible, body, geometry, settings)
    del labels, gas
    blocked = _flag(code, CODE_BONE) | ~body
    if airway.any():
        blocked[box] |= wall
    out = np.zeros(code.shape, np.int8)
    if right is not None and left is not None:
        # the mediastinum: what lies between the lungs is never lung, however narrow the bay
        blocked |= _between_lungs(right, left, geometry)
    for value, mask, other in ((1, right, left), (2, left, right)):
        if mask is not None:
            walls = blocked if other is None else blocked | other
            envelope = _column_fill(_envelope(mask, walls, geometry, settings), walls, geometry, settings)
            out[_attached(_fill_lung(envelope) & body & (out == 0), mask)] = value
    del right, left, mask, blocked
    if airways:
        out[airway & (out == 0)] = LUNG_LABELS["airway"]
    return out


def _between_lungs(right: np.ndarray, left: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """Voxels between the two lungs along the patient's left-right axis: the mediastinum's rows.

    A voxel of neither lung is between them when, along its image line
    closest to LPS x, the nearest lung voxel towards the patient's right is
    right lung and the nearest one towards the patient's left is left lung.
    Computed slab by slab in threads. Returns a new mask.
    """
    out = np.zeros(right.shape, bool)
    box = _bbox(right | left)
    if box is None:
        return out
    axis = 2 if abs(geometry.x_per_col_mm) >= abs(geometry.x_per_row_mm) else 1
    step = geometry.x_per_col_mm if axis == 2 else geometry.x_per_row_mm
    n = box[axis].stop - box[axis].start
    shape = [1, 1, 1]
    shape[axis] = n
    index = np.arange(n, dtype=np.int16 if n < 2**15 - 1 else np.int32).reshape(shape)
    none_before, none_after = index.dtype.type(-1), index.dtype.type(n)

    def run(slab: slice) -> None:
        part = (slice(box[0].start + slab.start, box[0].start + slab.stop), box[1], box[2])
        r, lft = right[part], left[part]
        if step < 0:  # make the index grow towards the patient's left
            r, lft = np.flip(r, axis), np.flip(lft, axis)
        # the last right / left lung voxel at or before each position (towards the patient's right)
        right_side = np.maximum.accumulate(np.where(r, index, none_before), axis=axis) > np.maximum.accumulate(
            np.where(lft, index, none_before), axis=axis
        )
        # the first right / left lung voxel at or after each position (towards the patient's left)
        first_r = np.flip(np.minimum.accumulate(np.flip(np.where(r, index, none_after), axis), axis=axis), axis)
        first_l = np.flip(np.minimum.accumulate(np.flip(np.where(lft, index, none_after), axis), axis=axis), axis)
        between = right_side & (first_l < first_r) & ~r & ~lft
        out[part] = np.flip(between, axis) if step < 0 else between

    _per_slab(run, box[0].stop - box[0].start)
    return out


def _choose_lungs(
    labels: np.ndarray, sizes: np.ndarray, eligible: np.ndarray, body: np.ndarray, geometry: _Geometry,
    settings: Mapping[str, float],
) -> tuple[np.ndarray | None, np.ndarray | None]:  # fmt: skip
    """(right, left) lung masks from the eligible 3-D fields.

    The largest field is one lung, or both lungs when they touch: then it
    straddles the body's midline (at least a fifth of it on each side) and an
    in-plane erosion parts it into two pieces on opposite sides. Otherwise the
    other lung is the largest field on the other side of the midline whose
    middle slice lies within the largest field's slices. The side of each lung
    comes from its mean LPS x (smaller x: patient right).
    """
    ids = np.flatnonzero(eligible)
    if ids.size == 0:
        return None, None
    ids = ids[np.argsort(sizes[ids])[::-1]]
    largest = labels == ids[0]
    midline = geometry.mean_x(body)
    on_left = geometry.count_beyond(largest, midline) / sizes[ids[0]]
    if min(on_left, 1.0 - on_left) >= 0.2:
        parts = _split(largest, geometry, settings)
        if parts is not None:
            x_first, x_second = geometry.mean_x(parts[0]), geometry.mean_x(parts[1])
            if (x_first - midline) * (x_second - midline) < 0:
                return (parts[0], parts[1]) if x_first < x_second else (parts[1], parts[0])
    side = geometry.mean_x(largest) - midline
    slices = np.flatnonzero(largest.any(axis=(1, 2)))
    other = None
    for candidate in ids[1:]:
        mask = labels == candidate
        ks = np.flatnonzero(mask.any(axis=(1, 2)))
        if slices[0] <= 0.5 * (ks[0] + ks[-1]) <= slices[-1] and (geometry.mean_x(mask) - midline) * side < 0:
            other = mask
            break
    if side < 0:
        return largest, other
    return other, largest


def _lung_block(
    code: np.ndarray,
    body: np.ndarray,
    *,
    geometry: _Geometry,
    settings: Mapping[str, float],
    airways: bool,
) -> np.ndarray:
    if geometry.head_last:
        return _lungs(code, body, geometry, settings, airways)
    flipped = _lungs(code[::-1], body[::-1], geometry.flipped(), settings, airways)
    return np.ascontiguousarray(flipped[::-1])


# --------------------------------------------------------------------------- public API


def _code(hu: xr.DataArray, settings: Mapping[str, float]) -> Any:
    options = {
        key: settings[key]
        for key in (
            "body_threshold_hu",
            "threshold_hu",
            "gas_hu",
            "airway_hu",
            "airway_step_hu",
            "bone_hu",
            "airway_track_hu",
        )
    }
    if isinstance(hu.data, da.Array):
        return hu.data.map_blocks(encode_block, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8), **options)
    return encode_block(np.asarray(hu.data), **options)


def _single_block(code: Any) -> Any:
    if isinstance(code, da.Array):
        return code.rechunk(code.shape)
    return code


def _mask_like(hu: xr.DataArray, data: Any, name: str, attrs: dict[str, Any]) -> xr.DataArray:
    if isinstance(data, da.Array) and isinstance(hu.data, da.Array):
        data = data.rechunk(hu.data.chunks)
    keep = {k: v for k, v in hu.attrs.items() if k in _IDENTITY_ATTRS}
    return xr.DataArray(data, dims=hu.dims, coords=hu.coords, name=name, attrs={**keep, **attrs})


_IDENTITY_ATTRS = (
    "stack_key",
    "series_uid",
    "study_uid",
    "patient_key",
    "study_date",
    "modality",
    "pixel_spacing_mm",
    "slice_spacing_mm",
    "slice_thickness_mm",
    "orientation",
)


def _body_data(hu: xr.DataArray, settings: Mapping[str, float], geometry: _Geometry) -> tuple[Any, Any]:
    code = _single_block(_code(hu, settings))
    if isinstance(code, da.Array):
        body = code.map_blocks(
            _body_block, geometry=geometry, settings=dict(settings), dtype=bool, meta=np.empty((0, 0, 0), bool)
        )
    else:
        body = _body(code, geometry, settings)
    return code, body


def body_mask(hu: xr.DataArray, *, threshold_hu: float | None = None) -> xr.DataArray:
    """The patient's body: everything but outside air, the table and padding.

    Voxels at or above `threshold_hu` are tissue; after an in-plane opening
    (``segmentation.body_opening_mm``) detaches the table top, pads and
    blankets, air that reaches the in-plane image border in 3-D is outside and
    everything else is filled in (lungs, airways, bowel gas). The head and
    feet faces of the stack do not count as border: a trachea reaching the top
    slice stays inside. The largest 3-D component is the body; the table and
    anything else apart from it is not. NaN (padding, scan-circle fill) is
    never body.

    Parameters
    ----------
    hu : DataArray (slice, row, col)
        HU from :func:`ctframe.to_hu` (float, NaN for padding).
    threshold_hu : float, optional
        Tissue threshold (default ``segmentation.body_threshold_hu`` = -500).

    Returns
    -------
    DataArray (slice, row, col) of bool
        Chunked like `hu`; same coordinates.

    Raises
    ------
    ParameterError
        Wrong dims, unknown spacing, non-axial slices, bad threshold.
    NotHUCalibratedError
        `hu` holds stored values, not HU.

    Notes
    -----
    **Lazy**: a per-chunk threshold to one byte per voxel, then one task for
    the series (3-D morphology on bool arrays), rechunked like `hu`.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(16, 64, 64), spacing_mm=(10, 5, 5))
    >>> body = ctframe.body_mask(ctframe.to_hu(ctframe.open_series(truth.folder)))
    >>> bool(body[8, 32, 32]), bool(body[8, 0, 0])
    (True, False)
    """
    _check_hu(hu, "body_mask")
    settings = _settings({"body_threshold_hu": threshold_hu})
    geometry = _geometry(hu, "body_mask")
    _, body = _body_data(hu, settings, geometry)
    return _mask_like(hu, body, "body", {"long_name": "body mask"})


def can_segment(hu: xr.DataArray) -> tuple[bool, str]:
    """Whether :func:`lung_mask` can segment this stack, and if not, why.

    The lungs are 3-D objects 20-30 cm tall; their volumes and statistics need
    the stack to cover a good part of them. A stack with fewer than
    ``segmentation.min_slices`` slices or shorter than
    ``segmentation.min_extent_mm`` along the head-foot axis (a single slice, a
    localiser-like short stack) cannot be segmented: lung values for it are NaN
    with this reason, never 0.

    Parameters
    ----------
    hu : DataArray (slice, row, col)
        HU (or stored values: only the shape and the slice coordinates are read).

    Returns
    -------
    (bool, str)
        ``(True, "")`` or ``(False, reason)``; the reason names the series and
        says what is missing, without patient identifiers.

    Examples
    --------
    >>> import xarray as xr
    >>> one = xr.DataArray(np.zeros((1, 4, 4), np.float32), dims=("slice", "row", "col"), coords={"slice": [0.0]})
    >>> can_segment(one)
    (False, 'series (unnamed volume) has 1 slice; lung segmentation needs at least 5 slices covering 100 mm')
    """
    settings = _settings({})
    n = int(hu.sizes.get("slice", 0)) if isinstance(hu, xr.DataArray) else 0
    min_slices = int(settings["min_slices"])
    min_mm = settings["min_extent_mm"]
    need = f"lung segmentation needs at least {min_slices} slices covering {min_mm:g} mm"
    name = _series_name(hu) if isinstance(hu, xr.DataArray) else "(not a DataArray)"
    if n < min_slices:
        return False, f"series {name} has {n} slice{'s' if n != 1 else ''}; {need}"
    if isinstance(hu, xr.DataArray) and "slice" in hu.coords:
        z = np.asarray(hu["slice"].values, float)
        extent = float(np.nanmax(z) - np.nanmin(z)) if z.size else 0.0
        if n > 1:
            extent += float(np.median(np.abs(np.diff(z))))  # each slice covers one step
        if not extent >= min_mm:
            return False, f"series {name} covers {extent:.0f} mm along the slices; {need}"
    return True, ""


def lung_qc(labels: xr.DataArray | np.ndarray, spacing_mm: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """Plausibility flags of a lung mask: whether its numbers can be trusted.

    Flags (``True`` means suspicious), with the limits of the ``segmentation``
    configuration:

    * ``qc_volume``: total lung volume outside ``qc_min_total_ml`` ..
      ``qc_max_total_ml`` (1.5-9 L for an adult);
    * ``qc_ratio``: left/right volume ratio outside ``qc_min_ratio`` ..
      ``qc_max_ratio`` (0.5-2), or a lung missing;
    * ``qc_components``: a lung in more than one 3-D component (26-connected);
    * ``qc_cut_feet`` / ``qc_cut_head``: at least ``qc_cut_min_mm2`` of lung
      in the end slice at the feet or head end of the stack (the lung
      continues beyond the scan; the feet end from ``position_z_mm`` when
      present, else slice 0).

    Parameters
    ----------
    labels : DataArray or ndarray (slice, row, col)
        From :func:`lung_mask` (1 right, 2 left; 3 airways is ignored).
    spacing_mm : (float, float, float), optional
        (slice, row, col) spacing; required for an ndarray, read from the
        coordinates of a DataArray otherwise.

    Returns
    -------
    dict
        ``right_ml``, ``left_ml``, ``total_ml``, ``left_right_ratio``,
        ``right_components``, ``left_components``, the five flags, ``qc_ok``
        (no flag raised) and ``qc_note`` (what is wrong, in words; empty when
        all is well).

    Raises
    ------
    ParameterError
        Not 3-D, or an ndarray without `spacing_mm`.

    Notes
    -----
    **Computes** the labels (one pass; 3-D component labelling per lung).

    Examples
    --------
    >>> labels = np.zeros((10, 20, 20), np.int8)
    >>> labels[2:8, 2:18, 2:9], labels[2:8, 2:18, 11:18] = 1, 2
    >>> qc = lung_qc(labels, spacing_mm=(10.0, 10.0, 10.0))
    >>> qc["total_ml"], qc["qc_ok"], qc["qc_note"]
    (1344.0, False, 'total lung volume 1344 mL is outside 1500-9000 mL')
    """
    settings = _settings({})
    feet_first = True
    if isinstance(labels, xr.DataArray):
        if spacing_mm is None:
            spacing_mm = voxel_spacing(labels)
        if "position_z_mm" in labels.coords and labels.sizes.get("slice", 0) > 1:
            z = np.asarray(labels["position_z_mm"].values, float)
            feet_first = bool(z[-1] >= z[0])
        values = np.asarray(labels.values)
    else:
        values = np.asarray(labels)
    if values.ndim != 3:
        raise ParameterError(f"lung_qc needs 3-D labels (slice, row, col), got shape {values.shape}")
    if spacing_mm is None:
        raise ParameterError("lung_qc needs spacing_mm=(slice, row, col) in mm for a numpy array of labels")
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    out: dict[str, Any] = {}
    notes = []
    for value, side in ((1, "right"), (2, "left")):
        mask = values == value
        out[f"{side}_ml"] = float(mask.sum()) * voxel_ml
        out[f"{side}_components"] = int(ndimage.label(mask, structure=np.ones((3, 3, 3), bool))[1]) if mask.any() else 0
    total = out["right_ml"] + out["left_ml"]
    out["total_ml"] = total
    ratio = out["left_ml"] / out["right_ml"] if out["right_ml"] > 0 else float("nan")
    out["left_right_ratio"] = ratio
    lo, hi = settings["qc_min_total_ml"], settings["qc_max_total_ml"]
    out["qc_volume"] = not lo <= total <= hi
    if out["qc_volume"]:
        notes.append(f"total lung volume {total:.0f} mL is outside {lo:g}-{hi:g} mL")
    rlo, rhi = settings["qc_min_ratio"], settings["qc_max_ratio"]
    out["qc_ratio"] = not rlo <= ratio <= rhi
    if out["qc_ratio"]:
        notes.append(
            "a lung is missing" if not (out["right_ml"] > 0 and out["left_ml"] > 0)
            else f"left/right volume ratio {ratio:.2f} is outside {rlo:g}-{rhi:g}"
        )  # fmt: skip
    out["qc_components"] = out["right_components"] > 1 or out["left_components"] > 1
    if out["qc_components"]:
        notes.append(
            f"a lung is in several pieces (right {out['right_components']}, left {out['left_components']} components)"
        )
    lungs = (values == 1) | (values == 2)
    feet, head = (0, -1) if feet_first else (-1, 0)
    min_pixels = settings["qc_cut_min_mm2"] / (float(spacing_mm[1]) * float(spacing_mm[2]))
    out["qc_cut_feet"] = bool(values.shape[0] and lungs[feet].sum() >= max(min_pixels, 1))
    out["qc_cut_head"] = bool(values.shape[0] and lungs[head].sum() >= max(min_pixels, 1))
    if out["qc_cut_feet"]:
        notes.append("lung in the end slice at the feet: the lung bases are cut off")
    if out["qc_cut_head"]:
        notes.append("lung in the end slice at the head: the apices are cut off")
    flags = ("qc_volume", "qc_ratio", "qc_components", "qc_cut_feet", "qc_cut_head")
    out["qc_ok"] = not any(out[f] for f in flags)
    out["qc_note"] = "; ".join(notes)
    return out


def lung_mask(hu: xr.DataArray, *, threshold_hu: float | None = None, airways: bool = False) -> xr.DataArray:
    """Label the right (1) and left (2) lung in 3-D; optionally the airways (3).

    Method (docs/segmentation.md has the details and the reasons):

    1. candidates: HU below `threshold_hu` inside :func:`body_mask`;
    2. airways: the trachea is found near the head end of the stack
       (trachea-sized air near the body midline), followed slice by slice
       down the trachea and main bronchi (``airway_track_hu``; it cannot
       leak) and grown in 3-D through air below ``airway_hu`` where that does
       not leak. The airway and a thin wall around it leave the candidates;
    3. gas pockets: below the widest slice, 3-D gas components with a mostly
       dense wall (stomach over an air-fluid level, bowel) leave the
       candidates with their partial-volume rim, however thin the diaphragm;
       lung fields: 3-D components of at least ``min_lung_ml`` that are not
       mostly gas; below the widest slice, pieces that hang under the lung
       base across a slice boundary (in-plane apart from it) whose core reads
       mostly below ``gas_hu`` are cut off too;
    4. right and left: two fields side by side, or one field parted by
       in-plane erosion (the anterior junction) and regrown; the side comes
       from patient x (LPS), not from the array;
    5. envelope and filling: each slice of each lung is closed with a disk of
       ``envelope_mm`` (never into bone, the other lung, the airway wall or
       the mediastinum: what lies between the two lungs along the patient's
       left-right axis), so dense lung in narrow bites of the outline
       (subpleural and dependent consolidation) is lung; holes enclosed in 3-D, and in-slice
       holes (vessels, nodules, consolidation) with lung above and below in
       their column, become lung; the diaphragm dome under the lung base does
       not.

    Parameters
    ----------
    hu : DataArray (slice, row, col)
        Axial HU from :func:`ctframe.to_hu` (float, NaN for padding).
    threshold_hu : float, optional
        Lung threshold (default ``segmentation.threshold_hu`` = -320).
    airways : bool
        Also label the trachea and bronchi outside the lungs as 3.

    Returns
    -------
    DataArray (slice, row, col) of int8
        0 background, 1 right lung, 2 left lung (3 airways). Chunked like
        `hu`, same coordinates; attrs ``flag_values`` and ``flag_meanings``
        name the labels.

    Raises
    ------
    ParameterError
        Wrong dims, unknown spacing, non-axial slices, bad threshold.
    NotHUCalibratedError
        `hu` holds stored values, not HU.
    ShortStackError
        Fewer slices, or a shorter stack, than segmentation needs (see
        :func:`can_segment`): lung values are NaN with the error's reason.

    Notes
    -----
    **Lazy**: one byte per voxel leaves each chunk; one task per series does
    the 3-D work on bool/int8/uint16 arrays (peak about 10 bytes per voxel of
    the series), its in-plane steps in a thread pool over slabs of slices;
    the result is rechunked like `hu`. Emphysematous
    lung whose median lies below ``gas_hu`` is protected only where it
    continues the lung from the slice above; a lung split into two pieces
    keeps its larger piece.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(16, 64, 64), spacing_mm=(10, 5, 5))
    >>> labels = ctframe.lung_mask(ctframe.to_hu(ctframe.open_series(truth.folder)))
    >>> labels.dtype, sorted(int(v) for v in np.unique(labels))
    (dtype('int8'), [0, 1, 2])
    """
    _check_hu(hu, "lung_mask")
    ok, reason = can_segment(hu)
    if not ok:
        raise ShortStackError(reason + "; report lung values as NaN for it (ctframe.segment.can_segment checks first)")
    if not isinstance(airways, bool):
        raise ParameterError(f"airways must be True or False, got {airways!r}")
    settings = _settings({"threshold_hu": threshold_hu})
    geometry = _geometry(hu, "lung_mask")
    code, body = _body_data(hu, settings, geometry)
    if isinstance(code, da.Array):
        labels = da.map_blocks(
            _lung_block,
            code,
            body,
            geometry=geometry,
            settings=dict(settings),
            airways=airways,
            dtype=np.int8,
            meta=np.empty((0, 0, 0), np.int8),
        )
    else:
        labels = _lung_block(code, body, geometry=geometry, settings=settings, airways=airways)
    values = [0, 1, 2, 3] if airways else [0, 1, 2]
    names = [name for name, value in LUNG_LABELS.items() if value in values]
    return _mask_like(
        hu,
        labels,
        "lung_labels",
        {"long_name": "lung labels", "flag_values": values, "flag_meanings": " ".join(names)},
    )
