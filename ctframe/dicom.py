"""One DICOM file at a time: safe header fields and pixel frames.

This module knows DICOM; the rest of the package sees plain records. Headers
are read with ``stop_before_pixels`` and turned into one flat dict per image
frame (single-frame files give one, enhanced multi-frame files one per frame,
from their functional groups). Pixels are read either by a fast path (the raw
bytes of uncompressed little-endian data at the offset found during the header
read) or by pydicom's decoders; JPEG Lossless frames go through imagecodecs
when it is installed. Every path returns exactly what
``pydicom.Dataset.pixel_array`` returns; the tests prove it on real files.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import convert_value, default_encoding

from ctframe.errors import CTFrameError, DicomReadError, UnsupportedDicomError, library_warnings_ignored
from ctframe.header_fastpath import _LONG_VRS, RawHeader, element_vr, parse_header
from ctframe.privacy import date_offset_days, patient_key, pseudonymous_uid, resolve_salt, shift_date
from ctframe.sources import (
    HEADER_BLOCK_BYTES,
    Access,
    is_dicomweb,
    is_remote,
    local_path,
    open_for_header,
    read_range,
    redact,
)

__all__ = [
    "NATIVE_LITTLE_ENDIAN",
    "SliceRef",
    "keep_stored_bits",
    "normalise_rescale_type",
    "read_frames",
    "read_header",
    "stored_dtype",
]

NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
#: Encapsulated syntaxes decoded by imagecodecs (it releases the GIL, so threads
#: decode in parallel) -> the imagecodecs function. Everything else, and any
#: frame whose signedness or bit depth needs pydicom's corrections, goes
#: through pydicom. RLE goes through imagecodecs' C decoder rather than
#: pylibjpeg-rle, whose Rust decoder panics (and prints a backtrace) on corrupt
#: streams; pydicom decodes RLE with its own plugin for the same reason.
IMAGECODECS_DECODERS = {
    RLE_LOSSLESS: "dicomrle_decode",  # RLE Lossless: bytes, shaped here
    "1.2.840.10008.1.2.4.57": "ljpeg_decode",  # JPEG Lossless, Process 14
    "1.2.840.10008.1.2.4.70": "ljpeg_decode",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.4.80": "jpegls_decode",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "jpegls_decode",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "jpeg2k_decode",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "jpeg2k_decode",  # JPEG 2000
}
#: Transfer syntaxes that are lossy by definition.
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy allowed)
        "1.2.840.10008.1.2.4.100",  # MPEG2
        "1.2.840.10008.1.2.4.102",  # MPEG-4
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.110",
    }
)
#: Transfer syntaxes that may be lossy; the LossyImageCompression tag decides.
MAYBE_LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93"})
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_UNDEFINED_LENGTH = b"\xff\xff\xff\xff"
#: Explicit VRs written with 2 reserved bytes and a 4-byte length (OB, OW, UN, ...), as bytes.
_LONG_VR_BYTES = frozenset(vr.encode("ascii") for vr in _LONG_VRS)
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data, both byte orders.
_PIXEL_TAGS = frozenset(
    {
        _PIXEL_TAG_LE,
        b"\x7f\xe0\x00\x10",
        b"\xe0\x7f\x08\x00",
        b"\x7f\xe0\x00\x08",
        b"\xe0\x7f\x09\x00",
        b"\x7f\xe0\x00\x09",
    }
)


#: A parsed header: pydicom's dataset, or the fast path's view of the same elements.
Header = Dataset | RawHeader


class SliceRef(NamedTuple):
    """Where one 2-D frame lives and how it is encoded (what a read task needs)."""

    path: str
    frame: int
    number_of_frames: int
    file_size: int
    transfer_syntax_uid: str
    pixel_data_offset: int
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int


# --------------------------------------------------------------------------- headers


@functools.lru_cache(maxsize=512)
def _uid(value: str) -> UID:
    """The pydicom ``UID`` of `value`, memoised (every slice of a series repeats its SOP class and syntax)."""
    return UID(value)


@functools.lru_cache(maxsize=512)
def _tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


#: VRs whose raw bytes ``pydicom.values.convert_value`` turns into exactly the
#: value ``convert_raw_data_element`` would give (no ambiguous, UN, SQ or private VRs).
_PLAIN_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI", "US", "SS", "UL", "SL", "FL", "FD"}
)


#: VRs pydicom decodes as plain text in its default encoding (``convert_string``),
#: unless ``pydicom.config.datetime_conversion`` makes DA/DT/TM objects.
_CODE_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM"})


def _convert_raw(element: RawDataElement, ds: Header) -> Any:
    """The value of a raw element, as pydicom would convert it, at less cost.

    ``convert_raw_data_element`` builds and validates a whole ``DataElement``;
    for plain VRs pydicom's own value converter gives the same value in half
    the time, and code strings and UIDs are split and stripped as pydicom's
    ``multi_string`` and ``UID`` do (a list where pydicom gives a MultiValue,
    which the catalog joins the same way). Everything else (implicit VRs
    pydicom must disambiguate, UN, private tags) takes pydicom's full path.
    """
    vr = element_vr(element)
    if vr in _PLAIN_VRS and element.length == 0:
        return empty_value_for_VR(vr)  # what convert_value gives an empty value
    if not element.value or vr not in _PLAIN_VRS:
        # pydicom consults the dataset only for a private tag's creator
        dataset = ds.dataset if isinstance(ds, RawHeader) and element.tag.is_private else ds
        return convert_raw_data_element(element, encoding=ds.original_character_set, ds=dataset).value
    if vr == "UI" or (vr in _CODE_STRING_VRS and not pydicom.config.datetime_conversion):
        text = element.value.decode(default_encoding)
        items = text.rstrip(" \x00").split("\\")
        if vr == "UI":
            items = [item.strip() for item in items]
        return items[0] if len(items) == 1 else items
    encodings = ds.original_character_set
    key = tuple(encodings) if isinstance(encodings, list | tuple) else (encodings,)
    return _convert_value(vr, element.value, element.is_little_endian, key, _conversion_settings())


def _conversion_settings() -> tuple[Any, ...]:
    """The pydicom settings a value conversion depends on (part of the memo key)."""
    config = pydicom.config
    return (config.use_DS_decimal, config.use_DS_numpy, config.use_IS_numpy, config.settings.reading_validation_mode)


@functools.lru_cache(maxsize=4096)
def _convert_value(vr: str, value: bytes, is_little_endian: bool, encodings: tuple[str, ...], settings: tuple) -> Any:
    """``pydicom.values.convert_value``, memoised: the slices of a series repeat most values.

    The result depends only on the arguments (the memo key includes the
    pydicom settings that change conversions); callers only read it.
    """
    element = RawDataElement(BaseTag(0), vr, len(value), value, 0, False, is_little_endian)
    return convert_value(vr, element, list(encodings))


def _get_int(ds: Header, keyword: str, default: int = -1) -> int:
    """An integer element as ``int``: the same as ``_int(_get(ds, keyword), default)``, at less cost.

    Single US/SS values are read from their two bytes and IS text that is a
    plain integer goes straight to ``int`` (what ``int(pydicom.valuerep.IS(text))``
    gives); multiple values, other VRs and any other text take :func:`_get`.
    """
    element = ds.get_item(_tag(keyword))
    if element is None:
        return default
    if isinstance(element, RawDataElement) and element.value and element.is_little_endian:
        vr = element_vr(element)
        value = element.value
        if vr in ("US", "SS") and len(value) == 2:
            return int.from_bytes(value, "little", signed=vr == "SS")
        if vr == "IS":
            text = value.strip()
            if (text[1:] if text[:1] in (b"+", b"-") else text).isdigit():  # a plain integer
                return int(text)
    return _int(_get(ds, keyword), default)


def _get(ds: Header, keyword: str, default: Any = None) -> Any:
    """Read one element, turning malformed values into `default`.

    Raw elements are converted without storing the result back in the
    dataset (``Dataset.get`` would; see :func:`_convert_raw`), which makes a
    header pass markedly faster; sequences and elements pydicom already
    converted go through ``Dataset.get`` (which, on a fast-path
    :class:`~ctframe.header_fastpath.RawHeader`, builds the pydicom dataset).
    """
    tag = _tag(keyword)
    try:
        element = ds.get_item(tag) if tag is not None else None
        if element is None:
            return default
        if isinstance(element, RawDataElement) and element.VR != "SQ":
            value = _convert_raw(element, ds)
        else:
            value = ds.get(keyword, default)
    except Exception:  # pydicom raises many types on malformed values
        return default
    return default if value is None or value == "" else value


def _get_number(ds: Header, keyword: str) -> Any:
    """A DS element as a float (or a list of floats for several values).

    Parses the raw text straight to float, which gives the same numbers as
    pydicom's ``DSfloat`` (itself a ``float`` of the same text) without its
    per-value validation. Anything unusual (no raw bytes, a value ``float``
    rejects or reads as non-finite, a VR other than DS) goes through
    :func:`_get`, so malformed values behave exactly as before.
    """
    tag = _tag(keyword)
    element = ds.get_item(tag) if tag is not None and tag in ds else None
    if isinstance(element, RawDataElement) and element.value:
        vr = element_vr(element)
        if vr == "DS":
            try:
                numbers = [float(part) for part in element.value.split(b"\\")]
            except ValueError:
                numbers = []
            if numbers and all(map(math.isfinite, numbers)):
                return numbers[0] if len(numbers) == 1 else numbers
    return _get(ds, keyword)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _floats(value: Any, n: int) -> list[float]:
    """`n` finite floats, or `n` NaN when the value is malformed (wrong count, text, inf...)."""
    try:
        items = [float(v) for v in value]
    except (TypeError, ValueError):
        return [float("nan")] * n
    return items if len(items) == n and all(map(math.isfinite, items)) else [float("nan")] * n


#: Largest PixelSpacing taken at face value (a kilometre); larger values come from corrupt headers.
_MAX_SPACING_MM = 1e6


def _orientation(value: Any) -> list[float]:
    """ImageOrientationPatient, or NaN unless it holds two orthogonal unit vectors (to 1%).

    Anything else (huge or zero values from a corrupt header) would give a
    meaningless slice normal, so it counts as missing.
    """
    iop = _floats(value, 6)
    row, col = iop[:3], iop[3:]
    unit = abs(math.hypot(*row) - 1) <= 0.01 and abs(math.hypot(*col) - 1) <= 0.01
    orthogonal = abs(row[0] * col[0] + row[1] * col[1] + row[2] * col[2]) <= 0.01
    return iop if unit and orthogonal else [float("nan")] * 6


def _multi_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return str(value)
    try:
        return "\\".join(str(v) for v in value)
    except TypeError:
        return str(value)


def _decimal_text(value: Any) -> str:
    """Decimal string values (WindowCenter...) as their shortest exact text, backslash-joined.

    ``"49.0000"`` and the JSON number ``49`` of a DICOMweb server both give ``"49"``, so a
    catalog is the same whichever source it came from; text that is no number is kept as it is.
    """
    text = _multi_str(value)
    parts = text.split("\\") if text else []
    out = []
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            out.append(part.strip())
            continue
        out.append(np.format_float_positional(number, trim="-") if math.isfinite(number) else part.strip())
    return "\\".join(out)


def _first_item(seq: Any) -> Dataset | None:
    try:
        return seq[0] if seq else None
    except Exception:
        return None


def _functional(
    per_frame: Dataset | None, shared: Dataset | None, sequence: str, keyword: str, getter: Any = _get
) -> Any:
    """Look `keyword` up in a functional group: per-frame first, then shared."""
    for group in (per_frame, shared):
        if group is None:
            continue
        item = _first_item(_get(group, sequence))
        if item is not None:
            value = getter(item, keyword)
            if value is not None:
                return value
    return None


def _padding_value(raw: Any, bits_allocated: int, pixel_representation: int) -> float:
    """Pixel padding in the stored domain, fixing unsigned encodings of signed values.

    Some scanners write PixelPaddingValue as US even when PixelRepresentation is 1
    (LIDC-IDRI-0001 stores 63536, which is -2000 as int16). Reinterpret it in
    the image's own signedness.
    """
    if raw is None:
        return float("nan")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        return float("nan")
    if pixel_representation == 1 and bits_allocated in (8, 16, 32) and value >= 2 ** (bits_allocated - 1):
        value -= 2**bits_allocated
    return float(value)


def _study_datetime(date: str, time: str) -> pd.Timestamp:
    if not date:
        return pd.NaT
    time = (time or "").split(".")[0].ljust(6, "0")[:6]
    try:
        return pd.Timestamp(f"{date[:4]}-{date[4:6]}-{date[6:8]} {time[:2]}:{time[2:4]}:{time[4:6]}")
    except ValueError:
        return pd.NaT


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    kinds += ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _open_dataset(path: str, access: Access | None = None) -> tuple[Header, int, bool, bool, int, str]:
    """Parse the header of `path` (a local path or a remote URL; see :mod:`ctframe.sources`).

    Returns the dataset, the offset of the little-endian Pixel Data value (or
    -1), whether a pixel data element follows the header, whether that value has
    an undefined length (encapsulated items), the file size and the file's
    version (``mtime_ns`` locally, ETag or version id remotely).
    """
    where = redact(path)
    if not is_remote(path):
        try:
            info = os.stat(local_path(path))
        except OSError as exc:
            raise DicomReadError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        if not stat.S_ISREG(info.st_mode):  # opening a FIFO blocks; a device reads a disk
            raise DicomReadError(f"{path}: not a regular file ({_file_kind(info.st_mode)}); skipped")
        if info.st_size == 0:
            raise DicomReadError(f"{path}: empty file (0 bytes)")
    try:
        with open_for_header(path, access) as (fp, size, version):
            if size == 0:
                raise DicomReadError(f"{where}: empty file (0 bytes)")
            magic = fp.read(2)
            fp.seek(0)
            if magic == b"\x1f\x8b":
                raise DicomReadError(f"{where}: gzip-compressed file, not DICOM; decompress it (gunzip) and scan again")
            # common layouts, read as pydicom would; remote files in ranged requests of one block
            ds: Header | None = (
                parse_header(fp, size, chunk=HEADER_BLOCK_BYTES) if is_remote(path) else parse_header(fp, size)
            )
            if ds is not None:
                fp.seek(size if ds.pixel_element_offset < 0 else ds.pixel_element_offset)
            else:
                fp.seek(0)
                ds = _dcmread_header(fp, where, size)
            offset = fp.tell()
            head = fp.read(12)
            has_pixels = head[:4] in _PIXEL_TAGS
            header_length, undefined_length = _pixel_element_layout(head, implicit=_reads_implicit_vr(ds))
            offset = offset + header_length if head[:4] == _PIXEL_TAG_LE else -1
    except CTFrameError:
        raise
    except OSError as exc:
        raise DicomReadError(f"{where}: cannot read file ({exc.strerror or exc})") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise DicomReadError(f"{where}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None
    return ds, offset, has_pixels, undefined_length, size, version


def _reads_implicit_vr(ds: Header) -> bool:
    """Whether the elements of `ds` were read as implicit VR (the pixel data element is encoded the same way).

    A raw element records the encoding pydicom actually read, which differs
    from the transfer syntax when a file switches between implicit and
    explicit VR (pydicom detects it; ``original_encoding`` keeps the syntax's).
    """
    if isinstance(ds, RawHeader):
        return ds.is_implicit_VR
    element = ds.get_item(0x00280010)  # Rows: present in every image, at the top level like the pixel data
    if isinstance(element, RawDataElement):
        return bool(element.is_implicit_VR)
    return bool(ds.original_encoding[0])


def _pixel_element_layout(head: bytes, *, implicit: bool) -> tuple[int, bool]:
    r"""The header length of the pixel data element that starts with `head`, and whether its length is undefined.

    `head` holds the element's first 12 bytes. The rule is pydicom's element
    reader's: implicit VR is tag and 4-byte length (8 bytes); explicit VR with
    a long-form VR (OB, OW, UN, OF, ... see
    :data:`ctframe.header_fastpath._LONG_VRS`) is tag, VR, 2 reserved bytes and
    4-byte length (12 bytes); any other explicit VR has a 2-byte length (8
    bytes), and bytes that are no VR at all mean an implicit element (8 bytes).

    Examples
    --------
    >>> _pixel_element_layout(b"\xe0\x7f\x10\x00UN\x00\x00\x00\x00\x08\x00", implicit=False)
    (12, False)
    >>> _pixel_element_layout(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff", implicit=False)
    (12, True)
    >>> _pixel_element_layout(b"\xe0\x7f\x10\x00\x00\x00\x08\x00\x00\x00\x00\x00", implicit=True)
    (8, False)
    """
    if implicit:
        return 8, head[4:8] == _UNDEFINED_LENGTH
    vr = head[4:6]
    if vr in _LONG_VR_BYTES:
        return 12, head[8:12] == _UNDEFINED_LENGTH
    if len(vr) == 2 and not (b"AA" <= vr <= b"ZZ"):  # not a VR: pydicom assumes an implicit element here
        return 8, head[4:8] == _UNDEFINED_LENGTH
    return 8, False  # a short-form VR: a 2-byte length cannot be undefined


class _BoundedFile:
    """`fp` with reads capped at what is left of a file of `size` bytes.

    pydicom reads an element's value with ``fp.read(length)``, and a file object
    allocates the full `length` before it finds the end of the file: a corrupt
    length, or a text file read as a dataset without preamble, made a 300 KB XML
    file cost 1.6 GB. Capped, a read asks for no more than the file holds.
    """

    def __init__(self, fp: Any, size: int) -> None:
        self._fp = fp
        self._size = size

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._fp.read()
        return self._fp.read(max(0, min(n, self._size - self._fp.tell())))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fp, name)


def _dcmread_header(fp: Any, path: str, size: int) -> Dataset:
    """Read a header with pydicom (every file the fast path declines); `fp` is left where pydicom stopped."""
    bounded = _BoundedFile(fp, size)
    with library_warnings_ignored():  # pydicom warns about every odd value; bad values surface as problems
        try:
            return pydicom.dcmread(bounded, stop_before_pixels=True)
        except InvalidDicomError:
            fp.seek(0)
            ds = pydicom.dcmread(bounded, stop_before_pixels=True, force=True)
            if "SOPClassUID" not in ds:
                raise DicomReadError(
                    f"{path}: not a DICOM file (no 'DICM' preamble and no recognisable dataset)"
                ) from None
            return ds


def _has_pixels_full_read(path: str, access: Access | None = None) -> bool:
    try:
        with library_warnings_ignored(), open_for_header(path, access) as (fp, size, _):
            full = pydicom.dcmread(_BoundedFile(fp, size), force=True)
        return any(k in full for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:
        return False


def read_header(
    path: str | os.PathLike[str], *, salt: str | None = None, include_phi: bool = False, access: Access | None = None
) -> list[dict[str, Any]]:
    """Read the header of one file into catalog records, one per image frame.

    Parameters
    ----------
    path : path-like
        A DICOM file.
    salt : str, optional
        Key of the pseudonyms; see :func:`ctframe.privacy.resolve_salt`.
    include_phi : bool
        Also return PatientID, name, birth date, accession number, institution,
        referring physician and the original UIDs and study date
        (``original_*``). Off by default.
    access : Access, optional
        Storage options of a remote `path` (an fsspec URL); see :mod:`ctframe.sources`.

    Returns
    -------
    list of dict
        One record per frame (a single-frame image gives one record).
        De-identified: Study, Series, SOP Instance and Frame of Reference UIDs
        are pseudonyms (:func:`~ctframe.privacy.pseudonymous_uid`), the study date is moved
        by the patient's :func:`~ctframe.privacy.date_offset_days` (an invalid
        date becomes ``""``), the PatientID is a
        :func:`~ctframe.privacy.patient_key`.

    Raises
    ------
    DicomReadError
        Not DICOM, empty, gzip-wrapped, unreadable or corrupt.
    UnsupportedDicomError
        Valid DICOM without pixel data (SR, waveform, RT plan, DICOMDIR...).

    Notes
    -----
    **Computes** (reads the header from disk; never the pixel data).
    """
    path = os.fspath(path)
    # pydicom warns on every malformed value it converts; those surface as NaN fields or problems instead
    with library_warnings_ignored():
        try:
            return _records(path, salt=salt, include_phi=include_phi, access=access)
        except CTFrameError:
            raise
        except Exception as exc:
            if not _raised_in_pydicom(exc):  # ctframe's own code failed: a bug, not a bad file
                raise
            # pydicom raises many types on corrupt values it converts lazily
            raise DicomReadError(f"{path}: unreadable DICOM header ({type(exc).__name__}: {exc})") from None


def _raised_in_pydicom(exc: BaseException) -> bool:
    """Whether `exc` came out of pydicom's code (a frame of its traceback lies in pydicom)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("pydicom"):
            return True
        tb = tb.tb_next
    return False


def _records(path: str, *, salt: str | None, include_phi: bool, access: Access | None) -> list[dict[str, Any]]:
    ds, offset, has_pixels, undefined_length, size, version = _open_dataset(path, access)
    if not (has_pixels or _get_int(ds, "Rows") <= 0 or _get_int(ds, "Columns") <= 0):
        has_pixels = _has_pixels_full_read(path, access)  # deflated streams hide the tag from a header read
    return records_of_dataset(
        ds,
        path=path,
        file_size=size,
        file_version=version,
        pixel_data_offset=offset,
        has_pixels=has_pixels,
        undefined_length=undefined_length,
        salt=salt,
        include_phi=include_phi,
    )


def records_of_dataset(
    ds: Header,
    *,
    path: str,
    file_size: int,
    file_version: str,
    pixel_data_offset: int,
    has_pixels: bool,
    undefined_length: bool,
    salt: str | None,
    include_phi: bool,
    transfer_syntax_uid: str | None = None,
) -> list[dict[str, Any]]:
    """Catalog records (one per frame) of a parsed header, whichever source it came from.

    Parameters
    ----------
    ds : Dataset
        The header (a file's, or a DICOMweb instance's metadata).
    path : str
        The catalog's ``path``: where the pixels are read from.
    file_size : int
        Bytes of the file, or -1 when unknown (DICOMweb).
    file_version : str
        What identifies the file's version (see :class:`ctframe.sources.FileInfo`).
    pixel_data_offset : int
        Offset of the Pixel Data value in the file, or -1.
    has_pixels : bool
        Whether the file holds pixel data.
    undefined_length : bool
        Whether the Pixel Data value is encapsulated (undefined length).
    salt, include_phi
        As in :func:`read_header`.
    transfer_syntax_uid : str, optional
        The syntax pixels will arrive in, where the header has none (DICOMweb).
    """
    size, offset = file_size, pixel_data_offset
    where = redact(path)
    meta = getattr(ds, "file_meta", None)
    media_class = _get(meta, "MediaStorageSOPClassUID", "") if meta is not None else ""
    sop_class = str(_get(ds, "SOPClassUID", "") or media_class)
    if sop_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise UnsupportedDicomError(f"{where}: DICOMDIR (a media index), not an image; scan the folders it indexes")
    rows, columns = _get_int(ds, "Rows"), _get_int(ds, "Columns")
    if rows <= 0 or columns <= 0 or not has_pixels:
        name = UID(sop_class).name if sop_class else "unknown SOP class"
        if "Image Storage" in name or (rows > 0 and columns > 0) or len(ds) == 0:
            # pydicom stops quietly at a cut element: an image header without pixels is most likely cut short
            what = "an image without its pixels: the file is probably truncated"
        else:
            what = "not an image"
        raise UnsupportedDicomError(f"{where}: no image pixel data ({name}); {what}, skipped")

    ts_uid = transfer_syntax_uid or (str(_get(meta, "TransferSyntaxUID", "")) if meta is not None else "")
    if not ts_uid:
        ts_uid = "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
        if not ds.is_little_endian:
            ts_uid = "1.2.840.10008.1.2.2"
    ts = _uid(ts_uid)
    lossy_flag = str(_get(ds, "LossyImageCompression", ""))
    is_lossy = lossy_flag == "01" or ts_uid in LOSSY_SYNTAXES or (ts_uid in MAYBE_LOSSY_SYNTAXES and lossy_flag != "00")
    bits_allocated = _get_int(ds, "BitsAllocated", 0)
    pixel_representation = _get_int(ds, "PixelRepresentation", 0)
    n_frames = max(_get_int(ds, "NumberOfFrames", 1), 1)
    _check_frames_fit(where, size, n_frames, rows, columns, bits_allocated, _get_int(ds, "SamplesPerPixel", 1), ts)
    # de-identified here, where every output comes from (ctframe.privacy): UIDs hashed, dates shifted per patient
    salt = resolve_salt(salt)
    original_date = str(_get(ds, "StudyDate", ""))
    study_time = str(_get(ds, "StudyTime", ""))
    patient_id = _get(ds, "PatientID")
    patient_id = None if patient_id is None else str(patient_id)
    original_study_uid = str(_get(ds, "StudyInstanceUID", ""))
    original_series_uid = str(_get(ds, "SeriesInstanceUID", ""))
    original_instance_uid = str(_get(ds, "SOPInstanceUID", ""))
    original_frame_uid = str(_get(ds, "FrameOfReferenceUID", ""))
    shift_days = date_offset_days(patient_id, salt=salt, fallback=original_study_uid)
    study_date = shift_date(original_date, shift_days)
    common: dict[str, Any] = {
        "path": path,
        "file_size": size,
        "mtime_ns": int(file_version) if file_version.isdigit() and not is_remote(path) else -1,
        "file_version": file_version,
        "number_of_frames": n_frames,
        "patient_key": patient_key(patient_id, salt=salt, fallback=original_study_uid),
        "study_uid": pseudonymous_uid(original_study_uid, salt=salt),
        "study_date": study_date,
        "study_time": study_time,
        "study_datetime": _study_datetime(study_date, study_time),
        "series_uid": pseudonymous_uid(original_series_uid, salt=salt),
        "series_number": _get_int(ds, "SeriesNumber"),
        "series_description": str(_get(ds, "SeriesDescription", "")),
        "acquisition_number": _get_int(ds, "AcquisitionNumber"),
        "modality": str(_get(ds, "Modality", "")),
        "sop_class_uid": sop_class,
        "sop_class": _uid(sop_class).name if sop_class else "",
        "sop_instance_uid": pseudonymous_uid(original_instance_uid, salt=salt),
        "instance_number": _get_int(ds, "InstanceNumber"),
        "image_type": _multi_str(_get(ds, "ImageType")),
        "frame_of_reference_uid": pseudonymous_uid(original_frame_uid, salt=salt),
        "rows": rows,
        "columns": columns,
        "samples_per_pixel": _get_int(ds, "SamplesPerPixel", 1),
        "photometric": str(_get(ds, "PhotometricInterpretation", "")),
        "bits_allocated": bits_allocated,
        "bits_stored": _get_int(ds, "BitsStored", bits_allocated),
        "pixel_representation": pixel_representation,
        "padding_value": _padding_value(_get(ds, "PixelPaddingValue"), bits_allocated, pixel_representation),
        "padding_range_limit": _padding_value(_get(ds, "PixelPaddingRangeLimit"), bits_allocated, pixel_representation),
        "transfer_syntax_uid": ts_uid,
        "transfer_syntax": ts.name,
        "is_compressed": bool(ts.is_compressed) if ts.is_transfer_syntax else False,
        "is_lossy": is_lossy,
        # native: where the pixel bytes start; encapsulated: where the items start
        "pixel_data_offset": offset
        if ts_uid in NATIVE_LITTLE_ENDIAN or (ts.is_encapsulated and undefined_length)
        else -1,
        "convolution_kernel": _multi_str(_get(ds, "ConvolutionKernel")),
        "kvp": _float(_get_number(ds, "KVP")),
        "gantry_tilt_deg": _float(_get_number(ds, "GantryDetectorTilt")),
        "manufacturer": str(_get(ds, "Manufacturer", "")),
        "manufacturer_model": str(_get(ds, "ManufacturerModelName", "")),
        "body_part": str(_get(ds, "BodyPartExamined", "")),
        "voi_lut_function": str(_get(ds, "VOILUTFunction", "")),
    }
    if include_phi:
        common.update(
            patient_id=str(patient_id or ""),
            patient_name=str(_get(ds, "PatientName", "")),
            patient_birth_date=str(_get(ds, "PatientBirthDate", "")),
            accession_number=str(_get(ds, "AccessionNumber", "")),
            institution_name=str(_get(ds, "InstitutionName", "")),
            referring_physician_name=str(_get(ds, "ReferringPhysicianName", "")),
            original_study_uid=original_study_uid,
            original_series_uid=original_series_uid,
            original_sop_instance_uid=original_instance_uid,
            original_frame_of_reference_uid=original_frame_uid,
            original_study_date=original_date,
            original_study_time=study_time,
        )

    shared = _first_item(_get(ds, "SharedFunctionalGroupsSequence"))
    per_frame_seq = _get(ds, "PerFrameFunctionalGroupsSequence")
    records = []
    for frame in range(n_frames):
        per_frame = None
        if per_frame_seq is not None:
            try:
                per_frame = per_frame_seq[frame]
            except (IndexError, TypeError):
                per_frame = None
        records.append({**common, "frame": frame, **_geometry(ds, per_frame, shared)})
    return records


#: Largest ratio zlib's deflate can reach; a deflated file cannot hold more than this times its size.
_DEFLATE_MAX_RATIO = 1032


def _check_frames_fit(
    path: str, size: int, n_frames: int, rows: int, columns: int, bits: int, samples: int, ts: UID
) -> None:
    """Reject a header that declares more pixel data than the file could hold.

    A corrupt NumberOfFrames, Rows or Columns would otherwise make the catalog
    (one record per frame) or a read task allocate without bound. Uncompressed
    frames must fit in twice the file (deflated ones: times deflate's maximum
    ratio); an encapsulated frame takes at least one 8-byte item header. A
    truncated file passes here and fails clearly when its pixels are read.
    """
    if size < 0:  # unknown (DICOMweb metadata): the read checks what arrives
        return
    frame_bytes = -(-rows * columns * max(samples, 1) * max(bits, 1) // 8)
    if ts.is_transfer_syntax and not ts.is_encapsulated:
        capacity = size * (_DEFLATE_MAX_RATIO if ts.is_deflated else 1)
        fits = n_frames * frame_bytes <= 2 * capacity
    else:
        fits = n_frames <= size // 8
    if not fits:
        raise DicomReadError(
            f"{path}: header declares {n_frames} frame(s) of {rows}x{columns} at {bits} bits, more than "
            f"a file of {size} bytes can hold; the header is corrupt (NumberOfFrames, Rows or Columns)"
        )


def _geometry(ds: Dataset, per_frame: Dataset | None, shared: Dataset | None) -> dict[str, Any]:
    """Position, orientation, spacing, rescale and window of one frame."""
    multi = per_frame is not None or shared is not None

    def pick(sequence: str, keyword: str, getter: Any = _get) -> Any:
        value = _functional(per_frame, shared, sequence, keyword, getter) if multi else None
        return value if value is not None else getter(ds, keyword)

    ipp = _floats(pick("PlanePositionSequence", "ImagePositionPatient", _get_number), 3)
    iop = _orientation(pick("PlaneOrientationSequence", "ImageOrientationPatient", _get_number))
    spacing = _floats(pick("PixelMeasuresSequence", "PixelSpacing", _get_number), 2)
    if not all(0 < s <= _MAX_SPACING_MM for s in spacing):  # zero, negative or absurd: malformed
        spacing = [float("nan")] * 2
    slope = pick("PixelValueTransformationSequence", "RescaleSlope", _get_number)
    intercept = pick("PixelValueTransformationSequence", "RescaleIntercept", _get_number)
    return {
        "position_x_mm": ipp[0],
        "position_y_mm": ipp[1],
        "position_z_mm": ipp[2],
        "row_dir_x": iop[0],
        "row_dir_y": iop[1],
        "row_dir_z": iop[2],
        "col_dir_x": iop[3],
        "col_dir_y": iop[4],
        "col_dir_z": iop[5],
        "pixel_spacing_row_mm": spacing[0],
        "pixel_spacing_col_mm": spacing[1],
        "slice_thickness_mm": _float(pick("PixelMeasuresSequence", "SliceThickness", _get_number)),
        "rescale_slope": _float(slope),
        "rescale_intercept": _float(intercept),
        "rescale_type": normalise_rescale_type(pick("PixelValueTransformationSequence", "RescaleType")),
        "window_center": _decimal_text(pick("FrameVOILUTSequence", "WindowCenter")),
        "window_width": _decimal_text(pick("FrameVOILUTSequence", "WindowWidth")),
    }


_HU_SPELLINGS = re.compile(r"^\s*(HU|HOUN?D?SFIELD(\s+UNITS?)?)\s*$", re.IGNORECASE)


def normalise_rescale_type(value: Any) -> str:
    """RescaleType as written, except that spellings of Hounsfield units become ``"HU"``.

    Real headers say ``HU``, ``Hounsfield Units`` and even ``Houndsfield Unit``.

    Examples
    --------
    >>> normalise_rescale_type("Houndsfield Unit"), normalise_rescale_type("US"), normalise_rescale_type(None)
    ('HU', 'US', '')
    """
    text = "" if value is None else str(value).strip()
    return "HU" if _HU_SPELLINGS.match(text) else text


# --------------------------------------------------------------------------- pixels


def stored_dtype(bits_allocated: Iterable[int], pixel_representation: Iterable[int]) -> np.dtype:
    """The numpy dtype that holds every stored value of a series without loss.

    Examples
    --------
    >>> stored_dtype([16, 16], [1, 1])
    dtype('int16')
    >>> stored_dtype([16, 16], [0, 1])
    dtype('int32')
    """
    dtypes = []
    for bits, rep in zip(bits_allocated, pixel_representation, strict=True):
        bits = int(bits)
        if bits not in (1, 8, 16, 32):
            raise UnsupportedDicomError(f"BitsAllocated {bits} is not supported for CT volumes")
        bits = max(bits, 8)
        dtypes.append(np.dtype(f"{'i' if int(rep) == 1 else 'u'}{bits // 8}"))
    return np.result_type(*dtypes) if dtypes else np.dtype("int16")


def keep_stored_bits(frame: np.ndarray, bits_stored: int) -> np.ndarray:
    """Make every value of `frame` what its low `bits_stored` bits say, in place (pydicom's rule).

    PS3.5 8.1.1: the bits above BitsStored carry nothing that can be assumed
    (legacy scanners keep overlays there). pydicom ignores them by shifting
    left and back right by BitsAllocated - BitsStored in the frame's own dtype,
    so an unsigned frame is masked to its low `bits_stored` bits and a signed
    one is sign-extended from bit ``bits_stored - 1``. HighBit plays no part:
    pydicom assumes HighBit = BitsStored - 1. Every read path applies this to
    the frame as its decoder returns it (the dtype pydicom would give it), so
    the stored values equal ``pixel_array``.

    Parameters
    ----------
    frame : ndarray
        Integer values, changed in place. Their itemsize plays BitsAllocated.
    bits_stored : int
        Significant bits; nothing is done when they fill the dtype.

    Returns
    -------
    ndarray
        `frame` itself.

    Notes
    -----
    One vectorised pass (two shifts over one frame, which stays in cache);
    numpy releases the GIL for it.

    Examples
    --------
    >>> keep_stored_bits(np.array([0x0FFF, 0x7800], dtype=np.int16), 12)  # 12-bit signed: sign bit 11
    array([   -1, -2048], dtype=int16)
    >>> keep_stored_bits(np.array([0xFFFF, 0x1234], dtype=np.uint16), 12)
    array([4095,  564], dtype=uint16)
    """
    shift = frame.dtype.itemsize * 8 - bits_stored
    if shift <= 0 or bits_stored <= 0:
        return frame
    if frame.dtype.kind == "u":
        np.bitwise_and(frame, (1 << bits_stored) - 1, out=frame)
    else:
        np.left_shift(frame, shift, out=frame)
        np.right_shift(frame, shift, out=frame)
    return frame


def _check_bits(ref: SliceRef) -> None:
    """Refuse a BitsStored that pydicom refuses too (no stored value can be read from it)."""
    if not 1 <= ref.bits_stored <= ref.bits_allocated:
        raise DicomReadError(
            f"{ref.path}: BitsStored {ref.bits_stored} is not between 1 and BitsAllocated {ref.bits_allocated}; "
            "the header is corrupt, fix BitsStored"
        )


def _read_path(ref: SliceRef) -> str:
    """Which reader decodes the frame `ref`: ``"dicomweb"``, ``"native"``, ``"imagecodecs"`` or ``"pydicom"``.

    ``"dicomweb"``: a frame of a DICOMweb instance (:func:`ctframe.dicomweb.read_instance_frames`).

    ``"native"``: uncompressed little-endian integer frames of one sample,
    whose bytes the header pass located (Pixel Data in any VR; not Float or
    Double Float Pixel Data, which pydicom reads). ``"imagecodecs"``: the
    encapsulated syntaxes of :data:`IMAGECODECS_DECODERS` with one sample of
    8, 16 or 32 bits (pydicom still decodes a frame imagecodecs gives in
    another layout). ``"pydicom"``: everything else (big endian, deflated,
    float, colour, other syntaxes). Each path gives ``pixel_array``'s values.
    """
    if is_dicomweb(ref.path):
        return "dicomweb"
    simple = ref.bits_allocated in (8, 16, 32) and ref.samples_per_pixel == 1
    if simple and ref.transfer_syntax_uid in NATIVE_LITTLE_ENDIAN and ref.pixel_data_offset >= 0:
        return "native"
    if simple and ref.transfer_syntax_uid in IMAGECODECS_DECODERS:
        return "imagecodecs"
    return "pydicom"


def _pixel_dtype(pixel_representation: int, bits_allocated: int) -> np.dtype:
    """The little-endian dtype pydicom decodes a frame into (PixelRepresentation, BitsAllocated 8, 16 or 32)."""
    return np.dtype(f"<{'i' if pixel_representation == 1 else 'u'}{bits_allocated // 8}")


def _native_dtype(ref: SliceRef) -> np.dtype:
    return _pixel_dtype(ref.pixel_representation, ref.bits_allocated)


def _read_native_into(ref: SliceRef, target: np.ndarray, access: Access | None = None) -> None:
    """Read the stored values of the native frame `ref` into `target` (of :func:`_native_dtype`).

    The raw little-endian bytes land in `target` itself, then
    :func:`keep_stored_bits` runs on them while they are in cache (nothing at
    all when BitsStored equals BitsAllocated). A remote file is read with one
    ranged request of exactly the frame's bytes.
    """
    if not target.flags.c_contiguous:  # the bytes must land in `target` itself, not in a reshaped copy
        raise ValueError("target must be C-contiguous")
    offset = ref.pixel_data_offset + ref.frame * target.nbytes
    view = memoryview(target.reshape(-1).view(np.uint8))
    if is_remote(ref.path):
        data = read_range(ref.path, offset, target.nbytes, access)
        done = len(data)
        view[:done] = data
    else:
        try:
            with open(local_path(ref.path), "rb", buffering=0) as fp:
                size = os.fstat(fp.fileno()).st_size
                if size != ref.file_size:
                    raise DicomReadError(
                        f"{ref.path}: file changed since it was scanned ({ref.file_size} -> {size} bytes); scan again"
                    )
                fp.seek(offset)
                done = 0
                while done < target.nbytes:  # a raw read may return less than asked
                    n = fp.readinto(view[done:])
                    if not n:
                        break
                    done += n
        except OSError as exc:
            raise DicomReadError(f"{ref.path}: cannot read pixel data ({exc.strerror or exc})") from None
    if done != target.nbytes:
        raise DicomReadError(
            f"{redact(ref.path)}: pixel data truncated (frame {ref.frame} needs {target.size} values, "
            f"found {done // target.itemsize})"
            + ("; if it changed since it was scanned, scan again" if is_remote(ref.path) else "")
        )
    if ref.bits_stored < ref.bits_allocated:
        keep_stored_bits(target, ref.bits_stored)


def _read_native(ref: SliceRef, access: Access | None = None) -> np.ndarray:
    """The stored values of a native little-endian frame (what pydicom returns)."""
    out = np.empty((ref.rows, ref.columns), _native_dtype(ref))
    _read_native_into(ref, out, access)
    return out


_JPEG_LS_SOF = b"\xff\xf7"
_JPEG_2000 = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})


