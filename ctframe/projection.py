"""Reformats (axial, coronal, sagittal planes) and slab projections, lazily.

A plane keeps its coordinates in mm, so a plot drawn from them (hvplot,
``DataArray.plot``) has the physical aspect: a coronal plane of a 2.5 mm series
with 0.703 mm pixels is 2.5 mm tall per row and 0.703 mm wide per column.
:func:`aspect` gives that ratio for ``matplotlib.pyplot.imshow(..., aspect=...)``,
and :func:`resample_isotropic` resamples to square pixels for display.

:func:`mip`, :func:`minip` and :func:`mean_projection` reduce a slab along any
dim. NaN (padding and outside-the-scan-circle fill from :func:`ctframe.to_hu`)
is ignored: a projected pixel is NaN only where every voxel of its ray is NaN.

The notebook's two projections are one-liners on an axial series::

    coronal = ctframe.mip(hu, dim="row", slab=40)    # middle 40 coronal planes
    axial = ctframe.mip(hu, dim="slice", slab=50)    # middle 50 axial slices
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ctframe.errors import ParameterError

__all__ = [
    "PLANES",
    "aspect",
    "mean_projection",
    "minip",
    "mip",
    "plane_dim",
    "reformat",
    "resample_isotropic",
]

#: Plane names accepted by :func:`reformat`.
PLANES = ("axial", "coronal", "sagittal")
#: Which dim an axial acquisition holds fixed in each plane (used without an ``orientation`` attr).
_AXIAL_LAYOUT = {"axial": "slice", "coronal": "row", "sagittal": "col"}
#: Patient axis (LPS x, y, z) perpendicular to each plane.
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


# --------------------------------------------------------------------------- helpers


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", "(unnamed)")))


def _check_dim(volume: xr.DataArray, dim: Hashable) -> None:
    if dim not in volume.dims:
        raise ParameterError(f"dim {dim!r} is not a dim of this array; its dims are {volume.dims}")


def _coord(volume: xr.DataArray, dim: Hashable) -> np.ndarray:
    if dim not in volume.coords:
        raise ParameterError(
            f"dim {dim!r} has no coordinate in mm; open the series with ctframe.open_series "
            f"or assign one with .assign_coords({dim}=...)"
        )
    values = volume[dim].to_numpy()
    if values.dtype.kind not in "iuf":
        raise ParameterError(f"the coordinate of dim {dim!r} is not numeric (mm); got dtype {values.dtype}")
    return values.astype(float)


def _spacing(volume: xr.DataArray, dim: Hashable) -> float:
    values = _coord(volume, dim)
    if values.size < 2:
        if dim == "slice" and "slice_spacing_mm" in volume.attrs:
            return float(volume.attrs["slice_spacing_mm"])
        raise ParameterError(f"dim {dim!r} has a single sample; its spacing in mm is unknown")
    return float(np.median(np.abs(np.diff(values))))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _index_at(volume: xr.DataArray, dim: Hashable, position_mm: Any, name: str) -> int:
    if isinstance(position_mm, bool) or not isinstance(position_mm, numbers.Real) or not math.isfinite(position_mm):
        raise ParameterError(f"{name} must be a finite number (mm), got {position_mm!r}")
    values = _coord(volume, dim)
    half = _spacing(volume, dim) / 2.0 if values.size > 1 else 0.0
    lo, hi = float(values.min()), float(values.max())
    if not lo - half <= position_mm <= hi + half:
        raise ParameterError(
            f"{name}={position_mm:g} mm lies outside dim {dim!r}, whose coordinate runs from {lo:g} to {hi:g} mm"
        )
    return int(np.argmin(np.abs(values - float(position_mm))))


def _check_index(n: int, index: Any, dim: Hashable, name: str) -> int:
    if not _is_int(index):
        raise ParameterError(f"{name} must be an int, got {index!r}")
    if not -n <= index < n:
        raise ParameterError(f"{name}={index} is out of range for dim {dim!r} of length {n}; use 0..{n - 1}")
    return int(index) % n


# --------------------------------------------------------------------------- reformats


def plane_dim(volume: xr.DataArray, plane: str) -> Hashable:
    """Return the dim that `plane` holds fixed, from the series' orientation.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        attrs ``orientation`` (ImageOrientationPatient: the row then the column
        direction cosines, LPS) decides; without it an axial series is assumed
        (axial: ``slice``, coronal: ``row``, sagittal: ``col``).
    plane : {"axial", "coronal", "sagittal"}

    Returns
    -------
    str
        ``"slice"``, ``"row"`` or ``"col"``.

    Raises
    ------
    ParameterError
        Unknown plane, or an oblique orientation where two dims point along the
        same patient axis.

    Notes
    -----
    **Lazy**: reads attrs only. With gantry tilt the planes are the nearest
    index planes (sheared by the tilt), not resampled true planes.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> coronal_series = xr.DataArray(
    ...     np.zeros((2, 3, 4)), dims=("slice", "row", "col"), attrs={"orientation": [1, 0, 0, 0, 0, -1]}
    ... )
    >>> plane_dim(coronal_series, "axial"), plane_dim(coronal_series, "coronal")
    ('row', 'slice')
    """
    if plane not in PLANES:
        raise ParameterError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    orientation = volume.attrs.get("orientation")
    if orientation is None or len(orientation) != 6:
        return _AXIAL_LAYOUT[plane]
    row_dir = np.asarray(orientation[:3], float)  # along a row: increasing col index
    col_dir = np.asarray(orientation[3:], float)  # down a column: increasing row index
    directions = {"col": row_dir, "row": col_dir, "slice": np.cross(row_dir, col_dir)}
    axes = {dim: int(np.argmax(np.abs(v))) for dim, v in directions.items()}
    if len(set(axes.values())) < 3:
        raise ParameterError(
            f"series {_series_name(volume)} is oblique (orientation {list(orientation)}): no dim is clearly "
            f"perpendicular to the {plane} plane; select a plane with .isel(slice=...|row=...|col=...)"
        )
    return next(dim for dim, axis in axes.items() if axis == _PLANE_AXIS[plane])


def reformat(
    volume: xr.DataArray,
    *,
    plane: str,
    index: int | None = None,
    position_mm: float | None = None,
    isotropic: bool = False,
) -> xr.DataArray:
    """Cut an axial, coronal or sagittal plane out of a volume.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        Any values (stored, HU, display).
    plane : {"axial", "coronal", "sagittal"}
        Anatomical plane; the dim it holds fixed comes from :func:`plane_dim`.
    index : int, optional
        Index along that dim (negative counts from the end).
    position_mm : float, optional
        Or a value of that dim's coordinate: the position along the slice
        normal for ``slice`` (as in ``volume["slice"]``), mm from the first
        pixel for ``row`` and ``col``. The nearest sample is taken.
        Without `index` and `position_mm`: the middle sample (``n // 2``).
    isotropic : bool
        Resample the plane to square pixels (:func:`resample_isotropic`).

    Returns
    -------
    DataArray
        2-D, the two remaining dims in volume order (coronal of an axial
        series: ``(slice, col)``), coordinates in mm; the fixed dim's position
        stays as a scalar coordinate; attrs gain ``plane``.

    Raises
    ------
    ParameterError
        Unknown plane, both `index` and `position_mm`, out-of-range index or
        position, or an oblique orientation.

    Notes
    -----
    **Lazy**: a selection (plus interpolation when `isotropic`).

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 64, 64), spacing_mm=(4.0, 1.875, 1.875))
    >>> coronal = reformat(ctframe.open_series(folder), plane="coronal", position_mm=60.0)
    >>> coronal.dims, float(coronal["row"]), aspect(coronal)
    (('slice', 'col'), 60.0, 2.1333333333333333)
    """
    dim = plane_dim(volume, plane)
    _check_dim(volume, dim)
    if index is not None and position_mm is not None:
        raise ParameterError("give index or position_mm, not both")
    n = volume.sizes[dim]
    if position_mm is not None:
        i = _index_at(volume, dim, position_mm, "position_mm")
    elif index is not None:
        i = _check_index(n, index, dim, "index")
    else:
        i = n // 2
    result = volume.isel({dim: i}).assign_attrs(plane=plane)
    if isotropic:
        result = resample_isotropic(result)
    return result


def aspect(image: xr.DataArray) -> float:
    """Return the physical aspect of a 2-D image's pixels: spacing of its first dim over its second.

    Parameters
    ----------
    image : DataArray
        2-D, with coordinates in mm along both dims (a plane from
        :func:`reformat` or a projection).

    Returns
    -------
    float
        ``height / width`` of one pixel, as ``matplotlib.pyplot.imshow(image, aspect=...)``
        expects, so the picture is undistorted.

    Raises
    ------
    ParameterError
        Not 2-D, or a dim without a numeric coordinate of at least two samples.

    Notes
    -----
    **Lazy**: reads coordinates only.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> plane = xr.DataArray(np.zeros((3, 4)), dims=("slice", "col"),
    ...                      coords={"slice": [0.0, 2.5, 5.0], "col": np.arange(4) * 0.703125})
    >>> round(aspect(plane), 4)
    3.5556
    """
    if image.ndim != 2:
        raise ParameterError(f"aspect needs a 2-D image; got dims {image.dims} (cut a plane with reformat first)")
    return _spacing(image, image.dims[0]) / _spacing(image, image.dims[1])


def resample_isotropic(image: xr.DataArray, *, spacing_mm: float | None = None, method: str = "linear") -> xr.DataArray:
    """Resample every dim to the same spacing in mm, for display.

    Parameters
    ----------
    image : DataArray
        A plane or a volume with numeric coordinates in mm along every dim.
    spacing_mm : float, optional
        Target spacing; default the finest spacing among the dims.
    method : {"linear", "nearest"}
        Interpolation (:meth:`xarray.DataArray.interp`).

    Returns
    -------
    DataArray
        Coordinates from the first sample in steps of `spacing_mm`, up to
        the last sample. Non-dim coordinates along a resampled dim (per-slice
        rescale, positions) are dropped: they describe the original samples.

    Raises
    ------
    ParameterError
        Non-positive spacing, unknown method, or a dim without a usable coordinate.

    Notes
    -----
    **Lazy**. Linear interpolation next to a NaN voxel gives NaN; a pixel
    between two valid samples never does. Meant for display, not measurement.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> plane = xr.DataArray(np.array([[0.0, 1.0], [2.0, 3.0]]), dims=("slice", "col"),
    ...                      coords={"slice": [0.0, 2.0], "col": [0.0, 1.0]})
    >>> resample_isotropic(plane).values
    array([[0., 1.],
           [1., 2.],
           [2., 3.]])
    """
    if method not in ("linear", "nearest"):
        raise ParameterError(f"method must be 'linear' or 'nearest', got {method!r}")
    spacings = {dim: _spacing(image, dim) for dim in image.dims}
    if spacing_mm is None:
        target = min(spacings.values())
    else:
        if isinstance(spacing_mm, bool) or not isinstance(spacing_mm, numbers.Real) or not spacing_mm > 0:
            raise ParameterError(f"spacing_mm must be a number > 0, got {spacing_mm!r}")
        target = float(spacing_mm)
    if not target > 0:
        raise ParameterError(f"a dim of this image has spacing 0 mm; cannot resample (spacings: {spacings})")
    new: dict[Hashable, np.ndarray] = {}
    for dim in image.dims:
        values = _coord(image, dim)
        if math.isclose(spacings[dim], target, rel_tol=1e-6) and np.allclose(np.diff(values), np.diff(values)[0]):
            continue
        step = target if values[-1] >= values[0] else -target
        count = math.floor(abs(values[-1] - values[0]) / target + 1e-9) + 1
        new[dim] = values[0] + step * np.arange(count)
    if not new:
        return image
    stale = [name for name, c in image.coords.items() if name not in image.dims and set(c.dims) & set(new)]
    result = image.drop_vars(stale).interp(new, method=method)
    result.attrs = dict(image.attrs, resampled_spacing_mm=target)
    return result


# --------------------------------------------------------------------------- projections


def _ufunc_reduce(ufunc: np.ufunc, x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    return ufunc.reduce(x, axis=axis, keepdims=keepdims)


def _nan_ignoring(ufunc: np.ufunc) -> Callable[..., Any]:
    """Build a NaN-ignoring, warning-free reduction for :meth:`xarray.DataArray.reduce` from np.fmax/np.fmin."""
    kernel = partial(_ufunc_reduce, ufunc)

    def reduce(data: Any, axis: Any = None, keepdims: bool = False, **_: Any) -> Any:
        if isinstance(data, da.Array):
            return da.reduction(
                data,
                chunk=kernel,
                aggregate=kernel,
                axis=axis,
                keepdims=keepdims,
                dtype=data.dtype,
                meta=np.empty((0,) * (data.ndim if keepdims else data.ndim - len(np.atleast_1d(axis))), data.dtype),
            )
        return kernel(data, axis=axis, keepdims=keepdims)

    return reduce


_FMAX = _nan_ignoring(np.fmax)
_FMIN = _nan_ignoring(np.fmin)


def _slab(
    volume: xr.DataArray,
    dim: Hashable,
    slab: int | None,
    slab_mm: float | None,
    center: int | None,
    center_mm: float | None,
) -> tuple[int, int]:
    """Return the [start, stop) indices of the slab along `dim`."""
    _check_dim(volume, dim)
    n = volume.sizes[dim]
    if slab is not None and slab_mm is not None:
        raise ParameterError("give slab (samples) or slab_mm, not both")
    if center is not None and center_mm is not None:
        raise ParameterError("give center (index) or center_mm, not both")
    if slab is None and slab_mm is None:
        if center is not None or center_mm is not None:
            raise ParameterError(
                "center/center_mm place a slab; give slab or slab_mm too (without them the whole dim is used)"
            )
        return 0, n
    if slab_mm is not None:
        if isinstance(slab_mm, bool) or not isinstance(slab_mm, numbers.Real) or not slab_mm > 0:
            raise ParameterError(f"slab_mm must be a number > 0, got {slab_mm!r}")
        count = max(1, math.floor(float(slab_mm) / _spacing(volume, dim) + 0.5))
    elif isinstance(slab, numbers.Integral) and not isinstance(slab, bool) and slab >= 1:
        count = int(slab)
    else:
        raise ParameterError(f"slab must be an int >= 1 (samples), got {slab!r}")
    if count > n:
        raise ParameterError(
            f"a slab of {count} samples is thicker than dim {dim!r} ({n} samples); "
            "use a thinner slab, or no slab for the whole dim"
        )
    if center is None and center_mm is None:
        start = (n - count) // 2
    else:
        if center_mm is not None:
            c = _index_at(volume, dim, center_mm, "center_mm")
        else:
            c = _check_index(n, center, dim, "center")
        start = c - count // 2
        if start < 0 or start + count > n:
            raise ParameterError(
                f"a slab of {count} samples centred on index {c} runs past dim {dim!r} ({n} samples); "
                f"centre it on an index in {count // 2}..{n - count + count // 2} or use a thinner slab"
            )
    return start, start + count


def _project(
    volume: xr.DataArray,
    kind: str,
    dim: Hashable,
    slab: int | None,
    slab_mm: float | None,
    center: int | None,
    center_mm: float | None,
) -> xr.DataArray:
    start, stop = _slab(volume, dim, slab, slab_mm, center, center_mm)
    part = volume.isel({dim: slice(start, stop)})
    if kind == "mean":
        out_dtype = np.result_type(volume.dtype, np.float32)
        total = part.astype(np.float64).sum(dim, skipna=True)
        count = part.notnull().sum(dim)
        result = (total / count.where(count > 0)).astype(out_dtype)
        result.attrs = dict(volume.attrs)
    else:
        result = part.reduce(_FMAX if kind == "mip" else _FMIN, dim=dim, keep_attrs=True)
    result.name = volume.name
    attrs: dict[str, Any] = {"projection": kind, "projection_dim": str(dim), "slab_indices": [start, stop]}
    if dim in volume.coords and volume[dim].dtype.kind in "iuf":
        ends = volume[dim].to_numpy()[[start, stop - 1]]
        attrs["slab_range_mm"] = [float(ends[0]), float(ends[1])]
    result.attrs.update(attrs)
    return result


_SLAB_PARAMETERS = """Parameters
    ----------
    volume : DataArray (slice, row, col)
        Any values; usually HU from :func:`ctframe.to_hu` (planes work too).
    dim : str
        Dim to project along: ``"slice"`` gives an axial projection; on an
        axial series ``"row"`` a coronal and ``"col"`` a sagittal one.
    slab : int, optional
        Number of samples in the slab.
    slab_mm : float, optional
        Or its thickness in mm: ``slab_mm / spacing`` samples rounded to the
        nearest integer, halves up (at least one), the spacing being the
        median step of the dim's coordinate.
        Without `slab` and `slab_mm` the whole dim is projected.
    center : int, optional
        Index the slab is centred on (samples ``center - slab // 2`` up to, not
        including, ``center - slab // 2 + slab``).
    center_mm : float, optional
        Or a value of the dim's coordinate; the nearest sample is the centre.
        Without either: the middle slab, from index ``(n - slab) // 2``."""
_SLAB_RAISES = """Raises
    ------
    ParameterError
        Unknown dim, both `slab` and `slab_mm` (or `center` and `center_mm`),
        a centre without a slab, a slab thicker than the dim or running past
        its ends, or non-positive sizes."""


def _slab_docstring(func: Callable[..., Any]) -> Callable[..., Any]:
    """Fill the Parameters and Raises sections the three projections share."""
    func.__doc__ = (
        (func.__doc__ or "").replace("{slab_parameters}", _SLAB_PARAMETERS).replace("{slab_raises}", _SLAB_RAISES)
    )
    return func


@_slab_docstring
def mip(
    volume: xr.DataArray,
    *,
    dim: Hashable = "slice",
    slab: int | None = None,
    slab_mm: float | None = None,
    center: int | None = None,
    center_mm: float | None = None,
) -> xr.DataArray:
    """Maximum intensity projection (MIP) over a slab along `dim`.

    {slab_parameters}

    Returns
    -------
    DataArray
        The other dims and their coordinates; the input dtype. attrs gain
        ``projection``, ``projection_dim``, ``slab_indices`` ([start, stop)) and
        ``slab_range_mm`` (coordinates of the first and last sample).

    {slab_raises}

    Notes
    -----
    **Lazy**: a tree reduction with ``np.fmax`` over the slab's chunks.
    NaN is ignored (padding and outside-the-circle fill never win); a pixel is
    NaN only where all voxels along its ray are NaN, without a warning.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.array([[[-900.0, np.nan]], [[40.0, np.nan]], [[700.0, np.nan]]], np.float32),
    ...                   dims=("slice", "row", "col"), coords={"slice": [0.0, 2.5, 5.0]})
    >>> mip(hu, dim="slice", slab=2).values
    array([[40., nan]], dtype=float32)
    >>> mip(hu, dim="slice", slab_mm=5.0, center_mm=5.0).attrs["slab_indices"]
    [1, 3]
    """
    return _project(volume, "mip", dim, slab, slab_mm, center, center_mm)


@_slab_docstring
def minip(
    volume: xr.DataArray,
    *,
    dim: Hashable = "slice",
    slab: int | None = None,
    slab_mm: float | None = None,
    center: int | None = None,
    center_mm: float | None = None,
) -> xr.DataArray:
    """Minimum intensity projection (MinIP) over a slab along `dim`.

    {slab_parameters}

    Returns
    -------
    DataArray
        The other dims and their coordinates; the input dtype. attrs gain
        ``projection``, ``projection_dim``, ``slab_indices`` ([start, stop)) and
        ``slab_range_mm`` (coordinates of the first and last sample).

    {slab_raises}

    Notes
    -----
    **Lazy**: a tree reduction with ``np.fmin`` over the slab's chunks.
    NaN is ignored (padding and outside-the-circle fill never win); a pixel is
    NaN only where all voxels along its ray are NaN, without a warning.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.array([[[-900.0, np.nan]], [[40.0, np.nan]], [[700.0, np.nan]]], np.float32),
    ...                   dims=("slice", "row", "col"), coords={"slice": [0.0, 2.5, 5.0]})
    >>> minip(hu, dim="slice", slab=2).values
    array([[-900.,   nan]], dtype=float32)
    >>> minip(hu, dim="slice", slab_mm=5.0, center_mm=5.0).attrs["slab_indices"]
    [1, 3]
    """
    return _project(volume, "minip", dim, slab, slab_mm, center, center_mm)


@_slab_docstring
def mean_projection(
    volume: xr.DataArray,
    *,
    dim: Hashable = "slice",
    slab: int | None = None,
    slab_mm: float | None = None,
    center: int | None = None,
    center_mm: float | None = None,
) -> xr.DataArray:
    """Mean (average intensity) projection over a slab along `dim`, ignoring NaN.

    {slab_parameters}

    Returns
    -------
    DataArray
        The other dims and their coordinates; float32 for float32 or integer
        input up to 16 bits, float64 otherwise (summed in float64). attrs gain
        ``projection``, ``projection_dim``, ``slab_indices`` ([start, stop)) and
        ``slab_range_mm`` (coordinates of the first and last sample).

    {slab_raises}

    Notes
    -----
    **Lazy**: NaN-ignoring sum and count over the slab, then their ratio.
    NaN is ignored (padding and outside-the-circle fill never count); a pixel
    is NaN only where all voxels along its ray are NaN, without a warning.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> hu = xr.DataArray(np.array([[[-900.0, np.nan]], [[40.0, np.nan]], [[700.0, np.nan]]], np.float32),
    ...                   dims=("slice", "row", "col"), coords={"slice": [0.0, 2.5, 5.0]})
    >>> mean_projection(hu, dim="slice", slab=2).values
    array([[-430.,   nan]], dtype=float32)
    >>> mean_projection(hu, dim="slice", slab_mm=5.0, center_mm=5.0).attrs["slab_indices"]
    [1, 3]
    """
    return _project(volume, "mean", dim, slab, slab_mm, center, center_mm)
