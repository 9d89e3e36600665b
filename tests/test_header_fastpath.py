"""The header fast path gives exactly pydicom's dataset, or declines and leaves the file to pydicom."""

from __future__ import annotations

import ast
import functools
import io
import math
import struct
import tomllib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
from packaging.specifiers import SpecifierSet
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

import ctframe
from ctframe import dicom
from ctframe.header_fastpath import TESTED_PYDICOM, fast_path_enabled, parse_header
from ctframe.testing import write_phantom_series

REPO = Path(__file__).resolve().parents[1]


def _stored(ds: Dataset) -> dict[Any, Any]:
    """The elements as the dataset stores them (``get_item(keep_deferred=True)`` converts nothing)."""
    return {tag: ds.get_item(tag, keep_deferred=True) for tag in ds.keys()}  # noqa: SIM118 - elements, not tags


def _elements(ds: Dataset) -> list[tuple[Any, ...]]:
    """Everything pydicom stored for each element, items of sequences included."""
    out: list[tuple[Any, ...]] = []
    stored = _stored(ds)
    for tag in sorted(stored):  # the stored (raw) elements, not converted ones
        element = stored[tag]
        if isinstance(element, DataElement) and element.VR == "SQ":
            items = [_elements(item) for item in element.value]
            out.append((tag, "SQ", element.file_tell, element.is_undefined_length, items))
        elif isinstance(element, DataElement):  # converted when the dataset was read
            out.append((tag, element.VR, element.file_tell, repr(element.value)))
        else:
            out.append(tuple(element))
    return out


def _pydicom_reference(path: Path) -> tuple[Dataset, int] | None:
    try:
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            return ds, fp.tell()
    except Exception:
        return None  # pydicom cannot read it without force: the fast path must decline


def _fast(path: Path):
    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return parse_header(fp, path.stat().st_size)


def assert_same_as_pydicom(path: Path) -> bool:
    """Assert the fast path equals pydicom on `path`; return whether it took the file."""
    fast = _fast(path)
    reference = _pydicom_reference(path)
    if fast is None:
        return False
    assert reference is not None, f"{path}: fast path read a file pydicom rejects"
    ds, stopped_at = reference
    size = path.stat().st_size
    assert (fast.pixel_element_offset if fast.pixel_element_offset >= 0 else size) == stopped_at, path
    # the raw elements, before anything converts them...
    raw = Dataset(_stored(ds))
    assert _elements(Dataset(fast.raw_elements())) == _elements(raw) or _same_once_converted(fast, ds), path
    # `keyword in` as on the dataset (repeating-group keywords such as ZonalMap are in dir() but not `in` either)
    assert len(fast) == len(ds) and all((keyword in fast) == (keyword in ds) for keyword in ds.dir()), path
    assert fast.original_character_set == ds.original_character_set, path
    assert (fast.is_implicit_VR, fast.is_little_endian) == (ds.is_implicit_VR, ds.is_little_endian), path
    # ...and the dataset built on demand, as pydicom left it after reading
    assert _elements(fast.dataset) == _elements(ds), path
    assert _elements(fast.file_meta.dataset) == _elements(ds.file_meta), path
    assert _elements(Dataset(fast.file_meta.raw_elements())) == _elements(Dataset(_raw_meta(path))), path
    assert fast.dataset.original_encoding == ds.original_encoding, path
    return True


def _same_once_converted(fast, ds: Dataset) -> bool:
    """pydicom converts a few elements while reading (the character set): compare those converted."""
    raw = fast.raw_elements()
    stored = _stored(ds)
    for tag, element in stored.items():
        mine = raw.get(tag)
        if mine is None:
            return False
        if isinstance(element, DataElement) and not isinstance(mine, DataElement):
            if Dataset({tag: mine})[tag].value != element.value:
                return False
        elif _elements(Dataset({tag: mine})) != _elements(Dataset({tag: element})):
            return False
    return len(stored) == len(raw)


def _raw_meta(path: Path) -> dict:
    """The file meta elements as pydicom's generator yields them, before any conversion."""
    from pydicom.filereader import read_dataset, read_preamble

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        return _stored(read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2))


def test_parse_header__equals_pydicom_on_every_shared_file(shared_data: Path) -> None:
    paths = sorted(p for p in shared_data.rglob("*") if p.is_file())
    taken = {p for p in paths if assert_same_as_pydicom(p)}
    series = [p for p in paths if p.suffix in (".dcm", "") and p.name.startswith(("1-", "19", "I"))]
    # the real series (LIDC, covid slices, Philips dcm_qa_ct) all go through the fast path...
    assert len(series) > 270 and all(p in taken for p in series), sorted(set(series) - taken)[:5]
    # ...and awkward files that pydicom reads its own way are left to it
    edge = shared_data / "edge-cases" / "pydicom-3.0.2"
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm", "no_meta.dcm"):
        if (edge / name).exists():
            assert edge / name not in taken, name


