"""Pixel reading paths give exactly pydicom's pixel_array; header records are safe."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _read_paths import READ_PATHS, install_path_spies, natural_path
from pydicom.dataelem import convert_raw_data_element

import ctframe
from ctframe import dicom
from ctframe.dicom import SliceRef, read_frames, read_header
from ctframe.errors import DicomReadError, ScanWarning, UnsupportedDicomError


def _refs(catalog) -> list[SliceRef]:
    return [
        SliceRef(
            path=r.path, frame=int(r.frame), number_of_frames=int(r.number_of_frames), file_size=int(r.file_size),
            transfer_syntax_uid=r.transfer_syntax_uid, pixel_data_offset=int(r.pixel_data_offset), rows=int(r.rows),
            columns=int(r.columns), bits_allocated=int(r.bits_allocated), bits_stored=int(r.bits_stored),
            pixel_representation=int(r.pixel_representation), samples_per_pixel=int(r.samples_per_pixel),
        )
        for r in catalog.itertuples()
    ]  # fmt: skip


@pytest.fixture(scope="module")
def shared_catalog(shared_data: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScanWarning)
        return ctframe.scan(shared_data)


@functools.lru_cache(maxsize=4)  # rows come sorted by file: a multi-frame file is decoded once
def _pixel_array(path: str) -> np.ndarray | str:
    """pydicom's ``pixel_array`` of `path`, or the error pydicom raises (then there is no reference)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path).pixel_array
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


#: Files whose pixels pydicom cannot decode, so there is nothing to compare: NumberOfFrames '1A' (badVR),
#: pixel data cut short (MR_truncated).
NO_REFERENCE = {"badVR.dcm", "MR_truncated.dcm"}


@pytest.fixture
def force_path(monkeypatch):
    return install_path_spies(monkeypatch)


@pytest.mark.parametrize("path", READ_PATHS)
def test_read_frames__every_shared_file_equals_pixel_array_on_each_path(shared_catalog, force_path, path: str) -> None:
    """Every frame of ../shared/data that pydicom decodes: ctframe's stored values equal ``pixel_array``.

    Each path takes every frame it can: the native fast path and imagecodecs
    the frames ctframe sends them, pydicom's every frame (forced). Colour
    frames must be refused with a clear error.
    """
    refs = sorted(_refs(shared_catalog), key=lambda r: (r.path, r.frame))
    if path != "pydicom":
        refs = [r for r in refs if natural_path(r) == path]
    refs = [r for r in refs if r.samples_per_pixel == 1 or r.frame == 0]  # colour: one frame shows the refusal
    ran = force_path(path)
    checked, no_reference, refused = 0, set(), set()
    for ref in refs:
        dtype = dicom.stored_dtype([ref.bits_allocated], [ref.pixel_representation])
        if ref.samples_per_pixel > 1:  # colour: refused (CT volumes hold one sample per pixel), never misread
            with pytest.raises(DicomReadError, match=r"decoded frame has shape \(\d+, \d+, \d+\)"):
                read_frames([ref], dtype=dtype)
            refused.add(Path(ref.path).name)
            continue
        reference = _pixel_array(ref.path)
        if isinstance(reference, str):
            no_reference.add(Path(ref.path).name)
            continue
        if ref.number_of_frames > 1:
            reference = reference[ref.frame]
        ours = read_frames([ref], dtype=dtype)[0]
        assert np.can_cast(reference.dtype, ours.dtype), ref.path
        np.testing.assert_array_equal(ours, reference, err_msg=f"{ref.path} frame {ref.frame} on the {path} path")
        checked += 1
    assert set(ran) == {path}, sorted(set(ran))
    assert no_reference <= NO_REFERENCE
    minimum = {"native": 450, "imagecodecs": 12, "pydicom": 450}[path]
    assert checked >= minimum, (checked, sorted(refused), sorted(no_reference))


def test_read_frames__truncated_pixel_data_is_a_clear_error(edge_cases: Path) -> None:
    path = edge_cases / "pydicom-3.0.2" / "MR_truncated.dcm"
    catalog = ctframe.scan(path)
    with pytest.raises(DicomReadError, match=r"MR_truncated.dcm: pixel data truncated"):
        read_frames(_refs(catalog), dtype=np.dtype("int16"))


