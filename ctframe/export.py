"""Writers: one volume to NIfTI, Zarr or NetCDF, and atomic output helpers.

Every writer computes (it is a sink) and writes atomically: into a temporary
name beside the target, renamed into place only when complete, so a killed run
never leaves a half-written file.

Rules
-----
* **The format follows the suffix**: ``.nii``/``.nii.gz`` NIfTI, ``.zarr``
  Zarr, ``.nc`` NetCDF (:func:`format_for_path`); a writer refuses any other
  name before computing anything.
* **NaN voxels** (padding, outside the scan circle) are written as
  `fill_value`: -1024 (air) in NIfTI, whose readers rarely expect NaN; NaN in
  Zarr and NetCDF, which carry it natively.
* **One NIfTI grid**: NIfTI has one slice step for the whole volume, and its
  qform an orthogonal grid. A stack with gaps, irregular or duplicate slice
  positions, or a sheared grid (gantry tilt) is refused with the reason
  (:func:`grid_problem`); :func:`resample_slices` (``to_nifti(...,
  resample_mm=...)``, ``ctframe export --resample-mm``) resamples it onto a
  regular grid along the slice normal. The sform and the qform are both set
  (code 1, scanner, as dcm2niix writes them) to the same affine.
* **Library chatter** (zarr's notes about its own formats) is not passed on;
  warnings about the data are.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ctframe.config import get_config
from ctframe.errors import CTFrameError, OutputExistsError, ParameterError
from ctframe.geometry import POSITION_COLUMNS, affine, nifti_affine, pixel_spacing, slice_normal, slice_steps
from ctframe.privacy import safe_name

__all__ = [
    "FORMAT_SUFFIXES",
    "atomic_path",
    "format_for_path",
    "grid_problem",
    "lps_affine",
    "ras_affine",
    "resample_slices",
    "to_netcdf",
    "to_nifti",
    "to_zarr",
]

#: Output format -> the suffixes that name it (lower case).
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {"zarr": (".zarr",), "nifti": (".nii", ".nii.gz"), "netcdf": (".nc",)}
#: NIfTI sform/qform code written (1: scanner-based anatomical coordinates, as dcm2niix writes).
NIFTI_XFORM_SCANNER = 1
#: A sheared grid is refused when the shear moves the last slice by more than this fraction of a pixel.
SHEAR_TOLERANCE_PIXELS = 0.1


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; move it onto `target` on success.

    Works for files and folders. On error (or interruption) the temporary is
    removed and `target` is untouched. A process killed outright (SIGKILL,
    power loss) cannot clean up: its temporary, a hidden
    ``.<name>.<host>-<pid>.*.partial`` beside `target`, is removed by the next
    call for the same target on the same host once that process is gone.

    Raises
    ------
    OutputExistsError
        `target` exists and `overwrite` is False.
    CTFrameError
        The parent folder cannot be written.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} already exists; choose another path or pass --overwrite")
    parent = target.parent
    prefix = _partial_prefix(target.name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_partials(parent, prefix)
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise CTFrameError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    work = tmp / target.name
    try:
        yield work
        if target.exists():
            backup = parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
            os.replace(work, target)
            _remove(backup)
        else:
            os.replace(work, target)
    finally:
        _remove(tmp)


def _partial_prefix(name: str) -> str:
    return f".{name}.{safe_name(socket.gethostname(), max_length=40)}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _sweep_stale_partials(parent: Path, prefix: str) -> None:
    """Remove the temporaries that killed runs of this host left beside a target."""
    for entry in parent.glob(glob.escape(prefix) + "*.partial"):
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """The output format named by the suffix of `path` (see :data:`FORMAT_SUFFIXES`), or None.

    Examples
    --------
    >>> format_for_path("ct.nii.gz"), format_for_path("ct.ZARR"), format_for_path("ct.nc"), format_for_path("ct.mha")
    ('nifti', 'zarr', 'netcdf', None)
    """
    name = Path(path).name.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if any(name.endswith(suffix) and len(name) > len(suffix) for suffix in suffixes):
            return fmt
    return None


def _check_suffix(path: str | os.PathLike[str], fmt: str, writer: str) -> None:
    found = format_for_path(path)
    if found != fmt:
        wanted = " or ".join(FORMAT_SUFFIXES[fmt])
        hint = f"; {found} is written by to_{found}" if found else ""
        raise ParameterError(f"{writer} writes {wanted} files, got {Path(path).name!r}{hint}")


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Silence the writing libraries' notes about their own formats; warnings about the data pass."""
    with warnings.catch_warnings():
        try:
            import zarr.errors as zarr_errors
        except ImportError:  # zarr is optional for the NIfTI and NetCDF writers
            zarr_errors = None
        for name in ("ZarrUserWarning", "ZarrFutureWarning", "ZarrDeprecationWarning", "UnstableSpecificationWarning"):
            category = getattr(zarr_errors, name, None)
            if isinstance(category, type) and issubclass(category, Warning):
                warnings.filterwarnings("ignore", category=category)
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(zarr|numcodecs)(\.|$)")
        yield


