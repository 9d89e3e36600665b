"""Label masks made elsewhere, on a series' grid: NIfTI, DICOM SEG and RTSTRUCT.

Each reader takes the file and the volume it belongs to (`like`, from
:func:`ctframe.open_series` or :func:`ctframe.to_hu`) and returns a lazy
integer DataArray ``(slice, row, col)`` with `like`'s coordinates, ready for
:func:`ctframe.region_stats`. Headers and geometry are checked now; the
pixels are read (or the contours rasterised) in one task when computed.

Geometry is matched in patient space (LPS, mm), never by array order:

* the volume's voxel grid is the affine from (slice, row, col) indices to LPS
  built from ImagePositionPatient, ImageOrientationPatient and PixelSpacing
  (the slice step from the first to the last position, so a tilted stack keeps
  its sheared geometry);
* a NIfTI file's affine (RAS) is turned into LPS by negating x and y, and a
  DICOM SEG's volume affine is LPS already;
* the file's voxels must then coincide with the volume's up to axis order and
  direction (a signed permutation) and a whole-voxel offset, to a hundredth of
  a voxel; a file may cover part of the grid (a SEG that omits empty frames),
  never voxels outside it;
* RTSTRUCT contour points (LPS mm) are projected into each slice's pixel
  coordinates, matched to the nearest slice along the normal (within a tenth of
  the spacing: contours drawn on a series lie on its slices) and filled with
  :func:`skimage.draw.polygon` (pixel centres inside the polygon; several
  contours of one ROI on one slice combine even-odd, so an inner contour is a
  hole).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ctframe.errors import DicomReadError, GridMismatchError, ParameterError
from ctframe.geometry import affine, slice_normal, voxel_spacing

__all__ = ["grid_affine", "read_nifti_labels", "read_rtstruct", "read_seg"]

#: Largest deviation (in voxels) between a file's grid and the volume's.
GRID_TOLERANCE_VOXELS = 0.01
#: Largest distance of an RTSTRUCT contour from its slice, as a fraction of the slice spacing.
CONTOUR_TOLERANCE = 0.1


def _series_name(volume: xr.DataArray) -> str:
    return str(volume.attrs.get("stack_key", volume.attrs.get("series_uid", volume.name or "(unnamed volume)")))


def _slice_positions(like: xr.DataArray) -> np.ndarray:
    """ImagePositionPatient of every slice, (n_slices, 3) in mm; KeyError when the coords are missing."""
    return np.stack([np.asarray(like[f"position_{axis}_mm"].values, float) for axis in "xyz"], axis=1)


def grid_affine(like: xr.DataArray) -> np.ndarray:
    """4x4 affine from (slice, row, col) indices of `like` to patient LPS mm: ``like.ct.affine``.

    Parameters
    ----------
    like : DataArray (slice, row, col)
        From :func:`ctframe.open_series` (needs the ``orientation`` attr, the
        ``position_x_mm``/``_y_``/``_z_`` coordinates and ``row``/``col`` in mm).

    Returns
    -------
    ndarray (4, 4)
        :func:`ctframe.geometry.affine` of `like`.

    Raises
    ------
    ParameterError
        `like` lacks the geometry.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> truth = write_phantom_series(tempfile.mkdtemp(), shape=(4, 64, 64), spacing_mm=(10, 5, 5))
    >>> (grid_affine(ctframe.open_series(truth.folder))[:3, :3].round(3) + 0.0).tolist()
    [[0.0, 0.0, 5.0], [0.0, 5.0, 0.0], [10.0, 0.0, 0.0]]
    """
    return affine(like)


def _plan(
    source_affine: np.ndarray, source_shape: Sequence[int], like: xr.DataArray, where: str
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[int, int, int]]:
    """How a source array maps onto `like`'s grid: (source axis per like axis, flips, offsets).

    After ``np.transpose(source, axes)`` and flipping the flagged axes, source
    voxel ``u + offset`` is `like` voxel ``u`` (offsets <= 0: the source starts
    at or after the grid's first voxel).
    """
    like_affine = affine(like)
    try:
        mapping = np.linalg.solve(source_affine, like_affine)  # like index -> source index
    except np.linalg.LinAlgError:
        raise GridMismatchError(f"{where}: the file's affine is singular; it holds no valid geometry") from None
    rotation, shift = mapping[:3, :3], mapping[:3, 3]
    axes = tuple(int(a) for a in np.argmax(np.abs(rotation), axis=0))
    signs = np.sign(rotation[axes, range(3)])
    expected = np.zeros((3, 3))
    expected[axes, range(3)] = signs
    if sorted(axes) != [0, 1, 2] or not np.allclose(rotation, expected, atol=1e-3):
        spacing_file = np.linalg.norm(source_affine[:3, :3], axis=0).round(4).tolist()
        spacing_like = np.linalg.norm(like_affine[:3, :3], axis=0).round(4).tolist()
        raise GridMismatchError(
            f"{where}: its voxels do not lie on the grid of series {_series_name(like)} (voxel size "
            f"{spacing_file} mm vs {spacing_like} mm, or a different orientation); resample the mask onto the "
            "series first (e.g. with SimpleITK) or open the series it was drawn on"
        )
    shape = np.asarray(source_shape)[list(axes)]
    offsets = []
    flips = []
    for a in range(3):
        t = shift[axes[a]]
        if abs(t - round(t)) > GRID_TOLERANCE_VOXELS:
            raise GridMismatchError(
                f"{where}: its grid is shifted by {t - round(t):+.3f} voxel along {('slice', 'row', 'col')[a]!r} "
                f"against series {_series_name(like)}; the mask belongs to another reconstruction"
            )
        t = round(t)
        flip = bool(signs[a] < 0)
        offset = int(shape[a] - 1 - t) if flip else int(t)
        flips.append(flip)
        offsets.append(offset)
        if offset > 0 or shape[a] - offset > like.shape[a]:
            raise GridMismatchError(
                f"{where}: it covers voxels outside series {_series_name(like)} along "
                f"{('slice', 'row', 'col')[a]!r} ({int(shape[a])} voxels from index {-offset}, the series has "
                f"{like.shape[a]}); crop it or open the full series"
            )
    return axes, (flips[0], flips[1], flips[2]), (offsets[0], offsets[1], offsets[2])


def _place(
    source: np.ndarray, plan: tuple[tuple[int, ...], tuple[bool, ...], tuple[int, ...]], shape: tuple[int, ...],
    dtype: np.dtype,
) -> np.ndarray:  # fmt: skip
    axes, flips, offsets = plan
    array = np.transpose(np.asarray(source), axes)
    for a, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis=a)
    out = np.zeros(shape, dtype)
    box = tuple(slice(-o, -o + n) for o, n in zip(offsets, array.shape, strict=True))
    out[box] = array
    return out


def _label_dtype(max_value: int) -> np.dtype:
    for dtype in (np.uint8, np.int16, np.int32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ParameterError(f"label value {max_value} does not fit int32")


def _as_labels(
    task: Any, like: xr.DataArray, dtype: np.dtype, name: str, names: Mapping[int, str], source: str
) -> xr.DataArray:
    data = da.from_delayed(task, shape=like.shape, dtype=dtype, name=name)
    if isinstance(like.data, da.Array):
        data = data.rechunk(like.data.chunks)
    attrs: dict[str, Any] = {"long_name": "imported labels", "source": source}
    for key in ("stack_key", "series_uid", "study_uid", "patient_key"):
        if key in like.attrs:
            attrs[key] = like.attrs[key]
    if names:
        values = sorted(names)
        attrs["flag_values"] = [0, *values] if 0 not in names else values
        words = [_flag_word(names.get(v, "background" if v == 0 else f"label_{v}")) for v in attrs["flag_values"]]
        attrs["flag_meanings"] = " ".join(words)
    keep = {k: v for k, v in like.coords.items() if set(v.dims) <= {"slice", "row", "col"}}
    return xr.DataArray(data, dims=("slice", "row", "col"), coords=keep, name="labels", attrs=attrs)


def _flag_word(name: str) -> str:
    """A region name as one CF flag_meanings word (letters, digits, _ - . +)."""
    word = re.sub(r"[^0-9A-Za-z_.+-]+", "_", str(name).strip()).strip("_")
    return word or "unnamed"


def _check_names(names: Mapping[int, str] | None) -> dict[int, str]:
    out = {}
    for value, name in (names or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ParameterError(f"names must map label values (int >= 0) to names, got key {value!r}")
        out[int(value)] = str(name)
    return out


# --------------------------------------------------------------------------- NIfTI


def _read_nifti_task(path: str, plan: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    if np.issubdtype(data.dtype, np.floating) and (
        not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data))
    ):
        raise ParameterError(f"{path}: label values must be whole numbers; found fractions or NaN")
    if data.size and data.min() < 0:
        raise ParameterError(f"{path}: label values must be >= 0; found {data.min()}")
    if data.size and data.max() > np.iinfo(np.dtype(dtype)).max:
        raise ParameterError(f"{path}: label value {data.max()} does not fit {dtype}")
    return _place(data, plan, shape, np.dtype(dtype))


def read_nifti_labels(
    path: str | os.PathLike[str],
    like: xr.DataArray,
    *,
    names: Mapping[int, str] | None = None,
    dtype: str = "int16",
) -> xr.DataArray:
    """Read a NIfTI label file drawn on the grid of `like`.

    The file's RAS affine (sform, else qform, as nibabel chooses) is turned into
    LPS and matched voxel for voxel with the series' grid, whatever the file's
    axis order and directions (a file written by :func:`ctframe.export.to_nifti`
    stores (col, row, slice); other tools often flip axes).

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz`` with whole-number labels (3-D, or 4-D with one volume).
    like : DataArray (slice, row, col)
        The series the labels belong to (from :func:`ctframe.open_series`).
    names : mapping of int to str, optional
        Region names, kept as ``flag_values``/``flag_meanings`` attrs.
    dtype : str
        Integer dtype of the result.

    Returns
    -------
    DataArray (slice, row, col)
        Labels with `like`'s coordinates, chunked like `like`.

    Raises
    ------
    DicomReadError
        The file cannot be read as NIfTI.
    GridMismatchError
        Its voxels are not the series' voxels (other spacing, orientation,
        offset or extent); the message says which.
    ParameterError
        Not 3-D, bad `names` or `dtype`, or (when computed) labels that are
        negative or not whole numbers.

    Notes
    -----
    **Lazy**: the header is read now, the voxels in one task when computed.

    Examples
    --------
    >>> import ctframe, tempfile, os
    >>> from ctframe.export import to_nifti
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> hu = ctframe.to_hu(ctframe.open_series(write_phantom_series(folder, shape=(16, 64, 64),
    ...                                                             spacing_mm=(10, 5, 5)).folder))
    >>> lungs = ctframe.lung_mask(hu)
    >>> _ = to_nifti(lungs, os.path.join(folder, "lungs.nii.gz"))
    >>> back = read_nifti_labels(os.path.join(folder, "lungs.nii.gz"), hu)
    >>> bool((back.values == lungs.values).all())
    True
    """
    import nibabel as nib

    path = os.fspath(path)
    names = _check_names(names)
    if np.dtype(dtype).kind not in "iu":
        raise ParameterError(f"dtype must be an integer dtype, got {dtype!r}")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises several types
        raise DicomReadError(f"{path}: cannot read as NIfTI ({type(exc).__name__}: {exc}); check the file") from None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ParameterError(f"{path}: labels must be a 3-D image, got shape {image.shape}")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(image.affine, float)
    plan = _plan(lps, shape, like, path)
    stat = os.stat(path)
    task = dask.delayed(_read_nifti_task, pure=True)(path, plan, tuple(like.shape), np.dtype(dtype).str)
    name = "read-nifti-labels-" + tokenize(path, stat.st_mtime_ns, stat.st_size, plan, like.shape, dtype)
    return _as_labels(task, like, np.dtype(dtype), name, names, path)


# --------------------------------------------------------------------------- DICOM SEG


def _read_seg_task(path: str, plan: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(path)
    volume = seg.get_volume(combine_segments=True, relabel=False, skip_overlap_checks=False)
    return _place(volume.array, plan, shape, np.dtype(dtype))


def read_seg(path: str | os.PathLike[str], like: xr.DataArray) -> xr.DataArray:
    """Read a DICOM Segmentation (SEG) object onto the grid of `like`.

    Segments become labels with their SegmentNumber (1, 2, ...) and names from
    their SegmentLabel. Frames are placed by their plane positions (via
    :meth:`highdicom.seg.Segmentation.get_volume`), so frames the SEG omits
    (empty ones) are 0 and the frame order does not matter.

    Parameters
    ----------
    path : path-like
        A DICOM SEG file (BINARY, FRACTIONAL thresholded by highdicom, or
        LABELMAP) with non-overlapping segments.
    like : DataArray (slice, row, col)
        The series it was drawn on (from :func:`ctframe.open_series`).

    Returns
    -------
    DataArray (slice, row, col)
        Labels with `like`'s coordinates, chunked like `like`; attrs
        ``flag_values``/``flag_meanings`` name the segments.

    Raises
    ------
    DicomReadError
        Not a readable DICOM SEG.
    GridMismatchError
        The SEG's frames are not on the series' voxel grid.
    ParameterError
        The SEG is not a regular 3-D volume (e.g. a single tiled slide).

    Notes
    -----
    **Lazy**: the SEG's metadata is read now (highdicom lazy frame retrieval),
    the frames in one task when computed. Overlapping segments raise then
    (a label volume holds one label per voxel).
    """
    import highdicom as hd

    path = os.fspath(path)
    try:
        seg = hd.seg.segread(path, lazy_frame_retrieval=True)
    except Exception as exc:  # pydicom / highdicom raise several types
        reason = f"{type(exc).__name__}: {exc}"
        raise DicomReadError(f"{path}: cannot read as DICOM SEG ({reason}); check the file") from None
    geometry = seg.get_volume_geometry()
    if geometry is None:
        raise ParameterError(
            f"{path}: the SEG's frames do not form a regular 3-D volume, so they cannot be placed on series "
            f"{_series_name(like)}"
        )
    plan = _plan(np.asarray(geometry.affine, float), geometry.spatial_shape, like, path)
    numbers = [int(n) for n in seg.segment_numbers]
    names = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    dtype = _label_dtype(max(numbers, default=0))
    stat = os.stat(path)
    task = dask.delayed(_read_seg_task, pure=True)(path, plan, tuple(like.shape), dtype.str)
    name = "read-seg-" + tokenize(path, stat.st_mtime_ns, stat.st_size, plan, like.shape)
    return _as_labels(task, like, dtype, name, names, path)


# --------------------------------------------------------------------------- RTSTRUCT


def _rasterize_task(
    contours: Sequence[tuple[int, int, np.ndarray, np.ndarray]], shape: tuple[int, ...], dtype: str
) -> np.ndarray:
    from skimage.draw import polygon

    out = np.zeros(shape, np.dtype(dtype))
    by_label_slice: dict[tuple[int, int], np.ndarray] = {}
    for label, k, rows, cols in contours:
        inside = by_label_slice.setdefault((label, k), np.zeros(shape[1:], bool))
        rr, cc = polygon(rows, cols, shape=shape[1:])
        flip = np.zeros(shape[1:], bool)
        flip[rr, cc] = True
        inside ^= flip  # even-odd: an inner contour is a hole
    for (label, k), inside in by_label_slice.items():  # later ROIs win where ROIs overlap
        out[k][inside] = label
    return out


def read_rtstruct(
    path: str | os.PathLike[str], like: xr.DataArray, *, rois: Sequence[str] | None = None
) -> xr.DataArray:
    """Rasterise the closed planar contours of an RTSTRUCT onto the grid of `like`.

    Parameters
    ----------
    path : path-like
        A DICOM RT Structure Set.
    like : DataArray (slice, row, col)
        The series the contours were drawn on (from :func:`ctframe.open_series`).
    rois : sequence of str, optional
        ROI names to read, in this order; labels are 1, 2, ... in that order
        (default: every ROI with contours, in the file's order). Where ROIs
        overlap, the later one wins.

    Returns
    -------
    DataArray (slice, row, col)
        Labels with `like`'s coordinates, chunked like `like`;
        ``flag_values``/``flag_meanings`` name the ROIs.

    Raises
    ------
    DicomReadError
        Not a readable RT Structure Set.
    ParameterError
        An ROI in `rois` is absent (the message lists those present).
    GridMismatchError
        A contour lies between slices (more than a tenth of the spacing from
        the nearest): it was drawn on another series.

    Notes
    -----
    **Lazy**: contours are read and mapped to pixel coordinates now (they are
    small); the label volume is filled in one task when computed.
    """
    import pydicom

    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises several types
        raise DicomReadError(f"{path}: cannot read as DICOM ({type(exc).__name__}: {exc}); check the file") from None
    if getattr(ds, "Modality", None) != "RTSTRUCT" or "ROIContourSequence" not in ds:
        raise DicomReadError(f"{path}: not an RT Structure Set (Modality {getattr(ds, 'Modality', None)!r})")
    roi_names = {int(item.ROINumber): str(item.ROIName) for item in ds.get("StructureSetROISequence", [])}
    with_contours = [int(item.ReferencedROINumber) for item in ds.ROIContourSequence if "ContourSequence" in item]
    if rois is None:
        chosen = with_contours
    else:
        by_name = {name: number for number, name in roi_names.items()}
        missing = [r for r in rois if r not in by_name]
        if missing:
            raise ParameterError(
                f"{path}: ROI(s) {missing} not found; present: "
                + ", ".join(roi_names.get(n, str(n)) for n in with_contours)
            )
        chosen = [by_name[r] for r in rois]
    labels = {number: i + 1 for i, number in enumerate(chosen)}

    grid = affine(like)  # ctframe.geometry: voxel (slice, row, col) -> LPS
    positions = _slice_positions(like)
    normal = slice_normal(like)
    along = positions @ normal  # slice positions along the normal
    spacing = voxel_spacing(like)[0]
    # in-plane: LPS offset from slice k's voxel (k, 0, 0) -> (row, col) index, through the affine's in-plane columns
    in_plane = np.linalg.pinv(grid[:3, 1:3])
    corner = grid[:3, 3] - positions[0]  # voxel (0, 0, 0) relative to the first slice's position (a cropped volume)
    contours = []
    for item in ds.ROIContourSequence:
        number = int(item.ReferencedROINumber)
        if number not in labels:
            continue
        for contour in item.get("ContourSequence", []):
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                continue
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            depth = float(np.mean(points @ normal))
            k = int(np.argmin(np.abs(along - depth)))
            if abs(along[k] - depth) > CONTOUR_TOLERANCE * spacing:
                raise GridMismatchError(
                    f"{path}: a contour of ROI {roi_names.get(number, number)!r} lies at {depth:.2f} mm along the "
                    f"slice normal, {abs(along[k] - depth):.2f} mm from the nearest slice of series "
                    f"{_series_name(like)}; it was drawn on another series"
                )
            rows, cols = in_plane @ (points - positions[k] - corner).T
            contours.append((labels[number], k, rows, cols))
    names = {labels[n]: roi_names.get(n, f"roi_{n}") for n in chosen}
    dtype = _label_dtype(len(chosen))
    task = dask.delayed(_rasterize_task, pure=True)(contours, tuple(like.shape), dtype.str)
    stat = os.stat(path)
    name = "read-rtstruct-" + tokenize(path, stat.st_mtime_ns, stat.st_size, like.shape, chosen)
    return _as_labels(task, like, dtype, name, names, path)