def _jpeg_ls_precision(codestream: bytes) -> int | None:
    """The sample precision P of a JPEG-LS codestream's SOF55 segment, or None when there is none to read."""
    if codestream[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 5 <= len(codestream):
        if codestream[offset : offset + 2] == _JPEG_LS_SOF:
            return codestream[offset + 4]
        offset += 2 + int.from_bytes(codestream[offset + 2 : offset + 4], "big")  # the next marker
    return None


def _decoded_layout(ref: SliceRef, codestream: bytes) -> tuple[np.dtype, int] | None:
    """The dtype pydicom gives a decoded frame of `ref` and the bits :func:`keep_stored_bits` keeps in it.

    pydicom's rules, per syntax: RLE and JPEG Lossless frames come in the
    dtype of BitsAllocated and PixelRepresentation, BitsStored kept. JPEG-LS
    and JPEG 2000 frames come in a container sized by the codestream's
    precision P (8, 16 or 32 bits); a signed JPEG-LS frame (which has no sign
    of its own) is sign-extended from P, and a JPEG 2000 frame whose signedness
    differs from PixelRepresentation is corrected from P. No correction is
    returned as 0 bits. None: a precision beyond the containers.
    """
    ts_uid, signed = ref.transfer_syntax_uid, ref.pixel_representation
    if ts_uid in _JPEG_LS:
        precision = _jpeg_ls_precision(codestream) or ref.bits_stored
        correct = signed == 1
    elif ts_uid in _JPEG_2000:
        from pydicom.pixels.utils import get_j2k_parameters

        info = get_j2k_parameters(codestream)
        precision = info.get("precision", ref.bits_stored)
        correct = int(info.get("is_signed", signed)) != signed
    else:
        return _pixel_dtype(signed, ref.bits_allocated), ref.bits_stored
    container = next((bits for bits in (8, 16, 32) if precision <= bits), None)
    if container is None:
        return None
    return _pixel_dtype(signed, container), precision if correct else 0


def _read_with_imagecodecs(
    ref: SliceRef, frames: Sequence[int], access: Access | None = None
) -> list[np.ndarray] | None:
    """Decode frames `frames` of the file of `ref` with imagecodecs, as pydicom would decode them.

    Each frame is viewed in the dtype pydicom gives it and corrected with
    :func:`keep_stored_bits` by pydicom's rule (see :func:`_decoded_layout`).
    None when imagecodecs (or the codec) is not available or a frame does not
    come out as pydicom's would (another container size, several samples):
    pydicom then decodes the file.
    """
    ts_uid, shape = ref.transfer_syntax_uid, (ref.rows, ref.columns)
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - imagecodecs is a declared dependency
        return None
    decode = getattr(imagecodecs, IMAGECODECS_DECODERS[ts_uid], None)
    if decode is None:  # pragma: no cover - a build without the codec
        return None
    from pydicom.encaps import generate_frames

    if ts_uid == RLE_LOSSLESS:  # the codec returns the frame's bytes in the order of the dtype given
        little = _native_dtype(ref)
        codec = decode

        def decode(fragment: bytes) -> np.ndarray:
            return np.frombuffer(codec(fragment, little), little).reshape(shape)

    wanted = set(frames)
    decoded: dict[int, np.ndarray] = {}
    for index, fragment in enumerate(
        generate_frames(_encapsulated_pixel_data(ref, access), number_of_frames=ref.number_of_frames)
    ):
        if index in wanted:
            layout = _decoded_layout(ref, fragment)
            array = decode(fragment)
            if layout is None or array.ndim != 2 or array.dtype.itemsize != layout[0].itemsize:
                return None  # not what pydicom's decoder would give: let pydicom decide
            array = array.view(layout[0])
            if not array.flags.writeable:
                array = array.copy()
            decoded[index] = keep_stored_bits(array, layout[1]) if layout[1] else array
        if len(decoded) == len(wanted):
            break
    return [decoded[f] for f in frames]


def _encapsulated_pixel_data(ref: SliceRef, access: Access | None = None) -> bytes:
    """The encapsulated Pixel Data of the file of `ref`: its items up to the sequence delimiter.

    Read from the value offset the header pass recorded (everything after it:
    ``pydicom.encaps.generate_frames`` stops at the sequence delimiter, as on
    ``dcmread(path).PixelData``), so the file is not parsed a second time under
    the GIL; with no offset recorded (a header pydicom read its own way), from
    pydicom's ``dcmread``. A remote file: one ranged read from that offset.
    """
    if ref.pixel_data_offset < 0:
        return pydicom.dcmread(_file_source(ref.path, access)).PixelData
    if is_remote(ref.path):
        return read_range(ref.path, ref.pixel_data_offset, -1, access)
    try:
        with open(local_path(ref.path), "rb") as fp:
            size = os.fstat(fp.fileno()).st_size
            if size != ref.file_size:
                raise DicomReadError(
                    f"{ref.path}: file changed since it was scanned ({ref.file_size} -> {size} bytes); scan again"
                )
            fp.seek(ref.pixel_data_offset)
            return fp.read()
    except OSError as exc:
        raise DicomReadError(f"{ref.path}: cannot read pixel data ({exc.strerror or exc})") from None


def _file_source(path: str, access: Access | None) -> Any:
    """What pydicom reads a whole file from: the local path, or a remote file's bytes."""
    if not is_remote(path):
        return local_path(path)
    return io.BytesIO(read_range(path, 0, -1, access))


def _read_with_pydicom(
    path: str, frames: Sequence[int], n_frames: int, ts_uid: str, access: Access | None = None
) -> list[np.ndarray]:
    from pydicom.pixels import pixel_array

    src: Any = _file_source(path, access)
    if UID(ts_uid).is_deflated:  # pixel_array(path) parses the raw file and cannot inflate it
        src = pydicom.dcmread(src)
    options = {"decoding_plugin": "pydicom"} if ts_uid == RLE_LOSSLESS else {}  # see IMAGECODECS_DECODERS
    if n_frames == 1:
        return [pixel_array(src, **options)]
    return [pixel_array(src, index=f, **options) for f in frames]


def _decode_file(refs: Sequence[SliceRef], access: Access | None = None) -> list[np.ndarray]:
    """Decode the frames `refs` of one file, trying the fastest exact path first.

    Every path gives pydicom's ``pixel_array``: the native fast path and
    imagecodecs apply :func:`keep_stored_bits` as pydicom's decoders do, and
    pydicom itself decodes everything else (big endian, deflated, float pixel
    data, several samples, other syntaxes, whatever imagecodecs declines).
    """
    first = refs[0]
    path = _read_path(first)  # the frames of one file share their encoding
    if path == "dicomweb":
        from ctframe.dicomweb import read_instance_frames

        return read_instance_frames(refs, access)
    if path == "native":
        return [_read_native(r, access) for r in refs]
    frames = [r.frame for r in refs]
    try:
        arrays = _read_with_imagecodecs(first, frames, access) if path == "imagecodecs" else None
        if arrays is None:
            arrays = _read_with_pydicom(first.path, frames, first.number_of_frames, first.transfer_syntax_uid, access)
    except CTFrameError:  # ours (e.g. a file changed since the scan) already names the file: not wrapped again
        raise
    except BaseException as exc:  # decoders raise many types
        # Rust decoders (pylibjpeg-rle) panic on corrupt streams with pyo3's
        # PanicException, a BaseException: a corrupt file, not an interruption
        if not isinstance(exc, Exception) and type(exc).__module__ != "pyo3_runtime":
            raise
        raise DicomReadError(
            f"{first.path}: cannot decode pixel data ({first.transfer_syntax_uid}; {type(exc).__name__}: {exc}). "
            "Install the pylibjpeg plugins or check the file."
        ) from None
    return arrays


def read_frames(refs: Sequence[SliceRef], *, dtype: np.dtype, access: Access | None = None) -> np.ndarray:
    """Read and stack the frames `refs` as stored values of `dtype`.

    Parameters
    ----------
    refs : sequence of SliceRef
        Frames in output order; frames of one file (or DICOMweb instance) are read with one open (or request).
    dtype : numpy dtype
        Output dtype (see :func:`stored_dtype`).
    access : Access, optional
        How to reach remote files (see :mod:`ctframe.sources`).

    Returns
    -------
    ndarray (slice, row, col)

    Raises
    ------
    DicomReadError
        A file is missing, changed, truncated or cannot be decoded.

    Notes
    -----
    **Computes** (this is the body of every read task).
    """
    shape = (refs[0].rows, refs[0].columns)
    for ref in refs:
        _check_bits(ref)
    if all(_read_path(r) == "native" and _native_dtype(r) == dtype and (r.rows, r.columns) == shape for r in refs):
        out = np.empty((len(refs), *shape), dtype=dtype)
        for i, ref in enumerate(refs):
            _read_native_into(ref, out[i], access)  # straight into the stack: no temporary, no copy
        return out
    out: np.ndarray | None = None  # allocated once a frame of the header's shape has decoded
    by_file: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        by_file.setdefault(ref.path, []).append(i)
    for path, positions in by_file.items():
        arrays = _decode_file([refs[i] for i in positions], access)
        for i, arr in zip(positions, arrays, strict=True):
            if arr.shape != shape:
                raise DicomReadError(f"{path}: decoded frame has shape {arr.shape}, expected {shape} from the header")
            if not np.can_cast(arr.dtype, dtype):  # e.g. Float Pixel Data: no integer stored values to give
                raise DicomReadError(
                    f"{path}: pixel data decodes as {arr.dtype}, which the stack's {dtype} cannot hold exactly; "
                    "float pixel data is not supported"
                )
            if out is None:
                out = np.empty((len(refs), *shape), dtype=dtype)
            out[i] = arr
    assert out is not None  # refs is not empty
    return out
