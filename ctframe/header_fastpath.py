"""The header fast path: the common DICOM file layouts parsed straight from bytes.

``pydicom.dcmread(..., stop_before_pixels=True)`` spends most of a header
pass in its element generator (a file read, a ``struct`` call and several
branches per element). For the layouts almost every CT file uses (a Part 10
preamble, explicit-VR file meta, then an implicit or explicit VR little-endian
dataset), this module walks the elements over one buffer and builds the very
``Dataset`` pydicom would: the same ``RawDataElement`` tuples (tag, VR,
length, value bytes, value offset), undefined-length sequences parsed by
pydicom's own ``read_sequence``, the same character set and file meta.

Anything else returns ``None`` and the caller reads the file with pydicom:
no preamble, a missing or unusual transfer syntax (big endian, deflated,
private), a command set, an implicit/explicit VR switch, an unknown VR, an
undefined-length element that is not a sequence, a value running past the end
of the file, or any exception. ``tests/test_header_fastpath.py`` proves on
every file of ``../shared/data`` that the fast path either declines or gives
exactly what pydicom gives, and ``tests/test_header_fuzz.py`` does the same on
mutated copies of them (catalog records compared with and without the fast path).

The walk reproduces what pydicom's reader does, so it is tied to the pydicom
versions it was tested on: with any other minor version (see
:data:`TESTED_PYDICOM`) it declines every file and pydicom reads them all. Only
public pydicom names are used (a test scans the package for private ones).
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, MutableSequence
from typing import Any, BinaryIO

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

__all__ = ["TESTED_PYDICOM", "RawHeader", "dictionary_vr", "element_vr", "fast_path_enabled", "parse_header"]

#: pydicom (major, minor) versions the fast path is tested on; pyproject.toml pins the same range.
TESTED_PYDICOM = frozenset({(3, 0)})

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Little-endian syntaxes pydicom reads in a way other than "explicit VR, as written".
_DECLINED_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    }
)
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data:
#: where ``stop_before_pixels`` stops.
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_ITEM_DELIMITER = 0xFFFEE00D
_UNDEFINED = 0xFFFFFFFF
#: pydicom's two-letter VRs, as written in explicit VR files.
_VRS = {vr.value.encode(): str(vr.value) for vr in VR if len(vr.value) == 2}
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR.
_LONG_VRS = frozenset(str(vr.value) for vr in EXPLICIT_VR_LENGTH_32)
_EXPLICIT_HEAD = struct.Struct("<HH2sH")
_IMPLICIT_HEAD = struct.Struct("<HHL")
_LENGTH_32 = struct.Struct("<L")
#: Bytes read at a time; a CT header usually fits in the first read.
_CHUNK = 16384


class RawHeader:
    """The elements of one header as pydicom reads them, with pydicom's ``Dataset`` built only on demand.

    Offers the part of the ``Dataset`` interface a header pass needs:
    ``get_item(tag)`` returns the stored (raw) element without converting it,
    ``keyword in header`` and ``len(header)`` work as on a dataset, and
    ``get(keyword, default)`` converts through the real dataset (built on first
    use: sequences and unusual VRs go through pydicom itself).
    """

    def __init__(
        self,
        elements: dict[int, _Entry],
        *,
        is_implicit_VR: bool,
        original_character_set: str | MutableSequence[str],
        build: Callable[[dict[BaseTag, RawDataElement | DataElement]], Dataset],
        file_meta: RawHeader | None = None,
        pixel_element_offset: int = -1,
    ) -> None:
        self._elements = elements
        self._build = build
        self._dataset: Dataset | None = None
        self.is_implicit_VR = is_implicit_VR
        self.is_little_endian = True
        self.original_character_set = original_character_set
        self.file_meta = file_meta
        #: File offset of the pixel data element's tag; -1 when the header runs to the end of the file.
        self.pixel_element_offset = pixel_element_offset

    @property
    def dataset(self) -> Dataset:
        """The ``FileDataset`` (or ``FileMetaDataset``) ``dcmread(..., stop_before_pixels=True)`` gives."""
        if self._dataset is None:
            self._dataset = self._build(self.raw_elements())
        return self._dataset

    def get_item(self, tag: int) -> RawDataElement | DataElement | None:
        """The element stored for `tag` (raw unless pydicom converted it while reading), or None."""
        entry = self._elements.get(tag)
        return entry if entry is None or isinstance(entry, DataElement) else _raw_element(tag, entry)

    def raw_elements(self) -> dict[BaseTag, RawDataElement | DataElement]:
        """Every element, keyed by tag, as pydicom's ``read_dataset`` collects them."""
        return {
            BaseTag(tag): entry if isinstance(entry, DataElement) else _raw_element(tag, entry)
            for tag, entry in self._elements.items()
        }

    def get(self, keyword: str, default: Any = None) -> Any:
        """``Dataset.get``: the converted value of `keyword`, through the dataset."""
        return self.dataset.get(keyword, default)

    def __contains__(self, key: int | str) -> bool:
        tag = key if isinstance(key, int) else tag_for_keyword(key)
        return tag is not None and tag in self._elements

    def __len__(self) -> int:
        return len(self._elements)


