"""open_series: lazy volumes in position order, checked against pydicom and SimpleITK."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

import ctframe
from ctframe.cohort import open_cohort
from ctframe.errors import (
    DicomReadError,
    InconsistentSeriesError,
    MultipleSeriesError,
    NoSeriesError,
    QCWarning,
    ScanWarning,
    UnsupportedDicomError,
)
from ctframe.privacy import pseudonymous_uid
from ctframe.testing import raise_if_dask_computes, write_phantom_series


@pytest.fixture(scope="module")
def lidc(lidc_dir: Path):
    return ctframe.open_series(lidc_dir)


def test_open_series__lidc_dims_coords_attrs(lidc) -> None:
    assert lidc.dims == ("slice", "row", "col")
    assert lidc.shape == (133, 512, 512)
    assert lidc.dtype == np.int16
    assert np.all(np.diff(lidc["slice"].values) == pytest.approx(2.5))
    assert lidc["slice"].values[0] == pytest.approx(-340.0)
    assert lidc["row"].values[1] == pytest.approx(0.703125)
    assert lidc["col"].values[-1] == pytest.approx(511 * 0.703125)
    assert (lidc["rescale_intercept"].values == -1024).all()
    attrs = lidc.attrs
    assert attrs["modality"] == "CT" and attrs["kvp"] == 120.0
    assert attrs["pixel_spacing_mm"] == [0.703125, 0.703125]
    assert attrs["slice_spacing_mm"] == pytest.approx(2.5)
    assert attrs["convolution_kernel"] == "STANDARD"
    assert attrs["manufacturer"] == "GE MEDICAL SYSTEMS"
    shift = dt.date(2000, 1, 1) - dt.datetime.strptime(attrs["study_date"], "%Y%m%d").date()  # stored 20000101
    assert 365 <= shift.days <= 3650  # de-identified: moved back by the patient's offset (ctframe.privacy)
    assert attrs["series_uid"].startswith("2.25.") and "6279" not in attrs["series_uid"]  # a pseudonymous UID
    assert "LIDC-IDRI-0001" not in str(attrs)  # PatientID never in attrs by default


def test_open_series__lidc_equals_pydicom_slice_by_slice(lidc, lidc_dir: Path) -> None:
    hu = ctframe.to_hu(lidc)
    stored = lidc.values
    hu_values = hu.values
    by_z = {}
    for path in lidc_dir.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        by_z[float(ds.ImagePositionPatient[2])] = ds
    assert len(by_z) == 133
    for k, z in enumerate(lidc["position_z_mm"].values):
        ds = by_z[float(z)]
        np.testing.assert_array_equal(stored[k], ds.pixel_array)
        reference = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        valid = ~np.isnan(hu_values[k])
        np.testing.assert_array_equal(hu_values[k][valid], reference[valid])
        # what became NaN is exactly the outside-the-circle fill (-2048 HU here)
        assert (reference[~valid] < -1500).all()


def test_open_series__lidc_equals_simpleitk(lidc, lidc_dir: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(lidc_dir)))
    image = reader.Execute()
    first = lidc.isel(slice=0)
    origin = (float(first["position_x_mm"]), float(first["position_y_mm"]), float(first["position_z_mm"]))
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-6)
    spacing = (
        float(lidc["col"][1] - lidc["col"][0]),
        float(lidc["row"][1] - lidc["row"][0]),
        float(lidc["slice"][1] - lidc["slice"][0]),
    )
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-6)
    row_dir, col_dir = np.array(lidc.attrs["orientation"][:3]), np.array(lidc.attrs["orientation"][3:])
    direction = np.column_stack([row_dir, col_dir, np.cross(row_dir, col_dir)])
    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3), direction, atol=1e-6)
    # SimpleITK applies the rescale (HU as int32) and keeps the fill; compare all voxels
    sitk_hu = sitk.GetArrayFromImage(image)
    ours = lidc.values.astype(np.int32) + (lidc["rescale_intercept"].values.astype(np.int32)[:, None, None])
    np.testing.assert_array_equal(sitk_hu, ours)


@pytest.mark.parametrize("slices_per_chunk", [1, 7, 32, 200])
def test_open_series__chunk_sizes_agree(small_phantom, slices_per_chunk: int) -> None:
    with raise_if_dask_computes():
        volume = ctframe.open_series(small_phantom.folder, slices_per_chunk=slices_per_chunk)
        hu = volume.ct.to_hu()
    n = small_phantom.shape[0]
    assert volume.data.chunks[0] == tuple(min(slices_per_chunk, n - i) for i in range(0, n, slices_per_chunk))
    np.testing.assert_array_equal(hu.values, small_phantom.hu)


def test_open_series__one_task_per_chunk(small_phantom) -> None:
    volume = ctframe.open_series(small_phantom.folder, slices_per_chunk=5)
    graph = dict(volume.data.__dask_graph__())
    assert len(graph) == volume.data.numblocks[0] == 5


def test_open_series__deterministic_graph_names(small_phantom) -> None:
    a = ctframe.open_series(small_phantom.folder)
    b = ctframe.open_series(small_phantom.folder)
    assert a.data.name == b.data.name


def test_open_series__list_of_files_and_catalog_rows(small_phantom) -> None:
    from_files = ctframe.open_series([str(p) for p in reversed(small_phantom.paths)])
    from_rows = ctframe.open_series(ctframe.scan(small_phantom.folder))
    np.testing.assert_array_equal(from_files["slice"].values, from_rows["slice"].values)
    assert from_files.data.name == from_rows.data.name


def test_open_series__several_series_lists_them(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "a", shape=(4, 32, 32), spacing_mm=(3.0, 8.0, 8.0), series_description="FIRST")
    truth = write_phantom_series(
        tmp_path / "b", shape=(5, 32, 32), spacing_mm=(3.0, 8.0, 8.0), series_description="SECOND", seed=3
    )
    with pytest.raises(MultipleSeriesError, match=r"(?s)holds 2 series.*series=.*'FIRST'.*4 slice"):
        ctframe.open_series(tmp_path)
    chosen = ctframe.open_series(tmp_path, series=truth.series_uid)
    assert chosen.sizes["slice"] == 5
    with pytest.raises(NoSeriesError, match="not found"):
        ctframe.open_series(tmp_path, series="1.2.3.4")


def test_open_series__empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(NoSeriesError, match="no DICOM image found"):
        ctframe.open_series(tmp_path)
    with pytest.raises(NoSeriesError, match="no such file or folder"):
        ctframe.open_series(tmp_path / "missing")


def test_open_series__duplicates_raise_and_gaps_warn(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "dup", shape=(6, 32, 32), spacing_mm=(3.0, 8.0, 8.0), duplicate_slices=[2])
    with pytest.raises(InconsistentSeriesError, match="share slice position"):
        ctframe.open_series(tmp_path / "dup")
    write_phantom_series(tmp_path / "gap", shape=(6, 32, 32), spacing_mm=(3.0, 8.0, 8.0), drop_slices=[3])
    with pytest.warns(QCWarning, match="gaps"):
        volume = ctframe.open_series(tmp_path / "gap")
    assert volume.sizes["slice"] == 5
    assert np.diff(volume["slice"].values).max() == pytest.approx(6.0)


def test_open_cohort__gapped_stack_opens_without_a_second_qc_pass(tmp_path: Path) -> None:
    # open_cohort keeps the gap flag in its series table and asks volume_from_catalog for no QC warning
    write_phantom_series(tmp_path / "gap", shape=(6, 32, 32), spacing_mm=(3.0, 8.0, 8.0), drop_slices=[3])
    catalog = ctframe.scan(tmp_path / "gap")
    with warnings.catch_warnings():
        warnings.simplefilter("error", QCWarning)
        cohort = open_cohort(catalog)
        quiet = ctframe.io.volume_from_catalog(catalog, qc_warnings=False)
    assert cohort.series["has_gaps"].all()
    with pytest.warns(QCWarning, match="gaps"):
        loud = ctframe.io.volume_from_catalog(catalog)
    assert quiet.sizes == loud.sizes == next(iter(cohort.volumes.values())).sizes


def test_open_series__inconsistent_sizes_raise(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(4, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    ds = pydicom.dcmread(truth.paths[2])
    ds.Rows, ds.Columns = 16, 64
    ds.save_as(truth.paths[2])
    with pytest.raises(InconsistentSeriesError, match=r"slices differ in size.*16x64"):
        ctframe.open_series(tmp_path)


def test_open_series__missing_position_names_the_file(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(4, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    ds = pydicom.dcmread(truth.paths[1])
    del ds.ImagePositionPatient
    ds.save_as(truth.paths[1])
    with pytest.raises(InconsistentSeriesError, match=rf"{truth.paths[1].name}: ImagePositionPatient is missing"):
        ctframe.open_series(tmp_path)


def test_open_series__file_changed_after_scan_is_a_clear_error(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(4, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    volume = ctframe.open_series(tmp_path)
    truth.paths[0].write_bytes(truth.paths[0].read_bytes()[:-100])
    with pytest.raises(DicomReadError, match="changed since it was scanned"):
        volume.compute()


def test_open_series__colour_image_is_unsupported(edge_cases: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        with pytest.raises(UnsupportedDicomError, match="colour image"):
            ctframe.open_series(edge_cases / "pydicom-3.0.2" / "SC_rgb_small_odd.dcm")


def test_open_series__enhanced_ct_from_functional_groups(edge_cases: Path) -> None:
    path = edge_cases / "pydicom-data-1.0.0" / "eCT_Supplemental.dcm"
    volume = ctframe.open_series(path)
    assert volume.shape == (2, 512, 512)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    z_of_frame = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence
    ]
    values = volume.values
    for k, z in enumerate(volume["position_z_mm"].values):
        np.testing.assert_array_equal(values[k], frames[z_of_frame.index(z)])
    assert volume["rescale_intercept"].values.tolist() == [-1024.0, -1024.0]


def test_open_series__include_phi_keeps_identifiers(small_phantom) -> None:
    safe = ctframe.open_series(small_phantom.folder)
    assert "patient_id" not in safe.attrs and small_phantom.patient_id not in str(safe.attrs)
    full = ctframe.open_series(small_phantom.folder, include_phi=True)
    assert full.attrs["patient_id"] == small_phantom.patient_id


# --------------------------------------------------------------------------- geometry from every slice


def _mixed_spacing(lidc_dir: Path, dest: Path) -> list[Path]:
    """20 real LIDC slices; 3 of them (k = 2, 9, 13) rewritten with PixelSpacing 0.8 mm."""
    from _lidc_variants import write_variant

    def edit(k: int, ds: pydicom.Dataset) -> None:
        if k in (2, 9, 13):
            ds.PixelSpacing = [0.8, 0.8]

    return write_variant(lidc_dir, dest, edit)


def test_open_series__mixed_pixel_spacing_is_refused_naming_a_file(lidc_dir: Path, tmp_path: Path) -> None:
    paths = _mixed_spacing(lidc_dir, tmp_path)
    with pytest.raises(
        InconsistentSeriesError,
        match=r"slices differ in pixel spacing \(0\.703125x0\.703125 mm on 17 slices, 0\.8x0\.8 mm on 3 slices\), "
        r"e\.g\. (\S+); open the files of one pixel spacing",
    ) as info:
        ctframe.open_series(tmp_path)
    named = str(info.value).split("e.g. ")[1].split(";")[0]
    assert named in {str(paths[k]) for k in (2, 9, 13)}
    assert [float(v) for v in pydicom.dcmread(named, stop_before_pixels=True).PixelSpacing] == [0.8, 0.8]
    # the rows of one spacing open, with that spacing on their coordinates
    catalog = ctframe.scan(tmp_path)
    with pytest.warns(QCWarning, match="gaps"):  # three slices are missing from the 0.703 mm stack
        volume = ctframe.open_series(catalog[catalog["pixel_spacing_row_mm"] != 0.8])
    assert volume.sizes["slice"] == 17 and volume.attrs["pixel_spacing_mm"] == [0.703125, 0.703125]
    assert volume["row"].values[1] == pytest.approx(0.703125)


def test_open_cohort__mixed_spacing_stack_is_flagged_and_the_healthy_one_opens(lidc_dir: Path, tmp_path: Path) -> None:
    from _lidc_variants import write_variant

    _mixed_spacing(lidc_dir, tmp_path / "mixed")
    uid = pydicom.uid.generate_uid()
    write_variant(lidc_dir, tmp_path / "healthy", lambda k, ds: setattr(ds, "SeriesInstanceUID", uid))
    uid = pseudonymous_uid(uid)  # tables and attrs hold the pseudonym (ctframe.privacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cohort = open_cohort(tmp_path)
    series = cohort.series.set_index("series_uid")
    assert not series.loc[uid, "inconsistent_pixel_spacing"] and series.loc[uid, "selected"]
    mixed = series.drop(index=uid).iloc[0]
    assert mixed["inconsistent_pixel_spacing"] and not mixed["usable"] and not mixed["selected"]
    assert np.isnan(mixed["pixel_spacing_row_mm"]) and "0.8x0.8 mm on 3 slices" in mixed["qc_notes"]
    (volume,) = cohort.volumes.values()
    assert volume.attrs["series_uid"] == uid and volume.attrs["pixel_spacing_mm"] == [0.703125, 0.703125]
