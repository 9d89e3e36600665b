"""Differential test: every read path gives pydicom's ``pixel_array`` on re-encoded real slices.

Real slices of three shared series are rewritten with pydicom into every
BitsAllocated / BitsStored / PixelRepresentation combination a CT file can
take, with random junk in the unused high bits (legacy scanners keep overlays
there), Pixel Data as OB, OW or UN (explicit VR) or implicit VR, uncompressed
and in every lossless syntax pydicom or imagecodecs can write, single- and
multi-frame. Each variant is read on each path ctframe has (the native fast
path, imagecodecs, pydicom itself), forced through ``dicom._read_path`` and
checked by spies, and compared voxel for voxel with ``pydicom.dcmread(f).pixel_array``
(stored values) and ``pydicom.pixels.apply_modality_lut`` (HU).
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from _read_paths import install_path_spies
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLSLossless,
    RLELossless,
)

import ctframe
from ctframe.config import get_config
from ctframe.dicom import SliceRef, read_frames, stored_dtype

#: Slices re-encoded: three neighbours from LIDC-IDRI-0001 (GE) and one each from
#: NSCLC-Radiomics (Siemens) and Lung-PET-CT-Dx (Philips).
SOURCES = {
    "lidc": ("lidc-idri-0001", 3),
    "nsclc": ("nsclc-radiomics-lung1-003/ct", 1),
    "lungpet": ("lung-pet-ct-dx-a0001/ct", 1),
}
#: The part of each slice kept (the scan's edge included): small frames keep the test fast.
CROP = (slice(128, 320), slice(0, 192))

NATIVE = ("OB", "OW", "UN", "implicit")
#: "rle" and "jpeg-lossless" hold the words as written (junk included; pydicom
#: then ignores the bits above BitsStored); "jpeg-ls" and "j2k" are encoded at
#: BitsStored bits; "jpeg-ls-16" and "j2k-16" at 16 bits, junk included, where
#: pydicom's rule takes the codestream's precision, not BitsStored.
COMPRESSED = ("rle", "jpeg-lossless", "jpeg-ls", "jpeg-ls-16", "j2k", "j2k-16")
SYNTAX = {
    "OB": ExplicitVRLittleEndian,
    "OW": ExplicitVRLittleEndian,
    "UN": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-lossless": JPEGLossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-16": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "j2k-16": JPEG2000Lossless,
}


@dataclass(frozen=True)
class Variant:
    """One way of writing the same slices."""

    encoding: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    source: str = "lidc"
    high_bit: int | None = None  # None: BitsStored - 1
    frames_per_file: int = 1  # > 1: one multi-frame file of every slice
    padding: bool = False  # PixelPaddingValue = the smallest value (the scan-circle fill), at -1000 HU

    def __str__(self) -> str:
        text = f"{self.source}-{self.encoding}-{self.bits_allocated}-{self.bits_stored}-{'s' if self.signed else 'u'}"
        if self.high_bit is not None:
            text += f"-hb{self.high_bit}"
        return text + ("-multiframe" if self.frames_per_file > 1 else "") + ("-padding" if self.padding else "")

    @property
    def paths(self) -> tuple[str, ...]:
        """The read paths this encoding can take."""
        return ("native", "pydicom") if self.encoding in NATIVE else ("imagecodecs", "pydicom")


def _variants() -> list[Variant]:
    out = [
        Variant(encoding, 16, bits, signed)
        for encoding in ("OB", "rle")
        for bits in range(8, 17)
        for signed in (False, True)
    ]
    out += [Variant(encoding, 16, 12, signed) for encoding in ("OW", "UN", "implicit") for signed in (False, True)]
    out += [Variant(encoding, 16, bits, True) for encoding in ("UN", "implicit") for bits in (10, 15)]
    out += [
        Variant(encoding, 8, bits, signed)
        for encoding in ("OB", "UN", "rle")
        for bits in (6, 8)
        for signed in (False, True)
    ]
    out += [
        Variant(encoding, 16, bits, signed)
        for encoding in ("jpeg-lossless", "jpeg-ls", "jpeg-ls-16", "j2k", "j2k-16")
        for bits in (12, 16)
        for signed in (False, True)
    ]
    out += [Variant(encoding, 16, 13, True) for encoding in ("jpeg-ls", "j2k", "jpeg-ls-16", "j2k-16")]
    # 8-bit codestreams in 16-bit words: pydicom returns them in 8-bit containers
    out += [Variant(encoding, 16, 8, signed) for encoding in ("jpeg-ls", "j2k") for signed in (False, True)]
    out += [Variant("OB", 16, 12, True, high_bit=15), Variant("rle", 16, 12, False, high_bit=15)]  # HighBit ignored
    # padding compared in the stored domain: only the kept bits say whether a voxel is padding
    out += [Variant(encoding, 16, 12, signed, padding=True) for encoding in ("OB", "rle") for signed in (False, True)]
    out += [Variant("UN", 16, 14, False, padding=True)]
    out += [
        Variant(encoding, 16, 12, signed, source=source)
        for source in ("nsclc", "lungpet")
        for encoding in ("UN", "rle")
        for signed in (False, True)
    ]
    out += [
        Variant(encoding, 16, 12, signed, frames_per_file=3)
        for encoding in ("OB", "UN", "rle", "j2k-16")
        for signed in (False, True)
    ]
    return out  # fmt: skip


VARIANTS = _variants()


def _fit(stored: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """The real values squeezed (by a right shift) into `bits` bits; signed ones spread across zero."""
    values = stored.astype(np.int64) - stored.min()
    while values.max() >= 2 ** (bits - signed):
        values >>= 1
    return values - values.max() // 2 if signed else values


def _words(values: np.ndarray, variant: Variant, rng: np.random.Generator) -> np.ndarray:
    """The words written: `values` in the low BitsStored bits, random junk above them."""
    bits, allocated = variant.bits_stored, variant.bits_allocated
    unsigned = np.dtype(f"u{allocated // 8}")
    words = (values & ((1 << bits) - 1)).astype(unsigned)
    if bits < allocated:
        words |= (rng.integers(0, 1 << (allocated - bits), size=values.shape) << bits).astype(unsigned)
    return words.view(np.dtype(f"{'i' if variant.signed else 'u'}{allocated // 8}"))


def _encode(words: np.ndarray, values: np.ndarray, ds: Dataset, variant: Variant) -> None:
    """Store the frames `words` (or `values`, where the codec is given BitsStored bits) in `ds`."""
    syntax = SYNTAX[variant.encoding]
    ds.file_meta.TransferSyntaxUID = syntax
    if variant.encoding in NATIVE:
        ds.PixelData = words.tobytes()
        ds["PixelData"].VR = {"OB": "OB", "OW": "OW", "UN": "UN", "implicit": "OW"}[variant.encoding]
        return
    if variant.encoding == "jpeg-lossless":  # pydicom has no JPEG Lossless encoder; imagecodecs writes one
        import imagecodecs

        unsigned = words.view(np.dtype(f"u{variant.bits_allocated // 8}"))
        frames = [imagecodecs.ljpeg_encode(frame, bitspersample=variant.bits_allocated) for frame in unsigned]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        return
    if variant.encoding in ("jpeg-ls", "j2k"):  # the codec gets the values at BitsStored bits
        arr = values.astype(words.dtype)
    else:  # the words, junk and all, at BitsAllocated bits (BitsStored set back below)
        arr = words
        ds.BitsStored, ds.HighBit = variant.bits_allocated, variant.bits_allocated - 1
    ds.PixelData = arr.tobytes()
    ds.compress(syntax, arr if arr.shape[0] > 1 else arr[0])
    ds.BitsStored = variant.bits_stored
    ds.HighBit = variant.bits_stored - 1 if variant.high_bit is None else variant.high_bit


def _source_files(shared_data: Path, source: str) -> list[Path]:
    folder, count = SOURCES[source]
    files = sorted((shared_data / folder).glob("*.dcm"))
    middle = len(files) // 2
    return files[middle : middle + count]


def write_variant(shared_data: Path, folder: Path, variant: Variant) -> Path:
    """Write `variant` of its source slices into `folder`; returns `folder`."""
    rng = np.random.default_rng(zlib.crc32(str(variant).encode()))
    sources = [pydicom.dcmread(p) for p in _source_files(shared_data, variant.source)]
    stored = np.stack([ds.pixel_array[CROP] for ds in sources])
    values = _fit(stored, variant.bits_stored, variant.signed)
    words = _words(values, variant, rng)
    folder.mkdir(parents=True, exist_ok=True)
    groups = [list(range(len(sources)))] if variant.frames_per_file > 1 else [[i] for i in range(len(sources))]
    for n, group in enumerate(groups):
        ds = sources[group[0]]
        for keyword in (
            "PixelPaddingValue",
            "PixelPaddingRangeLimit",
            "SmallestImagePixelValue",
            "LargestImagePixelValue",
        ):
            if keyword in ds:
                del ds[keyword]
        ds.Rows, ds.Columns = values.shape[1:]
        ds.BitsAllocated, ds.BitsStored = variant.bits_allocated, variant.bits_stored
        ds.HighBit = variant.bits_stored - 1 if variant.high_bit is None else variant.high_bit
        ds.PixelRepresentation = int(variant.signed)
        if variant.padding:
            ds.add_new("PixelPaddingValue", "SS" if variant.signed else "US", int(values.min()))
            ds.RescaleIntercept = -1000 - int(values.min())  # the padding at -1000 HU: not fill by HU alone
        if len(group) > 1:
            _make_multiframe(ds, [sources[i] for i in group])
        _encode(words[group], values[group], ds, variant)
        ds.save_as(folder / f"{n:03d}.dcm", implicit_vr=variant.encoding == "implicit", little_endian=True)
    return folder


def _make_multiframe(ds: Dataset, frames: list[Dataset]) -> None:
    """Turn `ds` into an enhanced CT image holding the slices `frames` (per-frame position, shared geometry)."""
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.NumberOfFrames = len(frames)
    per_frame = []
    for frame in frames:
        position = Dataset()
        position.ImagePositionPatient = frame.ImagePositionPatient
        item = Dataset()
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    orientation, measures, rescale = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = ds.ImageOrientationPatient
    measures.PixelSpacing, measures.SliceThickness = ds.PixelSpacing, ds.SliceThickness
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = ds.RescaleSlope, ds.RescaleIntercept, "HU"
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept", "RescaleType"):  # fmt: skip
        if keyword in ds:
            del ds[keyword]


@dataclass
class Written:
    """A variant on disk, with pydicom's reading of it (stored values and HU by frame position) and its catalog."""

    folder: Path
    stored: dict[tuple[float, float, float], np.ndarray]
    hu: dict[tuple[float, float, float], np.ndarray]
    catalog: pd.DataFrame


