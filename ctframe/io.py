"""Lazy volumes: one stack of the catalog as a chunked ``xr.DataArray``.

:func:`open_series` turns a folder, a list of files or rows of the catalog into a
DataArray of *stored* values with dims ``("slice", "row", "col")``, backed by a
dask array with one read task per chunk of slices. No pixel is read until the
array is computed.
"""

from __future__ import annotations

import functools
import itertools
import os
import warnings
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ctframe.calibration import HUCalibration, calibration_of_rows
from ctframe.config import get_config
from ctframe.dicom import SliceRef, read_frames, stored_dtype
from ctframe.errors import (
    InconsistentSeriesError,
    MultipleSeriesError,
    NoSeriesError,
    ParameterError,
    QCWarning,
    ScanWarning,
    UnsupportedDicomError,
)
from ctframe.geometry import StackGeometry, stack_geometry
from ctframe.privacy import pseudonymous_uid
from ctframe.scan import (
    PHI_COLUMNS,
    access_of,
    assign_stacks,
    is_dicomweb_client,
    problems_table,
    scan,
    series_table,
)
from ctframe.sources import Access, is_dicomweb, is_remote, location_kind

__all__ = ["catalog_for", "open_series", "volume_from_catalog"]

#: What opens as a catalog: a location (folder, file, fsspec URL, DICOMweb root; see :mod:`ctframe.sources`),
#: several, a ``.parquet`` catalog written by ``ctframe scan --catalog``, a DICOMwebClient, or catalog rows.
Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | pd.DataFrame | Any

#: Catalog columns that become per-slice coordinates.
SLICE_COORDS = (
    "rescale_slope",
    "rescale_intercept",
    "padding_value",
    "padding_range_limit",
    "position_x_mm",
    "position_y_mm",
    "position_z_mm",
    "instance_number",
)
#: QC flags that open fine but deserve a warning.
WARN_FLAGS = {
    "has_gaps": "missing slices (gaps in position)",
    "irregular_spacing": "irregular slice spacing",
    "is_tilted": "gantry tilt (slices are sheared)",
    "rescale_varies": "rescale slope/intercept varies between slices",
}


