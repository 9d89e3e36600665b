"""Trust: a failing or uncalibrated stack never changes another stack's numbers, and never reads as 0.

Every case is generated from real slices of LIDC-IDRI-0001 (../shared/data): two
stacks in one folder whose file names and series UIDs are prefixes of each
other, one file truncated, one slice without RescaleSlope. The healthy stack's
numbers must equal those of a run on the healthy stack alone, its pixels must be
read exactly once, and the bad stack must be reported with its reason.
"""

from __future__ import annotations

import collections
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from typer.testing import CliRunner

import ctframe
import ctframe.dicom
from ctframe.cli import app
from ctframe.cohort import open_cohort, summarize
from ctframe.errors import CohortWarning, NotHUCalibratedError
from ctframe.privacy import pseudonymous_uid

UID_A = "1.2.826.0.1.3680043.8.498.4.5.1"
UID_B = "1.2.826.0.1.3680043.8.498.4.5.10"  # UID_A is a prefix of it
#: The salt of these tests; tables and stack keys hold the UIDs' pseudonyms (ctframe.privacy).
SALT = "test-trust-salt"
KEY_A, KEY_B = pseudonymous_uid(UID_A, salt=SALT), pseudonymous_uid(UID_B, salt=SALT)


@pytest.fixture(autouse=True)
def _salt() -> Iterator[None]:
    """CTFRAME_SALT for the test (set by hand: a test's monkeypatch.undo() must not reset it)."""
    previous = os.environ.get("CTFRAME_SALT")
    os.environ["CTFRAME_SALT"] = SALT
    yield
    if previous is None:
        os.environ.pop("CTFRAME_SALT", None)
    else:
        os.environ["CTFRAME_SALT"] = previous


N_SLICES = 8


def _write_stack(lidc: Path, folder: Path, *, names: list[str], series_uid: str, study_uid: str,
                 first: int) -> list[Path]:
    """Copy consecutive real LIDC slices into `folder` as a series of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(lidc.glob("*.dcm"))[first : first + len(names)]
    paths = []
    for k, (source, name) in enumerate(zip(sources, names, strict=True)):
        ds = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = f"{series_uid}.{k + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID = f"TRUST-{study_uid[-2:]}"
        path = folder / name
        ds.save_as(path)
        paths.append(path)
    return paths


@pytest.fixture()
def two_stacks(lidc_dir: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """IM1..IM8 (stack A) and IM10..IM80 (stack B) in one folder, different studies."""
    folder = tmp_path / "cohort"
    a = _write_stack(lidc_dir, folder, names=[f"IM{k}" for k in range(1, N_SLICES + 1)], series_uid=UID_A,
                     study_uid="1.2.826.0.1.3680043.8.498.4.6.1", first=40)
    b = _write_stack(lidc_dir, folder, names=[f"IM{k}0" for k in range(1, N_SLICES + 1)], series_uid=UID_B,
                     study_uid="1.2.826.0.1.3680043.8.498.4.6.2", first=60)
    return {"root": [folder], UID_A: a, UID_B: b}


def _alone(paths: list[Path], tmp_path: Path) -> pd.DataFrame:
    """The scan-region row of a cohort that holds only these files (the reference numbers)."""
    folder = tmp_path / "alone"
    folder.mkdir()
    for path in paths:
        shutil.copy(path, folder / path.name)
    summary = summarize(open_cohort(folder), regions=["scan"], progress=False)
    return summary.regions


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Count how often each file's pixels are read (every read path goes through read_frames)."""
    reads: collections.Counter = collections.Counter()
    original = ctframe.dicom.read_frames

    def counting(refs, *, dtype, access=None):
        reads.update(Path(r.path).name for r in refs)
        return original(refs, dtype=dtype, access=access)

    monkeypatch.setattr(ctframe.io, "read_frames", counting)
    return reads


STATS = ["voxel_count", "volume_ml", "hu_mean", "hu_std", "hu_median", "hu_p15", "laa_950_pct"]