@pytest.mark.parametrize("name", ["CT1_RLE", "CT1_JPLL", "CT1_JLSL", "CT1_J2KR"])
def test_read_frames__lossless_syntaxes_decode_to_uncompressed_hu(edge_cases: Path, name: str) -> None:
    folder = edge_cases / "wg04-robyoung"
    reference = ctframe.to_hu(ctframe.open_series(folder / "CT1_UNC.dcm")).values
    decoded = ctframe.to_hu(ctframe.open_series(folder / f"{name}.dcm")).values
    np.testing.assert_array_equal(decoded, reference)


@pytest.mark.parametrize(("name", "max_error"), [("CT1_JLSN", 4), ("CT1_J2KI", 500)])
def test_read_frames__lossy_syntaxes_decode_close_and_are_flagged(edge_cases: Path, name: str, max_error: int) -> None:
    folder = edge_cases / "wg04-robyoung"
    reference = ctframe.open_series(folder / "CT1_UNC.dcm").values.astype(int)
    volume = ctframe.open_series(folder / f"{name}.dcm")
    assert volume.attrs["is_lossy"] == 1
    difference = np.abs(volume.values.astype(int) - reference)
    assert 0 < difference.max() <= max_error


def test_read_frames__jpeg_lossless_uses_imagecodecs_and_matches_pydicom(edge_cases: Path, monkeypatch) -> None:
    pytest.importorskip("imagecodecs")
    path = edge_cases / "wg04-robyoung" / "CT1_JPLL.dcm"
    monkeypatch.setattr(dicom, "_read_with_pydicom", lambda *a, **k: pytest.fail("fallback used"))
    ours = read_frames(_refs(ctframe.scan(path)), dtype=np.dtype("int16"))[0]
    np.testing.assert_array_equal(ours, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["CT1_JLSL", "CT1_J2KR", "CT1_JLSN", "CT1_J2KI", "CT1_RLE"])
def test_read_frames__imagecodecs_path_is_used_and_exact(edge_cases: Path, monkeypatch, name: str) -> None:
    pytest.importorskip("imagecodecs")
    path = edge_cases / "wg04-robyoung" / f"{name}.dcm"
    monkeypatch.setattr(dicom, "_read_with_pydicom", lambda *a, **k: pytest.fail("fallback used"))
    refs = _refs(ctframe.scan(path))
    assert refs[0].pixel_data_offset > 0  # the scan recorded where the items start: read there
    ours = read_frames(refs, dtype=np.dtype("int16"))[0]
    np.testing.assert_array_equal(ours, pydicom.dcmread(path).pixel_array)
    # without a recorded offset the items come from pydicom's dcmread: the same frame
    no_offset = [ref._replace(pixel_data_offset=-1) for ref in refs]
    np.testing.assert_array_equal(read_frames(no_offset, dtype=np.dtype("int16"))[0], ours)