def _file(dataset: Dataset, syntax: str, *, pixels: bytes | None = b"\x00\x01" * 4) -> bytes:
    dataset = Dataset(dataset)
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    dataset.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    if pixels is not None:
        dataset.Rows, dataset.Columns, dataset.BitsAllocated = 2, 2, 16
        if UID(syntax).is_compressed:
            dataset.PixelData = encapsulate([pixels])
            dataset["PixelData"].VR, dataset["PixelData"].is_undefined_length = "OB", True
        else:
            dataset.PixelData = pixels
            dataset["PixelData"].VR = "OW"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian,
                    little_endian=syntax != ExplicitVRBigEndian)  # fmt: skip
    return buffer.getvalue()


def _header(**keywords: Any) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    for keyword, value in keywords.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, "1.2.840.10008.1.2.4.70"])
def test_parse_header__sequences_and_character_sets_as_pydicom(tmp_path: Path, syntax: str) -> None:
    item = Dataset()
    item.CodeValue, item.CodeMeaning = "T-D3000", "Chest"
    nested = Dataset()
    nested.ReferencedSOPInstanceUID = "1.2.3"
    item.ReferencedImageSequence = Sequence([nested])
    ds = _header(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jörg", AnatomicRegionSequence=Sequence([item]))
    ds["AnatomicRegionSequence"].is_undefined_length = True  # written with delimiters
    ds.SeriesDescription = "élan"
    path = tmp_path / "seq.dcm"
    path.write_bytes(_file(ds, syntax))
    assert assert_same_as_pydicom(path)
    assert _fast(path).get("AnatomicRegionSequence")[0].CodeMeaning == "Chest"


def test_parse_header__declines_what_pydicom_reads_its_own_way(tmp_path: Path) -> None:
    whole = _file(_header(SeriesDescription="x" * 40), ExplicitVRLittleEndian)
    cases = {
        "big-endian": _file(_header(), ExplicitVRBigEndian),
        "no preamble": whole[132:],
        "cut inside an element": whole[: whole.index(b"x" * 40) + 10],
        "a few trailing bytes": _file(_header(), ExplicitVRLittleEndian, pixels=None) + b"\x00\x00\x01",
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(content)
        assert _fast(path) is None, name


def test_parse_header__no_pixel_data_reads_to_the_end(tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    path.write_bytes(_file(_header(SeriesDescription="report"), ExplicitVRLittleEndian, pixels=None))
    assert assert_same_as_pydicom(path)
    assert _fast(path).pixel_element_offset == -1


def test_parse_header__header_longer_than_one_read(tmp_path: Path) -> None:
    # values that straddle the 16 KiB read buffer are fetched whole
    ds = _header(
        ImageComments="a" * 9_000,
        AdditionalPatientHistory="d" * 9_000,
        StudyDescription="b" * 60,
        SeriesDescription="c" * 60,
    )
    path = tmp_path / "long.dcm"
    path.write_bytes(_file(ds, ExplicitVRLittleEndian))
    assert assert_same_as_pydicom(path)


def test_read_header__records_identical_with_and_without_the_fast_path(tmp_path: Path, monkeypatch) -> None:
    write_phantom_series(tmp_path / "s", shape=(6, 32, 32), return_arrays=False)
    paths = sorted((tmp_path / "s").glob("*.dcm"))
    fast = pd.DataFrame([r for p in paths for r in dicom.read_header(p, salt="s")])
    monkeypatch.setattr(dicom, "parse_header", lambda fp, size: None)
    slow = pd.DataFrame([r for p in paths for r in dicom.read_header(p, salt="s")])
    pd.testing.assert_frame_equal(fast, slow)
    assert np.isfinite(fast["position_z_mm"]).all() and (fast["pixel_data_offset"] > 0).all()
    assert struct.calcsize("<HHL") == 8  # the implicit VR element head the fast path unpacks


# --------------------------------------------------------------------------- pydicom versions and private names


def same_value(a: Any, b: Any) -> bool:
    """Equal values of the same type, NaN equal to NaN and NaT to NaT (catalog record fields)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if a is pd.NaT:
        return b is pd.NaT
    return bool(a == b)


def record_differences(fast: list[dict[str, Any]], slow: list[dict[str, Any]]) -> list[str]:
    """The fields where two lists of catalog records differ (empty when they are the same)."""
    if len(fast) != len(slow):
        return [f"{len(fast)} record(s) vs {len(slow)}"]
    return [
        f"frame {i} {key}: {a.get(key)!r} vs {b.get(key)!r}"
        for i, (a, b) in enumerate(zip(fast, slow, strict=True))
        for key in sorted(a.keys() | b.keys())
        if key not in a or key not in b or not same_value(a[key], b[key])
    ]


def test_record_differences__nan_equal_and_type_strict() -> None:
    base = {"a": float("nan"), "b": pd.NaT, "c": 1, "d": "x"}
    assert record_differences([base], [dict(base)]) == []
    assert record_differences([base], [{**base, "c": 1.0}]) == ["frame 0 c: 1 vs 1.0"]
    assert record_differences([base], [{**base, "a": 0.0}]) and record_differences([base], [])
    assert record_differences([base], [{**base, "e": 2}]) == ["frame 0 e: None vs 2"]


@pytest.mark.parametrize("version", ["3.1.0", "3.10.2", "4.0.0", "2.4.4", "3.0", "nonsense"])
def test_parse_header__declines_every_file_with_an_untested_pydicom(lidc_dir: Path, monkeypatch, version: str) -> None:
    path = sorted(lidc_dir.glob("*.dcm"))[0]
    expected = dicom.read_header(path, salt="s")
    assert _fast(path) is not None  # the installed pydicom is tested: the fast path takes LIDC
    monkeypatch.setattr(pydicom, "__version__", version)
    tested = version == "3.0"  # (3, 0) is the tested minor
    assert fast_path_enabled() is tested
    assert (_fast(path) is not None) is tested
    # pydicom reads it instead, with the same records
    assert record_differences(dicom.read_header(path, salt="s"), expected) == []


def test_pyproject__pins_pydicom_to_the_tested_minor_versions() -> None:
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [SpecifierSet(r[len("pydicom") :]) for r in requirements if r.split("[")[0].startswith("pydicom")]
    assert pydicom.__version__ in spec  # the environment the tests run in is one the pin allows
    for major in range(2, 5):
        for minor in range(12):
            for patch in (0, 9):  # every minor the pin allows (at patch 0 or 9) is a tested one, and no other
                allowed = f"{major}.{minor}.{patch}" in spec
                assert not allowed or (major, minor) in TESTED_PYDICOM, f"pin allows untested {major}.{minor}"
    assert all(f"{major}.{minor}.9" in spec for major, minor in TESTED_PYDICOM)


@functools.cache
def _pydicom_private_names() -> frozenset[str]:
    """Every single-underscore name defined or used in pydicom's source (functions, classes, attributes)."""
    names: set[str] = set()
    for source in Path(pydicom.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            name = getattr(node, "name", None) or getattr(node, "attr", None) or getattr(node, "id", None)
            if isinstance(name, str) and name.startswith("_") and not name.endswith("__"):
                names.add(name)
    return frozenset(names)


def private_pydicom_uses(source: str, private: frozenset[str]) -> list[str]:
    """Places in `source` that reach a private pydicom name: imports, attributes, ``getattr`` with a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = getattr(node, "module", None) or ""
            targets = [module] if module else []
            targets += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [
                f"{where}: import of {target}"
                for target in targets
                if target.split(".")[0] == "pydicom"
                and any(part.startswith("_") and not part.endswith("__") for part in target.split("."))
            ]
            if isinstance(node, ast.ImportFrom) and module.split(".")[0] == "pydicom":
                found += [f"{where}: from {module} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):  # ctframe's own attributes
                found.append(f"{where}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in private
        ):
            found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_ctframe__uses_no_private_pydicom_names() -> None:
    private = _pydicom_private_names()
    assert {"_dict", "_character_set", "_parent_encoding", "_read_charset"} <= private  # the scan sees pydicom's
    problems = {
        path.name: uses
        for path in sorted(Path(ctframe.__file__).parent.glob("*.py"))
        if (uses := private_pydicom_uses(path.read_text(encoding="utf-8"), private))
    }
    assert problems == {}


def test_private_pydicom_uses__finds_each_kind_of_use() -> None:
    private = _pydicom_private_names()
    source = (
        "import pydicom._version\n"
        "from pydicom.filereader import _is_implicit_vr\n"
        "from pydicom._private import x\n"
        "ds._dict\n"
        "Dataset()._character_set\n"
        "getattr(ds, '_parent_encoding')\n"
        "self._dict\n"  # a class's own attribute: allowed
        "pydicom.__version__\n"  # dunder: public
    )
    assert [use.split(":")[0] for use in private_pydicom_uses(source, private)] == [
        "line 1", "line 2", "line 3", "line 4", "line 5", "line 6",
    ]  # fmt: skip
