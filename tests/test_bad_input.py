"""Bad input: every awkward real file and every generated hard case, through the API and the CLI.

Each case goes through the contract of ``tests/_contract.py``: ``scan`` classifies
every file (catalog row or problems row with a reason), ``open_series`` +
``to_hu`` + ``.compute()`` works or raises a ``CTFrameError`` naming the file or
series, no other exception escapes, and ``ctframe scan`` / ``ctframe export``
exit 0 or 2 with one ``ctframe: error:`` line and no traceback. On top of the
contract, each case states its exact expected outcome: the table below is the
bad-input matrix of ``docs/reliability.md``.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pydicom.encaps
import pydicom.fileset
import pytest
from _contract import check_api, check_cli
from conftest import SHARED_DATA
from pydicom.uid import (
    JPEG2000,
    ComprehensiveSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    SecondaryCaptureImageStorage,
)

import ctframe
from ctframe import dicom
from ctframe.cohort import open_cohort
from ctframe.errors import DicomReadError, NoSeriesError, QCWarning
from ctframe.privacy import pseudonymous_uid
from ctframe.testing import write_phantom_series

EDGE = SHARED_DATA / "edge-cases"
SHAPE, SPACING = (4, 32, 32), (3.0, 8.0, 8.0)


# --------------------------------------------------------------------------- every real edge-case file


def _edge_case_files() -> list[str]:
    """Every file of edge-cases (the manifest's rows and whatever else lies there), found at collection."""
    if not (EDGE / "manifest.csv").is_file():
        return ["<edge-cases absent>"]  # the edge_cases fixture skips (or fails under CI=true)
    with (EDGE / "manifest.csv").open(newline="") as fp:
        listed = {row["path"] for row in csv.DictReader(fp)}
    on_disk = {p.relative_to(EDGE).as_posix() for p in EDGE.rglob("*") if p.is_file()}
    return sorted(listed | on_disk)


EDGE_FILES = _edge_case_files()
NOT_DICOM = "problem:not a DICOM file"
NO_PIXELS = "problem:no image pixel data"
NO_SPACING = "InconsistentSeriesError@open:PixelSpacing is missing"
COLOUR = "UnsupportedDicomError@open:colour image"
#: Expected outcome of each real file: ``ok`` (HU computed), ``problem:<reason>``
#: (scan skips it) or ``<Error>@<stage>:<message>`` (stage open, hu or compute).
EDGE_EXPECTED = {
    "MANIFEST.md": NOT_DICOM,
    "manifest.csv": NOT_DICOM,
    "pydicom-3.0.2/LICENSE": NOT_DICOM,
    "pydicom-3.0.2/README.txt": NOT_DICOM,
    "pydicom-3.0.2/dicomdirtests/README.txt": NOT_DICOM,
    "pydicom-data-1.0.0/LICENSE": NOT_DICOM,
    "pylibjpeg-data/LICENSE": NOT_DICOM,
    "wg04-robyoung/LICENSE.txt": NOT_DICOM,
    "pydicom-3.0.2/693_J2KI.dcm": "ok",
    "pydicom-3.0.2/CT_small.dcm": "ok",
    "pydicom-3.0.2/ExplVR_BigEnd.dcm": COLOUR,
    "pydicom-3.0.2/ExplVR_BigEndNoMeta.dcm": NO_PIXELS + r" \(RT Ion Plan Storage\)",
    "pydicom-3.0.2/ExplVR_LitEndNoMeta.dcm": NO_PIXELS + r" \(RT Ion Plan Storage\)",
    "pydicom-3.0.2/J2K_pixelrep_mismatch.dcm": "ok",
    "pydicom-3.0.2/JPEGLSNearLossless_16.dcm": NO_SPACING,
    "pydicom-3.0.2/JPGExtended.dcm": "NotHUCalibratedError@hu:modality is NM, not CT",
    "pydicom-3.0.2/MR_small_RLE.dcm": "NotHUCalibratedError@hu:modality is MR, not CT",
    "pydicom-3.0.2/MR_small_bigendian.dcm": "NotHUCalibratedError@hu:modality is MR, not CT",
    "pydicom-3.0.2/MR_small_implicit.dcm": "NotHUCalibratedError@hu:modality is MR, not CT",
    "pydicom-3.0.2/MR_small_jpeg_ls_lossless.dcm": "NotHUCalibratedError@hu:modality is MR, not CT",
    "pydicom-3.0.2/MR_truncated.dcm": "DicomReadError@compute:MR_truncated.dcm: pixel data truncated",
    "pydicom-3.0.2/SC_rgb_small_odd.dcm": COLOUR,
    "pydicom-3.0.2/UN_sequence.dcm": NO_PIXELS,
    "pydicom-3.0.2/badVR.dcm": "NotHUCalibratedError@hu:modality is RTDOSE, not CT",
    "pydicom-3.0.2/image_dfl.dcm": NO_SPACING,
    "pydicom-3.0.2/liver_1frame.dcm": "NotHUCalibratedError@hu:modality is SEG, not CT",
    "pydicom-3.0.2/meta_missing_tsyntax.dcm": NO_PIXELS,
    "pydicom-3.0.2/no_meta.dcm": NOT_DICOM,
    "pydicom-3.0.2/rtdose.dcm": "InconsistentSeriesError@open:share slice position",
    "pydicom-3.0.2/rtplan_truncated.dcm": NO_PIXELS + r" \(RT Plan Storage\)",
    "pydicom-3.0.2/test-SR.dcm": NO_PIXELS + r" \(Comprehensive SR Storage\)",
    "pydicom-3.0.2/waveform_ecg.dcm": NO_PIXELS + r" \(12-lead ECG Waveform Storage\)",
    "pydicom-3.0.2/zipMR.gz": "problem:gzip-compressed file, not DICOM",
    "pydicom-3.0.2/dicomdirtests/DICOMDIR": "problem:DICOMDIR \\(a media index\\)",
    "pydicom-3.0.2/dicomdirtests/77654033/CR1/6154": NO_SPACING,
    "pydicom-3.0.2/dicomdirtests/77654033/CR2/6247": NO_SPACING,
    "pydicom-3.0.2/dicomdirtests/77654033/CR3/6278": NO_SPACING,
    "pydicom-data-1.0.0/693_UNCI.dcm": "ok",
    "pydicom-data-1.0.0/color3d_jpeg_baseline.dcm": COLOUR,
    "pydicom-data-1.0.0/eCT_Supplemental.dcm": "NotHUCalibratedError@hu:RescaleType is 'US', not HU",
    "pydicom-data-1.0.0/emri_small.dcm": NO_SPACING,
    "pydicom-data-1.0.0/emri_small_big_endian.dcm": NO_SPACING,
    "pydicom-data-1.0.0/explicit_VR-UN.dcm": "ok",
    "pylibjpeg-data/ELSCINT1_JP2vsJ2K.dcm": "ok",
    "pylibjpeg-data/JPEGLossless_1s_1f_i_16_16_bad.dcm": "ok",
    "pylibjpeg-data/TOSHIBA_J2K_OpenJPEGv2Regression.dcm": "ok",
    **{f"wg04-robyoung/CT1_{s}.dcm": "ok" for s in ("J2KI", "J2KR", "JLSL", "JLSN", "JPLL", "RLE", "UNC")},
    **{
        f"pydicom-3.0.2/dicomdirtests/{p}": "ok"
        for p in (
            "77654033/CT2/17106", "77654033/CT2/17136", "77654033/CT2/17166", "77654033/CT2/17196",
            "98892001/CT2N/6293", "98892001/CT2N/6924", "98892001/CT5N/2062", "98892001/CT5N/2392",
            "98892001/CT5N/2693", "98892001/CT5N/3023", "98892001/CT5N/3353",
        )
    },
}  # fmt: skip


def _assert_expected(outcome, expected: str, bad: Path | None = None) -> None:
    """Compare an Outcome with an expectation string of the table above."""
    if expected.startswith("problem:"):
        reasons = outcome.problems.set_index("path")["reason"]
        assert bad is not None and str(bad) in reasons.index, outcome.problems
        assert re.search(expected.removeprefix("problem:"), reasons[str(bad)]), reasons[str(bad)]
        return
    if expected == "ok":
        assert outcome.error is None, f"{type(outcome.error).__name__}: {outcome.error}"
        assert outcome.hu is not None
        return
    name, _, message = expected.partition(":")
    error, _, stage = name.partition("@")
    assert outcome.error is not None, f"expected {error}, got a volume of shape {outcome.hu.shape}"
    assert type(outcome.error).__name__ == error, f"{type(outcome.error).__name__}: {outcome.error}"
    assert outcome.stage == stage, (outcome.stage, outcome.error)
    assert re.search(message, str(outcome.error)), str(outcome.error)


def test_edge_cases__manifest_lists_every_dicom_file(edge_cases: Path) -> None:
    with (edge_cases / "manifest.csv").open(newline="") as fp:
        listed = {row["path"] for row in csv.DictReader(fp)}
    assert len(listed) == 56
    assert all((edge_cases / p).is_file() for p in listed)
    assert set(EDGE_FILES) == set(EDGE_EXPECTED), "a file of edge-cases has no expected outcome"


@pytest.mark.parametrize("name", EDGE_FILES)
def test_bad_input__every_edge_case_file(edge_cases: Path, tmp_path: Path, name: str) -> None:
    path = edge_cases / name
    outcome = check_api(path)
    expected = EDGE_EXPECTED[name]
    _assert_expected(outcome, expected, bad=path)
    scanned = len(outcome.catalog) > 0
    check_cli(["scan", str(path)], ok_codes=(0,) if scanned else (2,))
    code, output = check_cli(["export", str(path), "-o", str(tmp_path / "out.nii.gz")])
    assert (code == 0) == (expected == "ok"), output
    if code == 0:
        assert (tmp_path / "out.nii.gz").is_file()
    else:
        assert not (tmp_path / "out.nii.gz").exists() and not list(tmp_path.iterdir()), "a failed export left files"


# --------------------------------------------------------------------------- generated cases


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small, clean phantom series (4 x 32 x 32) and its stored values."""
    truth = write_phantom_series(tmp_path_factory.mktemp("base"), shape=SHAPE, spacing_mm=SPACING, seed=3)
    return truth, ctframe.open_series(truth.folder).values


@dataclass(frozen=True)
class Case:
    """A generated input: how to make it and what must happen."""

    build: Callable[[Path, list[Path]], list[Path]]  # (folder with a copy of the base series, its files) -> bad files
    expected: str  # as in EDGE_EXPECTED; "problem:" applies to the returned bad files
    values: str | None = None  # "same": stored values equal the base series; "close:N": within N
    lossy: bool | None = None  # the series table's is_lossy flag


def _rewrite(path: Path, edit: Callable[[pydicom.Dataset], None], **write: object) -> None:
    ds = pydicom.dcmread(path)
    edit(ds)
    if write:
        pydicom.dcmwrite(path, ds, **write)
    else:
        ds.save_as(path)


def _each(edit: Callable[[pydicom.Dataset], None], **write: object) -> Callable[[Path, list[Path]], list[Path]]:
    def build(folder: Path, files: list[Path]) -> list[Path]:
        for f in files:
            _rewrite(f, edit, **write)
        return []

    return build


def _first(edit: Callable[[pydicom.Dataset], None], which: int = 1) -> Callable[[Path, list[Path]], list[Path]]:
    def build(folder: Path, files: list[Path]) -> list[Path]:
        _rewrite(files[which], edit)
        return []

    return build


def _delete(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for k in keywords:
            delattr(ds, k)

    return edit


def _set(**values: object) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        for k, v in values.items():
            setattr(ds, k, v)

    return edit


def _no_meta(ds: pydicom.Dataset) -> None:
    ds.preamble = None
    del ds.file_meta


def _missing_syntax(ds: pydicom.Dataset) -> None:
    del ds.file_meta.TransferSyntaxUID


def _big_endian(ds: pydicom.Dataset) -> None:
    ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _syntax(uid: str) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = uid

    return edit


def _lossy(uid: str, **options: object) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        ds.compress(uid, ds.pixel_array, **options)

    return edit


def _compressed(compression: str) -> Callable[[Path, list[Path]], list[Path]]:
    def build(folder: Path, files: list[Path]) -> list[Path]:
        for f in files:
            f.unlink()
        write_phantom_series(folder, shape=SHAPE, spacing_mm=SPACING, seed=3, compression=compression)
        return []

    return build


def _rgb(ds: pydicom.Dataset) -> None:
    grey = (ds.pixel_array.astype(np.int32) >> 4).clip(0, 255).astype(np.uint8)
    ds.PixelData = np.repeat(grey[..., None], 3, axis=-1).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "OT"
    del ds[0x00280120]  # PixelPaddingValue


def _shrink(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
    ds.Rows, ds.Columns = 16, 16


def _sagittal(ds: pydicom.Dataset) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def _duplicate(folder: Path, files: list[Path]) -> list[Path]:
    """A second instance (new SOPInstanceUID, same acquisition) at the position of slice 1."""
    shutil.copy(files[1], folder / "copy.dcm")
    _rewrite(folder / "copy.dcm", _set(SOPInstanceUID=pydicom.uid.generate_uid()))
    return []


def _beside(make_bad: Callable[[Path, list[Path]], Path]) -> Callable[[Path, list[Path]], list[Path]]:
    """A bad file added beside the good series: the series still opens, the file is a problem row."""

    def build(folder: Path, files: list[Path]) -> list[Path]:
        return [make_bad(folder, files)]

    return build


def _write(name: str, data: bytes) -> Callable[[Path, list[Path]], Path]:
    def make(folder: Path, files: list[Path]) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return make


def _gzip_copy(folder: Path, files: list[Path]) -> Path:
    out = folder / "slice.dcm.gz"
    out.write_bytes(gzip.compress(files[0].read_bytes()))
    return out


def _sr_copy(folder: Path, files: list[Path]) -> Path:
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    ds.Modality = "SR"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "report.dcm")
    return folder / "report.dcm"


def _fifo(folder: Path, files: list[Path]) -> Path:
    os.mkfifo(folder / "pipe.dcm")
    return folder / "pipe.dcm"


def _dangling(folder: Path, files: list[Path]) -> Path:
    (folder / "gone.dcm").symlink_to(folder / "nowhere.dcm")
    return folder / "gone.dcm"


def _file_link_loop(folder: Path, files: list[Path]) -> Path:
    (folder / "a.dcm").symlink_to(folder / "b.dcm")
    (folder / "b.dcm").symlink_to(folder / "a.dcm")
    return folder / "a.dcm"


def _folder_loop(folder: Path, files: list[Path]) -> list[Path]:
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)
    (folder / "self").symlink_to(folder, target_is_directory=True)
    (folder / "folder.dcm").mkdir()  # a folder named like a DICOM file
    return []


def _dicomdir(folder: Path, files: list[Path]) -> list[Path]:
    fileset = pydicom.fileset.FileSet()
    for f in files:
        fileset.add(f)
    fileset.write(folder / "media")
    for f in files:
        f.unlink()
    return [folder / "media" / "DICOMDIR"]


def _fail_with_eacces(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Make opening `victim` fail with EACCES inside ctframe (root ignores chmod 000).

    Headers are opened by ctframe.sources, pixels by ctframe.dicom.
    """
    real_open = open

    def guarded(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(file) == str(victim):
            raise PermissionError(13, "Permission denied", str(victim))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(dicom, "open", guarded, raising=False)
    monkeypatch.setattr(ctframe.sources, "open", guarded, raising=False)


CASES: dict[str, Case] = {
    # files that are not DICOM images, beside a good series
    "zero_byte": Case(_beside(_write("empty.dcm", b"")), "problem:empty file"),
    "non_dicom_text": Case(_beside(_write("notes.txt", b"patient list\n")), "problem:not a DICOM file"),
    "non_dicom_binary": Case(
        _beside(_write("blob.bin", np.random.default_rng(0).bytes(4096))), "problem:not a DICOM file"
    ),
    "png_image": Case(_beside(_write("shot.png", b"\x89PNG\r\n\x1a\n" + bytes(200))), "problem:not a DICOM file"),
    "gzip_wrapped": Case(_beside(_gzip_copy), "problem:gzip-compressed"),
    "structured_report": Case(_beside(_sr_copy), r"problem:no image pixel data \(Comprehensive SR Storage\)"),
    "fifo": Case(_beside(_fifo), r"problem:not a regular file \(a FIFO\)"),
    "dangling_symlink": Case(_beside(_dangling), "problem:cannot read file"),
    "symlink_loop_file": Case(_beside(_file_link_loop), "problem:cannot read file .*symbolic links"),
    "symlink_loop_folder": Case(_folder_loop, "ok", values="same"),
    "dicomdir_fileset": Case(_dicomdir, r"problem:DICOMDIR \(a media index\)", values="same"),
    # encodings of the same series
    "no_preamble_implicit": Case(_each(_no_meta, implicit_vr=True, little_endian=True), "ok", values="same"),
    "no_preamble_explicit": Case(_each(_no_meta, implicit_vr=False, little_endian=True), "ok", values="same"),
    "missing_transfer_syntax": Case(
        _each(_missing_syntax, implicit_vr=False, little_endian=True, enforce_file_format=False), "ok", values="same"
    ),
    "implicit_vr": Case(_each(_syntax(ImplicitVRLittleEndian), implicit_vr=True, little_endian=True), "ok", "same"),
    "big_endian": Case(
        _each(_big_endian, implicit_vr=False, little_endian=False, force_encoding=True), "ok", values="same"
    ),
    "deflated": Case(_each(_syntax(DeflatedExplicitVRLittleEndian)), "ok", values="same"),
    **{
        f"lossless_{c}": Case(_compressed(c), "ok", values="same", lossy=False)
        for c in ("rle", "jpeg-ls", "jpeg2000", "jpeg-lossless")
    },
    "lossy_jpeg_ls_near_lossless": Case(
        _each(_lossy(JPEGLSNearLossless, jls_error=3)), "ok", values="close:3", lossy=True
    ),
    "lossy_jpeg2000": Case(_each(_lossy(JPEG2000, j2k_psnr=[80])), "ok", values="close:64", lossy=True),
    # not CT
    "modality_mr": Case(_each(_set(Modality="MR")), "NotHUCalibratedError@hu:modality is MR, not CT"),
    "secondary_capture": Case(
        _each(_set(Modality="OT", SOPClassUID=SecondaryCaptureImageStorage)),
        "NotHUCalibratedError@hu:modality is OT, not CT",
    ),
    "rgb": Case(_each(_rgb), r"UnsupportedDicomError@open:colour image \(SamplesPerPixel != 1\)"),
    # series geometry
    "mixed_orientations": Case(_first(_sagittal), "MultipleSeriesError@open:holds 2 series/stacks"),
    "duplicate_positions": Case(_duplicate, "InconsistentSeriesError@open:share slice position"),
    "inconsistent_rows_columns": Case(_first(_shrink), "InconsistentSeriesError@open:slices differ in size"),
    "missing_image_position": Case(
        _first(_delete("ImagePositionPatient")), "InconsistentSeriesError@open:ImagePositionPatient is missing"
    ),
    "missing_image_orientation": Case(
        _each(_delete("ImageOrientationPatient")), "InconsistentSeriesError@open:ImageOrientationPatient is missing"
    ),
    "zero_pixel_spacing": Case(
        _each(_set(PixelSpacing=[0, 0])), "InconsistentSeriesError@open:PixelSpacing is missing"
    ),
    "absurd_pixel_spacing": Case(
        _each(_set(PixelSpacing=["1e308", "1e308"])), "InconsistentSeriesError@open:PixelSpacing is missing"
    ),
    "orientation_not_unit_vectors": Case(
        _each(_set(ImageOrientationPatient=["0", "1099511627775", "0", "0", "0", "1.6e296"])),
        "InconsistentSeriesError@open:ImageOrientationPatient is missing",
    ),
    "missing_pixel_spacing": Case(
        _each(_delete("PixelSpacing")), "InconsistentSeriesError@open:PixelSpacing is missing"
    ),
    "missing_rescale": Case(
        _each(_delete("RescaleSlope", "RescaleIntercept")),
        "NotHUCalibratedError@hu:RescaleSlope missing or not a finite number on 4 of 4",
    ),
    "missing_intercept_on_one_slice": Case(
        _first(_delete("RescaleIntercept")),
        "NotHUCalibratedError@hu:RescaleIntercept missing or not a finite number on 1 of 4",
    ),
    "not_hu_calibrated": Case(_each(_set(RescaleType="US")), "NotHUCalibratedError@hu:RescaleType is 'US', not HU"),
}


def _series_copy(base, tmp_path: Path) -> tuple[Path, list[Path]]:
    truth, _ = base
    folder = tmp_path / "input"
    shutil.copytree(truth.folder, folder)
    return folder, [folder / p.name for p in truth.paths]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input__generated_case(base, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    folder, files = _series_copy(base, tmp_path)
    bad = case.build(folder, files)
    outcome = check_api(folder)
    if case.expected.startswith("problem:"):
        assert bad, "a problem case must name its bad file"
        for path in bad:
            _assert_expected(outcome, case.expected, bad=path)
        assert len(outcome.problems) == len(bad) + (name == "symlink_loop_file"), outcome.problems
        _assert_expected(outcome, "ok")  # the good series beside it still opens
    else:
        _assert_expected(outcome, case.expected)
        assert outcome.problems.empty, outcome.problems
    if case.values is not None:
        stored = outcome.volume.values
        expected = base[1]
        if case.values == "same":
            np.testing.assert_array_equal(stored, expected)
        else:
            tolerance = int(case.values.split(":")[1])
            assert stored.shape == expected.shape and 0 < np.abs(stored.astype(int) - expected).max() <= tolerance
    if case.lossy is not None:
        assert ctframe.series_table(outcome.catalog)["is_lossy"].tolist() == [case.lossy]
    check_cli(["scan", str(folder)], ok_codes=(0,))
    out = tmp_path / "out" / "volume.nii.gz"
    code, output = check_cli(["export", str(folder), "-o", str(out)])
    assert (code == 0) == (outcome.error is None), output
    assert out.is_file() == (code == 0)


def test_bad_input__missing_slices_open_with_a_qc_warning(tmp_path: Path) -> None:
    write_phantom_series(tmp_path, shape=(6, 32, 32), spacing_mm=SPACING, drop_slices=(2,))
    outcome = check_api(tmp_path)
    _assert_expected(outcome, "ok")
    assert outcome.hu.shape == (5, 32, 32)
    assert [w for w in outcome.ctframe_warnings if re.search(r"QCWarning: .*missing slices", w)]
    code, output = check_cli(["export", str(tmp_path), "-o", str(tmp_path / "v.zarr")])  # positions kept
    assert code == 0 and re.search(r"^ctframe: warning: series .*missing slices", output, re.M), output
    code, output = check_cli(["export", str(tmp_path), "-o", str(tmp_path / "v.nii")])  # one NIfTI grid: refused
    assert code == 2 and re.search(r"^ctframe: error: .*not one NIfTI grid \(has_gaps: .*--resample-mm", output, re.M)


@pytest.mark.parametrize("where", ["preamble", "magic", "meta", "patient_name", "pixel_tag", "pixels", "last_bytes"])
def test_bad_input__truncated_slice_is_never_silently_read(base, tmp_path: Path, where: str) -> None:
    folder, files = _series_copy(base, tmp_path)
    victim = files[0]  # the first slice: dropping it leaves a regular series
    data = victim.read_bytes()
    offsets = {
        "preamble": 60,
        "magic": 130,
        "meta": 160,
        "patient_name": data.index(b"Phantom^Patient") + 4,
        "pixel_tag": data.rindex(b"\xe0\x7f\x10\x00") + 2,
        "pixels": data.rindex(b"\xe0\x7f\x10\x00") + 12 + 100,
        "last_bytes": len(data) - 2,
    }
    victim.write_bytes(data[: offsets[where]])
    outcome = check_api(folder)
    if str(victim) in set(outcome.problems["path"]):
        _assert_expected(outcome, "ok")  # skipped: the other three slices open
        assert outcome.hu.shape == (3, 32, 32)
        reason = outcome.problems.set_index("path")["reason"][str(victim)]
        expected = "not a DICOM file" if where in ("preamble", "magic") else "probably truncated"
        assert expected in reason, reason
    else:  # catalogued from its header: reading its pixels must fail, naming it
        assert isinstance(outcome.error, DicomReadError) and outcome.stage == "compute", outcome.error
        assert f"{victim}: pixel data truncated" in str(outcome.error)
    code, output = check_cli(["export", str(folder), "-o", str(tmp_path / "v.nii")])
    assert (code == 0) == (outcome.error is None), output


def test_bad_input__unreadable_file_at_scan_and_at_compute(base, tmp_path: Path, monkeypatch) -> None:
    """Permission denied, simulated: tests run as root in CI, and root reads files chmod 000."""
    folder, files = _series_copy(base, tmp_path)
    _fail_with_eacces(monkeypatch, files[0])
    outcome = check_api(folder)
    _assert_expected(outcome, r"problem:cannot read file \(Permission denied\)", bad=files[0])
    _assert_expected(outcome, "ok")
    check_cli(["scan", str(folder)], ok_codes=(0,))
    monkeypatch.undo()
    # readable when scanned, gone when the pixels are read
    volume = ctframe.open_series(folder)
    files[2].unlink()
    with pytest.raises(DicomReadError, match=rf"{re.escape(str(files[2]))}: "):
        volume.compute()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions (CI runs as root)")
def test_bad_input__chmod_000_file_is_a_problem(base, tmp_path: Path) -> None:  # pragma: no cover - not as root
    folder, files = _series_copy(base, tmp_path)
    files[0].chmod(0)
    outcome = check_api(folder)
    _assert_expected(outcome, r"problem:cannot read file \(Permission denied\)", bad=files[0])


def _corrupt_rle(edge_cases: Path, folder: Path) -> Path:
    """CT1_RLE with one run length changed: pylibjpeg-rle's Rust decoder panics on it."""
    path = edge_cases / "wg04-robyoung" / "CT1_RLE.dcm"
    source = path.read_bytes()
    frame = next(pydicom.encaps.generate_frames(pydicom.dcmread(path).PixelData))
    corrupt = bytearray(source)
    corrupt[source.index(frame[:64]) + 300] = 182  # a run length inside the first segment
    folder.mkdir(exist_ok=True)
    (folder / "ct.dcm").write_bytes(bytes(corrupt))
    return folder / "ct.dcm"


def test_bad_input__corrupt_rle_is_a_read_error_in_one_line(edge_cases: Path, tmp_path: Path) -> None:
    path = _corrupt_rle(edge_cases, tmp_path / "in")
    outcome = check_api(path.parent)
    _assert_expected(outcome, r"DicomReadError@compute:ct.dcm: cannot decode pixel data \(1.2.840.10008.1.2.5; ")
    result = _ctframe("export", str(path.parent), "-o", str(tmp_path / "v.nii"), "-q")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"ctframe: error: {outcome.error}"]  # no Rust panic backtrace


def test_bad_input__rust_decoder_panic_is_a_read_error(edge_cases: Path, tmp_path: Path, monkeypatch) -> None:
    """A panicking pyo3 decoder raises PanicException, a BaseException: it must still become a DicomReadError."""
    from pydicom.pixels import pixel_array

    _corrupt_rle(edge_cases, tmp_path)
    monkeypatch.setattr(dicom, "_read_with_imagecodecs", lambda *a, **k: None)
    monkeypatch.setattr(dicom, "_read_with_pydicom", lambda p, *a: [pixel_array(p, decoding_plugin="pylibjpeg")])
    with pytest.raises(DicomReadError, match=r"ct.dcm: cannot decode pixel data .*PanicException"):
        ctframe.open_series(tmp_path).compute(scheduler="synchronous")


def test_bad_input__huge_frame_count_is_rejected_at_scan(base, tmp_path: Path) -> None:
    folder, files = _series_copy(base, tmp_path)
    _rewrite(files[0], _set(NumberOfFrames="2000000000"))
    outcome = check_api(folder, timeout_s=10)
    _assert_expected(outcome, "problem:header declares 2000000000 frame", bad=files[0])


def test_bad_input__odd_bits_allocated_names_the_file(base, tmp_path: Path) -> None:
    folder, files = _series_copy(base, tmp_path)
    _rewrite(files[1], _set(BitsAllocated=12))
    outcome = check_api(folder)
    _assert_expected(outcome, f"UnsupportedDicomError@open:{re.escape(str(files[1]))}: BitsAllocated 12")


def test_bad_input__corrupt_slope_gives_nan_not_a_warning(base, tmp_path: Path) -> None:
    folder, files = _series_copy(base, tmp_path)
    _rewrite(files[1], _set(RescaleSlope="1e308"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's overflow warnings
        with pytest.warns(QCWarning, match="rescale slope/intercept varies"):
            hu = ctframe.to_hu(ctframe.open_series(folder)).values
    assert np.isnan(hu[1][base[1][1] > 1]).all() and np.isfinite(hu[0]).any()


def test_bad_input__roots_that_are_not_files_or_folders(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(NoSeriesError, match="neither a regular file nor a folder"):
        ctframe.scan(tmp_path / "pipe")
    with pytest.raises(NoSeriesError, match="broken symbolic link"):
        ctframe.scan(tmp_path / "broken")
    for root in ("pipe", "broken", "missing"):
        _, output = check_cli(["scan", str(tmp_path / root)], ok_codes=(2,))
        assert str(tmp_path / root) in output


# --------------------------------------------------------------------------- real subprocesses


def _ctframe(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("ctframe")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "ctframe.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)


def test_cli__subprocess_scan_of_every_edge_case(edge_cases: Path) -> None:
    result = _ctframe("scan", str(edge_cases))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"\d+ file\(s\) skipped", result.stdout)
    for reason in ("gzip-compressed", "DICOMDIR", "no image pixel data", "not a DICOM file"):
        assert reason in result.stdout


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pydicom-3.0.2/zipMR.gz", r"no DICOM image found in .*zipMR.gz"),
        ("pydicom-3.0.2/MR_truncated.dcm", r"modality is MR, not CT"),
        ("pydicom-3.0.2/SC_rgb_small_odd.dcm", r"SC_rgb_small_odd.dcm: colour image"),
    ],
)
def test_cli__subprocess_export_of_bad_files_is_one_line(
    edge_cases: Path, tmp_path: Path, name: str, message: str
) -> None:
    result = _ctframe("export", str(edge_cases / name), "-o", str(tmp_path / "v.nii"), "-q")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctframe: error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not list(tmp_path.iterdir())


def test_cli__subprocess_export_of_truncated_pixels(edge_cases: Path, tmp_path: Path) -> None:
    path = edge_cases / "pydicom-3.0.2" / "MR_truncated.dcm"
    result = _ctframe("export", str(path), "--stored", "-o", str(tmp_path / "v.nii"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ctframe: error: {path}: pixel data truncated (frame 0 needs 4096 values, found 4065)"
    ]


def test_contract__a_foreign_exception_fails_it(base, tmp_path: Path, monkeypatch) -> None:
    """The suite is not vacuous: an exception other than CTFrameError escapes check_api."""
    folder, _ = _series_copy(base, tmp_path)

    def broken(*args, **kwargs):
        raise KeyError("not a ctframe error")

    monkeypatch.setattr(dicom, "_decode_file", broken)
    monkeypatch.setattr(dicom, "_read_native_into", broken)  # the uncompressed stack's direct read
    with pytest.raises(KeyError, match="not a ctframe error"):
        check_api(folder)
    code, output = check_cli(["export", str(folder), "-o", str(tmp_path / "v.nii")], ok_codes=(1,))
    assert code == 1  # the CLI's "a bug" status, which every test above rules out
    assert "internal error in ctframe (a bug, please report it): KeyError" in output


def test_bad_input__header_shape_larger_than_the_frame_allocates_nothing(edge_cases: Path, tmp_path: Path) -> None:
    """Rows/Columns of 60000 on a 512x512 JPEG 2000 frame: a clear error, not a 7 GB buffer first."""
    ds = pydicom.dcmread(edge_cases / "wg04-robyoung" / "CT1_J2KR.dcm")
    ds.Rows = ds.Columns = 60000
    ds.save_as(tmp_path / "ct.dcm")
    volume = ctframe.open_series(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError, match=r"ct.dcm: decoded frame has shape \(512, 512\), expected \(60000"):
            volume.compute(scheduler="synchronous")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200e6


@pytest.mark.parametrize("regions", ["scan", "default"])
def test_cli__summarize_of_the_edge_case_tree_completes(edge_cases: Path, tmp_path: Path, regions: str) -> None:
    """A folder of messy exports is the typical input: bad stacks become problems rows, the rest is summarised."""
    args = ["summarize", str(edge_cases), "-o", str(tmp_path / "out"), "-q"]
    if regions == "scan":
        (tmp_path / "scan.yaml").write_text("cohort:\n  regions: [scan]\n")
        args += ["-c", str(tmp_path / "scan.yaml")]
    code, output = check_cli(args, ok_codes=(0, 1, 2))
    assert code == 0, output
    problems = pd.read_csv(tmp_path / "out" / "problems.csv")
    assert (problems["stage"] == "scan").sum() == 18  # the files that are not DICOM images
    compute = problems[problems["stage"] == "compute"]
    if regions == "default":  # the single slice without SliceThickness cannot be segmented: a row, not a crash
        assert compute["reason"].str.contains("spacing along 'slice' is unknown").sum() == 1, compute
    series = pd.read_parquet(tmp_path / "out" / "series.parquet")
    assert series["selected"].sum() >= 8


def test_bad_input__not_hu_calibrated_stacks_are_not_summarised(tmp_path: Path) -> None:
    """to_hu refuses them, so the cohort's HU tables (which rescale on their own) must not include them."""
    good = write_phantom_series(tmp_path / "good", shape=SHAPE, spacing_mm=SPACING, seed=1, patient_id="A")
    derived = write_phantom_series(tmp_path / "derived", shape=SHAPE, spacing_mm=SPACING, seed=2, patient_id="B")
    partial = write_phantom_series(tmp_path / "partial", shape=SHAPE, spacing_mm=SPACING, seed=3, patient_id="C")
    for path in derived.paths:
        _rewrite(path, _set(RescaleType="US"))
    _rewrite(partial.paths[2], _delete("RescaleIntercept"))

    table = ctframe.series_table(ctframe.scan(tmp_path)).set_index("series_uid")
    truths = {"good": good, "derived": derived, "partial": partial}
    uid = {name: pseudonymous_uid(t.series_uid) for name, t in truths.items()}
    expected = {uid["good"]: False, uid["derived"]: True, uid["partial"]: True}  # tables hold pseudonyms
    assert table["not_hu_calibrated"].to_dict() == expected
    assert table["usable"].to_dict() == {key: not flag for key, flag in expected.items()}
    cohort = open_cohort(tmp_path)
    assert list(cohort.volumes) == [uid["good"]]
    assert cohort.series.set_index("series_uid").loc[uid["derived"], "selection_reason"] == "excluded: not usable"


def test_cli__closed_stdout_pipe_stops_quietly(edge_cases: Path) -> None:
    """`ctframe scan ROOT | head`: the reader leaves early; no error line, no 'Exception ignored' noise."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    exe = Path(sys.executable).with_name("ctframe")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "ctframe.cli"]
    try:
        result = subprocess.run(
            [*command, "scan", str(edge_cases)], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    # off a terminal the scan stage reports itself in one line; nothing else (no error, no 'Exception ignored')
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"scanned {edge_cases}:"), result.stderr


@pytest.mark.parametrize(
    ("source", "change"),
    [
        ("lidc", "truncate"),  # native: read at the offset the scan found
        ("lidc", "grow"),
        ("rle", "truncate"),  # encapsulated: the items read at their offset, then decoded
    ],
)
def test_bad_input__file_changed_after_the_scan_is_named_once(
    lidc_dir: Path, edge_cases: Path, tmp_path: Path, source: str, change: str
) -> None:
    """The issue's 'IM30: cannot read pixel data (IM30: file changed ...)': one message, the path once."""
    src = sorted(lidc_dir.glob("*.dcm"))[30] if source == "lidc" else edge_cases / "wg04-robyoung" / "CT1_RLE.dcm"
    path = tmp_path / "IM30"
    shutil.copy(src, path)
    volume = ctframe.open_series(path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000] if change == "truncate" else data + b"\0" * 16)
    with pytest.raises(DicomReadError) as info:
        volume.compute(scheduler="synchronous")
    message = str(info.value)
    assert message.startswith(f"{path}: file changed since it was scanned"), message
    assert message.count(str(path)) == 1, message
    assert "cannot read pixel data" not in message and "cannot decode" not in message
    assert not isinstance(info.value, OSError)  # ctframe's `except OSError` around a read cannot catch it again