def test_read_frames__compressed_files_fall_back_to_pydicom(edge_cases: Path, monkeypatch) -> None:
    calls = []
    original = dicom._read_with_pydicom

    def spy(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(dicom, "_read_with_pydicom", spy)
    path = edge_cases / "pydicom-3.0.2" / "JPGExtended.dcm"  # JPEG Extended: not an imagecodecs path here
    ours = read_frames(_refs(ctframe.scan(path)), dtype=np.dtype("uint16"))[0]
    assert calls == [str(path)]
    np.testing.assert_array_equal(ours, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("name", ["J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"])
def test_read_frames__awkward_jpeg2000_matches_pydicom(edge_cases: Path, name: str) -> None:
    path = edge_cases / "pydicom-3.0.2" / name
    ours = read_frames(_refs(ctframe.scan(path)), dtype=np.dtype("int16"))[0]
    np.testing.assert_array_equal(ours, pydicom.dcmread(path).pixel_array)


def test_read_header__padding_value_signedness(lidc_dir: Path) -> None:
    record = read_header(lidc_dir / "1-001.dcm")[0]
    assert record["padding_value"] == -2000.0


def test_read_header__non_image_raises_unsupported(edge_cases: Path) -> None:
    with pytest.raises(UnsupportedDicomError, match="no image pixel data"):
        read_header(edge_cases / "pydicom-3.0.2" / "test-SR.dcm")


def test_read_header__bad_value_does_not_escape(edge_cases: Path) -> None:
    # NumberOfFrames = '1A' (invalid IS): read as one frame, no exception
    records = read_header(edge_cases / "pydicom-3.0.2" / "badVR.dcm")
    assert len(records) == 1 and records[0]["modality"] == "RTDOSE"


def test_read_header__deflated_and_big_endian_are_images(edge_cases: Path) -> None:
    deflated = read_header(edge_cases / "pydicom-3.0.2" / "image_dfl.dcm")[0]
    assert deflated["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    assert deflated["pixel_data_offset"] == -1  # never read deflated bytes directly
    big = read_header(edge_cases / "pydicom-3.0.2" / "MR_small_bigendian.dcm")[0]
    assert big["pixel_data_offset"] == -1
    volume = ctframe.open_series(edge_cases / "pydicom-3.0.2" / "MR_small_bigendian.dcm")
    np.testing.assert_array_equal(
        volume.values[0], pydicom.dcmread(edge_cases / "pydicom-3.0.2" / "MR_small_bigendian.dcm").pixel_array
    )


def _header_outcome(path: Path) -> pd.DataFrame | str:
    """Every record of `path` as a DataFrame, or the error it raises."""
    try:
        return pd.DataFrame(read_header(path, salt="s"))
    except (DicomReadError, UnsupportedDicomError) as exc:
        return f"{type(exc).__name__}: {exc}"


def test_read_header__fast_value_conversion_equals_pydicom_on_every_shared_file(shared_data: Path, monkeypatch) -> None:
    # the fast paths (the header parser of ctframe.header_fastpath, pydicom's value
    # converter, DS text straight to float) against pydicom's dcmread and full
    # element conversion, on every file of ../shared/data
    paths = sorted(p for p in shared_data.rglob("*") if p.is_file())
    fast = {p: _header_outcome(p) for p in paths}

    def pydicom_conversion(element, ds):
        return convert_raw_data_element(element, encoding=ds.original_character_set, ds=ds).value

    monkeypatch.setattr(dicom, "parse_header", lambda fp, size: None)  # pydicom's dcmread for every header
    monkeypatch.setattr(dicom, "_convert_raw", pydicom_conversion)
    monkeypatch.setattr(dicom, "_get_number", dicom._get)
    monkeypatch.setattr(dicom, "_get_int", lambda ds, keyword, default=-1: dicom._int(dicom._get(ds, keyword), default))
    n_images = 0
    for path in paths:
        reference = _header_outcome(path)
        if isinstance(reference, str):
            assert fast[path] == reference, path
        else:
            n_images += 1
            pd.testing.assert_frame_equal(fast[path], reference, obj=str(path))
    assert n_images > 250  # the real series and most of the awkward corpus are images


def test_stored_dtype__mixed_signedness_widens() -> None:
    assert dicom.stored_dtype([16, 16], [0, 1]) == np.int32
    with pytest.raises(UnsupportedDicomError, match="BitsAllocated 12"):
        dicom.stored_dtype([12], [0])


def test_read_header__a_text_file_costs_no_more_memory_than_its_size(lidc_dir: Path) -> None:
    """pydicom read the radiologists' 300 KB XML as a dataset without preamble and asked for 1.6 GB at once."""
    import tracemalloc

    xml = lidc_dir / "069.xml"
    tracemalloc.start()
    try:
        with pytest.raises(ctframe.DicomReadError, match="not a DICOM file"):
            read_header(xml)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * xml.stat().st_size, f"{peak / 2**20:.0f} MiB to reject a {xml.stat().st_size} byte file"


@pytest.mark.parametrize(
    ("center", "width", "expected"),
    [("40.0000", "400.00", ("40", "400")), ("-600\\40", "1500\\400", ("-600\\40", "1500\\400")),
     ("4.0E1", "4.5e+02", ("40", "450")), ("+40.5 ", " 0400", ("40.5", "400"))],
)  # fmt: skip
def test_read_header__window_text_is_canonical(lidc_dir: Path, tmp_path: Path, center, width, expected) -> None:
    """Writers pad decimal strings differently ('40.0000', '4.0E1', '+40.5 '): the catalog writes each number one way,
    the way a DICOMweb server's JSON numbers come out too, so catalogs agree whatever the source."""
    import pydicom

    ds = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    ds.WindowCenter, ds.WindowWidth = center, width  # pydicom keeps a DS's original text when it writes
    ds.save_as(tmp_path / "slice.dcm")
    assert center.encode() in (tmp_path / "slice.dcm").read_bytes()  # the text as written, not reformatted
    record = read_header(tmp_path / "slice.dcm")[0]
    assert (record["window_center"], record["window_width"]) == expected
