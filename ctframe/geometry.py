"""Geometry in one place: orientation groups, per-stack geometry and checks, the affine.

Every module that needs spacing, orientation, shape or the voxel-to-patient
mapping asks this one (as rioxarray's ``.rio.transform()`` is asked by every
writer): :mod:`ctframe.scan` groups slices into stacks with
:func:`orientation_groups` and fills the geometry columns of the series table
from :func:`stack_geometry`; :mod:`ctframe.io` checks a stack and builds its
coordinates from the same; :func:`affine` (``volume.ct.affine``) serves the
writers, the mask readers, segmentation and plots.

Rules
-----
* **Orientation** is compared with a tolerance (``qc.orientation_tolerance``,
  each direction cosine), never by rounding: rounding splits values that
  straddle a rounding boundary (0.99949999 and 0.9995001 round to 0.999 and
  1.000) however close they are. Slices outside the tolerance of a stack's
  orientation form another stack of the series (**split**).
* **Pixel spacing** must agree between the slices of a stack to
  ``qc.pixel_spacing_tolerance`` (relative); **size** (Rows, Columns) exactly.
  A stack whose slices disagree is **flagged**
  (``inconsistent_pixel_spacing`` / ``inconsistent_shape``, with the values and
  slice counts in ``qc_notes``), is not usable, its series-table value is
  missing, and :func:`ctframe.open_series` refuses it naming a file; it is
  never opened with one slice's value. Flagging rather than splitting: two
  spacings in one series are two reconstructions mixed by mistake (or a
  corrupt header), and half a series opened as a stack would give a cohort
  table half a lung without a word.
* **The affine** maps voxel index (slice, row, col) to patient LPS mm:
  columns ``slice step, ColumnDirection * row spacing, RowDirection * col
  spacing`` and the position of voxel (0, 0, 0). The slice step runs from the
  first to the last ImagePositionPatient, so a tilted (sheared) stack keeps its
  true geometry and a stack with gaps gets the mean step, as SimpleITK's series
  reader does. It is derived from coordinates (``position_x_mm``/``_y_``/``_z_``,
  ``row``, ``col``) and the ``orientation`` attr, all of which survive
  ``isel``, so a cropped or strided volume keeps a correct affine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

import ctframe.accessor  # noqa: F401  (registers .ct on every volume ctframe makes)
from ctframe.config import get_config
from ctframe.errors import ParameterError

__all__ = [
    "StackGeometry",
    "affine",
    "nifti_affine",
    "orientation_groups",
    "orientation_label",
    "pixel_spacing",
    "slice_normal",
    "stack_geometry",
    "voxel_spacing",
]

#: Catalog columns of ImageOrientationPatient: the row direction, then the column direction.
ORIENTATION_COLUMNS = ("row_dir_x", "row_dir_y", "row_dir_z", "col_dir_x", "col_dir_y", "col_dir_z")
#: Catalog columns of ImagePositionPatient (LPS, mm).
POSITION_COLUMNS = ("position_x_mm", "position_y_mm", "position_z_mm")
#: Catalog columns of PixelSpacing: between rows, then between columns (mm).
PIXEL_SPACING_COLUMNS = ("pixel_spacing_row_mm", "pixel_spacing_col_mm")
#: LPS <-> RAS (NIfTI): x and y negated.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------- orientation


def orientation_groups(orientations: Any, *, tolerance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group slices by ImageOrientationPatient, with a tolerance.

    Distinct orientations are taken from the most common to the rarest; each
    joins the first group whose reference (its most common orientation) it
    matches within `tolerance` on every direction cosine, or starts a new
    group. Measuring against a fixed reference, not against any member, keeps
    a slow drift from chaining different orientations into one group. Slices
    without a complete, finite orientation form one group of their own.

    Parameters
    ----------
    orientations : array-like (n, 6)
        Row then column direction cosines of each slice.
    tolerance : float, optional
        Largest difference of a direction cosine within a group (default
        ``qc.orientation_tolerance``).

    Returns
    -------
    labels : ndarray (n,) of int
        Group of each slice, 0 for the largest group.
    references : ndarray (n_groups, 6)
        The orientation of each group (NaN for the group without one).

    Examples
    --------
    >>> labels, refs = orientation_groups(
    ...     [[1, 0, 0, 0, 1, 0], [0.9999995, 0.0001, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]], tolerance=1e-3
    ... )
    >>> labels.tolist(), refs[1].tolist()
    ([0, 0, 1], [1.0, 0.0, 0.0, 0.0, 0.0, -1.0])
    """
    values = np.asarray(orientations, float).reshape(-1, 6)
    tol = float(get_config()["qc"]["orientation_tolerance"] if tolerance is None else tolerance)
    labels = np.full(len(values), -1, dtype=np.int64)
    references: list[np.ndarray] = []
    sizes: list[int] = []
    finite = np.isfinite(values).all(axis=1)
    if finite.any():
        distinct, inverse, counts = np.unique(values[finite], axis=0, return_inverse=True, return_counts=True)
        group_of = np.empty(len(distinct), dtype=np.int64)
        for d in np.argsort(-counts, kind="stable"):  # most common first; ties in sorted order
            if references:
                match = np.flatnonzero(np.abs(np.asarray(references) - distinct[d]).max(axis=1) <= tol)
                if match.size:
                    group_of[d] = match[0]
                    sizes[match[0]] += int(counts[d])
                    continue
            group_of[d] = len(references)
            references.append(distinct[d])
            sizes.append(int(counts[d]))
        labels[finite] = group_of[np.asarray(inverse).ravel()]
    if not finite.all():
        labels[~finite] = len(references)
        references.append(np.full(6, np.nan))
        sizes.append(int((~finite).sum()))
    # renumber: largest group first, then by orientation (NaN last)
    order = sorted(range(len(references)), key=lambda g: (-sizes[g], np.nan_to_num(references[g], nan=9.0).tolist()))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return (rank[labels] if len(labels) else labels), np.asarray([references[g] for g in order]).reshape(-1, 6)


