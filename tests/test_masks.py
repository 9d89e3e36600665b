"""Imported masks: NIfTI, DICOM SEG and RTSTRUCT written in the test, read back onto the series' grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import xarray as xr
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from skimage import measure

import ctframe
from ctframe.errors import DicomReadError, GridMismatchError, ParameterError
from ctframe.export import to_nifti
from ctframe.masks import grid_affine, read_nifti_labels, read_rtstruct, read_seg
from ctframe.testing import PhantomTruth, raise_if_dask_computes, write_phantom_series

RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def volume(small_phantom: PhantomTruth) -> xr.DataArray:
    """The small phantom (24 x 64 x 64, 10 x 5 x 5 mm), lazily, 5 slices per chunk."""
    return ctframe.open_series(small_phantom.folder, slices_per_chunk=5)


@pytest.fixture(scope="module")
def lungs(small_phantom: PhantomTruth) -> np.ndarray:
    """The known mask: truth right lung 1, left lung 2 (int16)."""
    truth = small_phantom.labels
    assert truth is not None
    return np.where(truth <= 2, truth, 0).astype(np.int16)


def on_grid(volume: xr.DataArray, values: np.ndarray) -> xr.DataArray:
    return xr.DataArray(values, dims=volume.dims, coords=volume.coords, attrs=volume.attrs)


# --------------------------------------------------------------------------- NIfTI


def test_read_nifti_labels__round_trip_of_the_project_writer(
    volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path
) -> None:
    path = to_nifti(on_grid(volume, lungs), tmp_path / "lungs.nii.gz")
    with raise_if_dask_computes():
        labels = read_nifti_labels(path, volume, names={1: "right lung", 2: "left lung"})
    assert labels.chunks == volume.chunks and labels.dims == ("slice", "row", "col")
    np.testing.assert_array_equal(labels.values, lungs)
    assert labels.attrs["flag_meanings"] == "background right_lung left_lung"
    np.testing.assert_array_equal(labels["slice"].values, volume["slice"].values)


def test_read_nifti_labels__other_axis_orders_and_directions(
    volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path
) -> None:
    # (slice, row, col) order with its own affine, built by hand from the DICOM geometry
    affine = RAS @ grid_affine(volume)
    nib.save(nib.Nifti1Image(lungs, affine), tmp_path / "srt.nii")
    np.testing.assert_array_equal(read_nifti_labels(tmp_path / "srt.nii", volume).values, lungs)
    # the closest RAS-canonical orientation of the project's file (axes reordered and flipped)
    written = nib.load(to_nifti(on_grid(volume, lungs), tmp_path / "lungs.nii"))
    canonical = nib.as_closest_canonical(written)
    assert not np.allclose(canonical.affine, written.affine)
    nib.save(canonical, tmp_path / "canonical.nii.gz")
    np.testing.assert_array_equal(read_nifti_labels(tmp_path / "canonical.nii.gz", volume).values, lungs)
    # reversed slice axis
    flipped = nib.Nifti1Image(lungs[::-1].copy(), affine @ _flip_axis0(lungs.shape[0]))
    nib.save(flipped, tmp_path / "flipped.nii")
    np.testing.assert_array_equal(read_nifti_labels(tmp_path / "flipped.nii", volume).values, lungs)


def _flip_axis0(n: int) -> np.ndarray:
    """Affine that maps index i of a reversed axis 0 to index n - 1 - i of the original."""
    flip = np.eye(4)
    flip[0, 0] = -1.0
    flip[0, 3] = n - 1
    return flip


def test_read_nifti_labels__tilted_series(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path / "tilted", shape=(12, 48, 48), spacing_mm=(10, 6, 6), tilt_deg=12.0)
    with pytest.warns(ctframe.QCWarning, match="gantry tilt"):
        tilted = ctframe.open_series(truth.folder)
    assert truth.labels is not None
    mask = (truth.labels == 2).astype(np.int16)
    path = to_nifti(on_grid(tilted, mask), tmp_path / "left.nii.gz", allow_shear=True)  # the sheared sform
    np.testing.assert_array_equal(read_nifti_labels(path, tilted).values, mask)


def test_read_nifti_labels__grid_mismatch_errors(volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path) -> None:
    affine = RAS @ grid_affine(volume)
    coarse = affine.copy()
    coarse[:3, 1] *= 2.0
    nib.save(nib.Nifti1Image(lungs, coarse), tmp_path / "coarse.nii")
    with pytest.raises(GridMismatchError, match=r"do not lie on the grid of series .* resample the mask"):
        read_nifti_labels(tmp_path / "coarse.nii", volume)
    shifted = affine.copy()
    shifted[:3, 3] += 0.5 * affine[:3, 2]
    nib.save(nib.Nifti1Image(lungs, shifted), tmp_path / "shifted.nii")
    with pytest.raises(GridMismatchError, match=r"shifted by [+-]0\.500 voxel along 'col'"):
        read_nifti_labels(tmp_path / "shifted.nii", volume)
    longer = np.concatenate([lungs, lungs[:2]])
    nib.save(nib.Nifti1Image(longer, affine), tmp_path / "longer.nii")
    with pytest.raises(GridMismatchError, match=r"covers voxels outside series .* along 'slice'"):
        read_nifti_labels(tmp_path / "longer.nii", volume)


def test_read_nifti_labels__bad_files(volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path) -> None:
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file")
    with pytest.raises(DicomReadError, match="cannot read as NIfTI"):
        read_nifti_labels(tmp_path / "junk.nii", volume)
    nib.save(nib.Nifti1Image(lungs[0], np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(ParameterError, match="must be a 3-D image"):
        read_nifti_labels(tmp_path / "flat.nii", volume)
    fractions = lungs.astype(np.float32) * 0.5
    nib.save(nib.Nifti1Image(fractions, RAS @ grid_affine(volume)), tmp_path / "fractions.nii")
    labels = read_nifti_labels(tmp_path / "fractions.nii", volume)  # lazy: the values are checked when read
    with pytest.raises(ParameterError, match="whole numbers"):
        labels.compute()
    with pytest.raises(ParameterError, match="names must map label values"):
        read_nifti_labels(tmp_path / "srt.nii", volume, names={-1: "x"})


# --------------------------------------------------------------------------- DICOM SEG


def _write_seg(small_phantom: PhantomTruth, mask: np.ndarray, path: Path) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(p) for p in small_phantom.paths]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for number, label in ((1, "Right lung"), (2, "Left lung"))
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=90,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ctframe tests",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(path)
    return path


def test_read_seg__round_trip_with_highdicom(
    small_phantom: PhantomTruth, volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path
) -> None:
    path = _write_seg(small_phantom, lungs, tmp_path / "seg.dcm")
    stored = pydicom.dcmread(path)
    # highdicom leaves out empty frames: fewer frames than slices x segments
    assert int(stored.NumberOfFrames) < 2 * lungs.shape[0]
    with raise_if_dask_computes():
        labels = read_seg(path, volume)
    assert labels.chunks == volume.chunks
    np.testing.assert_array_equal(labels.values, lungs)
    assert labels.attrs["flag_meanings"] == "background Right_lung Left_lung"
    # region statistics of the imported mask equal those of the mask it came from
    hu = ctframe.to_hu(volume)
    imported = ctframe.region_stats(hu, labels)
    direct = ctframe.region_stats(hu, on_grid(volume, lungs), names={1: "Right_lung", 2: "Left_lung"})
    assert imported.equals(direct)


def test_read_seg__errors(small_phantom: PhantomTruth, volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path) -> None:
    path = _write_seg(small_phantom, lungs, tmp_path / "seg.dcm")
    with pytest.raises(GridMismatchError, match=r"covers voxels outside series .* along 'col'"):
        read_seg(path, volume.isel(col=slice(0, 40)))
    with pytest.raises(DicomReadError, match="cannot read as DICOM SEG"):
        read_seg(small_phantom.paths[0], volume)


# --------------------------------------------------------------------------- RTSTRUCT


def _rtstruct(volume: xr.DataArray, rois: list[tuple[str, list[tuple[int, np.ndarray, np.ndarray]]]]) -> Dataset:
    """A minimal RT Structure Set: contours given as (slice, rows, cols) in pixel units, stored in LPS mm."""
    positions = np.stack([volume[c].values for c in ("position_x_mm", "position_y_mm", "position_z_mm")], axis=1)
    orientation = np.asarray(volume.attrs["orientation"])
    d_row, d_col = volume.attrs["pixel_spacing_mm"]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "ctframe test"
    structure_set, roi_contours = [], []
    for number, (name, contours) in enumerate(rois, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ROIName = name
        structure_set.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        sequence = []
        for k, rows, cols in contours:
            points = (
                positions[k]
                + np.outer(np.asarray(cols, float) * d_col, orientation[:3])
                + np.outer(np.asarray(rows, float) * d_row, orientation[3:])
            )
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
            sequence.append(contour)
        item.ContourSequence = DicomSequence(sequence)
        roi_contours.append(item)
    ds.StructureSetROISequence = DicomSequence(structure_set)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_read_rtstruct__rectangles_and_a_hole_on_known_pixels(volume: xr.DataArray, tmp_path: Path) -> None:
    # vertices half a pixel outside whole pixels: rows 10..20 x cols 30..45 inclusive, minus a 3 x 3 hole
    outer = (np.array([9.5, 9.5, 20.5, 20.5]), np.array([29.5, 45.5, 45.5, 29.5]))
    hole = (np.array([13.5, 13.5, 16.5, 16.5]), np.array([34.5, 37.5, 37.5, 34.5]))
    triangle = (np.array([40.2, 40.2, 50.7]), np.array([5.3, 20.6, 5.3]))
    path = _save(
        _rtstruct(volume, [("Box", [(4, *outer), (4, *hole), (5, *outer)]), ("Tri", [(11, *triangle)])]),
        tmp_path / "rs.dcm",
    )
    with raise_if_dask_computes():
        labels = read_rtstruct(path, volume)
    expected = np.zeros(volume.shape, np.uint8)
    expected[4:6, 10:21, 30:46] = 1
    expected[4, 14:17, 35:38] = 0
    rr, cc = np.mgrid[0:64, 0:64]  # pixel centres inside the triangle (independent of skimage)
    expected[11][(cc >= 5.3) & (rr <= 40.2 + (50.7 - 40.2) * (20.6 - cc) / (20.6 - 5.3)) & (rr >= 40.2)] = 2
    np.testing.assert_array_equal(labels.values, expected)
    assert labels.attrs["flag_meanings"] == "background Box Tri"
    # select and order ROIs
    only_tri = read_rtstruct(path, volume, rois=["Tri"])
    np.testing.assert_array_equal(only_tri.values, (expected == 2).astype(np.uint8))


def test_read_rtstruct__round_trip_of_lung_outlines(volume: xr.DataArray, lungs: np.ndarray, tmp_path: Path) -> None:
    rois = []
    for value, name in ((1, "Lung_R"), (2, "Lung_L")):
        contours = []
        for k in range(lungs.shape[0]):
            padded = np.pad(lungs[k] == value, 1).astype(float)
            # pixel-edge outlines with sub-pixel vertices (marching squares)
            contours.extend((k, line[:, 0] - 1.0, line[:, 1] - 1.0) for line in measure.find_contours(padded, 0.5))
        rois.append((name, contours))
    path = _save(_rtstruct(volume, rois), tmp_path / "lungs_rs.dcm")
    np.testing.assert_array_equal(read_rtstruct(path, volume).values, lungs)


def test_read_rtstruct__errors(volume: xr.DataArray, small_phantom: PhantomTruth, tmp_path: Path) -> None:
    box = (np.array([9.5, 9.5, 20.5, 20.5]), np.array([29.5, 45.5, 45.5, 29.5]))
    ds = _rtstruct(volume, [("Box", [(4, *box)])])
    path = _save(ds, tmp_path / "rs.dcm")
    with pytest.raises(ParameterError, match=r"ROI\(s\) \['Heart'\] not found; present: Box"):
        read_rtstruct(path, volume, rois=["Heart"])
    # move the contour a third of the way to the next slice: drawn on another series
    spacing = float(np.median(np.diff(volume["slice"].values)))
    points = np.asarray(ds.ROIContourSequence[0].ContourSequence[0].ContourData, float).reshape(-1, 3)
    points[:, 2] += spacing / 3
    ds.ROIContourSequence[0].ContourSequence[0].ContourData = [f"{v:.4f}" for v in points.ravel()]
    between = _save(ds, tmp_path / "between.dcm")
    with pytest.raises(GridMismatchError, match="from the nearest slice of series"):
        read_rtstruct(between, volume)
    with pytest.raises(DicomReadError, match="not an RT Structure Set"):
        read_rtstruct(small_phantom.paths[0], volume)
    with pytest.raises(ParameterError, match="no DICOM geometry"):
        read_rtstruct(path, volume.drop_vars("position_x_mm"))


# --------------------------------------------------------------------------- real series, cropped grids


def test_read_rtstruct__real_contours_on_a_cropped_volume(shared_data: Path, tmp_path: Path) -> None:
    """NSCLC-Radiomics' clinical RTSTRUCT: the lungs on a cropped grid are the crop of the lungs on the full one."""
    base = shared_data / "nsclc-radiomics-lung1-003"
    ct = ctframe.open_series(base / "ct")
    full = read_rtstruct(base / "rtstruct" / "1-1.dcm", ct, rois=["Lung-Left"]).values
    assert (full == 1).sum() > 100_000
    # the clinical reference (a NIfTI rasterised elsewhere from the same contours, left lung = 2) agrees
    reference = read_nifti_labels(base / "reference" / "lungs.nii.gz", ct).values
    assert ((full == 1) == (reference == 2)).mean() > 0.998
    # in-plane only (a contour beyond the slices of `like` is drawn on another series, by design)
    part = read_rtstruct(
        base / "rtstruct" / "1-1.dcm", ct.isel(row=slice(120, 400), col=slice(60, 460)), rois=["Lung-Left"]
    )
    # equal but for pixel centres that lie on a contour edge to float precision (a handful of 12 million
    # voxels); a grid off by one pixel would differ in tens of thousands
    assert (part.values != full[:, 120:400, 60:460]).sum() <= 20
    # written on a cropped grid and read back onto the full one: placed at the crop's offset
    crop = {"slice": slice(20, 90), "row": slice(120, 400), "col": slice(60, 460)}
    cropped = ct.isel(crop)
    part = full[crop["slice"], crop["row"], crop["col"]]
    path = to_nifti(on_grid(cropped, part.astype(np.int16)), tmp_path / "part.nii.gz")
    back = read_nifti_labels(path, ct).values
    np.testing.assert_array_equal(back[crop["slice"], crop["row"], crop["col"]], part)
    assert back.sum() == part.sum()