@pytest.fixture(scope="module")
def variants(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """``variants(v)``: variant `v` written (once per module, on first use) and read by pydicom."""
    root = tmp_path_factory.mktemp("pixel-variants")
    written: dict[Variant, Written] = {}

    def get(variant: Variant) -> Written:
        if variant not in written:
            folder = write_variant(shared_data, root / str(variant), variant)
            written[variant] = Written(folder, *_reference(folder), ctframe.scan(folder))
        return written[variant]

    return get


# --------------------------------------------------------------------------- the references


def _reference(
    folder: Path,
) -> tuple[dict[tuple[float, float, float], np.ndarray], dict[tuple[float, float, float], np.ndarray]]:
    """pydicom's stored values and HU of every frame in `folder`, keyed by frame position."""
    stored, hu = {}, {}
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        array = ds.pixel_array
        if "PerFrameFunctionalGroupsSequence" in ds:
            rescale = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
            for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, array, strict=True):
                key = tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient)
                stored[key] = frame
                hu[key] = apply_modality_lut(frame, rescale)
        else:
            key = tuple(float(v) for v in ds.ImagePositionPatient)
            stored[key] = array
            hu[key] = apply_modality_lut(array, ds)
    return stored, hu


def _positions(volume) -> list[tuple[float, float, float]]:
    return list(zip(*(volume[f"position_{axis}_mm"].values.tolist() for axis in "xyz"), strict=True))