def orientation_label(normal: Any) -> str:
    """AXIAL, CORONAL, SAGITTAL (normal within about 37 degrees of an axis), OBLIQUE or UNKNOWN.

    Examples
    --------
    >>> orientation_label([0, 0, 1]), orientation_label([0, -1, 0]), orientation_label([0.7, 0, 0.7])
    ('AXIAL', 'CORONAL', 'OBLIQUE')
    """
    normal = np.asarray(normal, float)
    if normal.shape != (3,) or not np.isfinite(normal).all() or not normal.any():
        return "UNKNOWN"
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < 0.8:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[..., :3], orientation[..., 3:])


# --------------------------------------------------------------------------- one stack from its catalog rows


#: A stack whose slices advance further than this from their normal is tilted (``is_tilted``).
TILT_LIMIT_DEG = 0.5


@dataclass(frozen=True)
class StackGeometry:
    """The geometry of one stack, from all of its catalog rows.

    A value the slices disagree on is missing (NaN or None) and the reason is
    in `problems`; see :func:`stack_geometry`.
    """

    orientation: tuple[float, ...]
    normal: tuple[float, float, float]
    orientation_label: str
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, float]
    spacing_median_mm: float
    spacing_min_mm: float
    spacing_max_mm: float
    n_missing_slices: int
    has_duplicates: bool
    has_gaps: bool
    irregular_spacing: bool
    tilt_angle_deg: float
    #: Flag -> reason, for ``inconsistent_shape``, ``inconsistent_pixel_spacing``,
    #: ``inconsistent_orientation`` and ``missing_geometry``.
    problems: Mapping[str, str] = field(default_factory=dict)
    #: Per flag, the first catalog row (position in the rows given) that disagrees with the rest.
    culprits: Mapping[str, int] = field(default_factory=dict)

    @property
    def slice_spacing_mm(self) -> float:
        """The median step between slice positions along the normal (NaN for one slice)."""
        return self.spacing_median_mm

    @property
    def is_tilted(self) -> bool:
        """The slices advance more than :data:`TILT_LIMIT_DEG` away from their normal (gantry tilt: sheared)."""
        return bool(self.tilt_angle_deg > TILT_LIMIT_DEG)