#: What the walk keeps of a raw element: (VR, length, value, value offset, implicit VR);
#: the RawDataElement is made when asked for. Undefined-length sequences are DataElements.
_Entry = tuple[str | None, int, bytes | None, int, bool] | DataElement


def _raw_element(tag: int, entry: tuple[str | None, int, bytes | None, int, bool]) -> RawDataElement:
    vr, length, value, value_at, implicit = entry
    return RawDataElement(BaseTag(tag), vr, length, value, value_at, implicit, True)


@functools.lru_cache(maxsize=8)
def _tested_version(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version)
    return match is not None and (int(match[1]), int(match[2])) in TESTED_PYDICOM


def fast_path_enabled() -> bool:
    """Whether the installed pydicom is a version the fast path is tested on (:data:`TESTED_PYDICOM`).

    Otherwise :func:`parse_header` declines every file and pydicom reads it.

    Examples
    --------
    >>> fast_path_enabled()  # pydicom 3.0.x, as pyproject.toml requires
    True
    """
    return _tested_version(pydicom.__version__)


def _dataset_encoding(dataset: Dataset) -> str | list[str]:
    """The encodings of `dataset` as pydicom's reader sets them: from its Specific Character Set, else the default.

    The character set element is converted and stored in the dataset, as
    reading it through pydicom does.
    """
    charset = dataset.get(BaseTag(0x00080005))  # a DataElement (converted in place) or None
    return default_encoding if charset is None else convert_encodings(charset.value)


@functools.lru_cache(maxsize=64)
def _encoding(vr: str | None, length: int, value: bytes | None) -> str | tuple[str, ...]:
    """The encodings a dataset reads from its (0008,0005) Specific Character Set (odd values have their rules)."""
    element = RawDataElement(BaseTag(0x00080005), vr, length, value, 0, vr is None, True)
    encodings = _dataset_encoding(Dataset({element.tag: element}, parent_encoding=default_encoding))
    return tuple(encodings) if isinstance(encodings, list) else encodings  # immutable: the memo is shared


class _Decline(Exception):
    """The file is not in a layout this module handles: let pydicom read it."""


class _Reader:
    """A file read through a buffer that grows on demand (offsets are file offsets)."""

    def __init__(self, fp: BinaryIO, size: int, chunk: int = _CHUNK) -> None:
        self.fp = fp
        self.size = size
        self.chunk = chunk
        self.start = 0
        self.buf = fp.read(chunk)

    def window(self, position: int, length: int) -> tuple[bytes, int]:
        """A buffer holding bytes [position, position + length) and the buffer's start offset."""
        if position < self.start or position + length > self.start + len(self.buf):
            if position + length > self.size:
                raise _Decline  # a cut element: pydicom decides what a truncated file gives
            self.fp.seek(position)
            self.buf = self.fp.read(max(length, self.chunk))
            self.start = position
        return self.buf, self.start