def _filled(values: np.ndarray, fill_value: float) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.floating) and not math.isnan(fill_value)):
        return values
    return np.where(np.isnan(values), values.dtype.type(fill_value), values)


def _check_fill(fill_value: Any, writer: str) -> float:
    try:
        value = float(fill_value)
    except (TypeError, ValueError):
        raise ParameterError(f"{writer}: fill_value must be a number or NaN, got {fill_value!r}") from None
    if math.isinf(value):
        raise ParameterError(f"{writer}: fill_value must be finite or NaN, got {fill_value!r}")
    return value


# --------------------------------------------------------------------------- one grid


def _positions(volume: xr.DataArray) -> np.ndarray:
    try:
        return np.stack([np.asarray(volume[c].values, float) for c in POSITION_COLUMNS], axis=1)
    except KeyError as exc:
        raise ParameterError(
            f"series {_name(volume)} has no DICOM geometry ({exc} coordinate missing); open it with ctframe.open_series"
        ) from None


def _name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", volume.name or "(unnamed volume)")))


def grid_problem(volume: xr.DataArray) -> tuple[str, str] | None:
    """Why the slices of `volume` do not lie on one regular grid (``(flag, reason)``), or None.

    The flags are the series table's: ``has_duplicates`` (two slices at one
    position), ``has_gaps`` (a step above ``qc.gap_factor`` times the median),
    ``irregular_spacing`` (steps spread by more than ``qc.irregular_tolerance``
    of the median) and ``is_tilted`` (the slices advance off their normal, so
    the grid is sheared: the shear moves the last slice by more than a tenth
    of a pixel). Positions are the ImagePositionPatient of each slice
    projected on the slice normal.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> volume = ctframe.open_series(write_phantom_series(tempfile.mkdtemp(), shape=(6, 16, 16)).folder)
    >>> grid_problem(volume) is None, grid_problem(volume.isel(slice=[0, 1, 2, 4, 5]))[0]
    (True, 'has_gaps')
    """
    if volume.sizes.get("slice", 0) < 2:
        return None
    qc = get_config()["qc"]
    ipp = _positions(volume)
    normal = slice_normal(volume)
    along = ipp @ normal
    steps = np.diff(along)
    if np.any(np.diff(np.sign(steps[np.abs(steps) >= qc["duplicate_tolerance_mm"]])) != 0):
        return "irregular_spacing", "slice positions go back and forth along the normal"
    judged = slice_steps(np.abs(steps), qc=qc)  # the series table's rule (ctframe.geometry)
    if judged.n_duplicates:
        return "has_duplicates", f"{judged.n_duplicates} pair(s) of slices share a position"
    if judged.gaps.any():
        k = int(np.flatnonzero(judged.gaps)[0])
        return "has_gaps", (
            f"{int(judged.gaps.sum())} gap(s) between slices (a step of {judged.real[k]:.3g} mm after slice {k}, "
            f"median {judged.median_mm:.3g} mm)"
        )
    if judged.irregular:
        return "irregular_spacing", f"slice steps range from {judged.real.min():.3g} to {judged.real.max():.3g} mm"
    travel = ipp[-1] - ipp[0]
    off_normal = float(np.linalg.norm(travel - (travel @ normal) * normal))
    pixel = min(pixel_spacing(volume))
    if off_normal > SHEAR_TOLERANCE_PIXELS * pixel:
        angle = math.degrees(math.atan2(off_normal, abs(float(travel @ normal))))
        return "is_tilted", f"the slices advance {angle:.2f} degrees off their normal (gantry tilt), a sheared grid"
    return None