def _columns(rows: pd.DataFrame, names: Sequence[str]) -> np.ndarray:
    """Catalog columns as one float array (n, len(names)); column by column, which pandas does fastest."""
    return np.column_stack([rows[name].to_numpy(float) for name in names]).reshape(len(rows), len(names))


def _counts(values: Sequence[str]) -> str:
    series = pd.Series(list(values)).value_counts(sort=True)
    return ", ".join(f"{value} on {n} slice{'s' if n > 1 else ''}" for value, n in series.items())


@dataclass(frozen=True)
class SliceSteps:
    """The steps between consecutive slice positions, judged by the ``qc`` rules (one place for both)."""

    #: Steps that are not duplicates (at least ``qc.duplicate_tolerance_mm``), in order.
    real: np.ndarray
    median_mm: float
    n_duplicates: int
    #: Per real step: more than ``qc.gap_factor`` times the median.
    gaps: np.ndarray
    n_missing: int
    #: (max - min) / median of the real steps above ``qc.irregular_tolerance``.
    irregular: bool


def slice_steps(steps: np.ndarray, *, qc: Mapping[str, Any]) -> SliceSteps:
    """Judge the steps between consecutive slice positions (mm, non-negative; NaN ignored).

    The one rule for duplicates, gaps and irregular spacing, used by
    :func:`stack_geometry` (catalog rows) and :func:`ctframe.export.grid_problem` (a volume).

    Examples
    --------
    >>> qc = {"duplicate_tolerance_mm": 0.01, "gap_factor": 1.5, "irregular_tolerance": 0.1}
    >>> judged = slice_steps(np.array([2.5, 2.5, 5.0, 0.0, 2.5]), qc=qc)
    >>> judged.median_mm, judged.n_duplicates, judged.n_missing, judged.irregular
    (2.5, 1, 1, True)
    """
    steps = np.asarray(steps, float)
    finite = steps[np.isfinite(steps)]
    duplicate = finite < qc["duplicate_tolerance_mm"]
    real = finite[~duplicate]
    median = float(np.median(real)) if real.size else math.nan
    gaps = real > qc["gap_factor"] * median if real.size else np.array([], bool)
    n_missing = int(np.sum(np.round(real[gaps] / median) - 1)) if gaps.any() else 0
    spread = (real.max() - real.min()) / median if real.size > 1 and median > 0 else 0.0
    return SliceSteps(real, median, int(duplicate.sum()), gaps, n_missing, bool(spread > qc["irregular_tolerance"]))


