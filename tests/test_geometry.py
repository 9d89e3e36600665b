"""Geometry in one place: orientation groups, per-stack checks from every slice, the affine.

Real slices (LIDC-IDRI-0001) rewritten with pydicom give the mixed-geometry
cases; the affine is checked against SimpleITK's series reader and against the
ImagePositionPatient that pydicom reads from the first and last files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import xarray as xr
from _lidc_variants import LIDC_SLICES, write_variant

import ctframe
from ctframe.cohort import open_cohort
from ctframe.config import config_context, load_config
from ctframe.errors import ConfigError, ParameterError, QCWarning
from ctframe.export import to_nifti
from ctframe.geometry import (
    LPS_TO_RAS,
    affine,
    nifti_affine,
    orientation_groups,
    pixel_spacing,
    stack_geometry,
    voxel_spacing,
)

sitk = pytest.importorskip("SimpleITK")

#: Real series whose affine is compared with SimpleITK's (folder under ../shared/data, tilt in degrees).
SERIES = {
    "lidc": ("lidc-idri-0001", 0.0),
    "notilt": ("dcm_qa_ct/Philips_S2010_brain5mm_notilt", 0.0),
    "tilt": ("dcm_qa_ct/Philips_S21610_S2010_tilt-18.5", 18.5),
    "nsclc": ("nsclc-radiomics-lung1-003/ct", 0.0),
    "lung-pet-ct-dx": ("lung-pet-ct-dx-a0001/ct", 0.0),
}


def _open(folder: Path) -> xr.DataArray:
    with warnings.catch_warnings():  # the tilted series warns (QCWarning); not what these tests are about
        warnings.simplefilter("ignore", QCWarning)
        warnings.simplefilter("ignore", ctframe.ScanWarning)  # PROVENANCE.md beside the files
        return ctframe.open_series(folder)


def _sitk_image(folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _ipp_in_order(folder: Path) -> np.ndarray:
    """ImagePositionPatient of every file, read by pydicom, ordered along the normal of its own IOP."""
    positions = []
    for path in sorted(folder.glob("*")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:
            continue
        iop = np.asarray(ds.ImageOrientationPatient, float)
        ipp = np.asarray(ds.ImagePositionPatient, float)
        positions.append((float(ipp @ np.cross(iop[:3], iop[3:])), ipp))
    positions.sort(key=lambda item: item[0])
    return np.array([ipp for _, ipp in positions])


# --------------------------------------------------------------------------- orientation groups


def test_orientation_groups__tolerance_not_rounding() -> None:
    # 0.99949999 and 0.9995001 round to 0.999 and 1.000 (the old grouping split them); they differ by 2e-8
    straddle = [[0.99949999, 0.0316, 0, 0, 1, 0], [0.9995001, 0.0316, 0, 0, 1, 0]]
    assert len({f"{row[0]:.3f}" for row in straddle}) == 2
    labels, refs = orientation_groups(straddle, tolerance=1e-4)
    assert labels.tolist() == [0, 0] and len(refs) == 1
    # beyond the tolerance: two groups, and the larger one is group 0
    labels, refs = orientation_groups([[1, 0, 0, 0, 1, 0]] + [[1, 0, 0, 0, 0.9962, -0.0872]] * 2, tolerance=1e-4)
    assert labels.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(refs[0], [1, 0, 0, 0, 0.9962, -0.0872])


def test_orientation_groups__no_chaining_and_a_group_without_orientation() -> None:
    # each step 0.6e-4 is within 1e-4 of its neighbour, the ends are 1.2e-4 apart: measured from the
    # group's reference, not from any member, a drift cannot chain into one group
    drift = [[1, 0, 0, 0, 1, 0], [1, 0.6e-4, 0, 0, 1, 0], [1, 1.2e-4, 0, 0, 1, 0], [np.nan] * 6]
    labels, refs = orientation_groups(drift, tolerance=1e-4)
    assert labels[0] == labels[1] != labels[2]
    assert labels[3] == len(refs) - 1 and np.isnan(refs[-1]).all()
    # tolerance 0: exact equality
    assert len(orientation_groups(drift[:3], tolerance=0.0)[1]) == 3
    assert orientation_groups(np.empty((0, 6)))[0].size == 0


def test_config__geometry_tolerances_are_validated() -> None:
    cfg = load_config()
    assert cfg["qc"]["orientation_tolerance"] == 1e-4 and cfg["qc"]["pixel_spacing_tolerance"] == 1e-4
    with pytest.raises(ConfigError, match=r"qc.orientation_tolerance.*\[0.0, 0.1\]"):
        load_config(overrides={"qc": {"orientation_tolerance": 0.5}})
    with pytest.raises(ConfigError, match=r"qc.pixel_spacing_tolerance"):
        load_config(overrides={"qc": {"pixel_spacing_tolerance": -1.0}})


# --------------------------------------------------------------------------- per-stack checks on real slices


def test_stack_geometry__lidc_every_slice_agrees(lidc_dir: Path, tmp_path: Path) -> None:
    write_variant(lidc_dir, tmp_path)
    geometry = stack_geometry(ctframe.scan(tmp_path))
    reference = pydicom.dcmread(lidc_dir / LIDC_SLICES[0], stop_before_pixels=True)
    assert geometry.pixel_spacing_mm == tuple(float(v) for v in reference.PixelSpacing)
    assert geometry.orientation == tuple(float(v) for v in reference.ImageOrientationPatient)
    assert (geometry.rows, geometry.columns) == (reference.Rows, reference.Columns)
    assert geometry.spacing_median_mm == pytest.approx(2.5) and geometry.orientation_label == "AXIAL"
    assert not geometry.problems


def test_stack_geometry__mixed_pixel_spacing_is_flagged_never_one_value(lidc_dir: Path, tmp_path: Path) -> None:
    def edit(k: int, ds: pydicom.Dataset) -> None:
        if k % 5 in (1, 3):  # 8 of 20 slices, spread through the stack
            ds.PixelSpacing = [0.8, 0.8]

    write_variant(lidc_dir, tmp_path, edit)
    table = ctframe.series_table(ctframe.scan(tmp_path))
    assert len(table) == 1  # flagged, not split
    row = table.iloc[0]
    assert row["inconsistent_pixel_spacing"] and not row["usable"]
    assert np.isnan(row["pixel_spacing_row_mm"]) and np.isnan(row["pixel_spacing_col_mm"])
    assert "0.703125x0.703125 mm on 12 slices, 0.8x0.8 mm on 8 slices" in row["qc_notes"]


@pytest.mark.parametrize(
    ("written", "flagged"),
    [("0.70312501", False), ("0.70313", False), ("0.7032", True), ("0.7035", True)],
)
def test_stack_geometry__pixel_spacing_tolerance(lidc_dir: Path, tmp_path: Path, written: str, flagged: bool) -> None:
    # relative tolerance 1e-4: 0.70313 differs from 0.703125 by 7e-6, 0.7032 by 1.1e-4
    write_variant(lidc_dir, tmp_path, lambda k, ds: k == 7 and setattr(ds, "PixelSpacing", [written, written]))
    geometry = stack_geometry(ctframe.scan(tmp_path))
    assert ("inconsistent_pixel_spacing" in geometry.problems) is flagged
    if not flagged:
        assert geometry.pixel_spacing_mm[0] == pytest.approx(0.703125, rel=1e-4)


def test_stack_geometry__a_slice_of_another_size_is_flagged(lidc_dir: Path, tmp_path: Path) -> None:
    def edit(k: int, ds: pydicom.Dataset) -> None:
        if k == 11:
            ds.PixelData = ds.pixel_array[:256, :384].copy().tobytes()
            ds.Rows, ds.Columns = 256, 384

    paths = write_variant(lidc_dir, tmp_path, edit)
    catalog = ctframe.scan(tmp_path)
    geometry = stack_geometry(catalog)
    assert geometry.rows is None and geometry.columns is None
    assert catalog["path"].iloc[geometry.culprits["inconsistent_shape"]] == str(paths[11])
    row = ctframe.series_table(catalog).iloc[0]
    assert row["inconsistent_shape"] and not row["usable"] and pd.isna(row["rows"]) and pd.isna(row["columns"])
    assert "512x512 on 19 slices, 256x384 on 1 slice" in row["qc_notes"]


def test_stack_geometry__orientation_within_a_stack_is_checked(lidc_dir: Path, tmp_path: Path) -> None:
    # a stack key given by the caller (catalog rows passed through) can hold two orientations
    from _lidc_variants import rotation, set_orientation

    def edit(k: int, ds: pydicom.Dataset) -> None:
        if k < 3:
            tilt = rotation("x", 5.0)
            set_orientation(ds, tilt @ [1.0, 0, 0], tilt @ [0, 1.0, 0])

    write_variant(lidc_dir, tmp_path, edit)
    catalog = ctframe.scan(tmp_path)
    assert catalog["stack_key"].nunique() == 2  # scan splits the series
    catalog["stack_key"] = "one-stack"  # a caller that forces them together
    row = ctframe.series_table(catalog).iloc[0]
    assert row["inconsistent_orientation"] and not row["usable"]
    assert "3 of 20 slice(s) beyond the tolerance" in row["qc_notes"]


# --------------------------------------------------------------------------- the affine


@pytest.fixture(scope="module", params=sorted(SERIES))
def real_series(request: pytest.FixtureRequest, shared_data: Path) -> tuple[str, Path, xr.DataArray, float]:
    folder, tilt = SERIES[request.param]
    return request.param, shared_data / folder, _open(shared_data / folder), tilt


def test_affine__equals_simpleitk_series_reader(real_series) -> None:
    _, folder, volume, tilt = real_series
    image = _sitk_image(folder)
    grid = volume.ct.affine
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())  # (col, row, slice)
    assert image.GetSize() == (volume.sizes["col"], volume.sizes["row"], volume.sizes["slice"])
    np.testing.assert_allclose(grid[:3, 3], image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(grid[:3, 2], direction[:, 0] * spacing[0], atol=1e-6)  # along a row: col index
    np.testing.assert_allclose(grid[:3, 1], direction[:, 1] * spacing[1], atol=1e-6)  # down a column: row index
    # SimpleITK keeps an orthogonal grid (the normal) with the first-to-last distance as its spacing;
    # the affine keeps the true step, which leans by the gantry tilt
    assert np.linalg.norm(grid[:3, 0]) == pytest.approx(spacing[2], abs=1e-6)
    cos = grid[:3, 0] @ direction[:, 2] / np.linalg.norm(grid[:3, 0])
    assert np.degrees(np.arccos(min(cos, 1.0))) == pytest.approx(tilt, abs=0.05)
    if tilt == 0:
        np.testing.assert_allclose(grid[:3, 0], direction[:, 2] * spacing[2], atol=1e-6)


def test_affine__maps_first_and_last_voxel_to_the_files_positions(real_series) -> None:
    name, folder, volume, _ = real_series
    ipp = _ipp_in_order(folder)
    n = volume.sizes["slice"]
    assert len(ipp) == n
    grid = volume.ct.affine
    np.testing.assert_allclose(grid @ [0, 0, 0, 1], [*ipp[0], 1], atol=1e-6)
    np.testing.assert_allclose(grid @ [n - 1, 0, 0, 1], [*ipp[-1], 1], atol=1e-6)
    # a voxel inside: slice k, row i, col j from the file's own IOP and PixelSpacing
    ds = pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.suffix not in {".md", ".xml"}))
    iop, (d_row, d_col) = np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.PixelSpacing, float)
    k, i, j = n // 2, 100, 300
    expected = ipp[k] + i * d_row * iop[3:] + j * d_col * iop[:3]
    tol = 1e-6 if name != "tilt" else 1e-3  # the tilted series' slice positions are written to 3 decimals
    np.testing.assert_allclose((grid @ [k, i, j, 1])[:3], expected, atol=tol)


def test_nifti_affine__equals_simpleitk_nifti(real_series, tmp_path: Path) -> None:
    _, folder, volume, tilt = real_series
    ras = nifti_affine(volume)
    np.testing.assert_array_equal(ras, LPS_TO_RAS @ volume.ct.affine[:, [2, 1, 0, 3]])
    if tilt:
        return  # SimpleITK's NIfTI is orthogonal; the sheared affine has no counterpart there
    sitk.WriteImage(_sitk_image(folder), str(tmp_path / "sitk.nii"))
    np.testing.assert_allclose(ras, nib.load(tmp_path / "sitk.nii").affine, atol=1e-4)


def test_to_nifti__writes_the_geometry_affine(shared_data: Path, tmp_path: Path) -> None:
    volume = _open(shared_data / SERIES["tilt"][0]).isel(slice=slice(3, 9), row=slice(200, 260), col=slice(10, 90))
    image = nib.load(to_nifti(volume, tmp_path / "crop.nii", allow_shear=True))  # tilted: the sheared sform
    np.testing.assert_allclose(image.affine, nifti_affine(volume), atol=1e-5)  # float32 in the header
    data = np.asarray(image.dataobj)
    # file voxel (j, i, k) is volume voxel (k, i, j), and both sit at the same point of the patient
    np.testing.assert_array_equal(data[5, 7, 2], volume.values[2, 7, 5])
    lps = volume.ct.affine @ [2, 7, 5, 1]
    np.testing.assert_allclose(LPS_TO_RAS @ lps, image.affine @ [5, 7, 2, 1], atol=1e-3)


def test_affine__follows_isel(lidc_dir: Path) -> None:
    volume = _open(lidc_dir)
    full = volume.ct.affine
    part = volume.isel(slice=slice(10, 100, 3), row=slice(40, 300, 2), col=slice(500, 20, -1))
    index = np.array([[3.0, 0, 0, 10], [0, 2, 0, 40], [0, 0, -1, 500], [0, 0, 0, 1]])
    np.testing.assert_allclose(part.ct.affine, full @ index, atol=1e-9)
    # and the same from pydicom: part voxel (0, 0, 0) is slice 10, row 40, col 500 of the stack
    ipp = _ipp_in_order(lidc_dir)
    np.testing.assert_allclose(part.ct.affine[:3, 3], ipp[10] + [500 * 0.703125, 40 * 0.703125, 0], atol=1e-6)
    # HU conversion keeps the coordinates, so the affine
    np.testing.assert_array_equal(ctframe.to_hu(part).ct.affine, part.ct.affine)
    # one slice: a step along the normal by the stack's slice spacing
    one = volume.isel(slice=[5])
    np.testing.assert_allclose(one.ct.affine[:3, 0], [0, 0, 2.5])
    np.testing.assert_allclose(one.ct.affine[:3, 3], ipp[5])


def test_affine__errors(lidc_dir: Path) -> None:
    volume = _open(lidc_dir)
    with pytest.raises(ParameterError, match="'row' coordinate is not evenly spaced"):
        _ = volume.isel(row=[0, 1, 5]).ct.affine
    with pytest.raises(ParameterError, match=r"dims \(slice, row, col\)"):
        affine(volume.transpose("row", "slice", "col"))
    with pytest.raises(ParameterError, match=r"no DICOM geometry.*'orientation'"):
        affine(volume.assign_attrs(orientation=None))
    with pytest.raises(ParameterError, match=r"no DICOM geometry.*position_x_mm"):
        affine(volume.drop_vars("position_x_mm"))
    # one slice of unknown thickness: every voxel still lands on its position; the step (1 mm) places none
    bare = volume.isel(slice=[0]).assign_attrs(slice_spacing_mm=None, slice_thickness_mm=None)
    np.testing.assert_array_equal(affine(bare)[:, 1:], volume.ct.affine[:, 1:])
    np.testing.assert_array_equal(affine(bare)[:3, 0], [0, 0, 1.0])
    with pytest.raises(ParameterError, match="spacing along 'slice' is unknown"):
        voxel_spacing(bare)


def test_affine__every_cohort_volume(shared_data: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.CTFrameWarning)
        cohort = open_cohort(shared_data / "dcm_qa_ct", selection={"orientations": ["AXIAL", "OBLIQUE"]})
    assert len(cohort.volumes) == 2
    for volume in cohort.volumes.values():
        grid = volume.ct.affine
        first = [float(volume[c][0]) for c in ("position_x_mm", "position_y_mm", "position_z_mm")]
        np.testing.assert_allclose(grid[:3, 3], first)
        assert np.linalg.det(grid[:3, :3]) != 0


# --------------------------------------------------------------------------- spacing for sizes in mm


def test_voxel_spacing__lidc_and_errors(lidc_dir: Path) -> None:
    volume = _open(lidc_dir)
    assert voxel_spacing(volume) == pytest.approx((2.5, 0.703125, 0.703125))
    assert voxel_spacing(volume.isel(row=slice(None, None, 4))) == pytest.approx((2.5, 2.8125, 0.703125))
    assert pixel_spacing(volume.isel(slice=0)) == pytest.approx((0.703125, 0.703125))
    bare = xr.DataArray(np.zeros((1, 2, 2)), dims=("slice", "row", "col"), attrs={"stack_key": "s"})
    with pytest.raises(ParameterError, match="series s: the spacing along 'slice' is unknown or zero"):
        voxel_spacing(bare)
    with pytest.raises(ParameterError, match="along 'row' is unknown"):
        pixel_spacing(bare)


def test_stack_geometry__tilted_series_from_every_slice(shared_data: Path) -> None:
    with config_context(qc={"orientation_tolerance": 0.0}):  # the real series needs no tolerance at all
        catalog = ctframe.scan(shared_data / SERIES["tilt"][0])
    geometry = stack_geometry(catalog)
    assert geometry.tilt_angle_deg == pytest.approx(18.5, abs=0.1)
    assert geometry.orientation_label == "AXIAL" and not geometry.problems