@pytest.fixture
def force_path(monkeypatch):
    """``force_path(name)`` sends every frame down read path `name`; returns the paths that ran."""
    return install_path_spies(monkeypatch)


def _refs(catalog) -> list[SliceRef]:
    """The catalog's rows as read tasks get them (as ``ctframe.io`` builds them)."""
    text = {"path", "transfer_syntax_uid"}
    return [
        SliceRef(*((str if name in text else int)(getattr(row, name)) for name in SliceRef._fields))
        for row in catalog.itertuples()
    ]


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("path", ["fast", "slow"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_read_frames__variant_equals_pixel_array_on_each_path(
    variants, force_path, variant: Variant, path: str
) -> None:
    written = variants(variant)
    name = variant.paths[0] if path == "fast" else "pydicom"
    ran = force_path(name)

    catalog = written.catalog
    assert (catalog["bits_stored"] == variant.bits_stored).all()
    dtype = stored_dtype(catalog["bits_allocated"], catalog["pixel_representation"])
    frames = read_frames(_refs(catalog), dtype=dtype)
    assert frames.dtype == dtype
    for row, frame in zip(catalog.itertuples(), frames, strict=True):
        reference = written.stored[(row.position_x_mm, row.position_y_mm, row.position_z_mm)]
        assert np.can_cast(reference.dtype, dtype)  # pydicom's dtype fits ctframe's (it is the same, or narrower)
        np.testing.assert_array_equal(frame, reference, err_msg=f"{variant} on the {name} path")

    volume = ctframe.open_series(written.folder)
    values = volume.values
    assert values.dtype == dtype
    keys = _positions(volume)
    expected = np.stack([written.stored[k] for k in keys])  # pydicom's stored values
    np.testing.assert_array_equal(values, expected, err_msg=f"{variant} via open_series")
    assert set(ran) == {name}, f"{variant}: expected only the {name} path, ran {sorted(set(ran))}"

    if variant.bits_allocated == 16 and variant.bits_stored >= 12:  # a CT's range of HU
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ctframe.errors.QCWarning)
            ours = ctframe.to_hu(volume).values
        reference_hu = np.stack([written.hu[k] for k in keys])
        # ctframe's documented rule: padding (PixelPaddingValue, compared with pydicom's stored values) and
        # HU below hu.fill_below_hu (the scan-circle fill) are NaN
        not_tissue = reference_hu < float(get_config()["hu"]["fill_below_hu"])
        if variant.padding:
            padding = pydicom.dcmread(next(written.folder.glob("*.dcm"))).PixelPaddingValue
            is_padding = expected == padding
            assert is_padding.any() and (is_padding & ~not_tissue).any()  # padding that is not fill, too
            not_tissue |= is_padding
        expected_hu = np.where(not_tissue, np.nan, reference_hu).astype(np.float32)
        np.testing.assert_array_equal(ours, expected_hu, err_msg=f"{variant}: HU")


def test_variants__cover_the_cases_the_issue_names() -> None:
    native = {(v.bits_stored, v.signed) for v in VARIANTS if v.encoding == "OB" and v.bits_allocated == 16}
    assert native == {(bits, signed) for bits in range(8, 17) for signed in (False, True)}
    rle = {(v.bits_stored, v.signed) for v in VARIANTS if v.encoding == "rle" and v.bits_allocated == 16}
    assert rle == native
    assert {v.encoding for v in VARIANTS} == set(NATIVE) | set(COMPRESSED)
    assert {v.source for v in VARIANTS} == set(SOURCES)
    assert {v.encoding for v in VARIANTS if v.frames_per_file > 1} >= {"OB", "UN", "rle"}
    assert any(v.bits_allocated == 8 for v in VARIANTS)


def test_write_variant__junk_really_is_in_the_unused_bits(shared_data: Path, tmp_path: Path) -> None:
    """The generated files carry what the test claims: words whose high bits differ from pixel_array's."""
    for variant in (Variant("OB", 16, 12, True), Variant("UN", 16, 12, False), Variant("rle", 16, 10, True)):
        folder = write_variant(shared_data, tmp_path / str(variant), variant)
        path = sorted(folder.glob("*.dcm"))[0]
        ds = pydicom.dcmread(path)
        assert ds.BitsStored == variant.bits_stored and ds.PixelRepresentation == variant.signed
        raw = pydicom.pixels.pixel_array(ds, correct_unused_bits=False) if variant.encoding != "rle" else None
        if raw is not None:
            assert (raw != ds.pixel_array).mean() > 0.9  # the junk changes nearly every word
        if variant.encoding == "UN":
            assert path.read_bytes().count(b"\xe0\x7f\x10\x00UN\x00\x00") == 1  # Pixel Data written with VR UN


def _mixed_stack(variants, tmp_path: Path, kinds: list[Variant]) -> Path:
    """One stack whose three LIDC slices are written as `kinds[0]`, `kinds[1]` and `kinds[2]`."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, variant in enumerate(kinds):
        source = sorted(variants(variant).folder.glob("*.dcm"))[k]
        (folder / f"{k:03d}.dcm").write_bytes(source.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("kinds", "dtype"),
    [
        # signed 12-bit, unsigned 12-bit and signed 16-bit slices: int16 and uint16 meet in int32
        ([Variant("OB", 16, 12, True), Variant("rle", 16, 12, False), Variant("implicit", 16, 16, True)], np.int32),
        # one dtype, BitsStored 10, 12 and 16 slice by slice: the fast path keeps each slice's own bits
        ([Variant("UN", 16, 10, True), Variant("OB", 16, 12, True), Variant("OB", 16, 16, True)], np.int16),
        # 8 and 16 bits allocated, both unsigned
        ([Variant("OB", 8, 6, False), Variant("OB", 16, 12, False), Variant("OB", 16, 16, False)], np.uint16),
    ],
    ids=["signedness", "bits-stored", "bits-allocated"],
)
def test_open_series__stack_of_mixed_encodings_equals_pixel_array(variants, tmp_path: Path, kinds, dtype) -> None:
    folder = _mixed_stack(variants, tmp_path, kinds)
    stored, _ = _reference(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ctframe.errors.QCWarning)
        volume = ctframe.open_series(folder)
    assert volume.dtype == dtype
    values = volume.values
    for k, key in enumerate(_positions(volume)):
        np.testing.assert_array_equal(values[k], stored[key], err_msg=f"slice {k}")


def test_stored_dtype__fits_every_stored_value_pydicom_gives() -> None:
    # pydicom's dtype for a frame (BitsAllocated, PixelRepresentation), whatever BitsStored is
    assert stored_dtype([16], [1]) == np.int16  # signed 12 bits in 16: int16 holds -2048..2047
    assert stored_dtype([16], [0]) == np.uint16  # unsigned 16 of 16 bits: uint16, not int16
    assert stored_dtype([8], [1]) == np.int8
    assert stored_dtype([16, 16], [0, 1]) == np.int32  # a stack mixing them: both fit
    assert stored_dtype([8, 16], [0, 1]) == np.int16
    assert stored_dtype([32, 16], [0, 1]) == np.int64


@pytest.mark.parametrize("bits_stored", [0, 17])
def test_read_frames__bits_stored_outside_bits_allocated_is_an_error(
    lidc_dir: Path, tmp_path: Path, bits_stored: int
) -> None:
    ds = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    ds.BitsStored = bits_stored
    ds.save_as(tmp_path / "ct.dcm")
    with pytest.raises(ValueError, match="Bits Stored"):  # pydicom refuses it too
        pydicom.dcmread(tmp_path / "ct.dcm").pixel_array  # noqa: B018
    volume = ctframe.open_series(tmp_path)
    with pytest.raises(ctframe.errors.DicomReadError, match=rf"ct\.dcm: BitsStored {bits_stored} is not between 1 and"):
        volume.values  # noqa: B018


def test_read_frames__float_pixel_data_is_refused_not_cast(lidc_dir: Path, tmp_path: Path) -> None:
    """Float Pixel Data goes to pydicom, which gives float32: never cast silently into an integer stack."""
    ds = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    floats = ds.pixel_array.astype(np.float32) + 0.5
    del ds.PixelData
    ds.FloatPixelData = floats.tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.save_as(tmp_path / "ct.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "ct.dcm").pixel_array, floats)
    catalog = ctframe.scan(tmp_path)
    assert catalog["pixel_data_offset"].tolist() == [-1]  # no fast path for Float Pixel Data
    with pytest.raises(ctframe.errors.DicomReadError, match=r"ct\.dcm: pixel data decodes as float32"):
        read_frames(_refs(catalog), dtype=stored_dtype(catalog["bits_allocated"], catalog["pixel_representation"]))


@pytest.mark.parametrize("vr", ["OB", "UN"])
def test_read_frames__explicit_dataset_under_an_implicit_syntax(lidc_dir: Path, tmp_path: Path, vr: str) -> None:
    """Meta says implicit VR, the dataset is explicit: pydicom reads it as written, and so does ctframe."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    ds = pydicom.dcmread(sorted(lidc_dir.glob("*.dcm"))[0])
    ds["PixelData"].VR = vr
    ds.save_as(tmp_path / "explicit.dcm", implicit_vr=False, little_endian=True)
    data = (tmp_path / "explicit.dcm").read_bytes()
    body = data[144 + int.from_bytes(data[140:144], "little") :]  # after the preamble and the file meta group
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    folder = tmp_path / "switched"
    folder.mkdir()
    (folder / "ct.dcm").write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that it found explicit VR
        reference = pydicom.dcmread(folder / "ct.dcm").pixel_array
    np.testing.assert_array_equal(ctframe.open_series(folder).values[0], reference)