def stack_geometry(rows: pd.DataFrame, *, qc: Mapping[str, Any] | None = None) -> StackGeometry:
    """Geometry of one stack from every one of its catalog rows, with the consistency checks.

    Parameters
    ----------
    rows : DataFrame
        Catalog rows of one stack (:func:`ctframe.scan.assign_stacks`), ordered
        by ``slice_position_mm``.
    qc : mapping, optional
        The ``qc`` section of the configuration (default: the active one).

    Returns
    -------
    StackGeometry
        ``orientation``: the stack's direction cosines (its most common value;
        every slice lies within ``qc.orientation_tolerance`` of it, or
        ``inconsistent_orientation`` is raised in `problems`); ``rows``,
        ``columns`` (None when slices differ: ``inconsistent_shape``);
        ``pixel_spacing_mm`` (row, col; NaN when slices differ by more than
        ``qc.pixel_spacing_tolerance``: ``inconsistent_pixel_spacing``, or when
        a slice lacks it: ``missing_geometry``); slice steps along the normal
        (median, min, max; duplicates below ``qc.duplicate_tolerance_mm`` left
        out), gaps, irregular spacing and the tilt angle between the normal and
        the direction the slices advance.

    Notes
    -----
    **Computes** (from the catalog only; no file is read).

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(6, 32, 32), spacing_mm=(2.0, 0.8, 0.8))
    >>> geometry = stack_geometry(ctframe.scan(folder))
    >>> geometry.pixel_spacing_mm, geometry.spacing_median_mm, dict(geometry.problems)
    ((0.8, 0.8), 2.0, {})
    """
    qc = get_config()["qc"] if qc is None else qc
    problems: dict[str, str] = {}
    culprits: dict[str, int] = {}

    # orientation: one stack, one orientation (within the tolerance)
    orient = _columns(rows, ORIENTATION_COLUMNS)
    finite = np.isfinite(orient).all(axis=1)
    if finite.any():
        distinct, counts = np.unique(orient[finite], axis=0, return_counts=True)
        reference = distinct[int(np.argmax(counts))]
        deviation = np.abs(orient - reference).max(axis=1)
        off = np.flatnonzero(finite & (deviation > float(qc["orientation_tolerance"])))
        if off.size:
            culprits["inconsistent_orientation"] = int(off[0])
            problems["inconsistent_orientation"] = (
                f"slices differ in orientation (by up to {float(np.nanmax(deviation)):.2g} in a direction cosine, "
                f"{off.size} of {len(rows)} slice(s) beyond the tolerance {qc['orientation_tolerance']:g})"
            )
    else:
        reference = np.full(6, np.nan)
    normal = _normal(reference)

    # size: exactly one
    sizes = np.column_stack([rows["rows"].to_numpy(), rows["columns"].to_numpy()])
    n_rows = n_cols = None
    if len(rows):
        if len(np.unique(sizes, axis=0)) > 1:
            size_text = [f"{r}x{c}" for r, c in sizes]
            common = pd.Series(size_text).value_counts().index[0]
            culprits["inconsistent_shape"] = next(i for i, t in enumerate(size_text) if t != common)
            problems["inconsistent_shape"] = f"slices differ in size ({_counts(size_text)})"
        else:
            n_rows, n_cols = int(sizes[0][0]), int(sizes[0][1])

    # pixel spacing: one, to a relative tolerance
    spacing = _columns(rows, PIXEL_SPACING_COLUMNS)
    pixel = (math.nan, math.nan)
    known = np.isfinite(spacing).all(axis=1)
    if known.any():
        values = spacing[known]
        low, high = values.min(axis=0), values.max(axis=0)
        if ((high - low) > float(qc["pixel_spacing_tolerance"]) * np.abs(high)).any():
            text = [f"{r:g}x{c:g} mm" for r, c in values]
            common = pd.Series(text).value_counts().index[0]
            odd = [i for i, t in zip(np.flatnonzero(known), text, strict=True) if t != common]
            culprits["inconsistent_pixel_spacing"] = int(odd[0])
            problems["inconsistent_pixel_spacing"] = f"slices differ in pixel spacing ({_counts(text)})"
        elif known.all():
            pixel = (float(np.median(values[:, 0])), float(np.median(values[:, 1])))

    # missing geometry: a slice that cannot be placed in space
    ipp = _columns(rows, POSITION_COLUMNS)
    missing = np.isnan(np.column_stack([ipp, orient, spacing])).any(axis=1)
    if missing.any():
        culprits["missing_geometry"] = int(np.flatnonzero(missing)[0])
        problems["missing_geometry"] = (
            f"{int(missing.sum())} slice(s) lack ImagePositionPatient, ImageOrientationPatient or PixelSpacing"
        )

    # slice positions along the normal
    pos = rows["slice_position_mm"].to_numpy(float) if "slice_position_mm" in rows else np.array([])
    steps = np.diff(pos) if len(pos) > 1 else np.array([])
    step_qc = slice_steps(steps, qc=qc)

    # tilt: the angle between the normal and the direction the slices advance
    tilt = math.nan
    if len(ipp) > 1 and np.isfinite(ipp).all():
        with np.errstate(all="ignore"):  # positions near the float limit from a corrupt header
            travel = ipp[-1] - ipp[0]
            norm = np.linalg.norm(travel)
            cos = abs(float(travel @ normal)) / norm if np.isfinite(norm) and norm > 0 else math.nan
        if np.isfinite(cos):
            tilt = float(np.degrees(np.arccos(min(cos, 1.0))))
    header_tilt = rows["gantry_tilt_deg"].abs().max() if "gantry_tilt_deg" in rows else math.nan
    if not np.isfinite(tilt):
        tilt = float(header_tilt) if np.isfinite(header_tilt) else 0.0

    return StackGeometry(
        orientation=tuple(float(v) for v in reference),
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        orientation_label=orientation_label(normal),
        rows=n_rows,
        columns=n_cols,
        pixel_spacing_mm=pixel,
        spacing_median_mm=step_qc.median_mm,
        spacing_min_mm=float(step_qc.real.min()) if step_qc.real.size else math.nan,
        spacing_max_mm=float(step_qc.real.max()) if step_qc.real.size else math.nan,
        n_missing_slices=step_qc.n_missing,
        has_duplicates=step_qc.n_duplicates > 0,
        has_gaps=bool(step_qc.gaps.any()),
        irregular_spacing=step_qc.irregular,
        tilt_angle_deg=tilt,
        problems=problems,
        culprits=culprits,
    )


