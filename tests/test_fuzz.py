"""Fuzzing: mutated real files and corrupt header values through scan, open_series, to_hu and compute.

Every example must satisfy the bad-input contract of ``tests/_contract.py``: a
catalog or problems row for each file, and either HU values or a ``CTFrameError``
naming the file or series; any other exception, an undocumented warning from
ctframe, or a call running past its time limit fails the test.

The normal run is short and deterministic (``FUZZ_EXAMPLES`` examples per test,
derandomised). A long, random run (see ``docs/reliability.md``)::

    CTFRAME_FUZZ_EXAMPLES=5000 .venv/bin/pytest tests/test_fuzz.py -p no:cacheprovider \
        --hypothesis-show-statistics

keeps failing examples in ``.hypothesis/`` so that the next run replays them first.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from _contract import check_api
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement

from ctframe.testing import write_phantom_series

LONG_RUN = "CTFRAME_FUZZ_EXAMPLES" in os.environ
FUZZ_EXAMPLES = int(os.environ.get("CTFRAME_FUZZ_EXAMPLES", "30"))
#: Hang guard of one ctframe call (bounded work on hostile headers), generous enough for a loaded machine;
#: there is no per-example deadline (a slow example on a busy machine is not a failure).
GUARD_S = 120.0
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,  # the normal run sees the same examples every time
    database=None if not LONG_RUN else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)

#: Real files to mutate (relative to ../shared/data): LIDC slices go in as a
#: 3-slice series with one slice mutated, the others alone.
SEEDS = {
    "lidc": ["lidc-idri-0001/1-040.dcm", "lidc-idri-0001/1-041.dcm", "lidc-idri-0001/1-042.dcm"],
    "CT1_UNC": ["edge-cases/wg04-robyoung/CT1_UNC.dcm"],
    "CT1_RLE": ["edge-cases/wg04-robyoung/CT1_RLE.dcm"],
    "CT1_JPLL": ["edge-cases/wg04-robyoung/CT1_JPLL.dcm"],
    "CT1_JLSL": ["edge-cases/wg04-robyoung/CT1_JLSL.dcm"],
    "CT1_J2KR": ["edge-cases/wg04-robyoung/CT1_J2KR.dcm"],
    "CT1_J2KI": ["edge-cases/wg04-robyoung/CT1_J2KI.dcm"],
    "enhanced_ct": ["edge-cases/pydicom-data-1.0.0/eCT_Supplemental.dcm"],
    "CT_small": ["edge-cases/pydicom-3.0.2/CT_small.dcm"],
}
HEADER_BYTES = 2048  # most of a file's header lies in its first 2 KB


@pytest.fixture(scope="module")
def seed_bytes(shared_data: Path) -> dict[str, list[bytes]]:
    return {name: [(shared_data / p).read_bytes() for p in paths] for name, paths in SEEDS.items()}


# --------------------------------------------------------------------------- byte mutations

_position = st.integers(min_value=0, max_value=2**24)
_some_bytes = st.binary(min_size=1, max_size=16)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 7)),
    st.tuples(st.just("flip_header"), st.integers(0, HEADER_BYTES - 1), st.integers(0, 7)),
    st.tuples(st.just("truncate"), _position),
    st.tuples(st.just("insert"), _position, _some_bytes),
    st.tuples(
        st.just("overwrite_header"),
        st.integers(0, HEADER_BYTES - 1),
        st.one_of(_some_bytes, st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff", b"\x80\x00"])),
    ),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    """Apply byte mutations in order; positions wrap around the current length."""
    out = bytearray(data)
    for kind, *args in mutations:
        if not out:
            break
        pos = args[0] % len(out)
        if kind in ("flip", "flip_header"):
            out[pos] ^= 1 << args[1]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "insert":
            out[pos:pos] = args[1]
        else:
            out[pos : pos + len(args[1])] = args[1]
    return bytes(out)


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ctframe-fuzz-") as folder:
        yield Path(folder)


def _record(outcome) -> None:
    if not len(outcome.catalog):
        event("skipped by scan")
    elif outcome.error is None:
        event("opened, HU computed")
    else:
        event(f"{type(outcome.error).__name__} at {outcome.stage}")


@FUZZ_SETTINGS
@given(
    seed=st.sampled_from(sorted(SEEDS)), which=st.integers(0, 2), mutations=st.lists(MUTATION, min_size=1, max_size=4)
)
def test_fuzz__byte_mutations_of_real_files(seed_bytes, seed: str, which: int, mutations: list[tuple]) -> None:
    files = seed_bytes[seed]
    victim = which % len(files)
    with _folder() as folder:
        for i, data in enumerate(files):
            (folder / f"{i}.dcm").write_bytes(mutate(data, mutations) if i == victim else data)
        _record(check_api(folder, timeout_s=GUARD_S))


# --------------------------------------------------------------------------- header values

#: Tags whose values ctframe reads; each gets random, invalid or missing values.
KEY_TAGS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "NumberOfFrames", "PhotometricInterpretation", "PlanarConfiguration", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "RescaleSlope", "RescaleIntercept", "RescaleType",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "Modality", "SOPClassUID", "SeriesInstanceUID",
    "StudyInstanceUID", "AcquisitionNumber", "InstanceNumber", "ImageType", "StudyDate", "StudyTime", "PatientID",
    "GantryDetectorTilt", "KVP", "SpecificCharacterSet", "WindowCenter", "WindowWidth", "LossyImageCompression",
)  # fmt: skip
NASTY_TEXT = (
    "", " ", "\\", "0", "-0", "-1", "1A", "nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-320", "99999999999999",
    "0\\0", "1\\2\\3", "0\\0\\0\\0\\0\\0", "nan\\nan", "1\\0\\0\\0\\1\\0", "0\\1\\0\\0\\0\\-1", "é", "\x00", "HU",
    "US", "CT", "MR", "ISO_IR 192", "ISO 2022 IR 87", "../../etc", "20200231", "250000",
)  # fmt: skip
_number = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
VALUE = st.one_of(
    st.just(("delete", None)),
    st.tuples(st.just("text"), st.sampled_from(NASTY_TEXT)),
    st.tuples(st.just("text"), st.lists(_number, min_size=1, max_size=7).map("\\".join)),
    st.tuples(st.just("text"), st.text(max_size=24)),
    st.tuples(st.just("int"), st.sampled_from([0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 31, 32, 33, 64, 255, 4096, 65535])),
    st.tuples(st.just("raw"), st.binary(max_size=16)),  # wrong VR: bytes where a number or text belongs
)
EDIT = st.tuples(st.sampled_from(KEY_TAGS), VALUE)


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory) -> list[bytes]:
    truth = write_phantom_series(
        tmp_path_factory.mktemp("fuzz-phantom"), shape=(3, 16, 16), spacing_mm=(3.0, 12.0, 12.0), return_arrays=False
    )
    return [p.read_bytes() for p in truth.paths]


_BINARY_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "AT", "US or SS", "OB", "OW"})


def _element(tag: int, kind: str, value: object) -> DataElement:
    vr = pydicom.datadict.dictionary_VR(tag)
    if kind == "raw":
        return DataElement(tag, "OB", value)
    if kind == "int":
        return DataElement(tag, "US", value)
    if vr in _BINARY_VRS:  # text where a binary number belongs: stored as LO, as some writers do
        return DataElement(tag, "LO", value)
    with contextlib.suppress(Exception):  # pydicom refuses some values for the tag's own VR
        return DataElement(tag, vr, value)
    return DataElement(tag, "LO", value)


@contextlib.contextmanager
def _lenient_writing() -> Iterator[None]:
    """Let pydicom write invalid values (its default refuses them): corrupt files are the point."""
    settings_ = pydicom.config.settings
    previous = settings_.writing_validation_mode
    settings_.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings_.writing_validation_mode = previous


def apply_edits(path: Path, edits: list[tuple]) -> bool:
    """Rewrite `path` with the edits; False when pydicom cannot write the result."""
    ds = pydicom.dcmread(path)
    for keyword, (kind, value) in edits:
        tag = pydicom.datadict.tag_for_keyword(keyword)
        if kind == "delete":
            if tag in ds:
                del ds[tag]
            continue
        ds[tag] = _element(tag, kind, value)
    try:
        ds.save_as(path)
    except Exception:  # an unwritable combination is no input at all
        return False
    return True


@FUZZ_SETTINGS
@given(edits=st.lists(EDIT, min_size=1, max_size=3), every_slice=st.booleans(), which=st.integers(0, 2))
# found by long runs: a huge orientation overflowed the slice normal, huge spacings the coordinates
@example(edits=[("ImageOrientationPatient", ("text", "0\\1099511627775\\0\\0\\0\\1e296"))], every_slice=True, which=0)
@example(edits=[("ImagePositionPatient", ("text", "1.7e308\\-1.7e308\\1.7e308"))], every_slice=False, which=1)
@example(edits=[("PixelSpacing", ("text", "1e308\\1e308"))], every_slice=True, which=0)
def test_fuzz__corrupt_header_values(phantom_files, edits: list[tuple], every_slice: bool, which: int) -> None:
    with _folder() as folder:
        paths = []
        for i, data in enumerate(phantom_files):
            path = folder / f"{i}.dcm"
            path.write_bytes(data)
            paths.append(path)
        with _lenient_writing():
            written = [apply_edits(p, edits) for p in (paths if every_slice else [paths[which]])]
        if not all(written):
            event("edit not writable by pydicom")
            return
        _record(check_api(folder, timeout_s=GUARD_S))


def test_fuzz__mutate_is_deterministic_and_bounded() -> None:
    data = bytes(range(256)) * 4
    assert mutate(data, [("flip", 1, 0)]) == data[:1] + bytes([data[1] ^ 1]) + data[2:]
    assert mutate(data, [("truncate", 1024 + 10)]) == data[:10]
    assert mutate(data, [("insert", 3, b"ab")])[3:5] == b"ab"
    assert mutate(data, [("overwrite_header", 0, b"\xff\xff")])[:2] == b"\xff\xff"
    assert mutate(b"", [("flip", 0, 0)]) == b""


def test_fuzz__shared_seed_files_exist(shared_data: Path) -> None:
    missing = [p for paths in SEEDS.values() for p in paths if not (shared_data / p).is_file()]
    assert not missing