def catalog_for(
    source: Source,
    *,
    salt: str | None = None,
    include_phi: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """The catalog rows of `source`: scan a location, read a persisted catalog, or pass rows through.

    Files that are not DICOM at all are skipped silently (they are in
    :func:`~ctframe.scan.problems_table`); DICOM files that fail to parse give
    a ScanWarning. A ``.parquet`` file written by ``ctframe scan --catalog``
    (:mod:`ctframe.catalog_store`) is read as it is, without touching the
    source; `storage_options` then say how its remote files are reached.
    """
    if isinstance(source, pd.DataFrame):
        catalog = source if "stack_key" in source else assign_stacks(source)
        if storage_options is not None:
            catalog = catalog.copy()
            catalog.attrs["access"] = Access(storage_options, _access_of(catalog).dicomweb)
        return catalog
    if isinstance(source, str | os.PathLike) and _is_catalog_file(source):
        from ctframe.catalog_store import read_catalog

        catalog = read_catalog(source)
        catalog.attrs["access"] = access_of(_remote_roots(catalog), storage_options, salt=salt)
        return catalog
    if isinstance(source, str | os.PathLike) or is_dicomweb_client(source):
        target: Any = source
    else:
        target = list(source)
        if not target:
            raise NoSeriesError("open_series got an empty list of files; pass a folder, files or catalog rows")
    catalog = scan(
        target,
        salt=salt,
        include_phi=include_phi,
        progress=False,
        storage_options=storage_options,
        warn_skipped=False,  # said below, for the DICOM files only
    )
    problems = problems_table(catalog)
    broken = problems[~problems["reason"].str.startswith("not a DICOM file")]
    if len(broken):
        listing = "; ".join(f"{p}: {r}" for p, r in broken.head(3).itertuples(index=False))
        warnings.warn(
            f"{len(broken)} DICOM file(s) were skipped ({listing}{'; ...' if len(broken) > 3 else ''})",
            ScanWarning,
            stacklevel=3,
        )
    return catalog


def _is_catalog_file(source: str | os.PathLike[str]) -> bool:
    text = os.fspath(source)
    return location_kind(text) == "local" and text.endswith(".parquet") and os.path.isfile(text)


def _remote_roots(catalog: pd.DataFrame) -> list[str]:
    """The DICOMweb service roots of a persisted catalog's paths (their read settings are rebuilt from these)."""
    return sorted({path.partition("#")[0] for path in catalog["path"].astype(str).unique() if is_dicomweb(path)})


def _access_of(catalog: pd.DataFrame) -> Access:
    access = catalog.attrs.get("access")
    return access if isinstance(access, Access) else Access()


def _describe(source: Source) -> str:
    if isinstance(source, pd.DataFrame):
        return f"the {len(source)} catalog rows given"
    if isinstance(source, str | os.PathLike):
        return str(source)
    return f"the {len(list(source))} files given"


def _matching_stacks(catalog: pd.DataFrame, series: str, salt: str | None) -> pd.DataFrame:
    """The rows `series` names: a stack key or series UID, exactly or by a unique prefix.

    An original SeriesInstanceUID (or a stack key made from one) finds its
    pseudonym (see :mod:`ctframe.privacy`). A prefix may name several stacks of
    one series (``UID#1``, ``UID#2``); a prefix shared by several series is
    ambiguous.

    Raises
    ------
    ParameterError
        `series` is the start of the keys of several series (they are listed).
    """
    uid, sep, k = series.partition("#")
    pseudo = pseudonymous_uid(uid, salt=salt)
    keys, uids = catalog["stack_key"], catalog["series_uid"]
    chosen = catalog[(keys == series) | (uids == series) | (keys == pseudo + sep + k) | (uids == pseudo)]
    if not chosen.empty or not series:
        return chosen
    by_prefix = catalog[keys.str.startswith(series)]
    if by_prefix["series_uid"].nunique() > 1:
        matches = sorted(by_prefix["stack_key"].unique())
        raise ParameterError(
            f"series {series!r} is the start of {len(matches)} stack keys ({', '.join(matches[:10])}"
            f"{', ...' if len(matches) > 10 else ''}); give more of the key"
        )
    return by_prefix


def _choose_stack(catalog: pd.DataFrame, series: str | None, source: Source, salt: str | None = None) -> pd.DataFrame:
    if catalog.empty:  # said so that it fits a Python caller and a CLI user alike: the reason itself
        problems = catalog.attrs.get("problems", ())
        first = f"; {os.path.basename(problems[0][0])}: {problems[0][1]}" if problems else ""
        more = ", the first" if len(problems) > 1 else ""
        raise NoSeriesError(
            f"no DICOM image found in {_describe(source)} ({len(problems)} file(s) skipped{more}{first})"
        )
    if series is not None:
        chosen = _matching_stacks(catalog, series, salt)
        if chosen.empty:
            raise NoSeriesError(
                f"series {series!r} not found in {_describe(source)}; available: "
                + ", ".join(sorted(catalog["stack_key"].unique()))
            )
        if chosen["stack_key"].nunique() > 1:
            catalog = chosen
        else:
            return chosen
    if catalog["stack_key"].nunique() > 1:
        table = series_table(catalog)
        lines = [
            f"  {r.stack_key}  '{r.series_description}'  {r.modality} {r.orientation}  {r.n_slices} slice(s)"
            for r in table.itertuples()
        ]
        raise MultipleSeriesError(
            f"{_describe(source)} holds {len(table)} series/stacks; choose one with "
            "open_series(..., series='<stack key or series UID, or the start of one>'):\n" + "\n".join(lines)
        )
    return catalog


def _check_stack(rows: pd.DataFrame, geometry: StackGeometry) -> None:
    """Raise on what makes a stack unopenable (`geometry`: :func:`ctframe.geometry.stack_geometry` of `rows`)."""
    key = rows["stack_key"].iloc[0]
    # slices that disagree on size, pixel spacing or orientation share no voxel grid: never one slice's value
    for flag, what in (
        ("inconsistent_shape", "size"),
        ("inconsistent_pixel_spacing", "pixel spacing"),
        ("inconsistent_orientation", "orientation"),
    ):
        if flag in geometry.problems:
            raise InconsistentSeriesError(
                f"series {key}: {geometry.problems[flag]}, e.g. {rows['path'].iloc[geometry.culprits[flag]]}; "
                f"open the files of one {what} by passing their catalog rows"
            )
    if (rows["samples_per_pixel"] != 1).any():
        bad = rows.loc[rows["samples_per_pixel"] != 1, "path"].iloc[0]
        raise UnsupportedDicomError(f"{bad}: colour image (SamplesPerPixel != 1) in series {key}; not a CT volume")
    odd_bits = ~rows["bits_allocated"].isin([1, 8, 16, 32])
    if odd_bits.any():
        bad_row = rows[odd_bits].iloc[0]
        raise UnsupportedDicomError(
            f"{bad_row['path']}: BitsAllocated {bad_row['bits_allocated']} in series {key} is not 1, 8, 16 or 32; "
            "the header is corrupt or the image is not a CT volume"
        )
    for column, tag in (
        ("pixel_spacing_row_mm", "PixelSpacing"),
        ("row_dir_x", "ImageOrientationPatient"),
        ("position_x_mm", "ImagePositionPatient"),
    ):
        missing = rows[column].isna()
        if missing.any() and (len(rows) > 1 or column == "pixel_spacing_row_mm"):
            raise InconsistentSeriesError(
                f"{rows.loc[missing, 'path'].iloc[0]}: {tag} is missing or malformed (series {key}); "
                "slices cannot be placed in space. Fix the header or exclude the file"
            )
    positions = rows["slice_position_mm"].to_numpy(float)
    tol = get_config()["qc"]["duplicate_tolerance_mm"]
    if len(positions) > 1:
        dup = np.flatnonzero(np.diff(positions) < tol)
        if dup.size:
            i = int(dup[0])
            raise InconsistentSeriesError(
                f"series {key}: {rows['path'].iloc[i]} and {rows['path'].iloc[i + 1]} share slice position "
                f"{positions[i]:.3f} mm ({dup.size} duplicate(s)); pass the catalog rows of one acquisition"
            )


def _qc_notes(geometry: StackGeometry, calibration: HUCalibration) -> list[str]:
    """The QC flags of one stack worth a warning, in words (the flags :func:`ctframe.series_table` sets)."""
    flags = {
        "has_gaps": geometry.has_gaps,
        "irregular_spacing": geometry.irregular_spacing,
        "is_tilted": geometry.is_tilted,
        "rescale_varies": calibration.rescale_varies,
    }
    notes = [text for flag, text in WARN_FLAGS.items() if flags[flag]]
    if geometry.n_missing_slices:
        notes.append(f"about {geometry.n_missing_slices} slice(s) missing")
    return notes


def _attr_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    return value


def volume_from_catalog(
    rows: pd.DataFrame,
    *,
    slices_per_chunk: int | None = None,
    qc_warnings: bool = True,
    access: Access | None = None,
) -> xr.DataArray:
    """Build the lazy DataArray of one stack from its catalog rows.

    Parameters
    ----------
    rows : DataFrame
        Catalog rows of exactly one stack (see :func:`ctframe.scan.assign_stacks`).
    slices_per_chunk : int, optional
        Slices per dask chunk (default ``io.slices_per_chunk``, or
        ``io.compressed_slices_per_chunk`` for a compressed stack).
    qc_warnings : bool
        Warn (QCWarning) about the stack's QC flags (gaps, irregular spacing,
        tilt...). Callers that hold the series table already, such as
        :func:`ctframe.open_cohort`, turn this off rather than compute the
        flags a second time.
    access : Access, optional
        How read tasks reach remote files (default: the catalog's
        ``attrs["access"]``, set by :func:`ctframe.scan`); it travels inside the
        tasks, hidden from their keys (see :class:`ctframe.sources.Access`).

    Returns
    -------
    DataArray (slice, row, col)
        Stored values; see :func:`open_series`.

    Notes
    -----
    **Lazy**.
    """
    access = access if access is not None else _access_of(rows)
    if "stack_key" not in rows:
        rows = assign_stacks(rows)
    if rows["stack_key"].nunique() != 1:
        raise MultipleSeriesError("volume_from_catalog needs the rows of exactly one stack")
    rows = rows.sort_values(["slice_position_mm", "path", "frame"], ignore_index=True)
    rows.attrs = {}  # the catalog's problems list: pandas would deep-copy it on every operation below
    geometry = stack_geometry(rows)
    _check_stack(rows, geometry)
    calibration = calibration_of_rows(rows)
    key = str(rows["stack_key"].iloc[0])
    notes = _qc_notes(geometry, calibration) if qc_warnings else []
    if notes:
        warnings.warn(f"series {key}: {'; '.join(notes)}", QCWarning, stacklevel=3)

    io_config = get_config()["io"]
    default = io_config["compressed_slices_per_chunk" if rows["is_compressed"].any() else "slices_per_chunk"]
    chunk = int(slices_per_chunk or default)
    if chunk < 1:
        raise ValueError(f"slices_per_chunk must be >= 1, got {chunk}")
    dtype = stored_dtype(rows["bits_allocated"], rows["pixel_representation"])
    # column by column (itertuples would build a tuple of every catalog column per slice)
    remote = bool(rows["path"].map(is_remote).any())
    text_fields = {"path", "transfer_syntax_uid"}
    converters = [str if name in text_fields else int for name in SliceRef._fields]
    refs = [
        SliceRef(*(convert(value) for convert, value in zip(converters, values, strict=True)))
        for values in zip(*(rows[name].to_numpy() for name in SliceRef._fields), strict=True)
    ]
    n, n_rows, n_cols = len(refs), refs[0].rows, refs[0].columns
    bounds = [*range(0, n, chunk), n]
    chunks = (tuple(np.diff(bounds).tolist()), (n_rows,), (n_cols,))
    name = "read-dicom-" + tokenize(
        [(r.path, r.frame, r.file_size) for r in refs], rows["file_version"].tolist(), chunks, str(dtype)
    )
    task_access = access if remote else None  # local reads need no settings (and tasks stay small)
    # the refs ride in a partial: as task arguments dask would walk every (named) tuple of them
    graph = {
        (name, i, 0, 0): (functools.partial(_read_chunk, tuple(refs[lo:hi]), dtype.str, task_access),)
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
    }
    data = da.Array(
        HighLevelGraph.from_collections(name, graph, dependencies=()),
        name,
        chunks,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    coords: dict[str, Any] = {
        "slice": (
            "slice",
            rows["slice_position_mm"].to_numpy(float),
            {"units": "mm", "long_name": "position along the slice normal"},
        ),
        "row": ("row", np.arange(n_rows) * geometry.pixel_spacing_mm[0], {"units": "mm"}),
        "col": ("col", np.arange(n_cols) * geometry.pixel_spacing_mm[1], {"units": "mm"}),
    }
    for column in SLICE_COORDS:
        coords[column] = ("slice", rows[column].to_numpy())
    return xr.DataArray(
        data,
        dims=("slice", "row", "col"),
        coords=coords,
        name="stored",
        attrs=_series_attrs(rows, geometry, calibration),
    )


def _read_chunk(refs: tuple[SliceRef, ...], dtype: str, access: Access | None = None) -> np.ndarray:
    return read_frames(refs, dtype=np.dtype(dtype), access=access)


def _series_attrs(rows: pd.DataFrame, geometry: StackGeometry, calibration: HUCalibration) -> dict[str, Any]:
    first = rows.iloc[0]
    attrs: dict[str, Any] = {
        "stack_key": first["stack_key"],
        "series_uid": first["series_uid"],
        "study_uid": first["study_uid"],
        "patient_key": first["patient_key"],
        "study_date": first["study_date"],
        "series_description": first["series_description"],
        "modality": first["modality"],
        "units": "stored value",
        # geometry from every slice (ctframe.geometry): _check_stack refused a stack whose slices disagree
        "pixel_spacing_mm": list(geometry.pixel_spacing_mm),
        "slice_spacing_mm": geometry.spacing_median_mm if len(rows) > 1 else float(first["slice_thickness_mm"]),
        "slice_thickness_mm": float(first["slice_thickness_mm"]),
        "orientation": list(geometry.orientation),
        "convolution_kernel": first["convolution_kernel"],
        "kvp": float(first["kvp"]),
        "manufacturer": first["manufacturer"],
        "manufacturer_model": first["manufacturer_model"],
        "transfer_syntax": ", ".join(sorted(rows["transfer_syntax"].unique())),
        "is_lossy": bool(rows["is_lossy"].any()),
        # every slice's header decides, not the first one's (ctframe.calibration)
        "rescale_type": calibration.rescale_type,
        "padding_value": calibration.padding_value,
        "padding_range_limit": calibration.padding_range_limit,
        "window_center": first["window_center"],
        "window_width": first["window_width"],
        "voi_lut_function": first["voi_lut_function"],
        "gantry_tilt_deg": float(first["gantry_tilt_deg"]),
    }
    for column in PHI_COLUMNS:
        if column in rows:
            attrs[column] = first[column]
    return {k: _attr_value(v) for k, v in attrs.items() if not (isinstance(v, float) and np.isnan(v)) and v != ""}


def open_series(
    source: Source,
    *,
    series: str | None = None,
    slices_per_chunk: int | None = None,
    include_phi: bool = False,
    salt: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> xr.DataArray:
    """Open one CT series (stack) as a lazy DataArray of stored values.

    Parameters
    ----------
    source : location, list of locations, DataFrame or DICOMwebClient
        A folder holding one series, a list of files, an fsspec URL
        (``s3://bucket/prefix``), a DICOMweb service root
        (``dicomweb+http://host/dicom-web?SeriesInstanceUID=...``), a persisted
        catalog (``.parquet``), or rows of the catalog from :func:`ctframe.scan`.
    series : str, optional
        Stack key or series UID (the pseudonym, or the original
        SeriesInstanceUID, which is hashed with the salt to find it) to pick
        when `source` holds several; a unique start of a key is enough
        (``series="2.25.1234"``).
    slices_per_chunk : int, optional
        Slices per dask chunk (default ``io.slices_per_chunk`` = 32; ``io.compressed_slices_per_chunk`` = 8
        for compressed series, where decoding is the cost).
    include_phi : bool
        Keep PatientID, name, birth date and other identifying values in attrs.
    salt : str, optional
        Key of the pseudonyms (patient key, UIDs, date shift); see :mod:`ctframe.privacy`.
    storage_options : dict, optional
        fsspec options of a remote `source` (credentials, endpoint); see :func:`ctframe.scan`.

    Returns
    -------
    DataArray (slice, row, col)
        Stored values (integer dtype), backed by dask with one read task per
        chunk. Coordinates: ``slice`` (position along the slice normal, mm,
        ascending), ``row`` and ``col`` (mm from the first pixel), and per slice
        ``rescale_slope``, ``rescale_intercept``, ``position_x_mm``/``_y_``/``_z_``
        (ImagePositionPatient, LPS) and ``instance_number``. attrs hold safe
        metadata only (series UID, modality, units, spacing, orientation,
        kernel, kVp, manufacturer, study date, pseudonymous patient key).
        Spacing and orientation come from every slice
        (:func:`ctframe.geometry.stack_geometry`); ``volume.ct.affine`` maps
        voxel (slice, row, col) to patient LPS mm.

    Raises
    ------
    NoSeriesError
        Nothing to open, or `series` not found.
    MultipleSeriesError
        Several stacks and no `series`; the message lists them.
    ParameterError
        `series` is the start of the keys of several series; the message lists them.
    InconsistentSeriesError
        Slices that differ in size, pixel spacing or orientation (beyond
        ``qc.pixel_spacing_tolerance`` / ``qc.orientation_tolerance``; the
        message names a file), duplicate positions, missing geometry.
    UnsupportedDicomError
        Colour or otherwise non-volumetric images.

    Warns
    -----
    QCWarning
        Gaps, irregular spacing, tilt or varying rescale.

    Notes
    -----
    **Lazy**: headers are read now, pixels when computed. Enhanced multi-frame
    CT opens from its per-frame functional groups, one slice per frame.

    Examples
    --------
    >>> import ctframe, tempfile
    >>> from ctframe.testing import write_phantom_series
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_phantom_series(folder, shape=(8, 64, 64))
    >>> volume = ctframe.open_series(folder, slices_per_chunk=4)
    >>> volume.dims, volume.data.numblocks
    (('slice', 'row', 'col'), (2, 1, 1))
    """
    catalog = catalog_for(source, salt=salt, include_phi=include_phi, storage_options=storage_options)
    access = _access_of(catalog)
    if not include_phi:
        catalog = catalog.drop(columns=[c for c in PHI_COLUMNS if c in catalog])
    rows = _choose_stack(catalog, series, source, salt)
    return volume_from_catalog(rows, slices_per_chunk=slices_per_chunk, access=access)