# --------------------------------------------------------------------------- a volume's geometry


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", volume.name or "(unnamed volume)")))


def _check_dims(volume: Any, what: str) -> None:
    if not isinstance(volume, xr.DataArray) or tuple(volume.dims) != ("slice", "row", "col"):
        dims = getattr(volume, "dims", type(volume).__name__)
        raise ParameterError(
            f"{what} needs a DataArray with dims (slice, row, col) from ctframe.open_series, got {dims}; "
            "transpose with volume.transpose('slice', 'row', 'col')"
        )


def _orientation(volume: xr.DataArray) -> np.ndarray:
    value = volume.attrs.get("orientation")
    orientation = np.asarray(value if value is not None else [], float).ravel()
    if orientation.shape != (6,) or not np.isfinite(orientation).all():
        raise ParameterError(
            f"series {_series_name(volume)} has no DICOM geometry (no valid 'orientation' attr of 6 direction "
            "cosines); open it with ctframe.open_series"
        )
    return orientation


def slice_normal(volume: xr.DataArray) -> np.ndarray:
    """The slice normal (LPS): RowDirection x ColumnDirection of the ``orientation`` attr.

    Raises
    ------
    ParameterError
        No valid ``orientation`` attr.

    Examples
    --------
    >>> import xarray as xr
    >>> slice_normal(xr.DataArray(0, attrs={"orientation": [1, 0, 0, 0, 1, 0]})).tolist()
    [0.0, 0.0, 1.0]
    """
    return _normal(_orientation(volume))


def _regular_step(values: np.ndarray, dim: str, volume: xr.DataArray) -> float:
    """The step of an evenly spaced coordinate (mm); ParameterError when it is not evenly spaced."""
    steps = np.diff(values)
    step = float((values[-1] - values[0]) / (len(values) - 1))
    if not (np.isfinite(steps).all() and np.allclose(steps, step, rtol=1e-6, atol=1e-6)) or step == 0:
        raise ParameterError(
            f"series {_series_name(volume)}: the {dim!r} coordinate is not evenly spaced (an irregular isel?), "
            "so no affine describes the voxel grid; select a regular range of it"
        )
    return step