def test_summarize__truncated_file_blames_its_own_stack_only(two_stacks, tmp_path, monkeypatch) -> None:
    cohort = open_cohort(two_stacks["root"][0])
    assert set(cohort.volumes) == {KEY_A, KEY_B}
    truncated = two_stacks[UID_B][2]  # IM30: its name holds "IM3", a file of stack A
    truncated.write_bytes(truncated.read_bytes()[:-4000])
    reads = _count_reads(monkeypatch)
    with pytest.warns(CohortWarning, match="skipped"):
        summary = summarize(cohort, regions=["scan"], progress=False)
    # the failure belongs to B, with its file named once; A is untouched
    assert summary.problems["stack_key"].tolist() == [KEY_B]
    reason = summary.problems["reason"].iloc[0]
    assert "IM30" in reason and reason.count(str(truncated)) <= 1
    outcome = summary.series.set_index("stack_key")["outcome"]
    assert outcome[KEY_A] == "summarised" and outcome[KEY_B].startswith("failed: ")
    # one compute: every file of A read exactly once, B's files at most once
    assert {reads[p.name] for p in two_stacks[UID_A]} == {1}
    assert max(reads[p.name] for p in two_stacks[UID_B]) == 1
    # A's numbers are those of A alone; B's are NaN with the reason, never 0
    regions = summary.regions.set_index("series")
    monkeypatch.undo()
    reference = _alone(two_stacks[UID_A], tmp_path).set_index("series")
    pd.testing.assert_series_equal(regions.loc[KEY_A, STATS], reference.loc[KEY_A, STATS], check_names=False)
    assert regions.loc[KEY_B, STATS].isna().all()
    assert "IM30" in regions.loc[KEY_B, "missing_reason"]


def test_summarize__every_stack_failing_keeps_the_schema(two_stacks) -> None:
    cohort = open_cohort(two_stacks["root"][0])
    for key in (UID_A, UID_B):
        path = two_stacks[key][0]
        path.write_bytes(path.read_bytes()[:-4000])
    with pytest.warns(CohortWarning):
        summary = summarize(cohort, regions=["scan"], progress=False)
    assert sorted(summary.problems["stack_key"]) == sorted([KEY_A, KEY_B])
    assert len(summary.regions) == 2 and summary.regions["volume_ml"].isna().all()
    assert {"volume_ml", "hu_mean", "missing_reason"} <= set(summary.regions.columns)
    assert list(summary.histograms.columns)[:3] == ["level", "patient_key", "study_date"]
    assert summary.histograms.empty and summary.slice_areas.empty


def test_cli_summarize__exit_0_when_one_stack_survives(two_stacks, tmp_path) -> None:
    truncated = two_stacks[UID_B][2]
    truncated.write_bytes(truncated.read_bytes()[:-4000])  # truncated before the scan: found while reading
    config = tmp_path / "scan-only.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["summarize", str(two_stacks["root"][0]), "-o", str(out), "-q", "-c",
                                      str(config)])
    assert result.exit_code == 0, result.output
    problems = (out / "problems.csv").read_text()
    assert "IM30" in problems
    regions = pd.read_csv(out / "regions.csv", keep_default_na=False, na_values=[""])
    assert regions["volume_ml"].notna().sum() == 1  # A measured, B NaN (not 0)
    assert not (regions["volume_ml"] == 0).any()


# --------------------------------------------------------------------------- calibration