def resample_slices(volume: xr.DataArray, spacing_mm: float) -> xr.DataArray:
    """Resample HU onto a regular grid of slices `spacing_mm` apart along the slice normal.

    The new slices start at the first slice and step along the normal (so a
    tilted stack becomes an orthogonal grid) up to the last one. Each new
    slice is the linear interpolation, along the normal, of the two real
    slices around it, each shifted in-plane to the new slice's pixels (a
    bilinear shift, needed only for tilted stacks). A voxel next to NaN, or
    outside the real slices, is NaN.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        HU (``units == "HU"``, :func:`ctframe.to_hu`): stored values with a
        per-slice rescale cannot be interpolated between slices.
    spacing_mm : float
        The new slice step (mm, > 0).

    Returns
    -------
    DataArray (slice, row, col)
        float32, with the same ``row``/``col`` coordinates and attrs, new
        ``slice`` and ``position_*_mm`` coordinates, ``slice_spacing_mm`` set
        to `spacing_mm` and ``resampled_slice_mm`` recording it. Other
        per-slice coordinates are dropped.

    Raises
    ------
    ParameterError
        Not HU, a spacing that is not a positive number, or no geometry.

    Notes
    -----
    **Computes** (the whole volume, in memory).

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> hu = ctframe.to_hu(ctframe.open_series(
    ...     write_phantom_series(tempfile.mkdtemp(), shape=(5, 16, 16), spacing_mm=(2.0, 1.0, 1.0)).folder))
    >>> resample_slices(hu, 1.0)["slice"].diff("slice").values.tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """
    from scipy import ndimage

    spacing = float(spacing_mm) if isinstance(spacing_mm, int | float | np.number) else math.nan
    if not (math.isfinite(spacing) and spacing > 0):
        raise ParameterError(f"resample_slices: spacing_mm must be a positive number of mm, got {spacing_mm!r}")
    if volume.attrs.get("units") != "HU":
        raise ParameterError(
            f"series {_name(volume)}: resample HU, not stored values (convert with ctframe.to_hu first)"
        )
    ipp = _positions(volume)
    normal = slice_normal(volume)
    orientation = np.asarray(volume.attrs["orientation"], float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    row_step, col_step = pixel_spacing(volume)
    along = ipp @ normal
    order = np.argsort(along, kind="stable")
    along, ipp = along[order], ipp[order]
    data = np.asarray(volume.values, np.float32)[order]
    n_out = math.floor((along[-1] - along[0]) / spacing + 1e-6) + 1
    new_along = along[0] + spacing * np.arange(n_out)
    origins = ipp[0] + np.outer(new_along - along[0], normal)

    def real_slice(a: int, origin: np.ndarray) -> np.ndarray:
        d = origin - ipp[a]  # in-plane offset of the new slice's first pixel from slice a's
        shift = (float(d @ col_dir) / row_step, float(d @ row_dir) / col_step)
        if max(abs(shift[0]), abs(shift[1])) < 1e-3:
            return data[a]
        return ndimage.shift(data[a], (-shift[0], -shift[1]), order=1, mode="constant", cval=np.nan)

    out = np.empty((n_out, *data.shape[1:]), np.float32)
    for k, (z, origin) in enumerate(zip(new_along, origins, strict=True)):
        b = int(np.clip(np.searchsorted(along, z, side="right"), 1, len(along) - 1))
        a = b - 1
        w = (z - along[a]) / (along[b] - along[a]) if along[b] > along[a] else 0.0
        if w <= 1e-6:
            out[k] = real_slice(a, origin)
        elif w >= 1 - 1e-6:
            out[k] = real_slice(b, origin)
        else:
            out[k] = (1 - w) * real_slice(a, origin) + w * real_slice(b, origin)
    coords: dict[str, Any] = {"slice": new_along, "row": volume["row"].values, "col": volume["col"].values}
    for c, values in zip(POSITION_COLUMNS, origins.T, strict=True):
        coords[c] = ("slice", values)
    attrs = {**volume.attrs, "slice_spacing_mm": spacing, "resampled_slice_mm": spacing}
    return xr.DataArray(out, dims=("slice", "row", "col"), coords=coords, attrs=attrs, name=volume.name)


# --------------------------------------------------------------------------- writers


def lps_affine(volume: xr.DataArray) -> np.ndarray:
    """4x4 affine from (col, row, slice) indices to patient LPS millimetres.

    :func:`ctframe.geometry.affine` (``volume.ct.affine``) with its axes in
    (col, row, slice) order; the slice axis follows the first and last
    ImagePositionPatient, so a sheared (tilted) stack keeps its true geometry.

    Raises
    ------
    ParameterError
        `volume` lacks the orientation attr or position coordinates.
    """
    return affine(volume)[:, [2, 1, 0, 3]]


def ras_affine(volume: xr.DataArray) -> np.ndarray:
    """The NIfTI (RAS) affine: :func:`lps_affine` with x and y negated (:func:`ctframe.geometry.nifti_affine`)."""
    return nifti_affine(volume)


def to_nifti(
    volume: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    fill_value: float = -1024.0,
    resample_mm: float | None = None,
    allow_shear: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a volume as NIfTI-1 (``.nii`` or ``.nii.gz``) with its RAS affine.

    The array is stored in (col, row, slice) order, so voxel (i, j, k) of the
    file is column i, row j, slice k; the affine maps it to RAS millimetres.
    The sform and the qform both hold that affine, with code 1 (scanner), as
    dcm2niix writes them.

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        From :func:`ctframe.open_series` (or :func:`ctframe.to_hu`, or a mask on its grid).
    path : path
        Ending in ``.nii`` or ``.nii.gz``.
    fill_value : float
        What NaN voxels (padding, outside the scan circle) of a float volume
        become; -1024 (air) by default, NaN to keep them.
    resample_mm : float, optional
        Resample HU onto a regular grid of slices this far apart along the
        normal (:func:`resample_slices`) first; needed for a stack with gaps,
        irregular spacing or gantry tilt.
    allow_shear : bool
        Write a tilted stack on its own sheared grid instead of refusing it:
        the sform holds the shear; the qform cannot, so it is left unset
        (code 0). For readers of the sform (nibabel,
        :func:`ctframe.read_nifti_labels`), not for tools that read the qform.
    overwrite : bool
        Replace an existing file.

    Raises
    ------
    ParameterError
        Another suffix; a stack that is not one regular grid
        (:func:`grid_problem`) without `resample_mm`; no geometry.

    Notes
    -----
    **Computes**.
    """
    import nibabel as nib

    _check_suffix(path, "nifti", "to_nifti")
    fill = _check_fill(fill_value, "to_nifti")
    if resample_mm is not None:
        volume = resample_slices(volume, resample_mm)
    problem = grid_problem(volume)
    sheared = problem is not None and problem[0] == "is_tilted" and allow_shear
    if problem is not None and not sheared:
        raise ParameterError(
            f"series {_name(volume)} is not one NIfTI grid ({problem[0]}: {problem[1]}); "
            "resample it onto a regular grid with to_nifti(..., resample_mm=...) or ctframe.export.resample_slices"
        )
    ras = nifti_affine(volume)  # before computing: a volume without geometry fails fast
    data = _filled(np.asarray(volume.transpose("col", "row", "slice").values), fill)
    image = nib.Nifti1Image(data, None)
    image.set_sform(ras, code=NIFTI_XFORM_SCANNER)
    if sheared:
        image.set_qform(None, code=0)
    else:
        image.set_qform(ras, code=NIFTI_XFORM_SCANNER)
    image.header.set_xyzt_units("mm")
    if volume.attrs.get("units") == "HU":
        image.header["descrip"] = b"HU" if math.isnan(fill) else f"HU; NaN written as {fill:g}".encode()
    with atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(image, str(tmp))
    return Path(path)


def _netcdf_safe(attrs: dict[str, Any]) -> dict[str, Any]:
    safe: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bool | np.bool_):
            safe[key] = int(value)
        elif isinstance(value, str | int | float | np.number) or (
            isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value)
        ):
            safe[key] = value
        else:
            safe[key] = str(value)
    return safe


def _dataset(volume: xr.DataArray, labels: xr.DataArray | None, fill_value: float = math.nan) -> xr.Dataset:
    name = volume.name if isinstance(volume.name, str) else "volume"
    if not math.isnan(fill_value) and np.issubdtype(volume.dtype, np.floating):
        volume = volume.fillna(fill_value).assign_attrs({**volume.attrs, "nan_written_as": fill_value})
    ds = volume.to_dataset(name=name)
    if labels is not None:
        ds["labels"] = labels
    for var in ds.variables.values():
        var.attrs = _netcdf_safe(dict(var.attrs))
    ds.attrs = _netcdf_safe(dict(volume.attrs))
    return ds


def to_zarr(
    volume: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    labels: xr.DataArray | None = None,
    fill_value: float = math.nan,
    overwrite: bool = False,
) -> Path:
    """Write a volume (and optional labels) as a Zarr store with coordinates and safe attrs.

    Zarr format 2 with consolidated metadata, which zarr-python 2 and 3 and
    most other readers open. Slice positions are coordinates, so a stack with
    gaps keeps its true positions.

    Parameters
    ----------
    fill_value : float
        What NaN voxels of a float volume become (default: kept as NaN); a
        number is recorded in the ``nan_written_as`` attr.

    Raises
    ------
    ParameterError
        `path` does not end in ``.zarr``.

    Notes
    -----
    **Computes** chunk by chunk.
    """
    _check_suffix(path, "zarr", "to_zarr")
    ds = _dataset(volume, labels, _check_fill(fill_value, "to_zarr"))
    with atomic_path(path, overwrite=overwrite) as tmp, _quiet_libraries():
        ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=2)
    return Path(path)


def to_netcdf(
    volume: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    labels: xr.DataArray | None = None,
    fill_value: float = math.nan,
    overwrite: bool = False,
) -> Path:
    """Write a volume (and optional labels) as NetCDF-4 with coordinates and safe attrs.

    Parameters
    ----------
    fill_value : float
        What NaN voxels of a float volume become (default: kept as NaN); a
        number is recorded in the ``nan_written_as`` attr.

    Raises
    ------
    ParameterError
        `path` does not end in ``.nc``.

    Notes
    -----
    **Computes**.
    """
    _check_suffix(path, "netcdf", "to_netcdf")
    ds = _dataset(volume, labels, _check_fill(fill_value, "to_netcdf"))
    with atomic_path(path, overwrite=overwrite) as tmp, _quiet_libraries():
        ds.to_netcdf(tmp, engine="netcdf4")
    return Path(path)
