"""Discovery: scan() into a catalog, stacks, and series_table() QC flags."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctframe
from ctframe.errors import NoSeriesError, ScanWarning
from ctframe.scan import CATALOG_COLUMNS, PHI_COLUMNS, assign_stacks, iter_files
from ctframe.testing import write_phantom_series


def _scan_quiet(root, **kwargs) -> pd.DataFrame:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        return ctframe.scan(root, **kwargs)


# --------------------------------------------------------------------------- real data


def test_scan__every_shared_file_is_catalogued_or_a_problem(shared_data: Path) -> None:
    with pytest.warns(ScanWarning, match="files were skipped"):
        catalog = ctframe.scan(shared_data)
    problems = ctframe.problems_table(catalog)
    all_files = set(iter_files(shared_data))
    catalogued = set(catalog["path"])
    assert catalogued | set(problems["path"]) == all_files
    assert not catalogued & set(problems["path"])
    assert problems["reason"].str.len().gt(0).all()
    # every real CT series is in the catalog
    assert catalog.loc[catalog["path"].str.contains("lidc-idri-0001"), "path"].nunique() == 133
    assert catalog.loc[catalog["path"].str.contains("covid19-ny-sbu"), "path"].nunique() == 62
    assert catalog.loc[catalog["path"].str.contains("dcm_qa_ct"), "path"].nunique() == 28 + 54


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("pydicom-3.0.2/zipMR.gz", "gzip-compressed"),
        ("pydicom-3.0.2/dicomdirtests/DICOMDIR", "DICOMDIR"),
        ("pydicom-3.0.2/test-SR.dcm", "no image pixel data \\(Comprehensive SR Storage\\)"),
        ("pydicom-3.0.2/waveform_ecg.dcm", "no image pixel data"),
        ("pydicom-3.0.2/no_meta.dcm", "not a DICOM file"),
        ("pydicom-3.0.2/rtplan_truncated.dcm", "no image pixel data"),
        ("MANIFEST.md", "not a DICOM file"),
    ],
)
def test_scan__edge_case_problem_reasons(edge_cases: Path, name: str, reason: str) -> None:
    with pytest.warns(ScanWarning):
        catalog = ctframe.scan(edge_cases / name)
    assert catalog.empty
    problems = ctframe.problems_table(catalog)
    assert len(problems) == 1
    assert problems["reason"].str.contains(reason).all()


def test_scan__lidc_columns_and_values(lidc_dir: Path) -> None:
    with pytest.warns(ScanWarning):  # 069.xml and PROVENANCE.md are not DICOM
        catalog = ctframe.scan(lidc_dir)
    assert list(catalog.columns) == [*CATALOG_COLUMNS, "stack_key", "slice_position_mm"]
    assert len(catalog) == 133
    row = catalog.iloc[0]
    assert row["modality"] == "CT"
    assert row["rows"] == row["columns"] == 512
    assert row["pixel_spacing_row_mm"] == pytest.approx(0.703125)
    assert row["slice_thickness_mm"] == pytest.approx(2.5)
    assert row["padding_value"] == -2000.0  # 63536 read as US on a signed image
    assert row["rescale_intercept"] == -1024.0
    assert row["transfer_syntax"] == "Explicit VR Little Endian"
    assert row["pixel_data_offset"] > 0
    assert row["manufacturer"] == "GE MEDICAL SYSTEMS"
    assert row["convolution_kernel"] == "STANDARD"
    assert row["kvp"] == 120.0
    assert row["patient_key"].startswith("P-")
    # no identifying values, and never the raw PatientID
    assert not set(PHI_COLUMNS) & set(catalog.columns)
    assert not catalog.astype(str).apply(lambda col: col.str.contains("LIDC-IDRI-0001")).to_numpy().any()


def test_scan__include_phi_adds_identifying_columns(lidc_dir: Path) -> None:
    catalog = _scan_quiet(lidc_dir, include_phi=True)
    assert set(PHI_COLUMNS) <= set(catalog.columns)
    assert (catalog["patient_id"] == "LIDC-IDRI-0001").all()


def test_series_table__lidc_positions_not_file_names(lidc_dir: Path) -> None:
    catalog = _scan_quiet(lidc_dir)
    positions = catalog["position_z_mm"].to_numpy()
    assert np.all(np.diff(positions) > 0)
    # file 1-001 is the top slice (z = -10): name order is the reverse of position order
    assert Path(catalog["path"].iloc[-1]).name == "1-001.dcm"
    table = ctframe.series_table(catalog)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n_slices"] == 133
    assert row["spacing_median_mm"] == pytest.approx(2.5)
    assert row["spacing_min_mm"] == pytest.approx(2.5)
    assert row["spacing_max_mm"] == pytest.approx(2.5)
    assert row["orientation"] == "AXIAL"
    assert not row[["has_gaps", "has_duplicates", "irregular_spacing", "is_tilted", "is_lossy"]].any()
    assert row["usable"]


def test_series_table__tilted_phantom_series(shared_data: Path) -> None:
    table = ctframe.series_table(_scan_quiet(shared_data / "dcm_qa_ct"))
    by_desc = table.set_index("n_slices")
    tilted, straight = by_desc.loc[54], by_desc.loc[28]
    assert tilted["is_tilted"]
    assert tilted["tilt_angle_deg"] == pytest.approx(18.5, abs=0.1)
    assert tilted["spacing_median_mm"] == pytest.approx(2.3708, abs=1e-3)
    assert not straight["is_tilted"]
    assert straight["tilt_angle_deg"] == pytest.approx(0.0, abs=0.01)


def test_series_table__lossy_syntaxes_are_flagged(edge_cases: Path) -> None:
    catalog = _scan_quiet(edge_cases / "wg04-robyoung")
    lossy = catalog.set_index(catalog["path"].map(lambda p: Path(p).stem))["is_lossy"]
    assert lossy["CT1_J2KI"] and lossy["CT1_JLSN"]
    assert not lossy[["CT1_UNC", "CT1_RLE", "CT1_JPLL", "CT1_JLSL", "CT1_J2KR"]].any()
    compressed = catalog.set_index(catalog["path"].map(lambda p: Path(p).stem))["is_compressed"]
    assert not compressed["CT1_UNC"] and compressed.drop("CT1_UNC").all()


def test_series_table__real_gap_and_scouts(edge_cases: Path) -> None:
    base = edge_cases / "pydicom-3.0.2" / "dicomdirtests"
    gap = ctframe.series_table(_scan_quiet(base / "77654033" / "CT2")).iloc[0]
    assert gap["n_slices"] == 4 and gap["has_gaps"] and gap["n_missing_slices"] > 100
    scouts = ctframe.series_table(_scan_quiet(base / "98892001" / "CT2N"))
    assert len(scouts) == 2  # two orientations -> two stacks of one series
    assert scouts["series_uid"].nunique() == 1
    assert scouts["is_localizer"].all() and not scouts["usable"].any()
    assert sorted(scouts["orientation"]) == ["CORONAL", "SAGITTAL"]


def test_series_table__enhanced_ct_frames_are_slices(edge_cases: Path) -> None:
    catalog = _scan_quiet(edge_cases / "pydicom-data-1.0.0" / "eCT_Supplemental.dcm")
    # per-frame PlanePositionSequence: frame 0 at z = -159, frame 1 at z = -149;
    # the normal of IOP [-1,0,0, 0,1,0] points to -z, so frame 1 comes first
    assert dict(zip(catalog["frame"], catalog["position_z_mm"], strict=True)) == {0: -159.0, 1: -149.0}
    assert catalog["slice_position_mm"].tolist() == [149.0, 159.0]
    row = ctframe.series_table(catalog).iloc[0]
    assert row["n_slices"] == 2 and row["n_files"] == 1
    assert row["spacing_median_mm"] == pytest.approx(10.0)
    assert row["not_hu_calibrated"]  # a derived perfusion map: RescaleType US


def test_series_table__misspelled_hounsfield_is_hu(shared_data: Path) -> None:
    catalog = _scan_quiet(shared_data / "covid19-ny-sbu-slices")
    assert set(catalog["rescale_type"]) <= {"", "HU"}
    assert not ctframe.series_table(catalog)["not_hu_calibrated"].any()


# --------------------------------------------------------------------------- synthetic


def test_series_table__synthetic_gaps_and_duplicates(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "gap", shape=(12, 32, 32), spacing_mm=(3.0, 8.0, 8.0), drop_slices=[4, 5])
    write_phantom_series(tmp_path / "dup", shape=(12, 32, 32), spacing_mm=(3.0, 8.0, 8.0), duplicate_slices=[7], seed=5)
    gap = ctframe.series_table(ctframe.scan(tmp_path / "gap")).iloc[0]
    assert gap["has_gaps"] and gap["n_missing_slices"] == 2 and not gap["has_duplicates"]
    assert gap["spacing_median_mm"] == pytest.approx(3.0)
    assert gap["spacing_max_mm"] == pytest.approx(9.0)
    dup = ctframe.series_table(ctframe.scan(tmp_path / "dup")).iloc[0]
    assert dup["has_duplicates"] and not dup["has_gaps"] and not dup["usable"]
    assert dup["n_slices"] == 13


def test_series_table__synthetic_tilt(tmp_path: Path) -> None:
    write_phantom_series(tmp_path, shape=(10, 32, 32), spacing_mm=(3.0, 8.0, 8.0), tilt_deg=12.0)
    row = ctframe.series_table(ctframe.scan(tmp_path)).iloc[0]
    assert row["tilt_angle_deg"] == pytest.approx(12.0, abs=0.01)
    assert row["spacing_median_mm"] == pytest.approx(3.0 * np.cos(np.radians(12.0)), abs=1e-3)


def test_scan__problem_files_do_not_stop_the_scan(tmp_path: Path) -> None:
    truth = write_phantom_series(tmp_path, shape=(6, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not dicom")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(truth.paths[0].read_bytes()[:200])
    with pytest.warns(ScanWarning, match="3 of 9 files were skipped"):
        catalog = ctframe.scan(tmp_path)
    assert len(catalog) == 6
    reasons = ctframe.problems_table(catalog).set_index(
        ctframe.problems_table(catalog)["path"].map(lambda p: Path(p).name)
    )["reason"]
    assert "empty file" in reasons["empty.dcm"]
    assert "not a DICOM file" in reasons["notes.txt"]
    assert reasons["truncated.dcm"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read files without read permission")
def test_scan__unreadable_file_is_a_problem(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    write_phantom_series(tmp_path, shape=(3, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    locked = tmp_path / "locked.dcm"
    shutil.copy(next(tmp_path.glob("*.dcm")), locked)
    locked.chmod(0)
    with pytest.warns(ScanWarning):
        catalog = ctframe.scan(tmp_path)
    assert "cannot read" in ctframe.problems_table(catalog)["reason"].iloc[0]


def test_scan__symlink_loop_terminates(tmp_path: Path) -> None:
    write_phantom_series(tmp_path / "series", shape=(3, 32, 32), spacing_mm=(3.0, 8.0, 8.0))
    os.symlink(tmp_path, tmp_path / "series" / "loop")
    catalog = ctframe.scan(tmp_path)
    assert len(catalog) == 3


def test_scan__process_pool_equals_serial(tmp_path: Path) -> None:
    write_phantom_series(tmp_path, shape=(40, 16, 16), spacing_mm=(3.0, 16.0, 16.0))
    serial = ctframe.scan(tmp_path, workers=1)
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        parallel = ctframe.scan(tmp_path, workers=2)
    pd.testing.assert_frame_equal(serial, parallel)


def test_scan__missing_root_raises() -> None:
    with pytest.raises(NoSeriesError, match="no such file or folder"):
        ctframe.scan("/nonexistent/ctframe-test")


def test_scan__salt_changes_patient_key(small_phantom) -> None:
    a = ctframe.scan(small_phantom.folder, salt="one")["patient_key"].iloc[0]
    b = ctframe.scan(small_phantom.folder, salt="two")["patient_key"].iloc[0]
    assert a != b and a.startswith("P-") and b.startswith("P-")
    assert ctframe.scan(small_phantom.folder, salt="one")["patient_key"].iloc[0] == a


# --------------------------------------------------------------------------- stacks: orientation with a tolerance


def _orientation_variant(lidc_dir: Path, dest: Path, orientation_of) -> pd.DataFrame:
    """20 real LIDC slices, slice k written with the (row, col) directions ``orientation_of(k)`` (or unchanged)."""
    from _lidc_variants import set_orientation, write_variant

    def edit(k: int, ds) -> None:
        directions = orientation_of(k)
        if directions is not None:
            set_orientation(ds, *directions)

    write_variant(lidc_dir, dest, edit)
    return ctframe.scan(dest)


def test_assign_stacks__scanner_float_noise_is_one_stack(lidc_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def noisy(k: int):  # every other slice off by up to 1e-6 in each direction cosine
        return None if k % 2 else (np.array([1.0, 0, 0]) + rng.uniform(-1e-6, 1e-6, 3), np.array([0, 1.0, 0]))

    catalog = _orientation_variant(lidc_dir, tmp_path, noisy)
    assert catalog["row_dir_x"].nunique() > 1  # the noise is in the catalog
    assert catalog["stack_key"].nunique() == 1
    assert np.all(np.diff(catalog["slice_position_mm"]) == pytest.approx(2.5))
    row = ctframe.series_table(catalog).iloc[0]
    assert row["n_slices"] == 20 and row["usable"] and not row["inconsistent_orientation"]


def test_assign_stacks__a_rotated_plane_is_another_stack(lidc_dir: Path, tmp_path: Path) -> None:
    from _lidc_variants import rotation

    tilt = rotation("x", 5.0)
    catalog = _orientation_variant(
        lidc_dir, tmp_path, lambda k: (tilt @ [1.0, 0, 0], tilt @ [0, 1.0, 0]) if k >= 15 else None
    )
    table = ctframe.series_table(catalog).set_index("stack_key")
    uid = catalog["series_uid"].iloc[0]
    assert table["n_slices"].to_dict() == {f"{uid}#1": 15, f"{uid}#2": 5}  # largest first
    # each stack is ordered along its own normal: the 5 rotated slices step 2.5 * cos(5 deg) apart
    rotated = catalog[catalog["stack_key"] == f"{uid}#2"]
    np.testing.assert_allclose(np.diff(rotated["slice_position_mm"]), 2.5 * np.cos(np.radians(5.0)), atol=1e-6)
    assert table.loc[f"{uid}#2", "tilt_angle_deg"] == pytest.approx(5.0, abs=0.01)


def test_assign_stacks__noise_across_a_rounding_boundary_is_one_stack(lidc_dir: Path, tmp_path: Path) -> None:
    # an in-plane rotation of about 1.8 degrees, written as 0.99949999 on half the slices and 0.9995001 on the
    # others (2e-8 apart): rounding to 3 decimals (the old grouping) gives 0.999 and 1.000, two stacks
    def straddling(k: int):
        c = 0.99949999 if k % 2 else 0.9995001
        s = np.sqrt(1 - c**2)
        return np.array([c, s, 0.0]), np.array([-s, c, 0.0])

    catalog = _orientation_variant(lidc_dir, tmp_path, straddling)
    assert sorted({f"{v:.3f}" for v in catalog["row_dir_x"]}) == ["0.999", "1.000"]
    assert catalog["stack_key"].nunique() == 1
    assert ctframe.series_table(catalog).iloc[0]["usable"]
    with ctframe.config_context(qc={"orientation_tolerance": 0.0}):  # the tolerance is what joins them
        assert assign_stacks(catalog)["stack_key"].nunique() == 2
