"""Discovery: scan() into a catalog, stacks, and series_table() QC flags."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ctframe
from ctframe.errors import NoSeriesError, PerformanceWarning, ScanWarning
from ctframe.scan import CATALOG_COLUMNS, PHI_COLUMNS, assign_stacks, iter_files
from ctframe.testing import write_phantom_series

SCAN = sys.modules["ctframe.scan"]  # the module (ctframe.scan is the function)


def _scan_quiet(root, **kwargs) -> pd.DataFrame:
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


def test_scan__process_pool_equals_serial(lidc_dir: Path) -> None:
    """The pool really ran (its mode and the PIDs of its workers say so) and gives the in-process catalog."""
    serial = _scan_quiet(lidc_dir, workers=1)
    assert serial.attrs["scan_mode"] == "in-process: workers=1" and serial.attrs["scan_worker_pids"] == ()
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        parallel = _scan_until_workers_serve(lidc_dir, workers=2)
    assert parallel.attrs["scan_mode"].startswith("processes:"), parallel.attrs["scan_mode"]
    _assert_children(parallel.attrs["scan_worker_pids"])
    pd.testing.assert_frame_equal(serial, parallel)
    assert parallel.attrs["problems"] == serial.attrs["problems"]  # 069.xml and PROVENANCE.md
    small = _scan_quiet(lidc_dir, workers=2)  # 135 files: below the default threshold
    assert small.attrs["scan_mode"] == "in-process: 135 files, fewer than scan.min_files_for_processes (512)"


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


# --------------------------------------------------------------------------- worker processes


def _scan_until_workers_serve(root, *, timeout_s: float = 180.0, **kwargs) -> pd.DataFrame:
    """Scan until the pool's workers read the files.

    The first scan of a cold pool started as fresh interpreters reads in this
    process while they import ctframe; the next ones find them ready. A pool
    that never serves ends in the last in-process catalog, which the caller's
    assertions reject.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        catalog = _scan_quiet(root, **kwargs)
        if catalog.attrs["scan_mode"].startswith("processes:") or time.monotonic() > deadline:
            return catalog
        time.sleep(0.2)


def _parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _assert_children(pids: tuple[int, ...]) -> None:
    """Evidence from the workers themselves: other processes, children of this one, that read files."""
    assert pids, "no worker process read a file"
    assert os.getpid() not in pids
    if sys.platform.startswith("linux"):
        assert all(_parent_of(pid) == os.getpid() for pid in pids), pids


def test_scan__worker_processes_after_a_dask_compute_and_beside_a_thread(shared_data: Path) -> None:
    """A notebook kernel (an extra thread) after a dask compute (its pool threads): still parallel.

    All of ../shared/data (526 files: at the default threshold of 512, problems included), no setting changed.
    """
    import dask.array as da

    SCAN._close_pool()  # cold: the pool must start beside the threads, by exec
    assert int(da.ones(64, chunks=8).sum().compute(scheduler="threads")) == 64
    stop = threading.Event()
    kernel = threading.Thread(target=stop.wait, daemon=True)
    kernel.start()
    try:
        assert threading.active_count() > 2
        assert len(list(iter_files(shared_data))) >= ctframe.get_config()["scan"]["min_files_for_processes"]
        serial = _scan_quiet(shared_data, workers=1)
        parallel = _scan_until_workers_serve(shared_data, workers=2)
        assert threading.active_count() > 2
    finally:
        stop.set()
    mode = parallel.attrs["scan_mode"]
    assert mode.startswith("processes:") and "(exec)" in mode, mode  # started beside threads: never by fork
    _assert_children(parallel.attrs["scan_worker_pids"])
    pd.testing.assert_frame_equal(serial, parallel)
    assert parallel.attrs["problems"] == serial.attrs["problems"] and len(serial.attrs["problems"]) > 10


