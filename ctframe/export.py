"""Writers: one volume to NIfTI, Zarr or NetCDF, and atomic output helpers.

Every writer computes (it is a sink) and writes atomically: into a temporary
name beside the target, renamed into place only when complete, so a killed run
never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ctframe.errors import CTFrameError, OutputExistsError
from ctframe.geometry import affine, nifti_affine
from ctframe.privacy import safe_name

__all__ = ["atomic_path", "lps_affine", "ras_affine", "to_netcdf", "to_nifti", "to_zarr"]


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


def to_nifti(volume: xr.DataArray, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a volume as NIfTI-1 (``.nii`` or ``.nii.gz``) with its RAS affine.

    The array is stored in (col, row, slice) order, so voxel (i, j, k) of the
    file is column i, row j, slice k; the affine maps it to RAS millimetres.
    NaN (padding) is kept as NaN in float volumes.

    Notes
    -----
    **Computes**.
    """
    import nibabel as nib

    ras = nifti_affine(volume)  # before computing: a volume without geometry fails fast
    data = np.asarray(volume.transpose("col", "row", "slice").values)
    image = nib.Nifti1Image(data, ras)
    image.header.set_xyzt_units("mm")
    if volume.attrs.get("units") == "HU":
        image.header["descrip"] = b"HU"
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


def _dataset(volume: xr.DataArray, labels: xr.DataArray | None) -> xr.Dataset:
    name = volume.name if isinstance(volume.name, str) else "volume"
    ds = volume.to_dataset(name=name)
    if labels is not None:
        ds["labels"] = labels
    for var in ds.variables.values():
        var.attrs = _netcdf_safe(dict(var.attrs))
    ds.attrs = _netcdf_safe(dict(volume.attrs))
    return ds


def to_zarr(
    volume: xr.DataArray, path: str | os.PathLike[str], *, labels: xr.DataArray | None = None, overwrite: bool = False
) -> Path:
    """Write a volume (and optional labels) as a Zarr store with coordinates and safe attrs.

    Notes
    -----
    **Computes** chunk by chunk.
    """
    ds = _dataset(volume, labels)
    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=True)
    return Path(path)


def to_netcdf(
    volume: xr.DataArray, path: str | os.PathLike[str], *, labels: xr.DataArray | None = None, overwrite: bool = False
) -> Path:
    """Write a volume (and optional labels) as NetCDF-4 with coordinates and safe attrs.

    Notes
    -----
    **Computes**.
    """
    ds = _dataset(volume, labels)
    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    return Path(path)