def parse_header(fp: BinaryIO, size: int, *, chunk: int = _CHUNK) -> RawHeader | None:
    """Parse the header of an open file as ``pydicom.dcmread(fp, stop_before_pixels=True)`` would.

    Parameters
    ----------
    fp : binary file
        Positioned at the start of the file.
    size : int
        The file's size in bytes.
    chunk : int
        Bytes read at a time (a remote file is read in ranged requests of this size).

    Returns
    -------
    RawHeader or None
        None when the file is not in a layout handled here, or when the
        installed pydicom is not a tested version (:func:`fast_path_enabled`);
        `fp` is then at an undefined position and the caller reads it with pydicom.

    Notes
    -----
    **Computes** (reads the header from disk).
    """
    if not fast_path_enabled():
        return None
    try:
        return _parse(_Reader(fp, size, chunk))
    except Exception:  # _Decline, or anything unexpected in an odd file: pydicom decides
        return None


def _parse(reader: _Reader) -> RawHeader:
    buf, _ = reader.window(0, 132)
    if buf[128:132] != b"DICM":
        raise _Decline
    preamble = buf[:128]
    meta, position, _ = _read_elements(reader, 132, implicit=False, encoding=default_encoding, meta=True)
    syntax_entry = meta.get(0x00020010)
    if not isinstance(syntax_entry, tuple) or position < 0:
        raise _Decline  # no transfer syntax, or nothing after the file meta
    _convert_meta_as_pydicom(meta)
    vr, length, value, _, implicit_meta = syntax_entry
    syntax = str(_converted_meta_value(0x00020010, vr, length, value, implicit_meta))
    if syntax in _DECLINED_SYNTAXES or not syntax.startswith("1.2.840.10008.1.2"):
        raise _Decline  # big endian, deflated, private or unknown syntaxes
    implicit = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    buf, start = reader.window(position, 6)
    head = position - start
    if buf[head] | buf[head + 1] << 8 == 0:
        raise _Decline  # a command set
    raw_vr = buf[head + 4 : head + 6]
    if (not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B)) != implicit:
        raise _Decline  # the dataset's VR encoding differs from its transfer syntax
    elements, pixel_offset, _ = _read_elements(reader, position, implicit=implicit, encoding=default_encoding)

    def build_meta(raw: dict[BaseTag, RawDataElement | DataElement]) -> FileMetaDataset:
        # as _read_file_meta_info and read_partial leave it
        file_meta = FileMetaDataset(raw)
        file_meta.set_original_encoding(
            is_implicit_vr=False, is_little_endian=True, character_encoding=default_encoding
        )
        # converts (and stores) what pydicom's reader converts: the empty elements (listing them does),
        # the element with the lowest tag, the group length and the transfer syntax
        file_meta[list(file_meta.elements())[0].tag]  # noqa: RUF015 - the whole list, as pydicom makes it
        if "FileMetaInformationGroupLength" in file_meta:
            file_meta.get("FileMetaInformationGroupLength")
        file_meta.get("TransferSyntaxUID")
        return file_meta

    meta_header = RawHeader(meta, is_implicit_VR=False, original_character_set=default_encoding, build=build_meta)

    def build(raw: dict[BaseTag, RawDataElement | DataElement]) -> FileDataset:  # as read_partial returns it
        dataset = Dataset(raw, parent_encoding=default_encoding)
        dataset.set_original_encoding(implicit, True, _dataset_encoding(dataset))
        whole = FileDataset(reader.fp, dataset, preamble, meta_header.dataset, implicit, True)
        whole.set_original_encoding(implicit, True, _dataset_encoding(dataset))
        return whole

    charset = elements.get(0x00080005)
    if isinstance(charset, DataElement):
        raise _Decline  # a character set written as a sequence: pydicom decides
    if charset is None:
        encoding = default_encoding
    else:
        cached = _encoding(*charset[:3])
        encoding = list(cached) if isinstance(cached, tuple) else cached  # a list, as pydicom gives
    return RawHeader(
        elements, is_implicit_VR=implicit, original_character_set=encoding, build=build, file_meta=meta_header,
        pixel_element_offset=pixel_offset,
    )  # fmt: skip