UNGUARDED_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time, warnings
    import ctframe

    print("the script's top level ran", flush=True)
    if sys.argv[2] == "thread":  # as in a notebook kernel: fork is unsafe, workers start as fresh interpreters
        threading.Thread(target=threading.Event().wait, daemon=True).start()
    warnings.simplefilter("ignore")
    deadline = time.monotonic() + 180
    while True:
        catalog = ctframe.scan(sys.argv[1], workers=2)
        if catalog.attrs["scan_mode"].startswith("processes:") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(catalog.attrs["scan_mode"], len(catalog), len(catalog.attrs["scan_worker_pids"]), flush=True)
    """
)


@pytest.mark.parametrize(("threads", "started_by"), [("none", "fork"), ("thread", "exec")])
def test_scan__script_without_main_guard_runs_once(
    shared_data: Path, tmp_path: Path, threads: str, started_by: str
) -> None:
    script = tmp_path / "unguarded.py"  # no `if __name__ == "__main__":`
    script.write_text(UNGUARDED_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(shared_data), threads], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("the script's top level ran") == 1, result.stdout
    # one or both workers may have read batches (a worker still booting on a loaded machine reads none)
    match = re.match(rf"processes:(\d) \({started_by}\).* (\d+) (\d+)$", lines[-1])
    assert match is not None, result.stdout
    n_workers, rows, n_pids = (int(g) for g in match.groups())
    assert 1 <= n_workers <= 2 and 1 <= n_pids <= 2, result.stdout
    assert rows == len(_scan_quiet(shared_data, workers=1)), result.stdout
    assert "Traceback" not in result.stderr


def test_scan__a_bug_stops_the_scan_naming_the_file_a_bad_file_does_not(
    lidc_dir: Path, edge_cases: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctframe import dicom

    sources = sorted(lidc_dir.glob("*.dcm"))[:4]
    for src in sources:
        shutil.copy(src, tmp_path / src.name)
    shutil.copy(edge_cases / "pydicom-3.0.2" / "rtplan_truncated.dcm", tmp_path / "rtplan.dcm")
    shutil.copy(edge_cases / "pydicom-3.0.2" / "zipMR.gz", tmp_path / "zipMR.gz")
    (tmp_path / "cut.dcm").write_bytes(sources[0].read_bytes()[:700])  # a real header cut short
    catalog = _scan_quiet(tmp_path)
    assert len(catalog) == 4
    assert sorted(Path(p).name for p in ctframe.problems_table(catalog)["path"]) == [
        "cut.dcm",
        "rtplan.dcm",
        "zipMR.gz",
    ]

    victim = str(tmp_path / sources[2].name)
    real = dicom._check_frames_fit

    def buggy(path, *args):
        if path == victim:
            raise TypeError("unsupported operand type(s) for *: 'int' and 'NoneType'")
        return real(path, *args)

    monkeypatch.setattr(dicom, "_check_frames_fit", buggy)
    with pytest.raises(TypeError, match="unsupported operand") as info:
        _scan_quiet(tmp_path)
    assert info.value.__notes__ == [f"while ctframe.scan read the header of {victim}"]


def test_scan__pydicoms_own_exception_on_a_header_is_a_problem(lidc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that comes out of pydicom's code (here: its UID lookup) is a bad file, not a bug."""
    import pydicom.uid

    class Corrupt(dict):
        def __contains__(self, key: object) -> bool:
            raise KeyError("corrupt value")

    monkeypatch.setattr(pydicom.uid, "UID_dictionary", Corrupt())
    catalog = _scan_quiet(lidc_dir)
    problems = ctframe.problems_table(catalog)
    assert catalog.empty and len(problems) == len(list(iter_files(lidc_dir)))
    dicom_files = problems[problems["path"].str.endswith(".dcm")]
    assert dicom_files["reason"].str.startswith("unreadable DICOM header (KeyError: ").all(), dicom_files["reason"]