def _slice_spacing_fallback(volume: xr.DataArray) -> float | None:
    for key in ("slice_spacing_mm", "slice_thickness_mm"):
        value = volume.attrs.get(key)
        if value is not None and math.isfinite(float(value)) and float(value) > 0:
            return float(value)
    return None


def affine(volume: xr.DataArray) -> np.ndarray:
    """The 4x4 affine from voxel index (slice, row, col) to patient LPS mm.

    Columns: the step from one slice to the next (first to last
    ImagePositionPatient over n - 1: the true, possibly sheared step; the mean
    step where slices are irregular, as SimpleITK's series reader takes it),
    ColumnDirection times the row spacing, RowDirection times the column
    spacing, and the position of voxel (0, 0, 0). A single slice steps along
    the normal by the ``slice_spacing_mm`` attr (else ``slice_thickness_mm``,
    else 1 mm: the step then places no voxel).

    Parameters
    ----------
    volume : DataArray (slice, row, col)
        From :func:`ctframe.open_series` or anything derived from it: the
        affine is read from the ``position_x_mm``/``_y_``/``_z_`` and ``row``,
        ``col`` coordinates and the ``orientation`` attr, so it stays right
        after ``isel`` (cropping, striding, reversing; an irregular selection of
        rows or columns has no affine and raises).

    Returns
    -------
    ndarray (4, 4)
        ``affine @ [k, i, j, 1]`` is the LPS position (mm) of voxel (k, i, j).

    Raises
    ------
    ParameterError
        Other dims, no orientation attr or position coordinates, or unevenly
        spaced rows or columns.

    Notes
    -----
    **Computes** nothing: coordinates and attrs only.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(4, 64, 64), spacing_mm=(10, 5, 5))
    >>> volume = ctframe.open_series(truth.folder)
    >>> (volume.ct.affine[:3, :3].round(3) + 0.0).tolist()
    [[0.0, 0.0, 5.0], [0.0, 5.0, 0.0], [10.0, 0.0, 0.0]]
    >>> bool((volume.isel(slice=slice(1, None), row=slice(8, 40)).ct.affine
    ...       == volume.ct.affine @ [[1, 0, 0, 1], [0, 1, 0, 8], [0, 0, 1, 0], [0, 0, 0, 1]]).all())
    True
    """
    _check_dims(volume, "affine")
    orientation = _orientation(volume)
    try:
        positions = np.stack([np.asarray(volume[c].values, float) for c in POSITION_COLUMNS], axis=1)
    except KeyError as exc:
        raise ParameterError(
            f"series {_series_name(volume)} has no DICOM geometry ({exc} coordinate missing); "
            "open it with ctframe.open_series"
        ) from None
    if positions.shape[0] < 1 or not np.isfinite(positions).all():
        raise ParameterError(f"series {_series_name(volume)}: slice positions are missing or not finite")
    row_dir, col_dir = orientation[:3], orientation[3:]
    pixel = volume.attrs.get("pixel_spacing_mm") or (math.nan, math.nan)
    offsets = []
    steps = []
    for dim, fallback in (("row", pixel[0]), ("col", pixel[1])):
        values = np.asarray(volume[dim].values, float) if dim in volume.coords else np.array([])
        if values.size != volume.sizes[dim]:
            raise ParameterError(f"series {_series_name(volume)} has no {dim!r} coordinate in mm")
        offsets.append(float(values[0]))
        steps.append(_regular_step(values, dim, volume) if values.size > 1 else float(fallback))
    n = volume.sizes["slice"]
    if n > 1:
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        # one slice of unknown thickness: a 1 mm step (SimpleITK's and NIfTI's default). It places no voxel
        # (there is no slice k = 1) and measures nothing: voxel_spacing still refuses the unknown spacing
        step = _normal(orientation) * (_slice_spacing_fallback(volume) or 1.0)
    out = np.eye(4)
    out[:3, 0] = step
    out[:3, 1] = col_dir * steps[0]
    out[:3, 2] = row_dir * steps[1]
    out[:3, 3] = positions[0] + col_dir * offsets[0] + row_dir * offsets[1]
    if not np.isfinite(out).all():
        raise ParameterError(f"series {_series_name(volume)}: the pixel spacing is unknown, so no affine exists")
    return out