@pytest.fixture()
def missing_slope(lidc_dir: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """A healthy stack and a stack with RescaleSlope deleted on one slice, in two studies."""
    folder = tmp_path / "cohort"
    a = _write_stack(lidc_dir, folder / "a", names=[f"A{k:02d}.dcm" for k in range(N_SLICES)], series_uid=UID_A,
                     study_uid="1.2.826.0.1.3680043.8.498.4.6.1", first=40)
    b = _write_stack(lidc_dir, folder / "b", names=[f"B{k:02d}.dcm" for k in range(N_SLICES)], series_uid=UID_B,
                     study_uid="1.2.826.0.1.3680043.8.498.4.6.2", first=60)
    ds = pydicom.dcmread(b[3])
    del ds.RescaleSlope
    ds.save_as(b[3])
    return {"root": [folder], UID_A: a, UID_B: b}


def test_series_table__missing_slope_on_one_slice_is_flagged(missing_slope) -> None:
    table = ctframe.series_table(ctframe.scan(missing_slope["root"][0], progress=False)).set_index("stack_key")
    assert table.loc[KEY_A, "usable"] and table.loc[KEY_A, "calibration_issue"] == ""
    assert not table.loc[KEY_B, "usable"] and table.loc[KEY_B, "not_hu_calibrated"]
    issue = table.loc[KEY_B, "calibration_issue"]
    assert issue == "RescaleSlope missing or not a finite number on 1 of 8 slice(s) (first: B03.dcm)"
    assert issue in table.loc[KEY_B, "qc_notes"]


def test_to_hu__refuses_what_series_table_flags(missing_slope) -> None:
    volume = ctframe.open_series(missing_slope["root"][0] / "b")
    with pytest.raises(NotHUCalibratedError, match="RescaleSlope missing or not a finite number on 1 of 8"):
        ctframe.to_hu(volume)
    # opting in applies the documented default (slope 1) and matches pydicom's stored values + intercept
    hu = ctframe.to_hu(volume, assume_hu=True, fill_below_hu=-1e9)
    k = int(np.flatnonzero(np.isnan(volume["rescale_slope"].values))[0])
    ds = pydicom.dcmread(missing_slope[UID_B][3])
    expected = ds.pixel_array.astype(np.float32) + float(ds.RescaleIntercept)
    expected[ds.pixel_array == np.int16(ds.PixelPaddingValue - 65536)] = np.nan  # LIDC's unsigned padding
    np.testing.assert_array_equal(hu.values[k], expected)


def test_summarize__missing_slope_stack_excluded_healthy_unchanged(missing_slope, tmp_path) -> None:
    cohort = open_cohort(missing_slope["root"][0])
    assert set(cohort.volumes) == {KEY_A}  # B is not selected, with the reason in the series table
    reason = cohort.series.set_index("stack_key").loc[KEY_B, "selection_reason"]
    assert reason.startswith("excluded:") and "not usable" in reason
    summary = summarize(cohort, regions=["scan"], progress=False)
    reference = _alone(missing_slope[UID_A], tmp_path).set_index("series")
    regions = summary.regions.set_index("series")
    pd.testing.assert_series_equal(regions.loc[KEY_A, STATS], reference.loc[KEY_A, STATS], check_names=False)
    assert not (summary.slice_areas["voxel_count"] == 0).any()


def test_cli_summarize__missing_slope_stack_does_not_sink_the_cohort(missing_slope, tmp_path) -> None:
    config = tmp_path / "scan-only.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["summarize", str(missing_slope["root"][0]), "-o", str(out), "-q", "-c",
                                      str(config)])
    assert result.exit_code == 0, result.output
    series = pd.read_csv(out / "series.csv", keep_default_na=False)
    bad = series[series["calibration_issue"] != ""]
    assert len(bad) == 1 and "RescaleSlope missing" in bad["calibration_issue"].iloc[0]
    assert pd.read_csv(out / "regions.csv")["volume_ml"].notna().all()


# --------------------------------------------------------------------------- single slices


def test_summarize__single_slices_give_nan_lungs_with_a_reason(shared_data: Path) -> None:
    """One-slice scans (covid19-ny-sbu): no lung volume can be measured; NaN and a reason, never 0."""
    cohort = open_cohort(shared_data / "covid19-ny-sbu-slices")
    assert (cohort.selected["n_slices"] == 1).all()
    with pytest.warns(CohortWarning, match="whole-scan region only"):
        summary = summarize(cohort, progress=False)
    lungs = summary.regions[summary.regions["region"].isin(["lungs", "right_lung", "left_lung", "body"])]
    assert len(lungs) == 4 * len(cohort.volumes)
    assert lungs["volume_ml"].isna().all() and lungs["voxel_count"].isna().all()
    assert (lungs["missing_reason"] != "").all()
    scan = summary.regions[summary.regions["region"] == "scan"]
    assert scan["hu_mean"].notna().all()
    longitudinal = summary.longitudinal
    assert len(longitudinal) and not longitudinal["comparable_to_baseline"].any()
    assert longitudinal["comparability_notes"].str.contains("no value").all()
    assert not (longitudinal["change_from_baseline"] == 0).any()