def test_scan__pool_that_cannot_start_is_said_once(lidc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_start(self):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    SCAN._close_pool()
    monkeypatch.setattr(SCAN._Pool, "_start", cannot_start)
    monkeypatch.setattr(SCAN, "_warned", set())
    serial = _scan_quiet(lidc_dir, workers=1)
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        with pytest.warns(PerformanceWarning, match=r"could not start \(BlockingIOError: \[Errno 11\] Resource"):
            first = _scan_quiet(lidc_dir, workers=2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerformanceWarning)  # said once, not on every scan
            second = _scan_quiet(lidc_dir, workers=2)
    for catalog in (first, second):
        assert catalog.attrs["scan_mode"].startswith("in-process: worker processes could not start (BlockingIOError")
        pd.testing.assert_frame_equal(serial, catalog)


def test_scan__a_worker_that_dies_costs_nothing_but_a_warning(lidc_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SCAN, "_warned", set())
    serial = _scan_quiet(lidc_dir, workers=1)
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        warm = _scan_until_workers_serve(lidc_dir, workers=2)
        assert warm.attrs["scan_mode"].startswith("processes:")
        victim = next(w for w in SCAN._pool.workers if w.pid in warm.attrs["scan_worker_pids"])
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.wait() if isinstance(victim.process, subprocess.Popen) else victim.process.join()
        with pytest.warns(PerformanceWarning, match="a worker process ended"):
            catalog = _scan_quiet(lidc_dir, workers=2)
        pd.testing.assert_frame_equal(serial, catalog)
        assert victim.pid not in catalog.attrs["scan_worker_pids"]
        again = _scan_until_workers_serve(lidc_dir, workers=2)  # a fresh pool
    pd.testing.assert_frame_equal(serial, again)
    _assert_children(again.attrs["scan_worker_pids"])
    assert victim.pid not in again.attrs["scan_worker_pids"]


WORKER_BUG_SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    import ctframe
    from ctframe import dicom

    real = dicom._check_frames_fit

    def buggy(path, *args):
        if path.endswith(sys.argv[2]):
            raise ZeroDivisionError("injected bug")
        return real(path, *args)

    dicom._check_frames_fit = buggy  # before the pool forks: its workers run this code too
    warnings.simplefilter("ignore")
    try:
        ctframe.scan(sys.argv[1], workers=2)
    except ZeroDivisionError as exc:
        print(type(exc.__cause__).__name__, "|", " | ".join(exc.__notes__))
        print("buggy" in str(exc.__cause__))
    """
)


def test_scan__a_bug_in_a_worker_process_reaches_the_caller(shared_data: Path) -> None:
    """Raised in the caller with the file and the worker named, the worker's traceback as its cause."""
    victim = "lidc-idri-0001/1-050.dcm"
    result = subprocess.run(
        [sys.executable, "-c", WORKER_BUG_SCRIPT, str(shared_data), victim], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    cause, read, worker = result.stdout.splitlines()[0].split(" | ")
    assert cause == "_RemoteTraceback"
    assert read == f"while ctframe.scan read the header of {shared_data / victim}"
    assert worker.startswith("raised in scan worker process ")
    assert result.stdout.splitlines()[1] == "True"  # the worker's frames are in the cause


def test_scan__two_threads_scanning_at_once_share_the_pool_safely(lidc_dir: Path) -> None:
    """Scans from several threads (a notebook's background jobs): each gets the in-process catalog, none hangs."""
    import concurrent.futures

    serial = _scan_quiet(lidc_dir, workers=1)
    with ctframe.config_context(scan={"min_files_for_processes": 1}):
        _scan_until_workers_serve(lidc_dir, workers=2)  # a warm pool
        # one filter around all the threads: warnings.catch_warnings inside each thread is not thread-safe
        # (one thread leaving it restores the filters under another, whose ScanWarning then escapes)
        with warnings.catch_warnings(), concurrent.futures.ThreadPoolExecutor(4) as threads:
            warnings.simplefilter("ignore", ScanWarning)
            catalogs = list(threads.map(lambda _: ctframe.scan(lidc_dir, workers=2), range(8)))
    modes = [c.attrs["scan_mode"] for c in catalogs]
    assert any(m.startswith("processes:") for m in modes), modes
    assert set(modes) <= {m for m in modes if m.startswith("processes:")} | {
        "in-process: the worker processes are busy with another scan in this process"
    }, modes
    for catalog in catalogs:
        pd.testing.assert_frame_equal(serial, catalog)