def nifti_affine(volume: xr.DataArray) -> np.ndarray:
    """The NIfTI affine of `volume`: voxel index (col, row, slice) to RAS mm.

    :func:`affine` with its axes in NIfTI's (i, j, k) = (col, row, slice)
    order and x, y negated (LPS to RAS); :func:`ctframe.export.to_nifti`
    writes the array in that order.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> volume = xr.DataArray(
    ...     np.zeros((2, 2, 2)), dims=("slice", "row", "col"),
    ...     coords={"row": [0.0, 0.5], "col": [0.0, 0.5], "position_x_mm": ("slice", [0.0, 0.0]),
    ...             "position_y_mm": ("slice", [0.0, 0.0]), "position_z_mm": ("slice", [0.0, 2.0])},
    ...     attrs={"orientation": [1, 0, 0, 0, 1, 0]})
    >>> (nifti_affine(volume).diagonal() + 0.0).tolist()
    [-0.5, -0.5, 2.0, 1.0]
    """
    return LPS_TO_RAS @ affine(volume)[:, [2, 1, 0, 3]]


def _spacing_along(volume: xr.DataArray, dim: str, fallback: Any) -> float:
    values = np.asarray(volume[dim].values, float) if dim in volume.coords else np.array([])
    if values.size > 1:
        step = float(np.median(np.abs(np.diff(values))))
    else:
        step = float(fallback) if fallback is not None else math.nan
    if not (math.isfinite(step) and step > 0):
        raise ParameterError(
            f"series {_series_name(volume)}: the spacing along {dim!r} is unknown or zero; "
            f"give the volume a '{dim}' coordinate in mm (open it with ctframe.open_series)"
        )
    return step


def pixel_spacing(volume: xr.DataArray) -> tuple[float, float]:
    """(row, col) spacing in mm: the median step of the ``row`` and ``col`` coordinates, else ``pixel_spacing_mm``.

    Raises
    ------
    ParameterError
        A spacing is unknown or zero.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> pixel_spacing(xr.DataArray(np.zeros((1, 1)), dims=("row", "col"), attrs={"pixel_spacing_mm": [0.7, 0.8]}))
    (0.7, 0.8)
    """
    pixel = volume.attrs.get("pixel_spacing_mm") or (None, None)
    return _spacing_along(volume, "row", pixel[0]), _spacing_along(volume, "col", pixel[1])


def voxel_spacing(volume: xr.DataArray) -> tuple[float, float, float]:
    """(slice, row, col) spacing in mm: the voxel's extent, for volumes, areas and sizes in mm.

    From the coordinates (the median step of ``slice``, ``row`` and ``col``;
    the ``slice`` coordinate is the position along the normal, so a tilted
    stack gives the distance between slice planes), falling back to the
    ``slice_spacing_mm`` (else ``slice_thickness_mm``) and ``pixel_spacing_mm``
    attrs for a dim of length 1.

    Raises
    ------
    ParameterError
        A spacing is unknown or zero.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> volume = xr.DataArray(np.zeros((1, 3, 3)), dims=("slice", "row", "col"),
    ...     coords={"row": [0.0, 0.7, 1.4], "col": [0.0, 0.7, 1.4]}, attrs={"slice_thickness_mm": 2.5})
    >>> voxel_spacing(volume)
    (2.5, 0.7, 0.7)
    """
    return (_spacing_along(volume, "slice", _slice_spacing_fallback(volume)), *pixel_spacing(volume))