def test_cli_summarize__exit_2_when_every_stack_fails(two_stacks, tmp_path) -> None:
    for key in (UID_A, UID_B):
        path = two_stacks[key][0]
        path.write_bytes(path.read_bytes()[:-4000])
    config = tmp_path / "scan-only.yaml"
    config.write_text("cohort:\n  regions: [scan]\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["summarize", str(two_stacks["root"][0]), "-o", str(out), "-q", "-c",
                                      str(config)])
    assert result.exit_code == 2, result.output
    assert "none of the 2 selected stack(s) could be read" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (out / "problems.csv").is_file() and (out / "regions.csv").is_file()  # written whole, with the reasons


# --------------------------------------------------------------------------- one slice never speaks for the stack


def test_series_table__acquisition_values_that_differ_are_not_taken_from_one_slice(lidc_dir, tmp_path) -> None:
    paths = _write_stack(lidc_dir, tmp_path / "s", names=[f"IM{k}" for k in range(6)], series_uid=UID_A,
                         study_uid="1.2.826.0.1.3680043.8.498.4.6.1", first=40)
    for path in paths[:2]:  # two slices from another reconstruction
        ds = pydicom.dcmread(path)
        ds.ConvolutionKernel, ds.SliceThickness = "BONE", "1.25"
        ds.save_as(path)
    reference = {str(pydicom.dcmread(p).ConvolutionKernel) for p in paths}  # pydicom's reading of every file
    row = ctframe.series_table(ctframe.scan(tmp_path / "s", progress=False)).iloc[0]
    assert set(row["convolution_kernel"].split("/")) == reference and len(reference) == 2
    assert np.isnan(row["slice_thickness_mm"])
    assert "convolution kernel differs between slices (BONE on 2, STANDARD on 4)" in row["qc_notes"]
    assert "slice thickness differs between slices (1.25 on 2, 2.5 on 4)" in row["qc_notes"]


def _set_ds(data: bytes, tag: int, text: str) -> bytes:
    """Replace the value of the explicit-VR DS element `tag` in a file's bytes (no validation on the way)."""
    key = tag.to_bytes(4, "big")
    marker = key[1::-1] + key[:1:-1] + b"DS"  # group, element little-endian, then the VR
    at = data.index(marker)
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    value = text.encode().ljust(len(text) + len(text) % 2)
    return data[:at + 6] + len(value).to_bytes(2, "little") + value + data[at + 8 + length :]


def test_series_table__zero_or_text_slope_on_one_real_slice_is_refused(lidc_dir, tmp_path) -> None:
    """A slope of 0 (every voxel one value) or a slope that is no number: refused with the rule, not defaulted."""
    for value, rule in (("0", "RescaleSlope is 0 on 1 of 6 slice(s) (first: IM2)"),
                        ("n/a", "RescaleSlope missing or not a finite number on 1 of 6 slice(s) (first: IM2)")):
        folder = tmp_path / f"slope-{value.replace('/', '')}"
        paths = _write_stack(lidc_dir, folder, names=[f"IM{k}" for k in range(6)], series_uid=UID_A,
                             study_uid="1.2.826.0.1.3680043.8.498.4.6.1", first=40)
        # rewrite the DS text in the file's bytes, as a faulty writer would have (pydicom validates what it writes)
        paths[2].write_bytes(_set_ds(paths[2].read_bytes(), 0x00281053, value))
        assert str(pydicom.dcmread(paths[2], stop_before_pixels=True)["RescaleSlope"].value) == value
        row = ctframe.series_table(ctframe.scan(folder, progress=False)).iloc[0]
        assert not row["usable"] and row["calibration_issue"] == rule