def _convert_meta_as_pydicom(meta: dict[int, _Entry]) -> None:
    """Convert the file meta elements pydicom's reader converts; it raises on a bad one, and then so does this.

    pydicom converts the elements ``Dataset.elements`` reads again (empty
    ones), the element with the lowest tag (on ``NotImplementedError`` it
    re-reads the file meta as implicit VR), the group length and the transfer
    syntax. A value it cannot convert (a group length of 3 bytes, say) makes
    ``dcmread`` raise: the fast path declines, so the caller sees pydicom's error.
    """
    tags = sorted(meta)
    wanted = {tags[0], 0x00020000} | {tag for tag in tags if isinstance(meta[tag], tuple) and meta[tag][2] is None}
    for tag in sorted(wanted & meta.keys()):
        entry = meta[tag]
        if isinstance(entry, tuple):
            vr, length, value, _, implicit = entry
            _converted_meta_value(tag, vr, length, value, implicit)


@functools.lru_cache(maxsize=1024)
def _converted_meta_value(tag: int, vr: str | None, length: int, value: bytes | None, implicit: bool) -> Any:
    """The pydicom conversion of one file meta element, memoised (the files of a series repeat their file meta).

    The result depends only on these arguments (not on where the value sits in
    the file); a value pydicom cannot convert raises every time (errors are not cached).
    """
    element = _raw_element(tag, (vr, length, value, 0, implicit))
    return convert_raw_data_element(element, encoding=default_encoding).value


def _read_elements(
    reader: _Reader, position: int, *, implicit: bool, encoding: str | MutableSequence[str], meta: bool = False
) -> tuple[dict[int, _Entry], int, str | MutableSequence[str]]:
    """The elements from `position` to the pixel data (or to the end of group 2 when `meta`).

    Returns the elements, the offset where reading stopped (the pixel data
    element, the first non-group-2 element, or -1 at the end of the file) and
    the character encoding in effect there.
    """
    elements: dict[int, _Entry] = {}
    size = reader.size
    buf, start = reader.window(position, 0)
    end = start + len(buf)
    explicit_head, implicit_head, length_32 = (
        _EXPLICIT_HEAD.unpack_from,
        _IMPLICIT_HEAD.unpack_from,
        _LENGTH_32.unpack_from,
    )
    while position + 8 <= size:
        if position + 12 > end:
            buf, start = reader.window(position, min(12, size - position))
            end = start + len(buf)
        head = position - start
        if implicit:
            group, number, length = implicit_head(buf, head)
            vr = None
            value_at = position + 8
        else:
            group, number, raw_vr, length = explicit_head(buf, head)
            if meta and group != 2:
                return elements, position, encoding
            vr = _VRS.get(raw_vr)
            if vr is None:
                raise _Decline  # an unknown VR or a switch to implicit VR: pydicom's heuristics decide
            if vr in _LONG_VRS:
                length = length_32(buf, head + 8)[0]
                value_at = position + 12
            else:
                value_at = position + 8
        tag = group << 16 | number
        if tag in _PIXEL_TAGS:
            return elements, position, encoding
        if tag == _ITEM_DELIMITER:
            raise _Decline
        if length == _UNDEFINED:
            if (vr if vr is not None else dictionary_vr(tag)) != "SQ" or meta:
                raise _Decline  # undefined-length UN or other values: pydicom's rules decide
            reader.fp.seek(value_at)
            sequence = read_sequence(reader.fp, implicit, True, length, encoding)
            elements[tag] = DataElement(BaseTag(tag), "SQ", sequence, value_at, is_undefined_length=True)
            position = reader.fp.tell()
            buf, start = reader.window(position, 0)
            end = start + len(buf)
            continue
        position = value_at + length
        if position > size:
            raise _Decline  # a value cut by the end of the file
        if length:
            if position > end:
                buf, start = reader.window(value_at, length)
                end = start + len(buf)
            value = buf[value_at - start : position - start]
        else:
            value = empty_value_for_VR(vr, raw=True)
        if tag == 0x00080005:
            encoding = convert_encodings(convert_string(value or b"", True))
        elements[tag] = (vr, length, value, value_at, implicit)
    if position != size:
        raise _Decline  # a few trailing bytes: pydicom's end-of-file handling decides
    return elements, -1, encoding


@functools.lru_cache(maxsize=512)
def dictionary_vr(tag: int) -> str | None:
    """The data dictionary's VR of `tag`, or None for a tag it does not know."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def element_vr(element: RawDataElement) -> str | None:
    """The VR of a raw element: as written (explicit VR) or the dictionary's (implicit VR)."""
    return element.VR if element.VR is not None else dictionary_vr(element.tag)
