"""Force ctframe's pixel reads onto one path and record which paths ran (for the pixel tests)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ctframe import dicom
from ctframe.dicom import SliceRef

#: ctframe's read paths, as ``dicom._read_path`` names them.
READ_PATHS = ("native", "imagecodecs", "pydicom")


def install_path_spies(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """Spy on the three readers; returns ``force(name)``, which sends every frame down path `name`.

    ``force`` returns the list the spies append to: ``"native"`` per frame read
    by the fast path, ``"imagecodecs"`` per file imagecodecs decoded (or
    ``"imagecodecs declined"`` when it handed the file to pydicom), ``"pydicom"``
    per file pydicom decoded. Forcing a path a frame cannot take (native or
    imagecodecs for a frame whose natural path differs) fails the test; any
    frame can be forced onto pydicom's.
    """
    ran: list[str] = []
    native, imagecodecs, fallback = dicom._read_native_into, dicom._read_with_imagecodecs, dicom._read_with_pydicom

    def spy_native(*args, **kwargs):
        ran.append("native")
        return native(*args, **kwargs)

    def spy_imagecodecs(*args, **kwargs):
        arrays = imagecodecs(*args, **kwargs)
        ran.append("imagecodecs" if arrays is not None else "imagecodecs declined")
        return arrays

    def spy_pydicom(*args, **kwargs):
        ran.append("pydicom")
        return fallback(*args, **kwargs)

    monkeypatch.setattr(dicom, "_read_native_into", spy_native)
    monkeypatch.setattr(dicom, "_read_with_imagecodecs", spy_imagecodecs)
    monkeypatch.setattr(dicom, "_read_with_pydicom", spy_pydicom)
    chooser = dicom._read_path

    def force(name: str) -> list[str]:
        assert name in READ_PATHS

        def forced(ref: SliceRef) -> str:
            natural = chooser(ref)
            assert name == "pydicom" or natural == name, f"{ref.path} cannot take the {name} path ({natural})"
            return name

        monkeypatch.setattr(dicom, "_read_path", forced)
        return ran

    return force


def natural_path(ref: SliceRef) -> str:
    """The path ctframe picks for `ref` on its own."""
    return dicom._read_path(ref)
